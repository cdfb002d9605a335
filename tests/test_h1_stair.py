"""HumanoidBench H1 stair (held out of the `h1` sequence): terrain, reward, termination, env, registry.

The expected numbers are HumanoidBench's, written out here from its sources (docs/humanoidbench.md,
"h1-stair (held-out)"), not read from our model code.
"""

from __future__ import annotations

import math

import mujoco
import numpy as np
import pytest

from sphere_rl.envs.h1 import H1Env, model as h1_model, rewards
from sphere_rl.envs.h1.model import build_model
from sphere_rl.envs.h1.rewards import Quantities

# HumanoidBench `assets/locomotion/generated_xml_stairs.xml`: a body at x = 0.2 holding four staircases
# at relative x 3, 9, 15, 21; each is 5 boxes of half-height 0.09 centred at z = 0.09 + 0.18 k with
# half-length 2.7 - 0.6 k along x and half-width 5 along y.
STAIRCASE_X = {"50": 3.2, "40": 9.2, "30": 15.2, "20": 21.2}
LAYER_Z = (0.09, 0.27, 0.45, 0.63, 0.81)
LAYER_HALF_LENGTH = (2.7, 2.1, 1.5, 0.9, 0.3)
# Walls (collision only): name -> (centre, half-size).
WALLS = {
    "stair_left_wall": ((13.5, -5.05, 2.0), (15.5, 0.1, 2.0)),
    "stair_right_wall": ((13.5, 5.05, 2.0), (15.5, 0.1, 2.0)),
    "stair_back_wall": ((-2.1, 0.0, 2.0), (0.1, 7.25, 2.0)),
}
COLLISION_GROUP = np.array([0, 0, 0, 1, 0, 0], np.uint8)


# ------------------------------------------------------------ HumanoidBench's formula, from its definition


def hb_tolerance(x, lower, upper, margin, sigmoid, value_at_margin):
    """dm_control's tolerance written from its definition (numpy, elementwise)."""
    x = np.asarray(x, np.float64)
    inside = (lower <= x) & (x <= upper)
    d = np.where(x < lower, lower - x, x - upper) / margin
    if sigmoid == "gaussian":
        outside = np.exp(-0.5 * (d * np.sqrt(-2.0 * np.log(value_at_margin))) ** 2)
    elif sigmoid == "linear":
        scaled = d * (1.0 - value_at_margin)
        outside = np.where(scaled < 1.0, 1.0 - scaled, 0.0)
    else:  # quadratic
        scaled = d * np.sqrt(1.0 - value_at_margin)
        outside = np.where(scaled < 1.0, 1.0 - scaled**2, 0.0)
    return np.where(inside, 1.0, outside)


def hb_stair_reward(head, left_foot, right_foot, torso_zz, com_vx, forces):
    """HumanoidBench `ClimbingUpwards.get_reward` (Stair inherits it unchanged), as a formula."""
    standing = hb_tolerance(head - left_foot, 1.2, np.inf, 0.45, "gaussian", 0.1) \
        * hb_tolerance(head - right_foot, 1.2, np.inf, 0.45, "gaussian", 0.1)
    upright = hb_tolerance(torso_zz, 0.5, np.inf, 1.9, "linear", 0.0)
    small_control = (4.0 + hb_tolerance(forces, 0.0, 0.0, 10.0, "quadratic", 0.0).mean()) / 5.0
    move = (5.0 * hb_tolerance(com_vx, 1.0, np.inf, 1.0, "linear", 0.0) + 1.0) / 6.0
    return float(standing * upright * small_control * move)


def _quantities(head=1.68, upright=1.0, feet=(0.02, 0.02), vel=(0.0, 0.0, 0.0), force=0.0, pelvis=0.98):
    forces = np.full(19, float(force)) if np.ndim(force) == 0 else np.asarray(force, float)
    return Quantities(head, upright, feet[0], feet[1], np.asarray(vel, float), forces, pelvis, False)


def _forward_at(env: H1Env, qpos: np.ndarray) -> Quantities:
    env.reset(seed=0)
    env.data.qpos[:] = qpos
    env.data.qvel[:] = 0.0
    mujoco.mj_forward(env.model, env.data)
    return env.quantities()


# ------------------------------------------------------------------------------------------ terrain


