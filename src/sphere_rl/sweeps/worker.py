"""Run one sweep job in this process: take its lock, then skip, resume or start it, and record its status.

This is what a Ray task calls (:mod:`sphere_rl.sweeps.launch`), and it has no Ray in it, so it can
be called and tested directly. The job's lock is held for the whole run: a second launch of the
same sweep, or a retry racing a still-running attempt, finds it held and leaves the job alone.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from typing import Any

from sphere_rl.runs.lock import LockHeldError
from sphere_rl.sweeps.sweep_dir import SweepDir

__all__ = ["run_job", "run_job_group", "SINGLE_THREAD_XLA_FLAGS"]

SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
"""XLA flags for one run per CPU: without them every run spreads over all cores and they fight."""


def _error_text(err: BaseException) -> str:
    lines = traceback.format_exception(type(err), err, err.__traceback__)
    return "".join(lines)[-4000:]


def run_job(sweep_root: str, job: dict[str, Any], config: dict[str, Any],
            timing: dict[str, float] | None = None) -> dict[str, Any]:
    """Run (or skip, or resume) one job; returns its final status record. Never raises for a job error:
    the error is recorded (``state: failed``) so one failed job never stops the others.

    ``timing`` (wall-clock ``time.time()`` stamps such as ``submitted_at``) is stored with the status,
    next to ``ready_at`` (the runner built, training about to start), to measure start-up cost."""
    from sphere_rl.compilation_cache import enable_compilation_cache
    from sphere_rl.config import Config
    from sphere_rl.protocols.runner import Runner
    from sphere_rl.runs import RunDir

    enable_compilation_cache()  # jobs of one sweep share their compiled programs through the disk cache
    sweep = SweepDir(sweep_root)
    job_id = job["job_id"]
    lock = sweep.lock(job_id)
    try:  # `sphere sweep --status` probes locks for microseconds: do not mistake it for a runner
        lock.acquire(wait_s=2.0)
    except LockHeldError as err:
        return {"job_id": job_id, "state": "busy", "holder": err.holder}
    try:
        run_path = sweep.run_dir(job_id)
        if (run_path / "summary.json").is_file():
            record = sweep.status(job_id)
            if record.get("state") != "done":  # finished, but its status was never written (killed right after)
                record = sweep.write_status(job_id, state="done")
            return {**record, "job_id": job_id, "skipped": True}
        previous = sweep.status(job_id)
        attempt = int(previous.get("attempts", 0)) + 1
        resume = (run_path / "config.json").is_file()
        sweep.write_status(job_id, state="running", attempts=attempt, resumed=resume,
                           host=socket.gethostname(), pid=os.getpid(), error=None,
                           started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        start = time.perf_counter()
        try:
            cfg = Config.from_saved(config).validate()
            run_dir = RunDir.create(run_path.parent, name=job_id, config=cfg.to_dict(), seed=cfg.seed,
                                    exist_ok=resume, manifest_extra={"sweep": str(sweep.root), "job_id": job_id})
            runner = Runner(cfg, run_dir, progress=False)
            sweep.write_status(job_id, timing={**(timing or {}), "ready_at": time.time()})
            result = runner.run(resume=resume)
        except Exception as err:  # noqa: BLE001 - recorded, reported by the launcher
            return sweep.write_status(job_id, state="failed", error=_error_text(err),
                                      error_line=f"{type(err).__name__}: {err}".splitlines()[0][:300],
                                      wall_s=time.perf_counter() - start)
        timing = {**sweep.status(job_id).get("timing", {}), **runner.timing, "finished_at": time.time()}
        return sweep.write_status(job_id, state="done", wall_s=time.perf_counter() - start, timing=timing,
                                  average_success=result.average_success, env_steps=result.env_steps)
    finally:
        lock.release()


def run_job_group(sweep_root: str, jobs: list[dict[str, Any]], configs: list[dict[str, Any]],
                  timing: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Run jobs that differ only in their seed as one seed group: one process, vmapped
    (:mod:`sphere_rl.protocols.multiseed`). Returns one status record per job, in order.

    Each job keeps its own lock, run directory and status, exactly as :func:`run_job` would leave them:
    a busy job is left to its holder, a finished one is skipped, the others train together (resuming
    from their newest common checkpoint when any of them had started)."""
    if len(jobs) == 1:
        return [run_job(sweep_root, jobs[0], configs[0], timing)]
    from sphere_rl.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    sweep = SweepDir(sweep_root)
    records: dict[str, dict[str, Any]] = {}
    held: list[tuple[dict[str, Any], dict[str, Any], Any]] = []
    try:
        for job, config in zip(jobs, configs):
            job_id = job["job_id"]
            lock = sweep.lock(job_id)
            try:
                lock.acquire(wait_s=2.0)
            except LockHeldError as err:
                records[job_id] = {"job_id": job_id, "state": "busy", "holder": err.holder}
                continue
            if (sweep.run_dir(job_id) / "summary.json").is_file():
                record = sweep.status(job_id)
                if record.get("state") != "done":
                    record = sweep.write_status(job_id, state="done")
                records[job_id] = {**record, "job_id": job_id, "skipped": True}
                lock.release()
                continue
            held.append((job, config, lock))
        if held:
            records.update(_train_group(sweep, held, timing))
    finally:
        for _, _, lock in held:
            lock.release()
    return [records[job["job_id"]] for job in jobs]


def _train_group(sweep: SweepDir, held: list[tuple[dict[str, Any], dict[str, Any], Any]],
                 timing: dict[str, float] | None) -> dict[str, dict[str, Any]]:
    """Train the held jobs as one seed group; their status records by job id."""
    from sphere_rl.config import Config
    from sphere_rl.protocols.multiseed import SeedGroup
    from sphere_rl.runs import RunDir

    ids = [job["job_id"] for job, _, _ in held]
    resume = any((sweep.run_dir(i) / "config.json").is_file() for i in ids)
    for i in ids:
        previous = sweep.status(i)
        sweep.write_status(i, state="running", attempts=int(previous.get("attempts", 0)) + 1, resumed=resume,
                           host=socket.gethostname(), pid=os.getpid(), error=None, group=ids,
                           started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    start = time.perf_counter()
    try:
        cfgs = [Config.from_saved(config).validate() for _, config, _ in held]
        run_dirs = [RunDir.create(sweep.run_dir(i).parent, name=i, config=c.to_dict(), seed=c.seed, exist_ok=True,
                                  manifest_extra={"sweep": str(sweep.root), "job_id": i, "seed_group": ids})
                    for i, c in zip(ids, cfgs)]
        group = SeedGroup(cfgs, run_dirs, progress=False)
        for i in ids:
            sweep.write_status(i, timing={**(timing or {}), "ready_at": time.time()})
        results = group.run(resume=resume)
    except Exception as err:  # noqa: BLE001 - recorded for every job of the group, reported by the launcher
        wall = time.perf_counter() - start
        return {i: sweep.write_status(i, state="failed", error=_error_text(err), wall_s=wall,
                                      error_line=f"{type(err).__name__}: {err}".splitlines()[0][:300]) for i in ids}
    wall = time.perf_counter() - start
    out = {}
    for i, result in zip(ids, results):
        stamps = {**sweep.status(i).get("timing", {}), **group.timing, "finished_at": time.time()}
        out[i] = sweep.write_status(i, state="done", wall_s=wall, timing=stamps, group_size=len(ids),
                                    average_success=result.average_success, env_steps=result.env_steps)
    return out
