"""What both training loops share: the rollout record, its episode statistics, and GAE + update phase on it."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sphere_rl.algo.gae import compute_gae
from sphere_rl.algo.ppo import PPO, AgentState, Batch


class Trajectory(NamedTuple):
    """One rollout, every field (T, N, ...) for T steps of N envs."""

    obs: jax.Array
    """Normalised observations the policy acted on."""
    actions: jax.Array
    log_probs: jax.Array
    values: jax.Array
    rewards: jax.Array
    """Env rewards plus gamma * V(final obs) where an episode was truncated (not terminated)."""
    dones: jax.Array
    episode_return: jax.Array
    """Running undiscounted return of each env's episode, including this step."""
    episode_length: jax.Array
    episode_success: jax.Array


def episode_statistics(dones: jax.Array, returns: jax.Array, lengths: jax.Array, success: jax.Array) -> dict[str, jax.Array]:
    """Sums over the episodes that ended in a rollout (the caller divides by `episodes`)."""
    d = dones.astype(jnp.float32)
    return {
        "episodes": d.sum(),
        "episode_return_sum": jnp.sum(returns * d),
        "episode_length_sum": jnp.sum(lengths * d),
        "episode_success_sum": jnp.sum(success.astype(jnp.float32) * d),
    }


def learn_from_rollout(ppo: PPO, agent_state: AgentState, traj: Trajectory, last_raw_obs: jax.Array,
                       key: jax.Array, learning_rate: jax.Array) -> tuple[AgentState, dict[str, jax.Array]]:
    """GAE (bootstrapped from V(last obs)), one update phase, and the rollout's metrics. Traceable."""
    p = ppo.cfg.ppo
    last_value = ppo.value(agent_state, ppo.normalize_obs(agent_state, last_raw_obs))
    advantages, returns = compute_gae(traj.rewards, traj.values, traj.dones, last_value, p.gamma, p.gae_lambda)
    flat = lambda x: x.reshape((-1,) + x.shape[2:])
    batch = Batch(flat(traj.obs), flat(traj.actions), flat(traj.log_probs), flat(advantages), flat(returns))
    agent_state, metrics = ppo.update_phase(agent_state, batch, key, learning_rate)
    metrics.update(episode_statistics(traj.dones, traj.episode_return, traj.episode_length, traj.episode_success))
    metrics["value_mean"] = traj.values.mean()
    metrics["advantage_std"] = advantages.std()
    return agent_state, metrics