def test_stair_geoms_at_humanoidbench_positions():
    model = build_model("stair")
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    assert model.geom(0).name == "floor"
    assert model.ngeom == 42 + 40 + 3  # robot + floor, 4 staircases x 5 layers x (visual + collision), 3 walls
    box = mujoco.mjtGeom.mjGEOM_BOX
    for number, x in STAIRCASE_X.items():
        for layer, (z, half_length) in enumerate(zip(LAYER_Z, LAYER_HALF_LENGTH)):
            for suffix, colliding in (("", 0), ("_collision", 1)):
                g = model.geom(f"stair_{number}_layer_{layer}{suffix}").id
                assert model.geom_type[g] == box
                np.testing.assert_allclose(data.geom_xpos[g], (x, 0.0, z), atol=1e-12)
                np.testing.assert_allclose(model.geom_size[g], (half_length, 5.0, 0.09), atol=1e-12)
                np.testing.assert_allclose(data.geom_xmat[g], np.eye(3).ravel())
                assert model.geom_contype[g] == model.geom_conaffinity[g] == colliding
    for name, (centre, half_size) in WALLS.items():
        g = model.geom(name).id
        assert model.geom_type[g] == box and model.geom_contype[g] == model.geom_conaffinity[g] == 1
        np.testing.assert_allclose(data.geom_xpos[g], centre)
        np.testing.assert_allclose(model.geom_size[g], half_size)
    # Every terrain body is static (welded to the world).
    for name in ("stairs", *(f"stairs_{number}" for number in STAIRCASE_X)):
        assert model.body_weldid[model.body(name).id] == 0


def _terrain_height(x: float) -> float:
    """0.18 m per layer whose x extent contains x (HumanoidBench's pyramids; 0 on the floor)."""
    return sum(0.18 for centre in STAIRCASE_X.values() for half in LAYER_HALF_LENGTH if abs(x - centre) < half)


@pytest.mark.parametrize("x", [0.8, 1.4, 2.0, 2.6, 3.2, 3.8, 5.6, 6.2, 9.2, 12.0, 15.5, 21.2, 23.6, 24.5])
def test_terrain_profile_by_ray_casting(x):
    """Straight down at (x, 1.5): the colliding terrain's top is HumanoidBench's step height there."""
    model = build_model("stair")
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    geomid = np.zeros(1, np.int32)
    dist = mujoco.mj_ray(model, data, np.array([x, 1.5, 3.0]), np.array([0.0, 0.0, -1.0]), COLLISION_GROUP, 1, -1,
                         geomid)
    expected = _terrain_height(x)
    if expected == 0.0:
        assert dist == -1  # only the floor (group 0) is below: no collision-group box
    else:
        assert 3.0 - dist == pytest.approx(expected, abs=1e-9)
        assert model.geom(geomid[0]).name.endswith("_collision")


def test_robot_starts_on_the_floor_and_stands_on_a_top_step():
    env = H1Env("stair")
    env.reset(seed=0)
    model, data = env.model, env.data
    touched = {model.body(model.geom_bodyid[g]).name for pair in data.contact.geom[: data.ncon] for g in pair}
    assert touched == {"world", "left_ankle_link", "right_ankle_link"}
    assert data.site_xpos[model.site("right_foot").id][0] + 0.2 < 3.2 - 2.7  # the toes are short of the first step
    # Lifted 0.9 m onto the top of the first staircase, the feet rest on its top layer.
    qpos = h1_model.HOME_QPOS.copy()
    qpos[0], qpos[2] = 3.2, 0.98 + 0.9
    q = _forward_at(env, qpos)
    names = {model.geom(g).name for pair in data.contact.geom[: data.ncon] for g in pair}
    assert names == {"stair_50_layer_4_collision", ""}  # the robot's collision geoms are unnamed
    assert q.left_foot_height == pytest.approx(0.9 + 0.019, abs=1e-3)
    # The feet-relative standing term does not care that the head is 2.6 m above the floor.
    _, info = rewards.stair_reward(q)
    assert info["standing"] == 1.0 and info["upright"] == 1.0


# ------------------------------------------------------------------------------------------ reward


def test_stair_reward_matches_humanoidbench_formula_on_hand_built_states():
    rng = np.random.default_rng(0)
    for _ in range(300):
        head = rng.uniform(0.0, 3.0)
        feet = rng.uniform(-0.1, 1.2, 2)
        torso_zz = rng.uniform(-1.0, 1.0)
        vx = rng.uniform(-2.0, 3.0)
        forces = rng.uniform(-30.0, 30.0, 19)
        q = _quantities(head, torso_zz, tuple(feet), (vx, rng.normal(), rng.normal()), forces)
        expected = hb_stair_reward(head, feet[0], feet[1], torso_zz, vx, forces)
        reward, _ = rewards.stair_reward(q)
        assert reward == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert rewards.reward("stair", q)[0] == reward


