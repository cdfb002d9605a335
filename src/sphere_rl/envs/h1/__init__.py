"""HumanoidBench's Unitree-H1 locomotion tasks (stand, walk, run, pole, slide; stair held out), built in code.

`model` builds the position-controlled H1 and the scenes from MuJoCo Menagerie's `unitree_h1`
(`menagerie_h1_dir`, overridable with `$SPHERE_H1_ASSETS`), `rewards` holds the rewards and
terminations as pure functions, `env.H1Env` is the Gymnasium env. See `docs/humanoidbench.md`.
"""

from sphere_rl.envs.h1.env import EPISODE_STEPS, SUCCESS_BARS, H1Env
from sphere_rl.envs.h1.model import TASKS, build_model, build_spec, menagerie_h1_dir
from sphere_rl.envs.h1.rewards import Quantities, reward, terminated, tolerance

__all__ = [
    "EPISODE_STEPS",
    "SUCCESS_BARS",
    "TASKS",
    "H1Env",
    "Quantities",
    "build_model",
    "build_spec",
    "menagerie_h1_dir",
    "reward",
    "terminated",
    "tolerance",
]
