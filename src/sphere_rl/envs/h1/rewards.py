"""HumanoidBench H1 rewards and terminations as pure functions of a few physical quantities.

Nothing here touches MuJoCo: every function takes the quantities HumanoidBench reads from the
simulator (head height, torso uprightness, foot heights, the robot's centre-of-mass velocity,
actuator forces, whether a pole is touched) and returns numbers. With numpy inputs (the default
`xp=np`) scalars come back as Python floats; passing `xp=jax.numpy` gives traceable versions for
an MJX port.

Every reward lies in [0, 1] per step; each task function returns `(reward, components)` with the
components named as in HumanoidBench's `info`.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

STAND_HEIGHT = 1.65
"""Head height (m) above which `standing` is 1."""

WALK_SPEED = 1.0
RUN_SPEED = 5.0
POLE_SPEED = 0.5
"""Target forward (+x) centre-of-mass speeds (m/s) of walk (and slide, stair), run and pole."""

UPRIGHT_BOUND = 0.9
SLIDE_UPRIGHT_BOUND = 0.5
UPRIGHT_MARGIN = 1.9
SLIDE_HEAD_ABOVE_FEET = 1.2
SLIDE_HEAD_MARGIN = 0.45
DONT_MOVE_MARGIN = 2.0
CONTROL_MARGIN = 10.0
POLE_CONTACT_DISCOUNT = 0.1

FALL_HEIGHT = 0.2
"""stand / walk / run end when the pelvis is lower than this (m)."""
POLE_FALL_HEIGHT = 0.5
"""pole ends when the pelvis is lower than this (m)."""
SLIDE_MIN_UPRIGHT = 0.1
"""slide and stair end when the torso's z axis has a world-z component below this."""
CLIMBING_TASKS = ("slide", "stair")
"""Tasks with HumanoidBench's `ClimbingUpwards` reward and termination (feet-relative head height, tipping over)."""

SIGMOIDS = ("gaussian", "linear", "quadratic")


def _scalar_sigmoid(d: float, value_at_margin: float, sigmoid: str) -> float:
    if sigmoid == "gaussian":
        scale = math.sqrt(-2.0 * math.log(value_at_margin))
        return math.exp(-0.5 * (d * scale) ** 2)
    if sigmoid == "linear":
        scaled = d * (1.0 - value_at_margin)
        return 1.0 - scaled if abs(scaled) < 1.0 else 0.0
    scaled = d * math.sqrt(1.0 - value_at_margin)  # quadratic
    return 1.0 - scaled * scaled if abs(scaled) < 1.0 else 0.0


def _array_sigmoid(d: Any, value_at_margin: float, sigmoid: str, xp: Any) -> Any:
    if sigmoid == "gaussian":
        scale = math.sqrt(-2.0 * math.log(value_at_margin))
        return xp.exp(-0.5 * (d * scale) ** 2)
    if sigmoid == "linear":
        scaled = d * (1.0 - value_at_margin)
        return xp.where(xp.abs(scaled) < 1.0, 1.0 - scaled, 0.0)
    scaled = d * math.sqrt(1.0 - value_at_margin)  # quadratic
    return xp.where(xp.abs(scaled) < 1.0, 1.0 - scaled * scaled, 0.0)


