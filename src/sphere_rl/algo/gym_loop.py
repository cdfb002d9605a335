"""Training for Gymnasium vector envs: one jitted policy call per vector step, jitted GAE + update phase.

Observation normalisation (and its statistics update) happens inside the jitted calls. The env
itself lives on the host, so its state is not part of a checkpoint: a resumed run resets the
vector env (documented in docs/run_directory.md); JAX-native envs resume bit-exactly.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sphere_rl.algo.gae import compute_gae
from sphere_rl.algo.jax_loop import episode_statistics
from sphere_rl.algo.ppo import PPO, AgentState, Batch


class GymCarry(flax.struct.PyTreeNode):
    raw_obs: jax.Array
    key: jax.Array
    episode_return: jax.Array
    episode_length: jax.Array


class GymLoop:
    """Same interface as `JaxLoop` (start / iteration / evaluate) for host-side Gymnasium vector envs."""

    def __init__(self, ppo: PPO, make_env: Any):
        """`make_env(num_envs, seed) -> gymnasium.vector.VectorEnv` for the task being trained."""
        self.ppo = ppo
        self.cfg = ppo.cfg
        self.make_env = make_env
        self.env = None
        self._act = jax.jit(self._act_fn, static_argnames=("deterministic",))
        self._observe = jax.jit(self._observe_fn)
        self._finish = jax.jit(self._finish_fn)

    def _act_fn(self, agent_state: AgentState, raw_obs: jax.Array, key: jax.Array, deterministic: bool = False):
        obs = self.ppo.normalize_obs(agent_state, raw_obs)
        action, log_prob, value = self.ppo._policy_step(agent_state, obs, key, deterministic)
        return obs, action, log_prob, value

    def _observe_fn(self, agent_state: AgentState, next_obs: jax.Array, final_obs: jax.Array, truncated: jax.Array, terminated: jax.Array):
        final_value = self.ppo.value(agent_state, self.ppo.normalize_obs(agent_state, final_obs))
        bootstrap = self.cfg.ppo.gamma * final_value * jnp.logical_and(truncated, jnp.logical_not(terminated))
        if self.cfg.ppo.normalize_obs:
            agent_state = agent_state.replace(obs_rms=agent_state.obs_rms.update(next_obs))
        return agent_state, bootstrap

    def _finish_fn(self, agent_state: AgentState, traj: dict[str, jax.Array], last_raw_obs: jax.Array, key: jax.Array, learning_rate: jax.Array):
        p = self.cfg.ppo
        last_value = self.ppo.value(agent_state, self.ppo.normalize_obs(agent_state, last_raw_obs))
        advantages, returns = compute_gae(traj["rewards"], traj["values"], traj["dones"], last_value, p.gamma, p.gae_lambda)
        flat = lambda x: x.reshape((-1,) + x.shape[2:])
        batch = Batch(flat(traj["obs"]), flat(traj["actions"]), flat(traj["log_probs"]), flat(advantages), flat(returns))
        agent_state, metrics = self.ppo.update_phase(agent_state, batch, key, learning_rate)
        metrics.update(episode_statistics(traj["dones"], traj["episode_return"], traj["episode_length"], traj["episode_success"]))
        metrics["value_mean"] = traj["values"].mean()
        metrics["advantage_std"] = advantages.std()
        return agent_state, metrics

    def start(self, agent_state: AgentState, key: jax.Array, env_params: Any) -> tuple[AgentState, GymCarry]:
        """Build and reset the vector env for a task (`env_params` is unused: the env id is bound in make_env)."""
        if self.env is not None:
            self.env.close()
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
        raw_obs = carry.raw_obs
        ep_ret = np.asarray(carry.episode_return, np.float32)
        ep_len = np.asarray(carry.episode_length, np.int32)
        columns: dict[str, list] = {k: [] for k in ("obs", "actions", "log_probs", "values", "rewards", "dones", "episode_return", "episode_length", "episode_success")}
        for t in range(p.n_steps):
            obs, action, log_prob, value = self._act(agent_state, raw_obs, keys[t])
            next_obs, reward, terminated, truncated, info = self.env.step(np.clip(np.asarray(action), low, high))
            final_obs = info.get("final_obs", next_obs)
            agent_state, bootstrap = self._observe(agent_state, jnp.asarray(next_obs, jnp.float32), jnp.asarray(np.stack(final_obs) if final_obs.dtype == object else final_obs, jnp.float32), jnp.asarray(truncated), jnp.asarray(terminated))
            done = np.logical_or(terminated, truncated)
            ep_ret = ep_ret + reward
            ep_len = ep_len + 1
            success = np.asarray(info.get("success", np.zeros(p.num_envs, bool)), bool)
            for name, value_t in (("obs", obs), ("actions", action), ("log_probs", log_prob), ("values", value),
                                  ("rewards", np.asarray(reward, np.float32) + np.asarray(bootstrap)), ("dones", done),
                                  ("episode_return", ep_ret.copy()), ("episode_length", ep_len.copy()), ("episode_success", success)):
                columns[name].append(value_t)
            ep_ret = np.where(done, 0.0, ep_ret).astype(np.float32)
            ep_len = np.where(done, 0, ep_len).astype(np.int32)
            raw_obs = jnp.asarray(next_obs, jnp.float32)
        traj = {k: jnp.stack([jnp.asarray(v) for v in vs]) for k, vs in columns.items()}
        agent_state, metrics = self._finish(agent_state, traj, raw_obs, keys[-2], learning_rate)
        carry = GymCarry(raw_obs, keys[-1], jnp.asarray(ep_ret), jnp.asarray(ep_len))
        return agent_state, carry, metrics

    def evaluate(self, agent_state: AgentState, env_params: Any, key: jax.Array) -> dict[str, Any]:
        """Deterministic policy on a fresh vector env of `eval_episodes` envs; first episode of each scored."""
        n = self.cfg.run.eval_episodes
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        env = self.make_env(n, seed)
        try:
            obs, _ = env.reset(seed=seed)
            low, high = env.single_action_space.low, env.single_action_space.high
            finished = np.zeros(n, bool)
            ret = np.zeros(n, np.float64)
            success = np.zeros(n, bool)
            while not finished.all():
                _, action, _, _ = self._act(agent_state, jnp.asarray(obs, jnp.float32), key, deterministic=True)
                obs, reward, terminated, truncated, info = env.step(np.clip(np.asarray(action), low, high))
                ret += np.where(finished, 0.0, reward)
                done_now = np.logical_and(np.logical_or(terminated, truncated), ~finished)
                success = np.where(done_now, np.asarray(info.get("success", np.zeros(n, bool)), bool), success)
                finished |= done_now
        finally:
            env.close()
        return {"return": ret.mean(), "success": success.mean(), "episodes": n}

    def collect_states(self, agent_state: AgentState, env_params: Any, key: jax.Array, n_steps: int) -> np.ndarray:
        """Raw observations met by the stochastic policy in `n_steps` steps of a fresh vector env.

        Shape (n_steps * num_envs, obs_dim); the training env is untouched.
        """
        n = self.cfg.ppo.num_envs
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        env = self.make_env(n, seed)
        states = []
        try:
            obs, _ = env.reset(seed=seed)
            low, high = env.single_action_space.low, env.single_action_space.high
            for step_key in jax.random.split(key, n_steps):
                states.append(np.asarray(obs, np.float32).reshape(n, -1))
                _, action, _, _ = self._act(agent_state, jnp.asarray(obs, jnp.float32), step_key)
                obs, *_ = env.step(np.clip(np.asarray(action), low, high))
        finally:
            env.close()
        return np.concatenate(states)