def test_stair_reward_hand_values():
    # Upright, head 1.2 m above both feet, 1 m/s forward, no force: 1. Lateral speed is free.
    assert rewards.stair_reward(_quantities(head=2.1, feet=(0.9, 0.72), vel=(1.0, 4.0, 0.0), upright=0.5))[0] == 1.0
    # Standing still: move = 1/6.
    assert rewards.stair_reward(_quantities(head=1.68, feet=(0.02, 0.02)))[0] == pytest.approx(1 / 6)
    # Head one margin (0.45 m) too low above the left foot: 0.1; half a margin: 0.1 ** (1/4).
    r, info = rewards.stair_reward(_quantities(head=1.3, feet=(0.55, 0.0), vel=(1.0, 0, 0)))
    assert r == pytest.approx(0.1) and info["standing"] == pytest.approx(0.1)
    r, _ = rewards.stair_reward(_quantities(head=1.3, feet=(0.325, 0.0), vel=(1.0, 0, 0)))
    assert r == pytest.approx(0.1 ** 0.25)
    # torso_zz 0.5 - 0.95 (half the linear margin): upright 0.5; forces 5 N m everywhere: small_control 0.95.
    r, info = rewards.stair_reward(_quantities(upright=-0.45, vel=(0.5, 0, 0), force=5.0))
    assert info["upright"] == pytest.approx(0.5) and info["small_control"] == pytest.approx(0.95)
    assert r == pytest.approx(0.5 * 0.95 * 3.5 / 6)
    assert set(info) == {"stand_reward", "small_control", "move", "standing", "upright"}


def test_env_reward_is_the_formula_on_simulated_states():
    """Each step's reward equals the formula applied to the MjData the step left (read directly)."""
    env = H1Env("stair")
    env.reset(seed=4)
    model, data = env.model, env.data
    com_adr = model.sensor_adr[model.sensor("pelvis_subtreelinvel").id]
    rng = np.random.default_rng(1)
    for _ in range(8):
        _, reward, terminated, _, _ = env.step(rng.uniform(-1.0, 1.0, 19).astype(np.float32))
        expected = hb_stair_reward(
            data.site_xpos[model.site("head").id][2], data.site_xpos[model.site("left_foot").id][2],
            data.site_xpos[model.site("right_foot").id][2], data.xmat[model.body("torso_link").id][8],
            data.sensordata[com_adr], data.actuator_force,
        )
        assert reward == pytest.approx(expected, rel=1e-12)
        assert terminated == bool(data.xmat[model.body("torso_link").id][8] < 0.1)


# ------------------------------------------------------------------------------------- termination


def test_termination_is_the_torso_tipping_over_not_the_pelvis_height():
    assert rewards.terminated("stair", _quantities(upright=0.099))
    assert not rewards.terminated("stair", _quantities(upright=0.1))
    assert not rewards.terminated("stair", _quantities(pelvis=0.01, upright=0.5))  # low but upright: goes on
    env = H1Env("stair")
    for cosine, expected in ((0.099, True), (0.101, False)):
        qpos = h1_model.HOME_QPOS.copy()
        half = math.acos(cosine) / 2  # pelvis pitched about y
        qpos[3:7] = (math.cos(half), 0.0, math.sin(half), 0.0)
        qpos[2] = 2.0
        q = _forward_at(env, qpos)
        assert q.torso_upright == pytest.approx(cosine)
        assert rewards.terminated("stair", q) == expected
    # Upside down: the env's step reports termination (the reward of that step is still paid).
    qpos = h1_model.HOME_QPOS.copy()
    qpos[3:7] = (0.0, 0.0, 1.0, 0.0)
    qpos[2] = 2.0
    _forward_at(env, qpos)
    _, reward, terminated, truncated, _ = env.step(np.zeros(19, np.float32))
    assert terminated and not truncated and reward >= 0.0


# --------------------------------------------------------------------------------------- env, registry


def test_stair_env_builds_resets_and_steps():
    env = H1Env("stair")
    assert env.max_episode_steps == 1000 and env.success_bar == 700.0
    assert env.observation_space.shape == (51,) and env.action_space.shape == (19,)
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs[:26], h1_model.HOME_QPOS, atol=0.01 + 1e-7)
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert np.isfinite(obs).all() and 0.0 <= reward <= 1.0 and not truncated
    assert {"stand_reward", "small_control", "move", "standing", "upright"} <= set(info)
    assert info["success"] is False


def test_stair_is_registered_and_held_out_of_every_sequence():
    from sphere_rl import envs
    from sphere_rl.envs.catalog import H1_HELD_OUT

    assert H1_HELD_OUT == ("stair",)
    spec = envs.env_spec("humanoidbench/h1-stair")
    assert spec.family == "humanoidbench" and not spec.jax_native and "held out" in spec.description
    assert all("humanoidbench/h1-stair" not in seq.env_ids for seq in envs.list_sequences().values())
    assert envs.resolve_sequence("h1") == tuple(f"humanoidbench/h1-{t}" for t in ("stand", "walk", "pole", "slide", "run"))
    vec = envs.make("humanoidbench/h1-stair", num_envs=2, seed=0)
    try:
        assert vec.max_episode_steps == 1000
        obs, _ = vec.reset()
        assert obs.shape == (2, 51)
        _, reward, _, _, info = vec.step(np.zeros((2, 19), np.float32))
        assert reward.shape == (2,) and info["success"].dtype == bool
    finally:
        vec.close()
