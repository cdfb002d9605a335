"""Kill -9 and resume, measured: a small CRL run killed at chosen or random moments must resume to
exactly the numbers of an uninterrupted run (docs/reliability.md).

Every run here goes through the real command line (`sphere train ...`, `sphere train --resume RUN`)
in a child process that is killed with SIGKILL: nothing is flushed, no `finally` runs.

- :func:`kill_point_trial` kills at a named point (the suite's matrix): ``iteration:N`` (right after
  the N-th training iteration of the process returns), ``checkpoint_write:N`` (halfway through
  writing the N-th checkpoint's temporary file), ``after_checkpoint:N`` (right after the N-th
  checkpoint is on disk; the last one of a run is its final checkpoint, before summary.json);
  several points kill the same run again after each resume (double kill).
- :func:`random_trials` kills at random moments drawn over a reference run's wall time
  (`scripts/kill_resume.py`), resuming, and sometimes killing again, until the run finishes.

Run directories are compared without the timing columns (`steps_per_s`, `wall_time_s`,
`ntk/seconds`), the only ones that differ between identical runs, and without summary.json's
`wall_time_s` and `run_dir`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sphere_rl.runs.logger import last_env_step, read_metrics

__all__ = ["LONGER_CRL", "SMALL_CRL", "compare_runs", "kill_point_trial", "random_trials", "train_argv"]

SMALL_CRL = (
    "net.actor=topk_moe", "net.n_experts=3", "net.top_k=2", "net.hidden_sizes=16,16", "net.gate_hidden_sizes=16",
    "net.critic_hidden_sizes=16,16", "ppo.num_envs=16", "ppo.n_steps=8", "ppo.minibatch_size=32", "ppo.n_epochs=2",
    "run.tasks=arm2", "run.steps_per_task=768", "run.eval_every=256", "run.log_every=128",
    "run.checkpoint_every=256", "run.keep_checkpoints=2", "run.eval_episodes=4", "run.tensorboard=false",
    "run.progress=false", "reg.name=sphere", "diag.n_states=32", "diag.probe_steps=2",
)
"""Two tasks of the built-in suite, 6 iterations and 3 checkpoints each, SPHERE and diagnostics on: every
file resume reads is exercised (checkpoints, probes, anchors, the three CSV tables)."""

LONGER_CRL = (*SMALL_CRL, "run.steps_per_task=3072", "run.eval_every=1024", "run.log_every=256",
              "run.checkpoint_every=512")
"""SMALL_CRL with 4x the budget (24 iterations and 6 checkpoints per task), for random kill moments: training,
not process start-up, takes most of its wall time."""

TIMING_COLUMNS = frozenset({"steps_per_s", "wall_time_s", "ntk/seconds"})
SUMMARY_SKIP = frozenset({"wall_time_s", "run_dir"})
TABLES = ("metrics.csv", "eval.csv", "diagnostics.csv", "continual_metrics.csv", "events.csv")


_CHILD = (
    "import sys\n"
    "from sphere_rl.experiments.kill_resume import child_setup\n"
    "child_setup(sys.argv[1])\n"
    "from sphere_rl.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)
"""The child program: a user's `sphere` command, with a kill point installed first (the library itself
never imports `cli`)."""


def train_argv(out_dir: str | os.PathLike[str], name: str, *, resume: bool = False, kill: str = "",
               overrides: tuple[str, ...] = SMALL_CRL) -> list[str]:
    """The child process's command line: `sphere train ...` (or `--resume`) with kill point `kill`."""
    run = ["train", "--resume", str(Path(out_dir) / name)] if resume else [
        "train", "--preset", "demo", "--out-dir", str(out_dir), "--name", name, *overrides]
    return [sys.executable, "-c", _CHILD, kill, *run]


def _run_child(argv: list[str], kill_after_s: float | None = None, timeout_s: float = 600,
               kill_at_step: tuple[Path, int, float] | None = None) -> int:
    """Run a child; SIGKILL it after `kill_after_s` seconds, or `kill_at_step = (run, step, jitter_s)`:
    `jitter_s` seconds after `run/metrics.csv` first shows an env step >= `step`. Returns its exit code
    (-9 when killed)."""
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        try:
            if kill_after_s is not None:
                try:
                    proc.wait(timeout=kill_after_s)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
            elif kill_at_step is not None:
                run, step, jitter = kill_at_step
                while proc.poll() is None and last_env_step(run / "metrics.csv") < step:
                    time.sleep(0.02)
                if proc.poll() is None:
                    time.sleep(jitter)
                    proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=timeout_s)
        except BaseException:
            proc.kill()
            raise
    if proc.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"child failed with exit code {proc.returncode}: {' '.join(argv)}\n{err[-2000:]}")
    return proc.returncode


