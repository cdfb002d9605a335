"""Generalised advantage estimation over a (T, N) rollout."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def compute_gae(
    rewards: jax.Array,
    values: jax.Array,
    dones: jax.Array,
    last_value: jax.Array,
    gamma: float,
    gae_lambda: float,
) -> tuple[jax.Array, jax.Array]:
    """Return (advantages, returns), both (T, N).

    `rewards[t]`, `dones[t]` belong to the transition taken at step t (`dones[t]` = the episode ended
    there, by termination or truncation; truncated rewards are expected to already include the
    bootstrap gamma * V(final_obs)). `values[t]` = V(s_t); `last_value` = V(s_T), the state after
    the rollout.
    """
    next_values = jnp.concatenate([values[1:], last_value[None]], axis=0)
    not_done = 1.0 - dones.astype(jnp.float32)
    deltas = rewards + gamma * next_values * not_done - values

    def backward(carry: jax.Array, inputs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        delta, mask = inputs
        adv = delta + gamma * gae_lambda * mask * carry
        return adv, adv

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(last_value), (deltas, not_done), reverse=True)
    return advantages, advantages + values
