"""MetaWorld v3 tasks as Gymnasium envs: goal-observable, seeded through `reset(seed=...)`.

`metaworld==3.1.1` ignores the seed given to `reset` (it must go through `env.seed(s)`), and its
goal-observable classes freeze one task *variation* (object and goal positions) when built. This
module gives every task one env class with the usual Gymnasium seeding contract and two variation
modes:

* `fixed` (default, Continual World's choice): one variation per task, drawn once from MetaWorld's
  own sampler seeded with `variation_seed` (0 unless given), the same for every episode, sub-env,
  seed and method. With it the simulator is deterministic: an episode depends only on the actions.
* `mt1`: like `Meta-World/MT1`, every reset picks one of the task's 50 MT1 variations
  (`metaworld.MT1(task, seed=variation_seed)`), drawn with the generator seeded by `reset(seed=...)`.

Observations are 39 floats (hand, gripper, two objects, previous frame, goal) as float32; actions
are 4 floats in [-1, 1]; episodes are truncated after 500 steps; `info["success"]` is the env's
success flag (bool). `metaworld` is imported on first use, so listing the envs stays fast.
"""

from __future__ import annotations

import functools
import pickle
from typing import Any

import gymnasium
import numpy as np

EPISODE_STEPS = 500
"""MetaWorld's `max_path_length`: the env truncates every episode at this step."""

VARIATIONS = ("fixed", "mt1")

MT1_VARIATIONS = 50
"""Variations per task in MetaWorld's MT1 benchmark."""

METAWORLD_TASKS: tuple[str, ...] = (
    "assembly", "basketball", "bin-picking", "box-close", "button-press-topdown",
    "button-press-topdown-wall", "button-press", "button-press-wall", "coffee-button", "coffee-pull",
    "coffee-push", "dial-turn", "disassemble", "door-close", "door-lock", "door-open", "door-unlock",
    "hand-insert", "drawer-close", "drawer-open", "faucet-open", "faucet-close", "hammer",
    "handle-press-side", "handle-press", "handle-pull-side", "handle-pull", "lever-pull",
    "pick-place-wall", "pick-out-of-hole", "pick-place", "plate-slide", "plate-slide-side",
    "plate-slide-back", "plate-slide-back-side", "peg-insert-side", "peg-unplug-side", "soccer",
    "stick-push", "stick-pull", "push", "push-wall", "push-back", "reach", "reach-wall",
    "shelf-place", "sweep-into", "sweep", "window-open", "window-close",
)
"""The 50 MetaWorld v3 task names (without the `-v3` suffix), in MetaWorld's order."""

CW10_TASKS: tuple[str, ...] = (
    "hammer", "push-wall", "faucet-close", "push-back", "stick-pull",
    "handle-press-side", "push", "shelf-place", "window-close", "peg-unplug-side",
)
"""Continual World's CW10 sequence, in its order."""

INFO_KEYS = ("near_object", "grasp_success", "grasp_reward", "in_place_reward", "obj_to_target", "unscaled_reward")
"""Reward components MetaWorld reports; passed through as floats in `info`."""


def _task_class(task: str) -> type:
    if task not in METAWORLD_TASKS:
        raise ValueError(f"unknown MetaWorld task {task!r}; tasks: {', '.join(METAWORLD_TASKS)}")
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return ALL_V3_ENVIRONMENTS[f"{task}-v3"]


@functools.lru_cache(maxsize=None)
def mt1_variations(task: str, seed: int) -> tuple[np.ndarray, ...]:
    """The 50 MT1 variations (reset vectors) of a task for a benchmark seed, built once per process."""
    import metaworld

    benchmark = metaworld.MT1(f"{task}-v3", seed=seed)
    return tuple(np.asarray(pickle.loads(t.data)["rand_vec"]) for t in benchmark.train_tasks)


class MetaWorldEnv(gymnasium.Env):
    """One MetaWorld v3 task, goal-observable; `reset(seed=s)` fixes every random draw that follows."""

    metadata = {"render_modes": []}

    def __init__(self, task: str, variation: str = "fixed", variation_seed: int = 0):
        if variation not in VARIATIONS:
            raise ValueError(f"variation must be one of {VARIATIONS}, got {variation!r}")
        env = _task_class(task)()
        env._partially_observable = False
        env._set_task_called = True
        env.__dict__.pop("sawyer_observation_space", None)  # cached with the goal hidden; recompute
        self._env = env
        self.task = task
        self.variation = variation
        self.variation_seed = int(variation_seed)
        self.max_episode_steps = EPISODE_STEPS
        space = env.sawyer_observation_space
        self.observation_space = gymnasium.spaces.Box(
            space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32
        )
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (4,), np.float32)
        if variation == "fixed":
            self._variations: tuple[np.ndarray, ...] = (self._sampled_variation(self.variation_seed),)
        else:
            self._variations = mt1_variations(task, self.variation_seed)
        self.variation_index = 0

    def _sampled_variation(self, seed: int) -> np.ndarray:
        """MetaWorld's own reset sampler (it re-draws invalid placements), run from a seeded generator."""
        env = self._env
        env.seeded_rand_vec = True
        env.seed(seed)
        env._freeze_rand_vec = False
        env.reset()
        return np.array(env._last_rand_vec, copy=True)

    @property
    def unwrapped_metaworld(self) -> Any:
        """The underlying MetaWorld env object."""
        return self._env

    @property
    def goal(self) -> np.ndarray:
        """The goal position of the current variation (the last 3 observation entries)."""
        return np.asarray(self._env._target_pos, np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)  # seeds self.np_random, which draws the MT1 variation
        if seed is not None:
            self.action_space.seed(seed)
        if self.variation == "mt1":
            self.variation_index = int(self.np_random.integers(len(self._variations)))
        self._env._last_rand_vec = np.array(self._variations[self.variation_index], copy=True)
        self._env._freeze_rand_vec = True
        obs, _ = self._env.reset()
        return obs.astype(np.float32), {"variation": self.variation_index}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, raw_info = self._env.step(np.asarray(action, np.float64))
        info = {key: float(raw_info.get(key, 0.0)) for key in INFO_KEYS}
        info["success"] = bool(raw_info.get("success", 0.0))
        return obs.astype(np.float32), float(reward), bool(terminated), bool(truncated), info

    def close(self) -> None:
        self._env.close()
