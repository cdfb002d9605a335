"""Diagnose a saved run's checkpoint on a probe set (`sphere diagnose`): r_e(K), r_e(A) and plasticity metrics."""

from __future__ import annotations

import time
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from sphere_rl import envs
from sphere_rl.diagnostics.probe import ProbeSet, subsample
from sphere_rl.protocols.evaluate import require_checkpoint, saved_config
from sphere_rl.config import ntk_method
from sphere_rl.protocols.runner import Runner
from sphere_rl.runs import RunDir
from sphere_rl.runs.atomic import atomic_write_json


def _load_probe_file(path: str) -> ProbeSet:
    if not Path(path).is_file():
        raise FileNotFoundError(f"probe file {path!r} does not exist")
    try:
        if path.endswith(".npy"):
            return ProbeSet.from_array(np.load(path, allow_pickle=False), task=Path(path).stem)
        return ProbeSet.load(path)
    except (OSError, EOFError, TypeError, ValueError, zipfile.BadZipFile) as err:  # not an array of states
        raise ValueError(f"--probe {path!r} holds no (N, obs_dim) probe states: {err}".splitlines()[0]) from None


def diagnose_run(
    path: str,
    *,
    step: int | None = None,
    task_index: int | None = None,
    probe: str | None = None,
    n_states: int | None = None,
    ntk: bool = True,
    method: str | None = None,
    reduction: str | None = None,
    n_eigenvalues: int = 10,
    out: str | None = None,
) -> dict[str, Any]:
    """Diagnostics of one checkpoint (latest good one by default) on a probe set.

    The probe is `probe` (a .npz written by a run, or an .npy array of raw states) or else the run's
    stored probe set of `task_index` (default: the task the checkpoint was training), drawn afresh if
    the run has none. `n_states` subsamples it. Writes the report as JSON (default
    `RUN_DIR/diagnose_<step>_task<t>.json`) and returns it.
    """
    run_dir = RunDir.open(path)
    overrides: dict[str, Any] = {}
    if method:
        overrides["diag.ntk_method"] = method
    if reduction:
        overrides["diag.ntk_reduction"] = reduction
    cfg = saved_config(run_dir).override(overrides).validate()
    # bad arguments are refused here, before the agent is built and compiled
    n_tasks = len(envs.resolve_sequence(cfg.run.tasks))
    if task_index is not None and not 0 <= task_index < n_tasks:
        raise ValueError(f"--task must be in [0, {n_tasks - 1}], got {task_index}")
    if n_states is not None and n_states < 1:
        raise ValueError(f"--n-states must be >= 1, got {n_states}")
    if out is not None and Path(out).is_dir():
        raise ValueError(f"--out {out!r} is a directory; give the report's .json file path")
    probe_file = _load_probe_file(probe) if probe is not None else None
    require_checkpoint(run_dir, step)
    runner = Runner(cfg, run_dir, progress=False)
    if probe_file is not None and probe_file.states.shape[1] != runner.obs_dim:
        raise ValueError(f"--probe {probe!r} has {probe_file.states.shape[1]} features per state, the run's "
                         f"observations have {runner.obs_dim}")
    tree, meta, step = runner.load_checkpoint(step)
    agent = tree["agent"]
    t = min(int(meta["task_index"]), len(runner.tasks) - 1) if task_index is None else task_index
    if not 0 <= t < len(runner.tasks):
        raise ValueError(f"--task must be in [0, {len(runner.tasks) - 1}], got {t}")

    # The run's own probe and anchor are read, never written: `sphere diagnose` leaves the run as it was.
    tracker = runner.diagnostics
    stored_probe = tracker.path_for(t, ".npz")
    if probe_file is not None:
        probe_set, source = probe_file, probe
    elif stored_probe.is_file():
        probe_set, source = ProbeSet.load(stored_probe), str(stored_probe)
    else:
        loop, params = runner.loop_for(runner.tasks[t])
        probe_set = tracker.draw_probe(t, runner.tasks[t], agent, loop, params)
        source = "drawn now from the current policy"
    states = probe_set.states
    if n_states is not None:
        states = subsample(states, n_states, jax.random.PRNGKey(0))
    if states.shape[1] != runner.obs_dim:
        raise ValueError(f"probe states have {states.shape[1]} features, the run's observations have {runner.obs_dim}")
    tracker.probes[t] = ProbeSet(states, runner.tasks[t], t)
    anchor = tracker.read_anchor(t, agent.params["actor"])
    if anchor is not None:  # else no record of the task's start: no weight change
        tracker.anchors[t] = anchor

    start = time.perf_counter()
    diagnosis = tracker.measure(agent, t, full=ntk)
    report = {
        "run_dir": str(run_dir.root),
        "checkpoint_step": int(step),
        "env_step": int(meta["env_step"]),
        "task_index": t,
        "task": runner.tasks[t],
        "probe": source,
        "n_states": int(states.shape[0]),
        "ntk_method": ntk_method(cfg) if ntk else None,
        "ntk_reduction": cfg.diag.ntk_reduction if ntk else None,
        "seconds": time.perf_counter() - start,
        **diagnosis.to_dict(n_eigenvalues),
    }
    target_path = Path(out) if out else run_dir.path(f"diagnose_{step}_task{t}.json")
    atomic_write_json(target_path, report)
    report["path"] = str(target_path)
    return report
