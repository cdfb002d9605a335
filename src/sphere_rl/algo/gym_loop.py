"""Training for Gymnasium vector envs: one jitted call per vector step, one jitted GAE + update phase.

Per vector step the env steps on the host, then a single jitted call does everything the agent
needs: the bootstrap value of truncated episodes, the observation normaliser's update, and the
policy's action for the next step. An iteration of T steps makes T + 1 jitted calls: the first
action, T - 1 observe-and-act steps, and the GAE + update phase fused with the last observation.
The env itself lives on the host, so its state is not part of a checkpoint: a resumed run resets
the vector env (documented in docs/run_directory.md); JAX-native envs resume bit-exactly.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sphere_rl.algo.ppo import PPO, AgentState
from sphere_rl.algo.rollout import Trajectory, learn_from_rollout


EVAL_MAX_STEPS = 10_000
"""Evaluation bound for an env that states no `max_episode_steps` (no time limit)."""


class GymCarry(flax.struct.PyTreeNode):
    raw_obs: jax.Array
    key: jax.Array
    episode_return: jax.Array
    episode_length: jax.Array


def _final_observations(info: dict[str, Any], next_obs: np.ndarray) -> np.ndarray:
    """The observation each episode ended in (gymnasium's `final_obs` where an env just reset)."""
    final_obs = info.get("final_obs")
    if final_obs is None:
        return next_obs
    if final_obs.dtype == object:  # per-env entries, None where the env did not finish
        return np.stack([f if f is not None else o for f, o in zip(final_obs, next_obs)])
    return final_obs


class GymLoop:
    """Same interface as `JaxLoop` (start / iteration / evaluate) for host-side Gymnasium vector envs."""

    def __init__(self, ppo: PPO, make_env: Any):
        """`make_env(num_envs, seed) -> gymnasium.vector.VectorEnv` for the task being trained."""
        self.ppo = ppo
        self.cfg = ppo.cfg
        self.make_env = make_env
        self.env = None
        self._act = jax.jit(self._act_fn, static_argnames=("deterministic",))
        self._observe_and_act = jax.jit(self._observe_and_act_fn)
        self._finish = jax.jit(self._finish_fn)

    def run_call(self, kind: str, own: tuple, shared: tuple) -> Any:
        """One run's `iteration` ((agent, carry), (env_params, lr)) or `evaluate` ((agent, key), (env_params,)).
        Host envs run one seed per process: there is no `run_calls`."""
        if kind == "iteration":
            return self.iteration(*own, *shared)
        if kind == "evaluate":
            return self.evaluate(own[0], shared[0], own[1])
        raise ValueError(f"unknown call {kind!r}")

    def _act_fn(self, agent_state: AgentState, raw_obs: jax.Array, key: jax.Array, deterministic: bool = False):
        obs = self.ppo.normalize_obs(agent_state, raw_obs)
        action, log_prob, value = self.ppo._policy_step(agent_state, obs, key, deterministic)
        return obs, action, log_prob, value

    def _observe(self, agent_state: AgentState, next_obs: jax.Array, final_obs: jax.Array, truncated: jax.Array, terminated: jax.Array):
        """gamma * V(final obs) for truncated episodes (added to the reward), then the normaliser update."""
        final_value = self.ppo.value(agent_state, self.ppo.normalize_obs(agent_state, final_obs))
        bootstrap = self.cfg.ppo.gamma * final_value * jnp.logical_and(truncated, jnp.logical_not(terminated))
        if self.cfg.ppo.normalize_obs:
            agent_state = agent_state.replace(obs_rms=agent_state.obs_rms.update(next_obs))
        return agent_state, bootstrap

    def _observe_and_act_fn(self, acting: AgentState, next_obs: jax.Array, final_obs: jax.Array,
                            truncated: jax.Array, terminated: jax.Array, key: jax.Array):
        """Returns only what changes (normaliser, bootstrap, policy output): passing parameters through a
        jitted call would copy them every step."""
        acting, bootstrap = self._observe(acting, next_obs, final_obs, truncated, terminated)
        return acting.obs_rms, bootstrap, self._act_fn(acting, next_obs, key)

    def _finish_fn(self, agent_state: AgentState, traj: Trajectory, bootstrap: jax.Array, last_step: tuple[jax.Array, ...],
                   key: jax.Array, learning_rate: jax.Array):
        """Observe the last step, add every step's bootstrap to its reward, then GAE + update phase."""
        agent_state, last_bootstrap = self._observe(agent_state, *last_step)
        bootstrap = jnp.concatenate([bootstrap, last_bootstrap[None]])
        traj = traj._replace(rewards=traj.rewards + bootstrap)
        return learn_from_rollout(self.ppo, agent_state, traj, last_step[0], key, learning_rate)

    def close(self) -> None:
        """Close the training vector env (and its subprocesses with async envs); `start` makes a new one."""
        if self.env is not None:
            self.env.close()
            self.env = None

    def start(self, agent_state: AgentState, key: jax.Array, env_params: Any) -> tuple[AgentState, GymCarry]:
        """Build and reset the vector env for a task (`env_params` is unused: the env id is bound in make_env)."""
        self.close()
        n = self.cfg.ppo.num_envs
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        self.env = self.make_env(n, seed)
        obs, _ = self.env.reset(seed=seed)
        obs = jnp.asarray(obs, jnp.float32)
        if self.cfg.ppo.normalize_obs:
            agent_state = agent_state.replace(obs_rms=agent_state.obs_rms.update(obs))
        return agent_state, GymCarry(obs, key, jnp.zeros(n, jnp.float32), jnp.zeros(n, jnp.int32))

    def iteration(self, agent_state: AgentState, carry: GymCarry, env_params: Any, learning_rate: Any):
        p = self.cfg.ppo
        low, high = self.env.single_action_space.low, self.env.single_action_space.high
        keys = jax.random.split(carry.key, p.n_steps + 2)
        acting = agent_state.replace(opt_state=None)  # what acting reads: parameters and normaliser
        policy = self._act(acting, carry.raw_obs, keys[0])
        ep_ret = np.asarray(carry.episode_return, np.float32)
        ep_len = np.asarray(carry.episode_length, np.int32)
        steps: list[tuple[np.ndarray, ...]] = []
        bootstraps = [jnp.zeros((0, p.num_envs), jnp.float32)]
        for t in range(p.n_steps):
            obs, action, log_prob, value = jax.device_get(policy)
            next_obs, reward, terminated, truncated, info = self.env.step(np.clip(action, low, high))
            done = np.logical_or(terminated, truncated)
            ep_ret = ep_ret + reward
            ep_len = ep_len + 1
            success = np.asarray(info.get("success", np.zeros(p.num_envs, bool)), bool)
            steps.append((obs, action, log_prob, value, np.asarray(reward, np.float32), done, ep_ret, ep_len, success))
            ep_ret = np.where(done, 0.0, ep_ret).astype(np.float32)
            ep_len = np.where(done, 0, ep_len).astype(np.int32)
            observed = (np.asarray(next_obs, np.float32), np.asarray(_final_observations(info, next_obs), np.float32),
                        np.asarray(truncated), np.asarray(terminated))
            if t < p.n_steps - 1:
                obs_rms, bootstrap, policy = self._observe_and_act(acting, *observed, keys[t + 1])
                acting = acting.replace(obs_rms=obs_rms)
                bootstraps.append(bootstrap[None])
        agent_state = agent_state.replace(obs_rms=acting.obs_rms)
        traj = Trajectory(*(np.stack(column) for column in zip(*steps)))
        agent_state, metrics = self._finish(agent_state, traj, jnp.concatenate(bootstraps), observed, keys[-2], learning_rate)
        carry = GymCarry(jnp.asarray(observed[0]), keys[-1], jnp.asarray(ep_ret), jnp.asarray(ep_len))
        return agent_state, carry, metrics

    def evaluate(self, agent_state: AgentState, env_params: Any, key: jax.Array) -> dict[str, Any]:
        """Deterministic policy on a fresh vector env of `eval_episodes` envs; first episode of each scored.

        Bounded like `JaxLoop.evaluate`: at most the env's `max_episode_steps` steps (or
        `EVAL_MAX_STEPS` for an env without a time limit). An episode still running then is scored
        as if truncated there: its return so far and the success flag of its last step;
        `episodes` counts the episodes that ended by themselves.
        """
        n = self.cfg.run.eval_episodes
        acting = agent_state.replace(opt_state=None)
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        env = self.make_env(n, seed)
        try:
            obs, _ = env.reset(seed=seed)
            low, high = env.single_action_space.low, env.single_action_space.high
            max_steps = getattr(env, "max_episode_steps", None) or EVAL_MAX_STEPS
            finished = np.zeros(n, bool)
            ret = np.zeros(n, np.float64)
            success = np.zeros(n, bool)
            for _ in range(max_steps):
                _, action, _, _ = self._act(acting, jnp.asarray(obs, jnp.float32), key, deterministic=True)
                obs, reward, terminated, truncated, info = env.step(np.clip(np.asarray(action), low, high))
                ret += np.where(finished, 0.0, reward)
                step_success = np.asarray(info.get("success", np.zeros(n, bool)), bool)
                success = np.where(finished, success, step_success)
                finished |= np.logical_or(terminated, truncated)
                if finished.all():
                    break
        finally:
            env.close()
        return {"return": ret.mean(), "success": success.mean(), "episodes": int(finished.sum())}

    def collect_states(self, agent_state: AgentState, env_params: Any, key: jax.Array, n_steps: int) -> np.ndarray:
        """Raw observations met by the stochastic policy in `n_steps` steps of a fresh vector env.

        Shape (n_steps * num_envs, obs_dim); the training env is untouched.
        """
        n = self.cfg.ppo.num_envs
        acting = agent_state.replace(opt_state=None)
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        env = self.make_env(n, seed)
        states = []
        try:
            obs, _ = env.reset(seed=seed)
            low, high = env.single_action_space.low, env.single_action_space.high
            for step_key in jax.random.split(key, n_steps):
                states.append(np.asarray(obs, np.float32).reshape(n, -1))
                _, action, _, _ = self._act(acting, jnp.asarray(obs, jnp.float32), step_key)
                obs, *_ = env.step(np.clip(np.asarray(action), low, high))
        finally:
            env.close()
        return np.concatenate(states)
