"""Launch a sweep on Ray: one task per job, one CPU each, progress lines, a failure summary at the end.

Local by default (``ray.init`` starts a private Ray instance with one worker per CPU); with
``address`` it joins an existing cluster (``ray start --head`` on SLURM, a KubeRay cluster, ...),
and the sweep directory must then be on storage every node mounts at the same path. Each job runs
in a fresh worker process (``max_calls=1``) with single-threaded XLA, so runs do not fight over
cores and no JAX state leaks from one job to the next. A worker that dies (killed, out of memory,
node lost) is retried by Ray up to ``retries`` times, and the retry resumes the job from its
latest checkpoint; a Python error in a job is recorded and does not stop the other jobs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from sphere_rl.sweeps.spec import Job, SweepSpec
from sphere_rl.sweeps.sweep_dir import SweepDir
from sphere_rl.sweeps.worker import SINGLE_THREAD_XLA_FLAGS

__all__ = ["launch", "SweepOutcome", "SweepLaunchError", "default_sweep_dir"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def default_sweep_dir(spec: SweepSpec, out_dir: str | Path = "runs/sweeps") -> Path:
    """``runs/sweeps/<spec name>``: the same spec always maps to the same directory."""
    return Path(out_dir) / spec.default_name


@dataclasses.dataclass
class SweepOutcome:
    """What one launch did: final state per job id, the failures with their errors, wall time."""

    root: Path
    states: dict[str, str]
    records: dict[str, dict[str, Any]]
    wall_s: float
    n_cpus: int

    @property
    def failed(self) -> dict[str, dict[str, Any]]:
        return {j: r for j, r in self.records.items() if self.states[j] == "failed"}

    @property
    def ok(self) -> bool:
        return all(state == "done" for state in self.states.values())

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for state in self.states.values():
            out[state] = out.get(state, 0) + 1
        return out


def _job_env() -> dict[str, str]:
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in SINGLE_THREAD_XLA_FLAGS.split():
        if flag.split("=")[0] not in flags:
            flags = f"{flags} {flag}".strip()
    return {"XLA_FLAGS": flags, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _ray_task(retries: int, num_gpus: float):
    import ray

    @ray.remote(num_cpus=1, num_gpus=num_gpus, max_retries=retries, max_calls=1)
    def sweep_jobs(sweep_root: str, jobs: list[dict[str, Any]], configs: list[dict[str, Any]],
                   submitted_at: float) -> list[dict[str, Any]]:
        entered_at = time.time()
        from sphere_rl.sweeps.worker import run_job_group

        return run_job_group(sweep_root, jobs, configs, timing={"submitted_at": submitted_at, "entered_at": entered_at})

    return sweep_jobs


def seed_groups(jobs: list[Job], n_cpus: int, seeds_per_process: int = 0) -> list[list[Job]]:
    """The jobs as Ray tasks: jobs that differ only in their seed and train on JAX-native envs share a
    process, vmapped over seeds (:mod:`sphere_rl.protocols.multiseed`), up to `seeds_per_process` of
    them (0: automatic, enough groups to keep `n_cpus` busy and at most 16 seeds each; 1: one job per
    process). Host-env jobs always run one per process."""
    from sphere_rl import envs
    from sphere_rl.protocols.multiseed import group_key

    if seeds_per_process == 1:
        return [[job] for job in jobs]
    size = seeds_per_process or max(1, min(16, -(-len(jobs) // max(n_cpus, 1))))
    cells: dict[str, list[Job]] = {}
    singles: list[list[Job]] = []
    for job in jobs:
        if all(envs.is_jax_native(t) for t in envs.resolve_sequence(job.config.run.tasks)):
            cells.setdefault(group_key(job.config), []).append(job)
        else:
            singles.append([job])
    groups = [cell[i:i + size] for cell in cells.values() for i in range(0, len(cell), size)]
    return groups + singles


class SweepLaunchError(RuntimeError):
    """Ray could not be started or reached (the CLI prints it and exits with code 2)."""


def _init_ray(address: str | None, num_cpus: int | None) -> int:
    """Start a local Ray or join ``address`` (or $RAY_ADDRESS, as on a KubeRay head); returns its CPUs."""
    import ray

    env = {"env_vars": _job_env()}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, runtime_env=env, log_to_driver=False)
            else:
                ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                         runtime_env=env)
        except Exception as err:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError from Ray
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise SweepLaunchError(f"could not start or reach {where}: {err}".splitlines()[0]) from None
    return int(ray.cluster_resources().get("CPU", 1))


def launch(spec: SweepSpec, root: str | Path, *, address: str | None = None, num_cpus: int | None = None,
           retries: int = 2, num_gpus: float = 0.0, poll_s: float = 1.0, progress: bool = True,
           stream: TextIO | None = None, seeds_per_process: int = 0) -> SweepOutcome:
    """Run every job of ``spec`` that is not done yet under ``root``; returns when all have ended.
    ``seeds_per_process``: see :func:`seed_groups`."""
    stream = stream or sys.stdout
    jobs = spec.jobs()  # validates every config before anything is written
    sweep = SweepDir(Path(root).resolve())  # workers on other nodes get an absolute path
    sweep.register(spec, jobs)
    by_id: dict[str, Job] = {job.job_id: job for job in jobs}
    start = time.perf_counter()

    def say(text: str) -> None:
        if bar is not None:
            bar.write(text, file=stream)
        else:
            print(text, file=stream, flush=True)

    states: dict[str, str] = {}
    records: dict[str, dict[str, Any]] = {}
    todo: list[Job] = []
    # a job killed with its sweep still says `running` from that launch: show only this launch's attempts
    attempts_before: dict[str, int] = {}
    for job in jobs:
        record = sweep.status(job.job_id)
        if record.get("state") == "done" and (sweep.run_dir(job.job_id) / "summary.json").is_file():
            states[job.job_id], records[job.job_id] = "done", record
        else:
            todo.append(job)
            attempts_before[job.job_id] = int(record.get("attempts", 0))

    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="job", file=sys.stderr,
               disable=not (progress and sys.stderr.isatty()),
               dynamic_ncols=True, desc=sweep.root.name)
    say(f"sweep {sweep.root}: {len(jobs)} jobs ({spec.n_cells} cells x {len(spec.seeds)} seeds), "
        f"{len(jobs) - len(todo)} already done")
    if not todo:
        bar.close()
        return SweepOutcome(sweep.root, states, records, time.perf_counter() - start, 0)

    import ray

    n_cpus = _init_ray(address, num_cpus)
    groups = seed_groups(todo, n_cpus, seeds_per_process)
    grouped = sum(len(g) for g in groups if len(g) > 1)
    say(f"Ray: {n_cpus} CPUs{' at ' + address if address else ' (local)'}; one process per CPU, XLA single-threaded"
        + (f"; {grouped} jobs in {sum(len(g) > 1 for g in groups)} seed groups (vmapped seeds)" if grouped else ""))
    task = _ray_task(retries, num_gpus)
    pending: dict[Any, list[Job]] = {}
    for group in groups:
        ref = task.remote(str(sweep.root), [j.to_index() for j in group], [j.config.to_dict() for j in group],
                          time.time())
        pending[ref] = group
        for job in group:
            states[job.job_id] = "queued"
    shown: dict[str, str] = {}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=poll_s)
            for job in (j for group in pending.values() for j in group):  # running: from the status files
                record = sweep.status(job.job_id)
                if (running_now(record, attempts_before[job.job_id])
                        and shown.get(job.job_id) != f"running{record.get('attempts')}"):
                    shown[job.job_id] = f"running{record.get('attempts')}"
                    what = "resumed" if record.get("resumed") else "running"
                    attempt = f" (attempt {record['attempts']})" if record.get("attempts", 1) > 1 else ""
                    say(f"  {what:<8} {job.job_id}  {job.label}{attempt}")
            for ref in ready:
                group = pending.pop(ref)
                try:
                    group_records = ray.get(ref)
                except ray.exceptions.RayError as err:  # the worker died more often than `retries` allows
                    text = _ANSI.sub("", str(err))
                    line = f"{type(err).__name__}: " + (text.strip().splitlines() or [""])[-1][:300]
                    group_records = [sweep.write_status(job.job_id, state="failed", error=text[-4000:], error_line=line)
                                     for job in group]
                for job, record in zip(group, group_records):
                    _report(job, record, states, records, say)
                    bar.update(1)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)
        for job in (j for group in pending.values() for j in group):
            states[job.job_id] = "interrupted"
        say("interrupted: running jobs were stopped; run the same command again to resume them")
    finally:
        bar.close()
    outcome = SweepOutcome(sweep.root, states, records, time.perf_counter() - start, n_cpus)
    _print_summary(outcome, by_id, stream)
    return outcome


def running_now(record: dict[str, Any], attempts_before: int) -> bool:
    """Whether a status record shows an attempt of this launch running. A job whose sweep was killed keeps
    its last record (`running`, attempt n) until the next launch's worker writes attempt n + 1: that stale
    record is not this launch's and is not reported."""
    return record.get("state") == "running" and int(record.get("attempts", 0)) > attempts_before


