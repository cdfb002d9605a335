"""Wrap any Gymnasium env (id or factory) as a same-step auto-reset `VectorEnv` with normalised infos."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorWrapper

SUCCESS_INFO_KEYS = ("success", "is_success")
"""Info keys read (in this order) as the env's success flag."""


def _success_from(info: dict[str, Any], num_envs: int) -> tuple[np.ndarray, np.ndarray]:
    """(success values, mask of envs that reported one) from a batched info dict."""
    for key in SUCCESS_INFO_KEYS:
        if key in info:
            values = np.asarray(info[key]).astype(bool).reshape(num_envs)
            mask = np.asarray(info.get(f"_{key}", np.ones(num_envs, bool)), bool)
            return values & mask, mask
    return np.zeros(num_envs, bool), np.zeros(num_envs, bool)


class GymVectorAdapter(VectorWrapper):
    """`num_envs` Gymnasium envs (sync by default, async with `asynchronous=True`).

    Sub-env i is seeded with `seed + i` at the first reset. `step` infos always contain
    `final_obs` (array shaped like obs, equal to obs where not done), `_final_obs` (done
    mask) and `success` (bool array: the env's `success` / `is_success` info for the step
    reached, before any reset; False where the env reports none).
    """

    def __init__(
        self,
        env_factory: str | Callable[[], gymnasium.Env],
        num_envs: int = 1,
        seed: int = 0,
        *,
        asynchronous: bool = False,
        **make_kwargs: Any,
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if isinstance(env_factory, str):
            gym_id = env_factory
            factory: Callable[[], gymnasium.Env] = lambda: gymnasium.make(gym_id, **make_kwargs)  # noqa: E731
        elif make_kwargs:
            raise TypeError(f"keyword arguments {sorted(make_kwargs)} need an env id string, not a factory")
        else:
            factory = env_factory
        vector_class = AsyncVectorEnv if asynchronous else SyncVectorEnv
        super().__init__(vector_class([factory] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP))
        self.seed = seed
        self._seeded = False
        spec = self.env.get_attr("spec")[0]
        self.max_episode_steps: int | None = getattr(spec, "max_episode_steps", None)
        if self.max_episode_steps is None:  # unregistered envs (e.g. MetaWorld) may state it themselves
            try:
                self.max_episode_steps = self.env.get_attr("max_episode_steps")[0]
            except AttributeError:
                pass
        self.env_family: str | None = None

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        if seed is None and not self._seeded:
            seed = self.seed
        self._seeded = True
        if isinstance(seed, int):
            self.env.action_space.seed(seed)
        return self.env.reset(seed=seed, options=options)

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, reward, terminated, truncated, infos = self.env.step(actions)
        done = np.asarray(terminated, bool) | np.asarray(truncated, bool)
        num_envs = self.num_envs

        final_obs = np.array(obs, copy=True)
        raw_final_obs = infos.get("final_obs")
        if raw_final_obs is not None:
            for i in np.flatnonzero(infos.get("_final_obs", done)):
                final_obs[i] = raw_final_obs[i]

        success, _ = _success_from(infos, num_envs)
        final_success, final_reported = _success_from(infos.get("final_info", {}), num_envs)
        success = np.where(done, final_success & final_reported, success)

        infos = dict(infos)
        infos["final_obs"] = final_obs
        infos["_final_obs"] = done
        infos["success"] = success
        infos["_success"] = np.ones(num_envs, bool)
        return obs, reward, terminated, truncated, infos