def _table(path: Path) -> list[dict[str, Any]] | None:
    if not path.exists():
        return None
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in read_metrics(path)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # NaN in both
    if isinstance(a, dict) and isinstance(b, dict):  # timing entries (also nested in summary.json) aside
        keys = a.keys() - TIMING_COLUMNS
        return keys == b.keys() - TIMING_COLUMNS and all(_same(a[k], b[k]) for k in keys)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def compare_runs(reference: str | os.PathLike[str], other: str | os.PathLike[str]) -> list[str]:
    """Where two finished run directories differ (empty: the same numbers, timing aside)."""
    reference, other = Path(reference), Path(other)
    problems = []
    for name in TABLES:
        a, b = _table(reference / name), _table(other / name)
        if a is None or b is None:
            if (a is None) != (b is None):
                problems.append(f"{name}: present in only one run")
            continue
        if len(a) != len(b):
            problems.append(f"{name}: {len(a)} rows vs {len(b)}")
            continue
        bad = [i for i, (x, y) in enumerate(zip(a, b)) if not _same(x, y)]
        if bad:
            cols = sorted(k for k in a[bad[0]] if not _same(a[bad[0]].get(k), b[bad[0]].get(k)))
            problems.append(f"{name}: {len(bad)} rows differ, first at row {bad[0] + 1} in {cols[:5]}")
    try:
        sa, sb = (json.loads((p / "summary.json").read_text()) for p in (reference, other))
    except FileNotFoundError:
        return problems + ["summary.json missing"]
    for key in sorted((sa.keys() | sb.keys()) - SUMMARY_SKIP):
        if not _same(sa.get(key), sb.get(key)):
            problems.append(f"summary.json: {key} differs")
    return problems


def reference_run(work: Path) -> tuple[Path, float]:
    """An uninterrupted run (`work/reference`) and its wall time in seconds."""
    return _timed_reference(work)[:2]


def _timed_reference(work: Path, overrides: tuple[str, ...] = SMALL_CRL) -> tuple[Path, float, float]:
    """(run, wall time, seconds until its config.json was written): the reference run and its timeline."""
    start_wall, start = time.time(), time.perf_counter()
    _run_child(train_argv(work, "reference", overrides=overrides))
    run = work / "reference"
    return run, time.perf_counter() - start, max((run / "config.json").stat().st_mtime - start_wall, 0.0)


def kill_point_trial(work: Path, name: str, kill_points: list[str]) -> dict[str, Any]:
    """Start a run, kill it at the first point; resume and kill at the next; ...; resume to the end."""
    killed = []
    for i, point in enumerate(kill_points):
        rc = _run_child(train_argv(work, name, resume=i > 0, kill=point))
        killed.append(rc == -signal.SIGKILL)
    _run_child(train_argv(work, name, resume=True))
    return {"name": name, "kill_points": kill_points, "killed": killed}


def _finish(work: Path, name: str, rng: random.Random, wall: float, double_kill: float,
            overrides: tuple[str, ...], max_attempts: int = 6) -> list[float | None]:
    """Resume `name` until it completes; each resume is itself killed with probability `double_kill`."""
    kills: list[float | None] = []
    run = work / name
    for _ in range(max_attempts):
        if (run / "summary.json").exists():
            return kills
        fresh = not (run / "config.json").exists()  # killed before the run directory was written
        delay = rng.uniform(0.0, wall) if rng.random() < double_kill else None
        rc = _run_child(train_argv(work, name, resume=not fresh, overrides=overrides), kill_after_s=delay)
        kills.append(delay if rc == -signal.SIGKILL else None)
    return kills


def _stage(run: Path) -> str:
    """How far a killed run had got: what is on disk."""
    if not (run / "config.json").exists():
        return "no run directory yet"
    steps = sorted(p.name for p in (run / "checkpoints").glob("ckpt_*.ckpt")) if (run / "checkpoints").is_dir() else []
    rows = len(read_metrics(run / "metrics.csv")) if (run / "metrics.csv").exists() else 0
    temp = " + a cut temp file" if list(run.rglob(".*.tmp")) else ""
    if not steps:
        return f"no checkpoint yet, {rows} metrics rows{temp}"
    return f"last checkpoint at env step {int(steps[-1][5:17])}, {rows} metrics rows{temp}"


