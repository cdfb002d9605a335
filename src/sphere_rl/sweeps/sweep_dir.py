"""The sweep directory: an index of jobs, one ordinary run directory per job, per-job status and locks.

```
SWEEP_DIR/
  sweep.json            index: every spec launched here and every job (id, preset, cell, seed, run_dir)
  runs/<job_id>/        the job's run directory (the format of `sphere train`)
  status/<job_id>.json  state (running / done / failed), attempts, host, pid, wall time, error
  locks/<job_id>.lock   held by the process running the job (released by the OS when it dies)
```
Launching a different spec into the same directory adds its jobs to the index (e.g. more seeds).
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from sphere_rl.runs.atomic import atomic_write_json
from sphere_rl.runs.lock import FileLock
from sphere_rl.sweeps.spec import Job, SweepSpec

__all__ = ["SweepDir", "INDEX_FILE", "NotASweepError"]

INDEX_FILE = "sweep.json"
INDEX_VERSION = 1


class NotASweepError(FileNotFoundError):
    """The directory has no sweep.json."""


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class SweepDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def open(cls, root: str | Path) -> "SweepDir":
        sweep = cls(root)
        if not (sweep.root / INDEX_FILE).is_file():
            raise NotASweepError(f"not a sweep directory: {sweep.root} ({INDEX_FILE} missing)")
        return sweep

    # --- layout -------------------------------------------------------------------------
    def run_dir(self, job_id: str) -> Path:
        return self.root / "runs" / job_id

    def status_path(self, job_id: str) -> Path:
        return self.root / "status" / f"{job_id}.json"

    def lock(self, job_id: str) -> FileLock:
        return FileLock(self.root / "locks" / f"{job_id}.lock", purpose=f"sweep job {job_id}")

    # --- index --------------------------------------------------------------------------
    @property
    def index(self) -> dict[str, Any]:
        return read_json(self.root / INDEX_FILE)

    @property
    def jobs(self) -> list[dict[str, Any]]:
        return self.index["jobs"]

    def register(self, spec: SweepSpec, jobs: list[Job]) -> dict[str, Any]:
        """Add ``spec`` and its jobs to the index (created if missing); returns the index."""
        self.root.mkdir(parents=True, exist_ok=True)
        guard = FileLock(self.root / "locks" / "index.lock", purpose="sweep index update")
        guard.acquire(wait_s=30.0)  # the index lock is held for milliseconds; wait for it rather than fail
        try:
            path = self.root / INDEX_FILE
            index = read_json(path) if path.is_file() else {"version": INDEX_VERSION, "specs": [], "jobs": []}
            spec_dict = spec.to_dict()
            if spec_dict not in index["specs"]:
                index["specs"].append(spec_dict)
            known = {job["job_id"] for job in index["jobs"]}
            index["jobs"] += [job.to_index() for job in jobs if job.job_id not in known]
            index["updated"] = _now()
            atomic_write_json(path, index)
            return index
        finally:
            guard.release()

    # --- status -------------------------------------------------------------------------
    def status(self, job_id: str) -> dict[str, Any]:
        """The job's status record; ``{"state": "pending"}`` when it never started."""
        path = self.status_path(job_id)
        try:
            return read_json(path)
        except FileNotFoundError:
            return {"state": "pending"}
        except ValueError:  # a torn write cannot happen (atomic), but a hand-edited file can
            return {"state": "unknown"}

    def write_status(self, job_id: str, **fields: Any) -> dict[str, Any]:
        record = {**self.status(job_id), **fields, "job_id": job_id, "updated": _now()}
        atomic_write_json(self.status_path(job_id), record)
        return record

    def states(self) -> dict[str, str]:
        """job_id -> state for every indexed job; a 'running' job whose lock is free is 'interrupted'."""
        out = {}
        for job in self.jobs:
            state = self.status(job["job_id"]).get("state", "pending")
            if state == "running" and not self.lock(job["job_id"]).is_locked():
                state = "interrupted"
            out[job["job_id"]] = state
        return out
