"""HumanoidBench H1 envs: the built model, scenes, `tolerance`, rewards, terminations, the env's contract."""

from __future__ import annotations

import math

import mujoco
import numpy as np
import pytest

from sphere_rl.envs.h1 import H1Env, model as h1_model, rewards
from sphere_rl.envs.h1.env import EPISODE_STEPS, SUCCESS_BARS
from sphere_rl.envs.h1.model import JOINTS, TASKS, build_model, menagerie_h1_dir
from sphere_rl.envs.h1.rewards import Quantities, tolerance

GAUSS_HALF = 0.1 ** 0.25
"""A gaussian tolerance (value 0.1 at the margin) half a margin outside its bounds: exp(ln(0.1) / 4)."""

JOINT_RANGES = {
    "hip_yaw": (-0.43, 0.43), "hip_roll": (-0.43, 0.43), "hip_pitch": (-3.14, 2.53), "knee": (-0.26, 2.05),
    "ankle": (-0.87, 0.52), "torso": (-2.35, 2.35), "shoulder_pitch": (-2.87, 2.87),
    "left_shoulder_roll": (-0.34, 3.11), "right_shoulder_roll": (-3.11, 0.34),
    "left_shoulder_yaw": (-1.3, 4.45), "right_shoulder_yaw": (-4.45, 1.3), "elbow": (-1.25, 2.61),
}
SERVOS = {  # joint-name suffix -> kp, kv, force limit
    "hip_yaw": (200, 5, 200), "hip_roll": (200, 5, 200), "hip_pitch": (200, 5, 200), "knee": (300, 6, 300),
    "ankle": (40, 2, 40), "torso": (300, 6, 200), "shoulder_pitch": (100, 2, 40), "shoulder_roll": (100, 2, 40),
    "shoulder_yaw": (100, 2, 18), "elbow": (100, 2, 18),
}


def _lookup(table: dict, joint: str):
    for key in sorted(table, key=len, reverse=True):
        if joint == key or joint.endswith(key):
            return table[key]
    raise KeyError(joint)


def _forward_at(env: H1Env, qpos: np.ndarray) -> Quantities:
    """Put the env's data at `qpos` (zero velocity), run `mj_forward`, return the reward quantities."""
    env.reset(seed=0)
    env.data.qpos[:] = qpos
    env.data.qvel[:] = 0.0
    mujoco.mj_forward(env.model, env.data)
    return env.quantities()


def _quantities(head=1.68, upright=1.0, feet=(0.02, 0.02), vel=(0.0, 0.0, 0.0), force=0.0, pelvis=0.98, pole=False):
    return Quantities(head, upright, feet[0], feet[1], np.asarray(vel, float), np.full(19, float(force)), pelvis, pole)


# --------------------------------------------------------------------------------------- model


def test_robot_model_matches_humanoidbench():
    model = build_model("stand")
    assert (model.nq, model.nv, model.nu) == (26, 25, 19)
    assert model.nsensordata == 14  # 2 touch + 3 subtree velocities + velocimeter, as in HumanoidBench
    assert model.joint(0).name == "free_base" and model.jnt_type[0] == mujoco.mjtJoint.mjJNT_FREE
    # Menagerie's link masses + HumanoidBench's ankle (0.552448 kg) give HumanoidBench's 51.65 kg.
    assert model.body_subtreemass[model.body("pelvis").id] == pytest.approx(51.65, abs=1e-3)
    assert [model.joint(i).name for i in range(1, model.njnt)] == list(JOINTS)
    for i, joint in enumerate(JOINTS, start=1):
        np.testing.assert_allclose(model.jnt_range[i], _lookup(JOINT_RANGES, joint), err_msg=joint)
        assert model.dof_damping[model.jnt_dofadr[i]] == 1.0 and model.dof_armature[model.jnt_dofadr[i]] == 0.1
    for a, joint in enumerate(JOINTS):
        kp, kv, force = _lookup(SERVOS, joint)
        assert model.actuator(a).name == joint and model.joint(model.actuator_trnid[a, 0]).name == joint
        assert model.actuator_gaintype[a] == mujoco.mjtGain.mjGAIN_FIXED and model.actuator_gainprm[a, 0] == kp
        assert model.actuator_biastype[a] == mujoco.mjtBias.mjBIAS_AFFINE
        np.testing.assert_allclose(model.actuator_biasprm[a, :3], (0.0, -kp, -kv))
        np.testing.assert_allclose(model.actuator_forcerange[a], (-force, force))
        np.testing.assert_allclose(model.actuator_ctrlrange[a], _lookup(JOINT_RANGES, joint))
        assert model.actuator_forcelimited[a] and model.actuator_ctrllimited[a]
    ankle = model.body("left_ankle_link")
    assert ankle.mass[0] == pytest.approx(0.552448)
    np.testing.assert_allclose(ankle.ipos, (0.048568, 0.0, -0.045609))
    np.testing.assert_allclose(ankle.inertia, (0.00362, 0.00355701, 0.000149987))
    assert model.opt.timestep == 0.002 and model.opt.solver == mujoco.mjtSolver.mjSOL_NEWTON
    assert (model.opt.iterations, model.opt.ls_iterations) == (100, 50)
    assert model.opt.integrator == mujoco.mjtIntegrator.mjINT_EULER
    assert not model.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_EULERDAMP
    np.testing.assert_allclose(model.key("qpos0").qpos, h1_model.HOME_QPOS)


