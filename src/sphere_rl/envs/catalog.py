"""Built-in env ids and sequences: add an env with one `register(...)` line here."""

from __future__ import annotations

from functools import partial

from sphere_rl.envs.arm import ARM, ARM_SEQUENCES, ARM_TASKS
from sphere_rl.envs.functional import FunctionalTask
from sphere_rl.envs.metaworld import CW10_TASKS, METAWORLD_TASKS, MetaWorldEnv
from sphere_rl.envs.registry import register, register_sequence

for _task in ARM_TASKS.values():
    register(_task.env_id, FunctionalTask(ARM, _task.make_params), description=_task.description, family="arm")

for _name, (_env_ids, _description) in ARM_SEQUENCES.items():
    register_sequence(_name, _env_ids, _description)

for _task in METAWORLD_TASKS:
    register(f"metaworld/{_task}-v3", partial(MetaWorldEnv, _task),
             description=f"MetaWorld v3 {_task}, goal-observable, one fixed variation (Continual World)", family="metaworld")
    register(f"metaworld-mt1/{_task}-v3", partial(MetaWorldEnv, _task, variation="mt1"),
             description=f"MetaWorld v3 {_task}, goal-observable, one of MT1's 50 variations per episode", family="metaworld")

_CW10 = tuple(f"metaworld/{task}-v3" for task in CW10_TASKS)
register_sequence("cw10", _CW10, "Continual World CW10: 10 MetaWorld v3 tasks, one fixed variation each")
register_sequence("cw20", _CW10 + _CW10, "Continual World CW20: CW10 twice")
register_sequence("cw10-mt1", tuple(f"metaworld-mt1/{task}-v3" for task in CW10_TASKS),
                  "CW10 with MT1 variations (a new object/goal placement every episode)")


def _h1_env(task: str, **kwargs):
    from sphere_rl.envs.h1.env import H1Env  # imports MuJoCo only when an H1 env is built

    return H1Env(task, **kwargs)


H1_TASKS = ("stand", "walk", "run", "pole", "slide", "stair")
"""HumanoidBench H1 tasks (the same as `envs.h1.TASKS`, listed here so that importing the registry stays light)."""

H1_HELD_OUT = ("stair",)
"""H1 tasks in no sequence: their states probe the features outside the training sequence."""

for _task in H1_TASKS:
    _held_out = "; held out: in no sequence" if _task in H1_HELD_OUT else ""
    register(f"humanoidbench/h1-{_task}", partial(_h1_env, _task),
             description=f"HumanoidBench Unitree H1 {_task} (position control, 1000-step episodes{_held_out}; "
                         "docs/humanoidbench.md)",
             family="humanoidbench")

register_sequence("h1", tuple(f"humanoidbench/h1-{t}" for t in ("stand", "walk", "pole", "slide", "run")),
                  "HumanoidBench H1 in the official SPHERE script's order: stand, walk, pole, slide, run")