def random_trials(n: int, work: str | os.PathLike[str], seed: int = 0, double_kill: float = 0.25,
                  overrides: tuple[str, ...] = LONGER_CRL) -> dict[str, Any]:
    """`n` runs, each killed at a random point of its training, then resumed (a resume is itself killed
    again, at a moment uniform over the reference's wall time, with probability `double_kill`) until it
    finishes; each compared with the uninterrupted reference.

    The kill point: an env step drawn uniformly over the run's budget; the run is killed a random
    0-0.1 s after its metrics.csv first shows that step (a row is written every `run.log_every` steps),
    so kills fall anywhere in training: inside iterations, evaluations, diagnostics, checkpoint writes."""
    from sphere_rl import envs
    from sphere_rl.config import preset

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    cfg = preset("demo", list(overrides)).validate()
    total = cfg.run.steps_per_task * len(envs.resolve_sequence(cfg.run.tasks))
    ref, wall, created = _timed_reference(work, overrides)
    trials: list[dict[str, Any]] = []
    finished_first = 0
    while len(trials) < n:
        i = len(trials)
        name = f"trial-{i:03d}"
        target, jitter = rng.randrange(total), rng.uniform(0.0, 0.1)
        rc = _run_child(train_argv(work, name, overrides=overrides), kill_at_step=(work / name, target, jitter))
        if rc != -signal.SIGKILL:  # finished within the jitter after its last row: not a kill, draw again
            finished_first += 1
            shutil.rmtree(work / name)
            if finished_first > 5 * n:
                raise RuntimeError("the runs keep finishing before the kill moment")
            continue
        at_kill = _stage(work / name)
        resumes = _finish(work, name, rng, wall, double_kill, overrides)
        problems = compare_runs(ref, work / name)
        trials.append({"trial": i, "target_env_step": target, "jitter_s": round(jitter, 3), "at_kill": at_kill,
                       "resume_kills_after_s": resumes, "identical": not problems, "problems": problems})
        print(f"trial {i + 1}/{n}: killed {jitter:.2f} s after env step {target} ({at_kill}), {len(resumes)} resume(s) "
              f"({sum(r is not None for r in resumes)} killed again): "
              + ("identical" if not problems else "DIFFERENT: " + "; ".join(problems)), flush=True)
    return {"overrides": list(overrides), "reference_wall_s": round(wall, 2), "run_dir_created_s": round(created, 2),
            "seed": seed, "double_kill": double_kill, "total_env_steps": total,
            "redrawn_finished_before_kill": finished_first, "n": n,
            "identical": sum(t["identical"] for t in trials), "trials": trials}


# ---------------------------------------------------------------- the child process


def _install_kill_point(point: str) -> None:
    """Make this process SIGKILL itself at `point` (see the module docstring)."""
    kind, _, count = point.partition(":")
    n = int(count or 1)
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)  # noqa: E731
    calls = {"n": 0}
    if kind == "iteration":
        from sphere_rl.algo.jax_loop import JaxLoop

        real_init = JaxLoop.__init__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            real_init(self, *args, **kwargs)
            real_iteration = self.iteration

            def iteration(*a: Any) -> Any:
                out = real_iteration(*a)
                calls["n"] += 1
                if calls["n"] == n:
                    die()
                return out

            self.iteration = iteration

        JaxLoop.__init__ = init
    elif kind in ("checkpoint_write", "after_checkpoint"):
        from sphere_rl.runs import checkpoint

        real_write = checkpoint.atomic_write_bytes

        def write(path: Any, data: bytes) -> Path:
            calls["n"] += 1
            if kind == "checkpoint_write" and calls["n"] == n:
                path = Path(path)
                tmp = path.with_name(f".{path.name}.killed.tmp")  # as atomic_write_bytes names its temp file
                with open(tmp, "wb") as fh:
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                    os.fsync(fh.fileno())
                die()
            out = real_write(path, data)
            if kind == "after_checkpoint" and calls["n"] == n:
                die()
            return out

        checkpoint.atomic_write_bytes = write
    else:
        raise ValueError(f"unknown kill point {point!r} (iteration:N, checkpoint_write:N, after_checkpoint:N)")


def child_setup(kill: str) -> None:
    """In the child: one XLA thread (children may run beside each other), then the kill point, if any."""
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    if kill:
        _install_kill_point(kill)