def test_collision_geoms_follow_humanoidbench():
    model = build_model("stand")
    assert model.ngeom == 42 and model.geom(0).name == "floor"
    colliding: dict[str, list[int]] = {}
    for g in range(1, model.ngeom):
        body = model.body(model.geom_bodyid[g]).name
        if model.geom_contype[g] or model.geom_conaffinity[g]:
            assert model.geom_group[g] == 3 and model.geom_contype[g] == 1 and model.geom_conaffinity[g] == 1
            colliding.setdefault(body, []).append(int(model.geom_type[g]))
        else:
            assert model.geom_group[g] == 2  # Menagerie's visual meshes
    mesh, cylinder = int(mujoco.mjtGeom.mjGEOM_MESH), int(mujoco.mjtGeom.mjGEOM_CYLINDER)
    expected = {name: [mesh] for name in h1_model.MESH_COLLISION_LINKS + h1_model.FOOT_LINKS}
    expected.update({name: [cylinder] for name in h1_model.PRIMITIVE_COLLISION_LINKS})
    assert colliding == expected
    foot = model.mesh(h1_model.FOOT_MESH).id
    for side in ("left", "right"):
        geoms = [g for g in range(model.ngeom) if model.geom_bodyid[g] == model.body(f"{side}_ankle_link").id
                 and model.geom_contype[g]]
        assert [model.geom_dataid[g] for g in geoms] == [foot]
    assert model.mesh_vertnum[foot] == 48


def test_keyframe_pose_heights_and_contacts():
    env = H1Env("stand")
    q = _forward_at(env, h1_model.HOME_QPOS)
    assert q.head_height == pytest.approx(1.68, abs=1e-6)
    assert q.torso_upright == pytest.approx(1.0)
    assert q.left_foot_height == pytest.approx(0.019, abs=1e-3) and q.right_foot_height == pytest.approx(0.019, abs=1e-3)
    np.testing.assert_allclose(env.data.site_xpos[env.model.site("left_foot").id][:2], (0.039, 0.203), atol=1e-3)
    data, model = env.data, env.model
    # Only foot-floor contacts (3 per foot with the 48-vertex hull; HumanoidBench's 918-vertex mesh gives 4):
    # no two robot hulls touch at the keyframe, so no contact excludes are needed.
    pairs = {tuple(sorted((model.body(model.geom_bodyid[g1]).name, model.body(model.geom_bodyid[g2]).name)))
             for g1, g2 in data.contact.geom[: data.ncon]}
    assert pairs == {("left_ankle_link", "world"), ("right_ankle_link", "world")}
    assert data.ncon == 6
    # Like HumanoidBench, no contact excludes (Menagerie's torso-shoulder_roll ones are removed);
    # the torso and shoulder_roll hulls are ~2 mm apart at the keyframe.
    assert model.nexclude == 0
    for side in ("left", "right"):
        torso, shoulder = (next(g for g in range(model.ngeom) if model.geom_bodyid[g] == model.body(body).id
                                and model.geom_contype[g]) for body in ("torso_link", f"{side}_shoulder_roll_link"))
        assert 0.0 < mujoco.mj_geomDistance(model, data, torso, shoulder, 0.1, None) < 0.005