def _report(job: Job, record: dict[str, Any], states: dict[str, str], records: dict[str, dict[str, Any]],
            say: Any) -> None:
    """Record a job's final state and print its line."""
    state = record.get("state", "failed")
    states[job.job_id], records[job.job_id] = state, record
    if state == "done":
        detail = "already done" if record.get("skipped") else (
            f"{record.get('wall_s', 0):.0f} s, average success {record.get('average_success', float('nan')):.3f}"
            + (f", in a group of {record['group_size']}" if record.get("group_size", 1) > 1 else ""))
        say(f"  done     {job.job_id}  {job.label}  ({detail})")
    elif state == "busy":
        holder = record.get("holder") or {}
        say(f"  busy     {job.job_id}  {job.label}  (run by pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')} since {holder.get('since', '?')}; left to it)")
    else:
        say(f"  FAILED   {job.job_id}  {job.label}  {record.get('error_line', '')}")


def _print_summary(outcome: SweepOutcome, jobs: dict[str, Job], stream: TextIO) -> None:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(outcome.counts().items()))
    print(f"sweep finished in {outcome.wall_s:.0f} s: {counts}", file=stream)
    for job_id, record in outcome.failed.items():
        print(f"  failed {job_id} ({jobs[job_id].label}): {record.get('error_line', 'unknown error')}\n"
              f"    full error: {outcome.root / 'status' / (job_id + '.json')}", file=stream)
    busy = [j for j, s in outcome.states.items() if s == "busy"]
    if busy:
        print(f"  {len(busy)} job(s) are being run by another launch; run this command again later to collect them",
              file=stream)
    print(f"results: sphere results {outcome.root}   report: sphere report {outcome.root} -o report.html", file=stream)
