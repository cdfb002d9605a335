"""Fused training for JAX-native envs: rollout (scan over steps) + GAE + update phase in one jitted call.

Task parameters are data, so one compiled iteration serves every task of an env family.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from sphere_rl.algo.ppo import PPO, AgentState
from sphere_rl.algo.rollout import Trajectory, learn_from_rollout


@jax.jit
def _stack(trees: list[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def stack_trees(trees: list[Any]) -> Any:
    """Pytrees of one structure stacked leaf by leaf along a new leading axis (one jitted call)."""
    return _stack(list(trees))


@functools.partial(jax.jit, static_argnums=1)
def _unstack(tree: Any, n: int) -> list[Any]:
    return [jax.tree.map(lambda x: x[i], tree) for i in range(n)]


def unstack_tree(tree: Any, n: int) -> list[Any]:
    """The inverse of :func:`stack_trees`: `n` pytrees, one per index of the leading axis (one jitted call)."""
    return _unstack(tree, n)


class RolloutCarry(flax.struct.PyTreeNode):
    """Environment-side state carried between iterations (checkpointed with the agent)."""

    env_state: Any
    raw_obs: jax.Array  # (N, obs_dim), not normalised
    key: jax.Array
    episode_return: jax.Array  # (N,) running undiscounted return of the current episode
    episode_length: jax.Array  # (N,)


class JaxLoop:
    """Training and evaluation of a PPO agent on a `FunctionalEnv`, entirely inside jit."""

    def __init__(self, ppo: PPO, env: Any):
        self.ppo = ppo
        self.env = env
        self.cfg = ppo.cfg
        self._reset = jax.vmap(env.reset, in_axes=(0, None))
        self._step = jax.vmap(env.step, in_axes=(0, 0, None))
        self.action_low = jnp.asarray(env.action_low, jnp.float32)
        self.action_high = jnp.asarray(env.action_high, jnp.float32)
        self.iteration = jax.jit(self._iteration)
        self.evaluate = jax.jit(self._evaluate)
        # many seeds in one call (protocols.multiseed): the same iteration / evaluation vmapped over the
        # agents, carries and keys of a seed group; the task's parameters and learning rate are shared.
        # Under vmap the sparse dispatch's grouped products turn into gathers over the seed axis and run
        # about 25x slower than the dense-masked form (measured: docs/benchmarks.md), so the vmapped
        # programs evaluate MoE networks with dense dispatch: the same parameters and, up to float
        # rounding, the same numbers (docs/networks.md).
        batched = self
        if ppo.cfg.net.dispatch != "dense":
            dense_cfg = ppo.cfg.override({"net.dispatch": "dense"})
            batched = JaxLoop(PPO(dense_cfg, ppo.obs_dim, ppo.action_dim), env)
        self.iteration_many = jax.jit(jax.vmap(batched._iteration, in_axes=(0, 0, None, None)))
        self.evaluate_many = jax.jit(jax.vmap(batched._evaluate, in_axes=(0, None, 0)))
        self.start = jax.jit(self._start)
        self.collect_states = jax.jit(self._collect_states, static_argnames=("n_steps",))

    def close(self) -> None:
        """Nothing to release: a JAX-native env holds no host resources (`GymLoop.close` does)."""

    # ------------------------------------------------------------------ calls from a run's step generator
    def run_call(self, kind: str, own: tuple, shared: tuple) -> Any:
        """One run's `iteration` ((agent, carry), (env_params, lr)) or `evaluate` ((agent, key), (env_params,))."""
        if kind == "iteration":
            return self.iteration(*own, *shared)
        if kind == "evaluate":
            return self.evaluate(own[0], shared[0], own[1])
        raise ValueError(f"unknown call {kind!r}")

    def run_calls(self, kind: str, owns: list[tuple], shared: tuple) -> list[Any]:
        """The same call for several runs at once (vmapped over their own arguments); results in order."""
        stacked = stack_trees(owns)
        if kind == "iteration":
            out = self.iteration_many(*stacked, *shared)
        elif kind == "evaluate":
            out = self.evaluate_many(stacked[0], shared[0], stacked[1])
        else:
            raise ValueError(f"unknown call {kind!r}")
        return unstack_tree(out, len(owns))

    # ------------------------------------------------------------------ start of a task
    def _start(self, agent_state: AgentState, key: jax.Array, env_params: Any) -> tuple[AgentState, RolloutCarry]:
        """Reset all envs of a task; the normaliser sees the first observations."""
        key, reset_key = jax.random.split(key)
        env_state, obs = self._reset(jax.random.split(reset_key, self.cfg.ppo.num_envs), env_params)
        if self.cfg.ppo.normalize_obs:
            agent_state = agent_state.replace(obs_rms=agent_state.obs_rms.update(obs))
        n = self.cfg.ppo.num_envs
        carry = RolloutCarry(env_state, obs, key, jnp.zeros(n, jnp.float32), jnp.zeros(n, jnp.int32))
        return agent_state, carry

    # ------------------------------------------------------------------ one iteration
    def _rollout_step(self, env_params: Any, carry: tuple[AgentState, RolloutCarry], _):
        agent_state, rc = carry
        ppo, gamma = self.ppo, self.cfg.ppo.gamma
        key, act_key = jax.random.split(rc.key)
        obs = ppo.normalize_obs(agent_state, rc.raw_obs)
        action, log_prob, value = ppo._policy_step(agent_state, obs, act_key)
        env_action = jnp.clip(action, self.action_low, self.action_high)
        env_state, next_obs, reward, terminated, truncated, info = self._step(rc.env_state, env_action, env_params)
        # Time-limit truncation: bootstrap with the value of the observation the episode ended in.
        final_value = ppo.value(agent_state, ppo.normalize_obs(agent_state, info["final_obs"]))
        bootstrap = jnp.logical_and(truncated, jnp.logical_not(terminated)).astype(jnp.float32)
        train_reward = reward + gamma * final_value * bootstrap
        done = jnp.logical_or(terminated, truncated)
        episode_return = rc.episode_return + reward
        episode_length = rc.episode_length + 1
        if self.cfg.ppo.normalize_obs:
            agent_state = agent_state.replace(obs_rms=agent_state.obs_rms.update(next_obs))
        step = Trajectory(obs, action, log_prob, value, train_reward, done, episode_return, episode_length, info["success"])
        rc = RolloutCarry(
            env_state,
            next_obs,
            key,
            jnp.where(done, 0.0, episode_return),
            jnp.where(done, 0, episode_length),
        )
        return (agent_state, rc), step

    def _iteration(self, agent_state: AgentState, rc: RolloutCarry, env_params: Any, learning_rate: jax.Array):
        """Collect num_envs x n_steps transitions, compute GAE, run the update phase."""
        p = self.cfg.ppo
        (agent_state, rc), traj = jax.lax.scan(
            lambda c, x: self._rollout_step(env_params, c, x), (agent_state, rc), None, length=p.n_steps
        )
        key, update_key = jax.random.split(rc.key)
        rc = rc.replace(key=key)
        agent_state, metrics = learn_from_rollout(self.ppo, agent_state, traj, rc.raw_obs, update_key, learning_rate)
        return agent_state, rc, metrics

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, agent_state: AgentState, env_params: Any, key: jax.Array) -> dict[str, jax.Array]:
        """Deterministic policy (action mean), frozen normaliser, one episode per env.

        Runs `max_episode_steps` steps; each env's first finished episode is scored (return and
        the env's success flag at its last step).
        """
        n = self.cfg.run.eval_episodes
        env_state, obs = self._reset(jax.random.split(key, n), env_params)

        def step(carry, _):
            env_state, obs, ret, finished, final_ret, final_success = carry
            action, _, _ = self.ppo._policy_step(agent_state, self.ppo.normalize_obs(agent_state, obs), key, deterministic=True)
            env_state, obs, reward, terminated, truncated, info = self._step(
                env_state, jnp.clip(action, self.action_low, self.action_high), env_params
            )
            ret = ret + jnp.where(finished, 0.0, reward)
            done_now = jnp.logical_and(jnp.logical_or(terminated, truncated), jnp.logical_not(finished))
            final_ret = jnp.where(done_now, ret, final_ret)
            final_success = jnp.where(done_now, info["success"], final_success)
            return (env_state, obs, ret, jnp.logical_or(finished, done_now), final_ret, final_success), None

        zeros = jnp.zeros(n, jnp.float32)
        init = (env_state, obs, zeros, jnp.zeros(n, bool), zeros, jnp.zeros(n, bool))
        (_, _, _, finished, final_ret, final_success), _ = jax.lax.scan(
            step, init, None, length=self.env.max_episode_steps
        )
        return {
            "return": final_ret.mean(),
            "success": final_success.astype(jnp.float32).mean(),
            "episodes": finished.sum(),
        }

    # ------------------------------------------------------------------ probe states
    def _collect_states(self, agent_state: AgentState, env_params: Any, key: jax.Array, n_steps: int) -> jax.Array:
        """Raw observations met by the stochastic policy in `n_steps` steps of freshly reset envs.

        Shape (n_steps * num_envs, obs_dim); the training agent and envs are untouched.
        """
        start = self._start(agent_state, key, env_params)

        def step(carry, x):
            raw_obs = carry[1].raw_obs
            carry, _ = self._rollout_step(env_params, carry, x)
            return carry, raw_obs

        _, raw = jax.lax.scan(step, start, None, length=n_steps)
        return raw.reshape((-1, raw.shape[-1]))