def test_pole_scene():
    model = build_model("pole")
    assert model.ngeom == 336
    poles = [model.geom(g).name for g in range(model.ngeom) if (model.geom(g).name or "").startswith("pole_r")]
    assert len(poles) == 144
    assert len([name for name in poles if name.startswith("pole_r1_")]) == 4
    assert len([name for name in poles if name.startswith("pole_r2_")]) == 3
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    np.testing.assert_allclose(data.geom_xpos[model.geom("pole_r1_c1").id], (1.0, 2.25, 1.0))
    np.testing.assert_allclose(data.geom_xpos[model.geom("pole_r41_c4").id], (41.0, -2.25, 1.0))
    np.testing.assert_allclose(data.geom_xpos[model.geom("pole_r40_c2").id], (40.0, 0.0, 1.0))
    assert all(model.geom_contype[model.geom(name).id] == 1 for name in poles)
    for barrier in ("left_barrier", "right_barrier", "behind_barrier"):
        body = model.body(barrier).id
        assert sum(model.geom_contype[g] for g in range(model.ngeom) if model.geom_bodyid[g] == body) == 1


def test_slide_scene():
    model = build_model("slide")
    assert model.ngeom == 63  # robot 42 + 9 ridges (visual + collision) + 3 collision-only walls
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, 0)
    mujoco.mj_forward(model, data)
    slide = model.mesh("slide").id
    ridges = [g for g in range(model.ngeom) if model.geom_dataid[g] == slide and model.geom_contype[g]]
    assert len(ridges) == 9
    # The ridge surface: apex 1.75 m above x = 5.3 + 10 k; a ray down at x = 5.3 hits it there.
    geomid = np.zeros(1, np.int32)
    collision_group = np.array([0, 0, 0, 1, 0, 0], np.uint8)
    down = np.array([0.0, 0.0, -1.0])
    dist = mujoco.mj_ray(model, data, np.array([5.3, 0.0, 3.0]), down, collision_group, 1, -1, geomid)
    assert 3.0 - dist == pytest.approx(1.75, abs=1e-5) and geomid[0] == ridges[0]
    dist = mujoco.mj_ray(model, data, np.array([17.8, 0.0, 3.0]), down, collision_group, 1, -1, geomid)
    assert 3.0 - dist == pytest.approx(1.75 * 2.5 / 5, abs=1e-5) and geomid[0] == ridges[1]
    # At the keyframe the robot stands on the floor 0.3 m before the first ridge, touching nothing else.
    touched = {model.body(model.geom_bodyid[g]).name for pair in data.contact.geom[: data.ncon] for g in pair}
    assert touched == {"world", "left_ankle_link", "right_ankle_link"}


def test_asset_directory_override(monkeypatch, tmp_path):
    default = menagerie_h1_dir()
    assert (default / "h1.xml").is_file() and (default / "assets" / "pelvis.stl").is_file()
    monkeypatch.setenv(h1_model.ASSETS_ENV_VAR, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="h1.xml"):
        menagerie_h1_dir()
    monkeypatch.setenv(h1_model.ASSETS_ENV_VAR, str(default))
    assert menagerie_h1_dir() == default
    with pytest.raises(ValueError, match="unknown H1 task"):
        build_model("dance")


# ------------------------------------------------------------------------------------ tolerance


@pytest.mark.parametrize("sigmoid", ["gaussian", "linear", "quadratic"])
def test_tolerance_is_one_inside_bounds_and_an_indicator_without_margin(sigmoid):
    for x in (0.0, 0.5, 1.0):
        assert tolerance(x, (0.0, 1.0), 2.0, sigmoid, 0.1) == 1.0
        assert tolerance(x, (0.0, 1.0), 0.0, sigmoid) == 1.0
    for x in (-0.01, 1.01):
        assert tolerance(x, (0.0, 1.0), 0.0, sigmoid) == 0.0
    # At exactly one margin outside the bounds the value is value_at_margin, on either side.
    assert tolerance(-2.0, (0.0, 1.0), 2.0, sigmoid, 0.3) == pytest.approx(0.3)
    assert tolerance(3.0, (0.0, 1.0), 2.0, sigmoid, 0.3) == pytest.approx(0.3)


