"""Many seeds of one configuration in one process: the fused iteration and the evaluation vmapped over
seeds (the PureJaxRL way), everything else per seed.

Each seed is an ordinary run: its own run directory with the same files, its own checkpoints and
exact resume, its own diagnostics. What is shared is the computation: every seed's step generator
(:meth:`Runner.steps`) asks for the same iteration or evaluation at the same point, and the group
computes those calls for all seeds at once (`JaxLoop.run_calls`). Seeds that are not at the same
point (a group resumed from checkpoints of different steps) are computed apart until they meet.

Only JAX-native envs (the built-in suite) can be vmapped: host (MuJoCo) envs keep one process per
seed, through `sphere sweep`.

A vmapped seed is not bit-identical to the same seed run alone: XLA compiles the batched program
differently (other fusions and loop orders on the batched arrays), so float rounding differs in
the last bits and grows through training; tests/test_multiseed.py bounds the difference. A group
is deterministic and resumes bit-identically (it resumes every seed from the newest checkpoint
step they all have, so the batch is the same as in an uninterrupted group).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Generator, Sequence

from tqdm.auto import tqdm

from sphere_rl import envs
from sphere_rl.config import Config, ConfigError
from sphere_rl.protocols.runner import Call, Runner, RunResult
from sphere_rl.runs import RunDir
from sphere_rl.runs.atomic import atomic_write_json

__all__ = ["GROUP_FILE", "SeedGroup", "create_group", "group_key", "is_group", "open_group"]

GROUP_FILE = "group.json"
"""A seed group's index in its folder: the seeds and their run directories (`seed_<s>/`)."""

_PER_SEED = ("seed", "run.name", "run.out_dir", "run.progress")
"""Config fields that may differ between the seeds of a group."""


def group_key(cfg: Config) -> str:
    """What the configs of one seed group share: the config as JSON without the per-seed fields."""
    import json

    flat = cfg.to_dict()
    flat.pop("seed", None)
    run = dict(flat.get("run", {}))
    for name in ("name", "out_dir", "progress"):
        run.pop(name, None)
    flat["run"] = run
    return json.dumps(flat, sort_keys=True)


