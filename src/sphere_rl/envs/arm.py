"""Planar multi-joint reaching arm: a cheap JAX-native family of continual-RL tasks."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from sphere_rl.envs.functional import FunctionalEnv, StepResult

VELOCITY_OBS_SCALE = 0.1
"""Joint velocities enter the observation multiplied by this (keeps obs roughly O(1))."""


@flax.struct.dataclass
class ArmParams:
    """One arm task. Every field is an array, so all tasks share one compiled step."""

    link_lengths: jax.Array  # (n,) link lengths; forward kinematics and gravity masses
    gains: jax.Array  # (n,) torque per unit of mapped action
    inertia: jax.Array  # (n,) per-joint effective inertia
    damping: jax.Array  # (n,) per-joint viscous damping
    action_matrix: jax.Array  # (n, n) signed permutation: torque = gains * (M @ action)
    gravity: jax.Array  # () gravity along -y; link masses equal link lengths
    goal_angle_range: jax.Array  # (2,) polar-angle range [low, high] of goals, radians
    goal_radius_range: jax.Array  # (2,) radius range [low, high] of goals
    init_q: jax.Array  # (n,) centre of the initial joint angles
    init_q_noise: jax.Array  # () half-width of the uniform noise added to init_q
    success_radius: jax.Array  # () tip-goal distance below which the tip is "on goal"
    success_max_speed: jax.Array  # () tip speed below which the tip is "still"
    max_joint_speed: jax.Array  # () joint velocities are clipped to +- this
    action_cost: jax.Array  # () weight of mean(action**2) in the reward
    success_bonus: jax.Array  # () reward added on steps whose state is a success


@flax.struct.dataclass
class ArmState:
    """State of one arm env; carries its own PRNG key (used at the next reset)."""

    q: jax.Array  # (n,) joint angles, wrapped to [-pi, pi)
    dq: jax.Array  # (n,) joint velocities
    goal: jax.Array  # (2,) goal position
    step_count: jax.Array  # () int32 steps taken in this episode
    key: jax.Array  # PRNG key for the next reset


def wrap_angle(angle: jax.Array) -> jax.Array:
    """Wrap angles to [-pi, pi)."""
    return (angle + jnp.pi) % (2 * jnp.pi) - jnp.pi


def joint_positions(q: jax.Array, link_lengths: jax.Array) -> jax.Array:
    """Positions (n, 2) of the end of every link; the last row is the fingertip."""
    absolute_angles = jnp.cumsum(q)
    link_vectors = link_lengths[:, None] * jnp.stack([jnp.cos(absolute_angles), jnp.sin(absolute_angles)], axis=-1)
    return jnp.cumsum(link_vectors, axis=0)


def fingertip_position(q: jax.Array, link_lengths: jax.Array) -> jax.Array:
    """Forward kinematics: fingertip (2,) for joint angles q, base at the origin."""
    return joint_positions(q, link_lengths)[-1]


def fingertip_velocity(q: jax.Array, dq: jax.Array, link_lengths: jax.Array) -> jax.Array:
    """Fingertip velocity (2,) = J(q) dq."""
    absolute_angles = jnp.cumsum(q)
    absolute_rates = jnp.cumsum(dq)
    per_link = link_lengths[:, None] * jnp.stack([-jnp.sin(absolute_angles), jnp.cos(absolute_angles)], axis=-1)
    return jnp.sum(per_link * absolute_rates[:, None], axis=0)


def fingertip_jacobian(q: jax.Array, link_lengths: jax.Array) -> jax.Array:
    """Jacobian (2, n) of the fingertip position with respect to q."""
    absolute_angles = jnp.cumsum(q)
    per_link = link_lengths[:, None] * jnp.stack([-jnp.sin(absolute_angles), jnp.cos(absolute_angles)], axis=-1)
    return jnp.cumsum(per_link[::-1], axis=0)[::-1].T


def gravity_torque(q: jax.Array, params: ArmParams) -> jax.Array:
    """Joint torques (n,) from gravity (-y) acting on point masses (= link length) at link ends."""
    positions = joint_positions(q, params.link_lengths)
    masses = params.link_lengths
    joint_x = jnp.concatenate([jnp.zeros(1, q.dtype), positions[:-1, 0]])
    mass_below = jnp.cumsum(masses[::-1])[::-1]  # sum_{k >= i} m_k
    moment_below = jnp.cumsum((masses * positions[:, 0])[::-1])[::-1]  # sum_{k >= i} m_k x_k
    return -params.gravity * (moment_below - joint_x * mass_below)


def goal_from_uniforms(unit_angle: jax.Array, unit_radius: jax.Array, params: ArmParams) -> jax.Array:
    """Map two U(0, 1) numbers to a goal uniform (by area) in the annulus sector of the goal ranges."""
    angle_low, angle_high = params.goal_angle_range[0], params.goal_angle_range[1]
    radius_low, radius_high = params.goal_radius_range[0], params.goal_radius_range[1]
    angle = angle_low + unit_angle * (angle_high - angle_low)
    radius = jnp.sqrt(radius_low**2 + unit_radius * (radius_high**2 - radius_low**2))
    return radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)])


@dataclasses.dataclass(frozen=True)
class ArmEnv(FunctionalEnv):
    """Planar arm with `n_joints` revolute joints reaching a goal; see docs/envs.md.

    Static configuration only (hashable, usable as a `jax.jit` static argument); every
    task-specific quantity is in `ArmParams`.
    """

    n_joints: int = 3
    max_episode_steps: int = 60
    dt: float = 0.05
    substeps: int = 2
    family: str = "arm"

    @property
    def obs_dim(self) -> int:  # type: ignore[override]
        return 3 * self.n_joints + 6

    @property
    def action_dim(self) -> int:  # type: ignore[override]
        return self.n_joints

    @property
    def action_low(self) -> np.ndarray:  # type: ignore[override]
        return -np.ones(self.n_joints, np.float32)

    @property
    def action_high(self) -> np.ndarray:  # type: ignore[override]
        return np.ones(self.n_joints, np.float32)

    def default_params(self) -> ArmParams:
        return make_arm_params(self.n_joints)

    def observe(self, state: ArmState, params: ArmParams) -> jax.Array:
        """obs = [cos q, sin q, 0.1 dq, goal, tip, goal - tip] (float32, 3n + 6)."""
        tip = fingertip_position(state.q, params.link_lengths)
        return jnp.concatenate(
            [
                jnp.cos(state.q),
                jnp.sin(state.q),
                VELOCITY_OBS_SCALE * state.dq,
                state.goal,
                tip,
                state.goal - tip,
            ]
        ).astype(jnp.float32)

    def reset(self, key: jax.Array, params: ArmParams) -> tuple[ArmState, jax.Array]:
        next_key, sample_key = jax.random.split(key)
        # one draw serves the joint noise and the goal (cheap: reset runs inside every step)
        unit = jax.random.uniform(sample_key, (self.n_joints + 2,))
        noise = (2.0 * unit[: self.n_joints] - 1.0) * params.init_q_noise
        state = ArmState(
            q=wrap_angle(params.init_q + noise).astype(jnp.float32),
            dq=jnp.zeros(self.n_joints, jnp.float32),
            goal=goal_from_uniforms(unit[-2], unit[-1], params).astype(jnp.float32),
            step_count=jnp.zeros((), jnp.int32),
            key=next_key,
        )
        return state, self.observe(state, params)

    def integrate(
        self, q: jax.Array, dq: jax.Array, action: jax.Array, params: ArmParams
    ) -> tuple[jax.Array, jax.Array]:
        """Semi-implicit Euler over `substeps` substeps with the action held fixed."""
        applied_torque = params.gains * (params.action_matrix @ action)
        substep_dt = self.dt / self.substeps
        for _ in range(self.substeps):
            torque = applied_torque + gravity_torque(q, params)
            acceleration = (torque - params.damping * dq) / params.inertia
            dq = jnp.clip(dq + substep_dt * acceleration, -params.max_joint_speed, params.max_joint_speed)
            q = wrap_angle(q + substep_dt * dq)
        return q, dq

    def step(self, state: ArmState, action: jax.Array, params: ArmParams) -> StepResult:
        action = jnp.clip(jnp.asarray(action, jnp.float32), -1.0, 1.0)
        q, dq = self.integrate(state.q, state.dq, action, params)
        reached = state.replace(q=q, dq=dq, step_count=state.step_count + 1)

        tip = fingertip_position(q, params.link_lengths)
        distance = jnp.linalg.norm(reached.goal - tip)
        tip_speed = jnp.linalg.norm(fingertip_velocity(q, dq, params.link_lengths))
        success = (distance < params.success_radius) & (tip_speed < params.success_max_speed)

        reward_distance = -distance
        reward_action = -params.action_cost * jnp.mean(action**2)
        reward_success = params.success_bonus * success
        reward = (reward_distance + reward_action + reward_success).astype(jnp.float32)

        terminated = jnp.zeros((), jnp.bool_)
        truncated = reached.step_count >= self.max_episode_steps
        done = terminated | truncated

        final_obs = self.observe(reached, params)
        reset_state, reset_obs = self.reset(state.key, params)
        next_state = jax.tree.map(lambda fresh, old: jnp.where(done, fresh, old), reset_state, reached)
        obs = jnp.where(done, reset_obs, final_obs)
        info = {
            "final_obs": final_obs,
            "success": success,
            "distance": distance.astype(jnp.float32),
            "tip_speed": tip_speed.astype(jnp.float32),
            "reward_distance": reward_distance.astype(jnp.float32),
            "reward_action": reward_action.astype(jnp.float32),
            "reward_success": reward_success.astype(jnp.float32),
        }
        return next_state, obs, reward, terminated, truncated, info


def reference_controller(state: ArmState, params: ArmParams, kp: float = 100.0, kd: float = 6.0) -> jax.Array:
    """Model-based oracle: Jacobian-transpose PD in task space with computed torque.

    Knows every task parameter (including the action matrix M, inverted as M^T since it
    is a signed permutation); used to check that every task is solvable in one episode.
    """
    tip = fingertip_position(state.q, params.link_lengths)
    jacobian = fingertip_jacobian(state.q, params.link_lengths)
    joint_acceleration = jacobian.T @ (kp * (state.goal - tip)) - kd * state.dq
    torque = params.inertia * joint_acceleration + params.damping * state.dq - gravity_torque(state.q, params)
    return jnp.clip(params.action_matrix.T @ (torque / params.gains), -1.0, 1.0)


# --------------------------------------------------------------------------- tasks


def signed_permutation(permutation: tuple[int, ...], signs: tuple[float, ...]) -> np.ndarray:
    """Matrix M with M[i, permutation[i]] = signs[i]: joint i is driven by action permutation[i]."""
    n = len(permutation)
    if sorted(permutation) != list(range(n)) or len(signs) != n:
        raise ValueError(f"not a signed permutation: {permutation}, {signs}")
    matrix = np.zeros((n, n), np.float32)
    matrix[np.arange(n), permutation] = signs
    return matrix


def make_arm_params(
    n_joints: int = 3,
    *,
    link_lengths: tuple[float, ...] | None = None,
    gains: float | tuple[float, ...] = 5.0,
    inertia: float | tuple[float, ...] = 1.0,
    damping: float | tuple[float, ...] = 1.0,
    action_matrix: np.ndarray | None = None,
    gravity: float = 0.0,
    goal_angle_range: tuple[float, float] = (-math.pi / 3, math.pi / 3),
    goal_radius_range: tuple[float, float] = (0.35, 0.85),
    init_q: tuple[float, ...] | None = None,
    init_q_noise: float = 0.5,
    success_radius: float = 0.1,
    success_max_speed: float = 0.3,
    max_joint_speed: float = 6.0,
    action_cost: float = 0.05,
    success_bonus: float = 1.0,
) -> ArmParams:
    """Build ArmParams; defaults are the base task `arm/reach` (total arm length 1)."""
    if link_lengths is None:
        base = np.array([0.4, 0.35, 0.25]) if n_joints == 3 else np.full(n_joints, 1.0 / n_joints)
        link_lengths = tuple(base)
    if init_q is None:
        init_q = (math.pi / 2,) + (0.0,) * (n_joints - 1)
    if action_matrix is None:
        action_matrix = np.eye(n_joints, dtype=np.float32)

    def per_joint(value: float | tuple[float, ...]) -> jax.Array:
        array = np.broadcast_to(np.asarray(value, np.float32), (n_joints,))
        return jnp.asarray(array, jnp.float32)

    def scalar(value: float) -> jax.Array:
        return jnp.asarray(value, jnp.float32)

    return ArmParams(
        link_lengths=per_joint(link_lengths),
        gains=per_joint(gains),
        inertia=per_joint(inertia),
        damping=per_joint(damping),
        action_matrix=jnp.asarray(action_matrix, jnp.float32),
        gravity=scalar(gravity),
        goal_angle_range=jnp.asarray(goal_angle_range, jnp.float32),
        goal_radius_range=jnp.asarray(goal_radius_range, jnp.float32),
        init_q=per_joint(init_q),
        init_q_noise=scalar(init_q_noise),
        success_radius=scalar(success_radius),
        success_max_speed=scalar(success_max_speed),
        max_joint_speed=scalar(max_joint_speed),
        action_cost=scalar(action_cost),
        success_bonus=scalar(success_bonus),
    )


ARM = ArmEnv()
"""The one shared instance of the registered `arm` family (3 joints, 60 steps)."""

LEFT_GOALS = (2 * math.pi / 3, 4 * math.pi / 3)
UP_NEAR_GOALS = {"goal_angle_range": (math.pi / 6, 5 * math.pi / 6), "goal_radius_range": (0.15, 0.45)}
CYCLIC = signed_permutation((1, 2, 0), (1.0, 1.0, 1.0))
NEGATED = signed_permutation((0, 1, 2), (-1.0, -1.0, -1.0))
REVERSED_NEGATED = signed_permutation((2, 1, 0), (-1.0, 1.0, -1.0))
HEAVY = {"link_lengths": (0.25, 0.35, 0.4), "inertia": (2.0, 1.5, 1.0), "damping": (1.2, 0.9, 0.6), "gains": 7.0}
HELD_OUT = {
    "action_matrix": signed_permutation((2, 0, 1), (1.0, -1.0, 1.0)),
    "link_lengths": (0.3, 0.4, 0.3),
    "goal_angle_range": (-2 * math.pi / 3, -math.pi / 3),
    "goal_radius_range": (0.3, 0.8),
}
"""Overrides of `arm/heldout`: an actuator map, link lengths and a goal region no other task uses."""


@dataclasses.dataclass(frozen=True)
class ArmTask:
    """A registered arm task: its id, what changes relative to `arm/reach`, and its overrides."""

    env_id: str
    description: str
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

    def make_params(self) -> ArmParams:
        return make_arm_params(ARM.n_joints, **self.overrides)


_TASK_LIST = (
    ArmTask("arm/reach", "base task: goals in the right sector (-60..60 deg, r 0.35..0.85), identity actuators"),
    ArmTask("arm/reach-left", "goal shift: goals in the left sector (120..240 deg)", {"goal_angle_range": LEFT_GOALS}),
    ArmTask("arm/reach-up-near", "goal shift: goals above, near the base (30..150 deg, r 0.15..0.45)", UP_NEAR_GOALS),
    ArmTask(
        "arm/permute",
        "actuator shift: cyclic permutation, joint i driven by action (i+1) mod 3",
        {"action_matrix": CYCLIC},
    ),
    ArmTask("arm/negate", "actuator shift: every action negated", {"action_matrix": NEGATED}),
    ArmTask(
        "arm/heavy",
        "dynamics shift: link lengths (0.25, 0.35, 0.4), inertia (2, 1.5, 1), damping (1.2, 0.9, 0.6), gains 7",
        HEAVY,
    ),
    ArmTask("arm/gravity", "dynamics shift: gravity 2.0 along -y pulls the arm down", {"gravity": 2.0}),
    ArmTask(
        "arm/permute-negate-left",
        "combined shift: joints driven by actions (2, 1, 0) with signs (-, +, -), left-sector goals",
        {"action_matrix": REVERSED_NEGATED, "goal_angle_range": LEFT_GOALS},
    ),
    ArmTask(
        "arm/heldout",
        "held out (in no sequence; probe states): joints driven by actions (2, 0, 1) with signs (+, -, +), "
        "link lengths (0.3, 0.4, 0.3), goals below the base (-120..-60 deg, r 0.3..0.8)",
        HELD_OUT,
    ),
)
ARM_TASKS: dict[str, ArmTask] = {task.env_id: task for task in _TASK_LIST}

ARM_HELD_OUT: tuple[str, ...] = ("arm/heldout",)
"""Arm tasks in no sequence: their states probe the features outside the training sequence."""

ARM_SEQUENCES: dict[str, tuple[tuple[str, ...], str]] = {
    "arm2": (("arm/reach", "arm/permute"), "2 arm tasks (actuator shift) for tests and quick runs"),
    "arm6": (
        ("arm/reach", "arm/permute", "arm/reach-left", "arm/heavy", "arm/negate", "arm/permute-negate-left"),
        "6 arm tasks alternating actuator, goal and dynamics shifts",
    ),
    "arm8": (
        (
            "arm/reach",
            "arm/permute",
            "arm/reach-left",
            "arm/heavy",
            "arm/negate",
            "arm/reach-up-near",
            "arm/gravity",
            "arm/permute-negate-left",
        ),
        "all 8 training arm tasks (every arm task but the held-out one): actuator, goal and dynamics shifts",
    ),
}