def test_tolerance_against_the_formula():
    c = math.sqrt(-2 * math.log(0.1))
    for d in (0.25, 0.5, 1.0, 2.0):
        assert tolerance(1.0 + d * 4.0, (0.0, 1.0), 4.0) == pytest.approx(math.exp(-0.5 * (d * c) ** 2))
    assert tolerance(1.0 + 2.0, (0.0, 1.0), 4.0) == pytest.approx(GAUSS_HALF)
    # linear, value_at_margin 0: 1 - d, zero beyond the margin
    assert tolerance(0.5, (1.0, math.inf), 2.0, "linear", 0.0) == pytest.approx(0.75)
    assert tolerance(-5.0, (1.0, math.inf), 2.0, "linear", 0.0) == 0.0
    # linear, value_at_margin 0.2: 1 - 0.8 d
    assert tolerance(-0.5, (0.0, 0.0), 1.0, "linear", 0.2) == pytest.approx(0.6)
    # quadratic, value_at_margin 0: 1 - d^2, zero beyond the margin
    assert tolerance(5.0, (0.0, 0.0), 10.0, "quadratic", 0.0) == pytest.approx(0.75)
    assert tolerance(-12.0, (0.0, 0.0), 10.0, "quadratic", 0.0) == 0.0
    # quadratic, value_at_margin 0.5: 1 - 0.5 d^2
    assert tolerance(1.0, (0.0, 0.0), 2.0, "quadratic", 0.5) == pytest.approx(0.875)
    # arrays: elementwise, same values as scalars
    xs = np.array([-30.0, -5.0, 0.0, 2.5, 10.0, 40.0])
    for sigmoid, v in (("gaussian", 0.1), ("linear", 0.0), ("quadratic", 0.0)):
        values = tolerance(xs, (0.0, 2.5), 10.0, sigmoid, v)
        assert isinstance(values, np.ndarray) and values.shape == xs.shape
        np.testing.assert_allclose(values, [tolerance(float(x), (0.0, 2.5), 10.0, sigmoid, v) for x in xs])
    assert isinstance(tolerance(np.float64(0.3), (0.0, 0.0), 1.0), float)
    with pytest.raises(ValueError):
        tolerance(0.0, (1.0, 0.0))
    with pytest.raises(ValueError):
        tolerance(0.0, (0.0, 0.0), 1.0, "gaussian", 0.0)
    with pytest.raises(ValueError):
        tolerance(0.0, (0.0, 0.0), 1.0, "cosine")


# -------------------------------------------------------------------------------------- rewards


def test_shared_terms():
    assert rewards.small_control(np.zeros(19)) == 1.0
    assert rewards.small_control(np.full(19, 5.0)) == pytest.approx(0.95)  # (4 + 0.75) / 5
    assert rewards.small_control(np.full(19, -50.0)) == pytest.approx(0.8)
    forces = np.linspace(-30.0, 30.0, 19)
    assert rewards.small_control(forces) == pytest.approx(
        (4 + np.mean(tolerance(forces, (0, 0), 10.0, "quadratic", 0.0))) / 5)
    assert rewards.standing(1.7) == 1.0 and rewards.standing(1.65 - 0.4125) == pytest.approx(0.1)
    assert rewards.upright(0.9 - 0.95) == pytest.approx(0.5) and rewards.upright(-1.0) == 0.0
    assert rewards.move(-1.0, 1.0) == pytest.approx(1 / 6) and rewards.move(0.5, 1.0) == pytest.approx(3.5 / 6)
    assert rewards.move(5.0, 5.0) == 1.0 and rewards.move(2.5, 5.0) == pytest.approx(3.5 / 6)
    assert rewards.dont_move(2.0, 0.0) == pytest.approx(0.55)