class SeedGroup:
    """Runs `cfgs` (one config per seed, equal but for the seed, the run name and place) in lockstep.

    `run_dirs[i]` is seed i's run directory (or None: nothing written). The runners share one PPO
    and one set of compiled loops; seed i is `runners[i]`.
    """

    def __init__(self, cfgs: Sequence[Config], run_dirs: Sequence[RunDir | None] | None = None,
                 *, progress: bool | None = None):
        cfgs = [c.validate() for c in cfgs]
        if not cfgs:
            raise ConfigError("a seed group needs at least one config")
        run_dirs = list(run_dirs) if run_dirs is not None else [None] * len(cfgs)
        if len(run_dirs) != len(cfgs):
            raise ValueError(f"{len(cfgs)} configs but {len(run_dirs)} run directories")
        key = group_key(cfgs[0])
        for c in cfgs[1:]:
            if group_key(c) != key:
                raise ConfigError(f"seed group: configs must be equal except for {', '.join(_PER_SEED)}")
        seeds = [c.seed for c in cfgs]
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"seed group: seeds must differ, got {seeds}")
        native = [t for t in envs.resolve_sequence(cfgs[0].run.tasks) if not envs.is_jax_native(t)]
        if native and len(cfgs) > 1:
            raise ConfigError(f"run.tasks: {native[0]} runs on the host; many seeds in one process need "
                              "JAX-native envs (run one process per seed: sphere sweep)")
        self.cfgs = cfgs
        self.progress = cfgs[0].run.progress if progress is None else progress
        first = Runner(cfgs[0], run_dirs[0], progress=False)
        self.runners = [first] + [Runner(c, d, progress=False, share=first) for c, d in zip(cfgs[1:], run_dirs[1:])]
        self.timing: dict[str, float] = {}

    @property
    def seeds(self) -> list[int]:
        return [c.seed for c in self.cfgs]

    def _resume_step(self) -> int | None:
        """The newest checkpoint step every seed has (None when some seed has none: all start from 0)."""
        common: set[int] | None = None
        for r in self.runners:
            steps = set(r.run_dir.checkpoints.all_steps())
            common = steps if common is None else common & steps
        return max(common) if common else None

    def run(self, resume: bool = False) -> list[RunResult]:
        """Train (or resume) every seed; holds every run directory's writer lock throughout."""
        with contextlib.ExitStack() as stack:
            max_step = None
            if resume:
                if any(r.run_dir is None for r in self.runners):
                    raise ValueError("resume needs a run directory for every seed")
                for r in self.runners:
                    stack.enter_context(r.run_dir.lock("training: SeedGroup.run"))
                    r.run_dir.remove_stale_temp_files()
                common = self._resume_step()
                max_step = -1 if common is None else common
            else:
                for r in self.runners:
                    if r.run_dir is not None:
                        stack.enter_context(r.run_dir.lock("training: SeedGroup.run"))
            return self._drive([r.steps(resume, max_step=max_step) for r in self.runners])

    def _drive(self, gens: list[Generator[Call, Any, RunResult]]) -> list[RunResult]:
        """Advance every seed's generator; at each round compute the calls of the seeds that are furthest
        behind together (all seeds, while they are in step)."""
        n = len(gens)
        results: list[RunResult | None] = [None] * n
        pending: dict[int, Call] = {}
        for i, g in enumerate(gens):
            self._advance(i, g, None, pending, results, first=True)
        total = sum(r.cfg.iterations_per_task * r.cfg.batch_size * len(r.tasks) for r in self.runners)
        bar = tqdm(total=total, unit="step", unit_scale=True, mininterval=2.0, disable=not self.progress,
                   dynamic_ncols=True, desc=f"{n} seeds")
        try:
            while pending:
                key = min(c.key for c in pending.values())
                group = [i for i, c in pending.items() if c.key == key]
                call = pending[group[0]]
                if len(self.timing) < 1:
                    self.timing["training_started_at"] = time.time()
                if len(group) == 1:
                    outs = [call.loop.run_call(call.kind, call.own, call.shared)]
                else:
                    outs = call.loop.run_calls(call.kind, [pending[i].own for i in group], call.shared)
                if call.kind == "iteration":
                    bar.update(len(group) * self.runners[group[0]].cfg.batch_size)
                for i, out in zip(group, outs):
                    self._advance(i, gens[i], out, pending, results)
        finally:
            bar.close()
            for g in gens:
                g.close()
        return [r for r in results if r is not None]

    @staticmethod
    def _advance(i: int, gen: Generator[Call, Any, RunResult], value: Any, pending: dict[int, Call],
                 results: list[RunResult | None], first: bool = False) -> None:
        try:
            pending[i] = next(gen) if first else gen.send(value)
        except StopIteration as stop:
            pending.pop(i, None)
            results[i] = stop.value


# ---------------------------------------------------------------- group folders


def create_group(cfgs: Sequence[Config], out_dir: str | os.PathLike[str], name: str | None = None) -> list[RunDir]:
    """A folder `out_dir/name` holding one ordinary run directory per seed (`seed_<s>`) and `group.json`.

    `name` defaults to `<UTC YYYYmmdd-HHMMSS>-<hash of the shared config>-seeds`."""
    import json

    if name is None:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        name = f"{stamp}-{hashlib.sha256(group_key(cfgs[0]).encode()).hexdigest()[:8]}-seeds"
    root = Path(out_dir) / name
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; resume a group with `sphere train --resume {root}`")
    root.mkdir(parents=True, exist_ok=True)
    runs = [RunDir.create(root, name=f"seed_{c.seed}", config=c.to_dict(), seed=c.seed) for c in cfgs]
    atomic_write_json(root / GROUP_FILE, {"seeds": [c.seed for c in cfgs], "runs": [r.name for r in runs],
                                          "config": json.loads(group_key(cfgs[0]))})
    return runs


def is_group(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / GROUP_FILE).is_file()


def open_group(path: str | os.PathLike[str]) -> tuple[list[Config], list[RunDir]]:
    """The configs and run directories of the seed group at `path` (its `group.json`)."""
    import json

    root = Path(path)
    try:
        index = json.loads((root / GROUP_FILE).read_text(encoding="utf-8"))
        names = [str(n) for n in index["runs"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{root / GROUP_FILE} is not a readable seed-group index ({err})") from None
    runs = [RunDir.open(root / n) for n in names]
    try:
        cfgs = [Config.from_saved(r.config).validate() for r in runs]
    except ValueError as err:  # json.JSONDecodeError
        raise ConfigError(f"a config.json of {root} is not valid JSON ({err})") from None
    return cfgs, runs