def tolerance(
    x: Any,
    bounds: tuple[float, float] = (0.0, 0.0),
    margin: float = 0.0,
    sigmoid: str = "gaussian",
    value_at_margin: float = 0.1,
    *,
    xp: Any = np,
) -> Any:
    """1 inside `bounds`, falling off outside them with the distance measured in `margin`s.

    Outside the bounds, with d = distance to the nearest bound / margin, the value is s(d) where
    s(0) = 1 and s(1) = `value_at_margin`:

    * gaussian: exp(-(d c)^2 / 2), c = sqrt(-2 ln v);
    * linear: 1 - d c (0 once d c >= 1), c = 1 - v;
    * quadratic: 1 - (d c)^2 (0 once d c >= 1), c = sqrt(1 - v).

    `margin = 0` makes it the indicator of the bounds. Scalars give a float, arrays an array
    (elementwise). Bounds may be infinite.
    """
    lower, upper = bounds
    if lower > upper:
        raise ValueError(f"lower bound {lower} exceeds upper bound {upper}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if sigmoid not in SIGMOIDS:
        raise ValueError(f"sigmoid must be one of {SIGMOIDS}, got {sigmoid!r}")
    if margin > 0 and not (0.0 <= value_at_margin < 1.0 and (value_at_margin > 0.0 or sigmoid != "gaussian")):
        raise ValueError(f"value_at_margin {value_at_margin} out of range for the {sigmoid} sigmoid")
    if xp is np and np.ndim(x) == 0:
        x = float(x)
        if lower <= x <= upper:
            return 1.0
        if margin == 0:
            return 0.0
        d = (lower - x if x < lower else x - upper) / margin
        return _scalar_sigmoid(d, value_at_margin, sigmoid)
    x = xp.asarray(x)
    in_bounds = (lower <= x) & (x <= upper)
    if margin == 0:
        return xp.where(in_bounds, 1.0, 0.0)
    d = xp.where(x < lower, lower - x, x - upper) / margin
    return xp.where(in_bounds, 1.0, _array_sigmoid(d, value_at_margin, sigmoid, xp))


# ---------------------------------------------------------------------------------- shared terms


def standing(head_height: Any, *, xp: Any = np) -> Any:
    """Gaussian in head height: 1 at >= 1.65 m, 0.1 at 1.65 - 0.4125 m."""
    return tolerance(head_height, (STAND_HEIGHT, math.inf), STAND_HEIGHT / 4, "gaussian", 0.1, xp=xp)


def upright(torso_upright: Any, bound: float = UPRIGHT_BOUND, *, xp: Any = np) -> Any:
    """Linear in the torso's world-z alignment: 1 at >= `bound`, 0 at `bound` - 1.9."""
    return tolerance(torso_upright, (bound, math.inf), UPRIGHT_MARGIN, "linear", 0.0, xp=xp)


def small_control(actuator_force: Any, *, xp: Any = np) -> Any:
    """(4 + mean_i max(0, 1 - (f_i / 10)^2)) / 5, in [0.8, 1]."""
    if xp is np:  # the same closed form as `tolerance(f, (0, 0), 10, "quadratic", 0)`, a few numpy calls
        scaled = np.asarray(actuator_force, np.float64) / CONTROL_MARGIN
        return (4.0 + float(np.maximum(0.0, 1.0 - scaled * scaled).mean())) / 5.0
    per_actuator = tolerance(actuator_force, (0.0, 0.0), CONTROL_MARGIN, "quadratic", 0.0, xp=xp)
    return (4.0 + xp.mean(per_actuator)) / 5.0


def move(com_velocity_x: Any, speed: float, *, xp: Any = np) -> Any:
    """(5 * ramp + 1) / 6 with ramp 0 at vx <= 0, linear up to 1 at vx >= `speed`; in [1/6, 1]."""
    return (5.0 * tolerance(com_velocity_x, (speed, math.inf), speed, "linear", 0.0, xp=xp) + 1.0) / 6.0


def dont_move(com_velocity_x: Any, com_velocity_y: Any, *, xp: Any = np) -> Any:
    """Mean over x and y of a gaussian in the centre-of-mass velocity (0.1 at 2 m/s)."""
    return 0.5 * (
        tolerance(com_velocity_x, (0.0, 0.0), DONT_MOVE_MARGIN, "gaussian", 0.1, xp=xp)
        + tolerance(com_velocity_y, (0.0, 0.0), DONT_MOVE_MARGIN, "gaussian", 0.1, xp=xp)
    )


# ----------------------------------------------------------------------------------- task rewards


class Quantities(NamedTuple):
    """What the rewards and terminations read from the simulator after an env step."""

    head_height: Any
    """World z of site `head` (m)."""
    torso_upright: Any
    """zz entry of the torso's rotation matrix."""
    left_foot_height: Any
    right_foot_height: Any
    """World z of sites `left_foot` / `right_foot` (m)."""
    com_velocity: Any
    """(3,) world-frame linear velocity of the whole robot's centre of mass (m/s)."""
    actuator_force: Any
    """(19,) actuator forces after clamping (N m)."""
    pelvis_height: Any
    """qpos[2], the pelvis origin's world z (m)."""
    touching_pole: Any = False
    """Whether any contact involves a pole (pole task only)."""


def stand_reward(q: Quantities, *, xp: Any = np) -> tuple[Any, dict[str, Any]]:
    """small_control * standing * upright * dont_move."""
    stand = standing(q.head_height, xp=xp)
    up = upright(q.torso_upright, xp=xp)
    control = small_control(q.actuator_force, xp=xp)
    still = dont_move(q.com_velocity[0], q.com_velocity[1], xp=xp)
    stand_r = stand * up
    reward = control * stand_r * still
    return reward, {"stand_reward": stand_r, "small_control": control, "dont_move": still,
                    "standing": stand, "upright": up}


def walk_reward(q: Quantities, speed: float = WALK_SPEED, *, xp: Any = np) -> tuple[Any, dict[str, Any]]:
    """small_control * standing * upright * move(speed); run is the same with speed 5."""
    stand = standing(q.head_height, xp=xp)
    up = upright(q.torso_upright, xp=xp)
    control = small_control(q.actuator_force, xp=xp)
    forward = move(q.com_velocity[0], speed, xp=xp)
    stand_r = stand * up
    reward = control * stand_r * forward
    return reward, {"stand_reward": stand_r, "small_control": control, "move": forward,
                    "standing": stand, "upright": up}


def run_reward(q: Quantities, *, xp: Any = np) -> tuple[Any, dict[str, Any]]:
    """`walk_reward` at 5 m/s."""
    return walk_reward(q, RUN_SPEED, xp=xp)


def pole_reward(q: Quantities, *, xp: Any = np) -> tuple[Any, dict[str, Any]]:
    """(0.5 small_control * standing * upright + 0.5 move(0.5)) * (0.1 while touching a pole, else 1)."""
    stand = standing(q.head_height, xp=xp)
    up = upright(q.torso_upright, xp=xp)
    control = small_control(q.actuator_force, xp=xp)
    forward = move(q.com_velocity[0], POLE_SPEED, xp=xp)
    stand_r = stand * up
    if xp is np:
        discount = POLE_CONTACT_DISCOUNT if q.touching_pole else 1.0
    else:
        discount = xp.where(q.touching_pole, POLE_CONTACT_DISCOUNT, 1.0)
    reward = (0.5 * control * stand_r + 0.5 * forward) * discount
    return reward, {"stand_reward": stand_r, "small_control": control, "move": forward,
                    "standing": stand, "upright": up, "collision_discount": discount}


def slide_reward(q: Quantities, *, xp: Any = np) -> tuple[Any, dict[str, Any]]:
    """small_control * standing' * upright' * move(1): head height above each foot, upright bound 0.5."""
    head_above = (SLIDE_HEAD_ABOVE_FEET, math.inf)
    stand = tolerance(q.head_height - q.left_foot_height, head_above, SLIDE_HEAD_MARGIN, "gaussian", 0.1, xp=xp) \
        * tolerance(q.head_height - q.right_foot_height, head_above, SLIDE_HEAD_MARGIN, "gaussian", 0.1, xp=xp)
    up = upright(q.torso_upright, SLIDE_UPRIGHT_BOUND, xp=xp)
    control = small_control(q.actuator_force, xp=xp)
    forward = move(q.com_velocity[0], WALK_SPEED, xp=xp)
    stand_r = stand * up
    reward = control * stand_r * forward
    return reward, {"stand_reward": stand_r, "small_control": control, "move": forward,
                    "standing": stand, "upright": up}


def stair_reward(q: Quantities, *, xp: Any = np) -> tuple[Any, dict[str, Any]]:
    """`slide_reward` unchanged: in HumanoidBench both tasks take their reward from `ClimbingUpwards`."""
    return slide_reward(q, xp=xp)


REWARDS = {
    "stand": stand_reward,
    "walk": walk_reward,
    "run": run_reward,
    "pole": pole_reward,
    "slide": slide_reward,
    "stair": stair_reward,
}
"""Task name -> reward function of `Quantities`."""


def reward(task: str, q: Quantities, *, xp: Any = np) -> tuple[Any, dict[str, Any]]:
    """The reward of `task` and its components."""
    return REWARDS[task](q, xp=xp)


def terminated(task: str, q: Quantities) -> Any:
    """HumanoidBench's early termination: a fall (pelvis low, or torso tipped over on slide and stair)."""
    if task in CLIMBING_TASKS:
        return q.torso_upright < SLIDE_MIN_UPRIGHT
    if task == "pole":
        return q.pelvis_height < POLE_FALL_HEIGHT
    if task in REWARDS:
        return q.pelvis_height < FALL_HEIGHT
    raise ValueError(f"unknown H1 task {task!r}")