def test_stand_reward():
    assert rewards.stand_reward(_quantities())[0] == 1.0
    r, info = rewards.stand_reward(_quantities(vel=(2.0, 0.0, 5.0), force=5.0))
    assert r == pytest.approx(0.95 * 0.55) and info["dont_move"] == pytest.approx(0.55)
    # fallen: head 0.3 m, torso horizontal
    r, info = rewards.stand_reward(_quantities(head=0.3, upright=0.0))
    standing = 0.1 ** ((1.35 / 0.4125) ** 2)
    assert info["standing"] == pytest.approx(standing) and info["upright"] == pytest.approx(1 - 0.9 / 1.9)
    assert r == pytest.approx(standing * (1 - 0.9 / 1.9))
    r, info = rewards.stand_reward(_quantities(head=1.65 - 0.20625, upright=0.9 - 0.95))
    assert r == pytest.approx(GAUSS_HALF * 0.5)
    assert set(info) == {"stand_reward", "small_control", "dont_move", "standing", "upright"}


def test_walk_and_run_rewards():
    assert rewards.walk_reward(_quantities(vel=(1.0, 3.0, 0.0)))[0] == 1.0  # lateral speed is not penalised
    assert rewards.walk_reward(_quantities(vel=(1.2, 0.0, 0.0), force=5.0))[0] == pytest.approx(0.95)
    assert rewards.walk_reward(_quantities(vel=(0.0, 0.0, 0.0)))[0] == pytest.approx(1 / 6)
    assert rewards.walk_reward(_quantities(vel=(0.5, 0.0, 0.0)))[0] == pytest.approx(3.5 / 6)
    assert rewards.run_reward(_quantities(vel=(5.0, 0.0, 0.0)))[0] == 1.0
    r, info = rewards.run_reward(_quantities(vel=(2.5, 0.0, 0.0), upright=0.9 - 0.95))
    assert r == pytest.approx(0.5 * 3.5 / 6) and info["move"] == pytest.approx(3.5 / 6)
    assert rewards.run_reward(_quantities(head=0.3, upright=-1.0, vel=(5.0, 0, 0)))[0] == 0.0


def test_pole_reward():
    assert rewards.pole_reward(_quantities(vel=(0.5, 0, 0)))[0] == 1.0
    r, info = rewards.pole_reward(_quantities(vel=(0.5, 0, 0), pole=True))
    assert r == pytest.approx(0.1) and info["collision_discount"] == 0.1
    # fallen (stand term 0) but moving at half the target speed: half of move(0.5) survives
    assert rewards.pole_reward(_quantities(head=0.3, upright=-1.0, vel=(0.25, 0, 0)))[0] == pytest.approx(0.5 * 3.5 / 6)
    assert rewards.pole_reward(_quantities(force=5.0))[0] == pytest.approx(0.5 * 0.95 + 0.5 / 6)


def test_slide_reward():
    assert rewards.slide_reward(_quantities(head=1.9, feet=(0.6, 0.7), vel=(1.0, 0, 0), upright=0.5))[0] == 1.0
    r, info = rewards.slide_reward(_quantities(head=1.9, feet=(1.9 - 0.975, 0.2), vel=(1.0, 0, 0)))
    assert r == pytest.approx(GAUSS_HALF) and info["standing"] == pytest.approx(GAUSS_HALF)
    r, _ = rewards.slide_reward(_quantities(head=3.0, feet=(1.0, 1.0), upright=0.5 - 0.95, vel=(0.5, 0, 0)))
    assert r == pytest.approx(0.5 * 3.5 / 6)


def test_terminations_at_the_thresholds():
    for task in ("stand", "walk", "run"):
        assert rewards.terminated(task, _quantities(pelvis=0.199))
        assert not rewards.terminated(task, _quantities(pelvis=0.2))
    assert rewards.terminated("pole", _quantities(pelvis=0.499)) and not rewards.terminated("pole", _quantities(pelvis=0.5))
    assert not rewards.terminated("slide", _quantities(pelvis=0.01, upright=0.1))
    assert rewards.terminated("slide", _quantities(upright=0.099))


