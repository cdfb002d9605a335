"""`H1Env`: HumanoidBench's Unitree-H1 locomotion tasks (stand, walk, run, pole, slide, stair) as Gymnasium envs.

Faithful to HumanoidBench's `h1-{task}-v0` (position control) as SPHERE uses it:

* observation: qpos (26) ‖ qvel (25) of the whole model, float32, unnormalised (absolute x, y included);
* action: 19 floats in [-1, 1], mapped affinely onto each servo's ctrlrange (= joint range;
  a = 0 is the middle of the range, not the home pose), held for 10 physics steps of 2 ms (50 Hz);
* reward: read right after the 10 `mj_step`s, without another `mj_forward`, so site positions,
  the torso orientation and the centre-of-mass velocity sensor come from the forward pass at the
  start of the last physics step (one 2 ms step behind qpos / qvel), as in HumanoidBench;
* termination on a fall (see `rewards.terminated`), truncation after `max_episode_steps` = 1000
  steps by the env itself;
* reset: keyframe `qpos0` plus U(-0.01, 0.01) noise on all 26 qpos entries (the quaternion is not
  renormalised), zero velocity, drawn from the generator seeded by `reset(seed=...)`;
* `info["success"]` (bool): the episode's running undiscounted return has reached the task's
  success bar (stand 800, others 700); `info` also holds the reward components (floats).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import mujoco
import numpy as np

from sphere_rl.envs.h1 import rewards
from sphere_rl.envs.h1.model import (
    COM_VELOCITY_SENSOR,
    FRAME_SKIP,
    POLE_GEOM_PREFIX,
    TASKS,
    build_model,
)

EPISODE_STEPS = 1000
"""Env steps per episode (20 s of simulated time); the env truncates at this step."""

SUCCESS_BARS: dict[str, float] = {
    "stand": 800.0, "walk": 700.0, "run": 700.0, "pole": 700.0, "slide": 700.0, "stair": 700.0,
}
"""Episode return at or above which an episode counts as a success (max return 1000)."""

RESET_NOISE = 0.01
"""Half-width of the uniform noise added to every qpos entry at reset."""

OBS_DIM = 51
ACTION_DIM = 19


class H1Env(gymnasium.Env):
    """One HumanoidBench H1 task (`task` in `TASKS`); `reset(seed=s)` fixes every random draw that follows."""

    metadata = {"render_modes": []}

    def __init__(self, task: str = "stand"):
        if task not in TASKS:
            raise ValueError(f"unknown H1 task {task!r}; tasks: {', '.join(TASKS)}")
        self.task = task
        self.max_episode_steps = EPISODE_STEPS
        self.success_bar = SUCCESS_BARS[task]
        self.model = build_model(task)
        self.data = mujoco.MjData(self.model)
        model = self.model
        self._head = model.site("head").id
        self._left_foot = model.site("left_foot").id
        self._right_foot = model.site("right_foot").id
        self._torso = model.body("torso_link").id
        self._com_adr = int(model.sensor_adr[model.sensor(COM_VELOCITY_SENSOR).id])
        self._key_qpos = model.key("qpos0").qpos.copy()
        self._key_qvel = model.key("qpos0").qvel.copy()
        self._ctrl_low = model.actuator_ctrlrange[:, 0].copy()
        self._ctrl_span = model.actuator_ctrlrange[:, 1] - self._ctrl_low
        self._is_pole = np.array(
            [(model.geom(g).name or "").startswith(POLE_GEOM_PREFIX) for g in range(model.ngeom)], bool
        )
        self._reward_fn = rewards.REWARDS[task]
        self._obs64 = np.empty(model.nq + model.nv, np.float64)
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self.elapsed_steps = 0
        self.episode_return = 0.0

    # ------------------------------------------------------------------------------------- helpers

    def _obs(self) -> np.ndarray:
        np.concatenate((self.data.qpos, self.data.qvel), out=self._obs64)
        return self._obs64.astype(np.float32)

    def touching_pole(self) -> bool:
        """Whether any active contact involves a pole collision geom (and not the floor, geom 0)."""
        data = self.data
        if data.ncon == 0:
            return False
        pairs = data.contact.geom[: data.ncon]
        hits = self._is_pole[pairs].any(axis=1) & (pairs != 0).all(axis=1)
        return bool(hits.any())

    def quantities(self) -> rewards.Quantities:
        """The simulator quantities the reward and termination read, from `data` as it is now."""
        data = self.data
        return rewards.Quantities(
            head_height=float(data.site_xpos[self._head, 2]),
            torso_upright=float(data.xmat[self._torso, 8]),
            left_foot_height=float(data.site_xpos[self._left_foot, 2]),
            right_foot_height=float(data.site_xpos[self._right_foot, 2]),
            com_velocity=data.sensordata[self._com_adr: self._com_adr + 3].copy(),
            actuator_force=data.actuator_force.copy(),
            pelvis_height=float(data.qpos[2]),
            touching_pole=self.touching_pole() if self.task == "pole" else False,
        )

    def action_to_ctrl(self, action: np.ndarray) -> np.ndarray:
        """ctrl = low + (a + 1) / 2 * (high - low) (not clipped; MuJoCo clamps to ctrlrange)."""
        return self._ctrl_low + (np.asarray(action, np.float64) + 1.0) * 0.5 * self._ctrl_span

    def ctrl_to_action(self, ctrl: np.ndarray) -> np.ndarray:
        """Inverse of `action_to_ctrl`: the normalised action whose targets are `ctrl`."""
        return (2.0 * (np.asarray(ctrl, np.float64) - self._ctrl_low) / self._ctrl_span - 1.0).astype(np.float32)

    # ------------------------------------------------------------------------------------ gym API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self.action_space.seed(seed)
        model, data = self.model, self.data
        mujoco.mj_resetDataKeyframe(model, data, 0)
        data.qpos[:] = self._key_qpos + self.np_random.uniform(-RESET_NOISE, RESET_NOISE, model.nq)
        data.qvel[:] = self._key_qvel
        mujoco.mj_forward(model, data)
        self.elapsed_steps = 0
        self.episode_return = 0.0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        model, data = self.model, self.data
        data.ctrl[:] = self.action_to_ctrl(action)
        mujoco.mj_step(model, data, FRAME_SKIP)
        q = self.quantities()
        reward, info = self._reward_fn(q)
        reward = float(reward)
        terminated = bool(rewards.terminated(self.task, q))
        self.elapsed_steps += 1
        truncated = self.elapsed_steps >= self.max_episode_steps
        self.episode_return += reward
        info["success"] = self.episode_return >= self.success_bar
        return self._obs(), reward, terminated, truncated, info
