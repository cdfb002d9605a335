"""Gymnasium `VectorEnv` over a `FunctionalEnv`: numpy in/out, jitted batched step inside."""

from __future__ import annotations

from typing import Any

import gymnasium
import jax
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from sphere_rl.envs.functional import EnvParams, FunctionalEnv, jit_batch_reset, jit_batch_step

OBS_BOUND = np.float32(np.inf)


class JaxVectorEnv(gymnasium.vector.VectorEnv):
    """`num_envs` copies of one JAX-native task with same-step auto-reset.

    `step` returns float32 obs and rewards, bool terminations/truncations and numpy infos
    that always contain `final_obs` (obs reached before any reset, equal to obs where not
    done), `_final_obs` (the done mask), `success` and the env's reward components.
    The pure form is exposed for fused training loops: `.functional`, `.params`,
    `.env_family`, and the current batched state `.state`.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        functional: FunctionalEnv,
        params: EnvParams,
        num_envs: int = 1,
        seed: int = 0,
        env_id: str | None = None,
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.functional = functional
        self.params = params
        self.env_family = functional.family
        self.env_id = env_id
        self.num_envs = num_envs
        self.max_episode_steps = functional.max_episode_steps
        self.metadata = dict(self.metadata)
        self.single_observation_space = gymnasium.spaces.Box(-OBS_BOUND, OBS_BOUND, (functional.obs_dim,), np.float32)
        low = np.asarray(functional.action_low, np.float32)
        high = np.asarray(functional.action_high, np.float32)
        self.single_action_space = gymnasium.spaces.Box(low, high, dtype=np.float32)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._key = jax.random.PRNGKey(seed)
        self.state: Any = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset all envs; `seed` restarts the env's key stream (same seed -> same episodes)."""
        if seed is not None:
            self._key = jax.random.PRNGKey(seed)
        self._key, reset_key = jax.random.split(self._key)
        self.state, obs = jit_batch_reset(self.functional, jax.random.split(reset_key, self.num_envs), self.params)
        return np.asarray(obs), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions, np.float32).reshape(self.num_envs, self.functional.action_dim)
        step = jit_batch_step(self.functional, self.state, actions, self.params)
        self.state, obs, reward, terminated, truncated, info = step
        infos = {name: np.asarray(value) for name, value in info.items()}
        terminated, truncated = np.asarray(terminated), np.asarray(truncated)
        infos["_final_obs"] = terminated | truncated
        return np.asarray(obs), np.asarray(reward), terminated, truncated, infos

    def set_params(self, params: EnvParams) -> None:
        """Switch to another task of the same family (no recompilation); call `reset()` to start fresh episodes."""
        self.params = params

    def __repr__(self) -> str:
        return f"JaxVectorEnv({self.env_id or self.env_family!r}, num_envs={self.num_envs})"