def test_terminations_from_crafted_states():
    """qpos with the pelvis just under / over each task's threshold, and the robot tipped over for slide."""
    for task, height in (("stand", 0.2), ("walk", 0.2), ("run", 0.2), ("pole", 0.5)):
        env = H1Env(task)
        for dz, expected in ((-0.001, True), (0.001, False)):
            qpos = h1_model.HOME_QPOS.copy()
            qpos[2] = height + dz
            assert rewards.terminated(task, _forward_at(env, qpos)) == expected, (task, dz)
    env = H1Env("slide")
    for cosine, expected in ((0.099, True), (0.101, False)):
        qpos = h1_model.HOME_QPOS.copy()
        half = math.acos(cosine) / 2  # pelvis pitched about y; the torso joint (about z) keeps its tilt
        qpos[3:7] = (math.cos(half), 0.0, math.sin(half), 0.0)
        qpos[2] = 2.0
        q = _forward_at(env, qpos)
        assert q.torso_upright == pytest.approx(cosine)
        assert rewards.terminated("slide", q) == expected


def test_pole_contact_is_detected_and_discounts_the_reward():
    env = H1Env("pole")
    env.reset(seed=0)
    assert not env.touching_pole()
    qpos = h1_model.HOME_QPOS.copy()
    qpos[:2] = (1.0, 0.75)  # the torso inside pole_r1_c2
    q = _forward_at(env, qpos)
    assert q.touching_pole and rewards.pole_reward(q)[1]["collision_discount"] == 0.1
    qpos[:2] = (0.0, 0.0)
    assert not _forward_at(env, qpos).touching_pole


# ------------------------------------------------------------------------------------------ env


def test_spaces_action_mapping_and_step_contract():
    env = H1Env("walk")
    assert env.observation_space.shape == (51,) and env.observation_space.dtype == np.float32
    assert env.action_space.shape == (19,) and env.action_space.dtype == np.float32
    np.testing.assert_array_equal(env.action_space.low, -1.0)
    np.testing.assert_array_equal(env.action_space.high, 1.0)
    assert env.max_episode_steps == EPISODE_STEPS == 1000 and env.success_bar == SUCCESS_BARS["walk"] == 700
    assert H1Env("stand").success_bar == 800
    low, high = env.model.actuator_ctrlrange.T
    np.testing.assert_allclose(env.action_to_ctrl(-np.ones(19)), low)
    np.testing.assert_allclose(env.action_to_ctrl(np.ones(19)), high)
    np.testing.assert_allclose(env.action_to_ctrl(np.zeros(19)), (low + high) / 2)
    np.testing.assert_allclose(env.action_to_ctrl(env.ctrl_to_action(h1_model.HOME_QPOS[7:])), h1_model.HOME_QPOS[7:],
                               atol=1e-6)
    obs, info = env.reset(seed=3)
    assert obs.shape == (51,) and obs.dtype == np.float32
    np.testing.assert_allclose(obs[:26], h1_model.HOME_QPOS, atol=0.01 + 1e-7)
    assert np.any(np.abs(obs[:26] - h1_model.HOME_QPOS) > 1e-4) and np.all(obs[26:] == 0)
    action = env.action_space.sample()
    obs, reward, terminated, truncated, info = env.step(action)
    np.testing.assert_allclose(env.data.ctrl, env.action_to_ctrl(action))
    assert env.data.time == pytest.approx(10 * 0.002)
    np.testing.assert_allclose(obs, np.concatenate([env.data.qpos, env.data.qvel]).astype(np.float32))
    assert isinstance(reward, float) and 0.0 <= reward <= 1.0
    assert terminated is False and truncated is False and info["success"] is False
    assert {"stand_reward", "small_control", "move", "standing", "upright"} <= set(info)
    # The reward is a function of the data as the 10 physics steps left it (no extra forward pass).
    assert rewards.walk_reward(env.quantities())[0] == reward
    # Those derived quantities lag qpos by one physics step: a forward pass would move the head site.
    head = env.data.site_xpos[env.model.site("head").id].copy()
    mujoco.mj_forward(env.model, env.data)
    assert not np.allclose(head, env.data.site_xpos[env.model.site("head").id], atol=1e-9)


def test_truncation_and_success_flag():
    env = H1Env("stand")
    env.reset(seed=0)
    env.elapsed_steps = EPISODE_STEPS - 1
    env.episode_return = 800.0 - 0.5
    home = env.ctrl_to_action(h1_model.HOME_QPOS[7:])
    _, reward, terminated, truncated, info = env.step(home)
    assert truncated and not terminated and reward > 0.5 and info["success"] is True
    env.reset(seed=0)
    assert env.elapsed_steps == 0 and env.episode_return == 0.0


