"""Built-in env ids and sequences: add an env with one `register(...)` line here."""

from __future__ import annotations

from sphere_rl.envs.arm import ARM, ARM_SEQUENCES, ARM_TASKS
from sphere_rl.envs.functional import FunctionalTask
from sphere_rl.envs.registry import register, register_sequence

for _task in ARM_TASKS.values():
    register(_task.env_id, FunctionalTask(ARM, _task.make_params), description=_task.description, family="arm")

for _name, (_env_ids, _description) in ARM_SEQUENCES.items():
    register_sequence(_name, _env_ids, _description)