def test_seeded_resets():
    env = H1Env("run")

    def rollout(seed):
        obs, _ = env.reset(seed=seed)
        trajectory = [obs]
        for _ in range(5):
            trajectory.append(env.step(env.action_space.sample())[0])
        return np.stack(trajectory)

    first = rollout(7)
    np.testing.assert_array_equal(first, rollout(7))
    np.testing.assert_array_equal(first[0], H1Env("run").reset(seed=7)[0])  # a fresh env, same seed
    other = rollout(8)
    assert not np.allclose(first[0], other[0])
    assert env.reset()[0].shape == (51,)  # unseeded reset continues the generator


def test_home_pose_falls_like_humanoidbench():
    """HumanoidBench: holding the home pose on stand falls (pelvis < 0.2 m) at step ~94 with return ~67."""
    env = H1Env("stand")
    env.reset(seed=0)
    home = env.ctrl_to_action(h1_model.HOME_QPOS[7:])
    episode_return, first_reward = 0.0, None
    for step in range(1, 201):
        obs, reward, terminated, truncated, info = env.step(home)
        first_reward = reward if first_reward is None else first_reward
        episode_return += reward
        if terminated:
            break
    assert terminated and 60 <= step <= 130, step  # measured: step 95, return 67.3 (seed 0)
    assert 35.0 <= episode_return <= 100.0, episode_return
    assert obs[2] < 0.2 and env.data.qpos[0] < -0.5  # fell backwards
    assert first_reward == pytest.approx(0.974, abs=0.01)
    assert info["success"] is False and env.episode_return == pytest.approx(episode_return)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_steps(task):
    env = H1Env(task)
    obs, _ = env.reset(seed=1)
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert np.isfinite(obs).all() and 0.0 <= reward <= 1.0 and isinstance(info["success"], bool)


def test_registry_ids_sequence_and_presets():
    from sphere_rl import envs
    from sphere_rl.config import preset
    from sphere_rl.envs.catalog import H1_TASKS
    from sphere_rl.envs.h1 import TASKS

    assert H1_TASKS == TASKS
    assert envs.resolve_sequence("h1") == tuple(f"humanoidbench/h1-{t}" for t in ("stand", "walk", "pole", "slide", "run"))
    vec = envs.make("humanoidbench/h1-walk", num_envs=2, seed=0)
    try:
        assert vec.max_episode_steps == 1000
        obs, _ = vec.reset()
        assert obs.shape == (2, 51)
        obs, reward, terminated, truncated, info = vec.step(np.zeros((2, 19), np.float32))
        assert reward.shape == (2,) and info["success"].dtype == bool
    finally:
        vec.close()
    for name in ("h1-paper", "h1-quick"):
        cfg = preset(name)
        assert envs.resolve_sequence(cfg.run.tasks) == envs.resolve_sequence("h1") and cfg.net.n_experts == 10


def test_two_task_h1_crl_run(tiny_host_crl):
    """A tiny CRL run over stand then walk: the whole pipeline (envs, PPO, evaluation, tables), not learning."""
    from sphere_rl.protocols.runner import CONTINUAL_METRICS_FILE
    from sphere_rl.runs.logger import read_metrics

    run_dir, result = tiny_host_crl(["humanoidbench/h1-stand", "humanoidbench/h1-walk"], 64, "ppo.num_envs=2",
                                    "ppo.n_steps=16", "ppo.minibatch_size=16", "run.eval_episodes=2", "reg.name=sphere")
    assert result.tasks == ["humanoidbench/h1-stand", "humanoidbench/h1-walk"]
    evals = read_metrics(run_dir.path("eval.csv"))
    assert [(e["task_index"], e["eval_task_index"]) for e in evals] == [(0, 0), (1, 0), (1, 1)]
    # an untrained policy falls long before 1000 steps: a return far below every success bar, and no success
    assert all(0.0 < e["return"] < 200.0 and e["success"] == 0.0 for e in evals)
    train = read_metrics(run_dir.path("metrics.csv"))
    assert train and all(np.isfinite(row["reg/penalty"]) and row["reg/penalty"] > 0.0 for row in train)
    assert run_dir.path(CONTINUAL_METRICS_FILE).read_text().splitlines()[1].startswith("0,humanoidbench/h1-stand,")
