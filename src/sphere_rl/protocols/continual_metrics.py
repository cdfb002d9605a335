"""Continual World metrics of a CRL run: average performance, forgetting and forward transfer.

Definitions (Continual World, Wołczyk et al. 2021), for N tasks trained one after another, each for
the same budget, with p_i(t) the evaluation success of task i:

* average performance: mean over tasks of p_i at the end of the whole sequence;
* forgetting of task i: p_i at the end of its own training minus p_i at the end of the sequence;
  the average is over all N tasks (the last one contributes 0), as in Continual World;
* forward transfer of task i: `(AUC_i - AUC_i^ref) / (1 - AUC_i^ref)`, where AUC_i is the area under
  task i's success curve during its own training in the CRL run and AUC_i^ref the same area for a
  reference run that trains the task from scratch with the same budget (our `rl` protocol). Both
  areas are normalised to [0, 1]. A task whose reference area is 1 has no defined transfer (NaN,
  left out of the mean and counted in `forward_transfer_tasks`).

Areas come from the periodic evaluations, read as a step function: each evaluation's success holds
over the interval that ends at it (`curve_auc`). The same rule is applied to both curves, so the
evaluation schedule cancels out when both runs use the same `run.eval_every`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sphere_rl.config import Config
from sphere_rl.runs import RunDir

Curve = Sequence[Sequence[float]]
"""A success curve: `[[task_step, success], ...]` in increasing task_step, within one task's training."""

COLUMNS = ("task_index", "task", "success_end_of_task", "success_final", "forgetting", "auc", "reference_auc",
           "forward_transfer")


def curve_auc(curve: Curve, task_steps: int) -> float:
    """Area under a success curve over `[0, task_steps]`, divided by `task_steps` (so in [0, 1]).

    Each point `(s_k, v_k)` contributes `v_k * (s_k - s_{k-1}) / task_steps` with `s_0 = 0`; a curve
    that stops before `task_steps` is extended with its last value.
    """
    if task_steps <= 0:
        raise ValueError(f"task_steps must be > 0, got {task_steps}")
    if not curve:
        return math.nan
    area, previous, value = 0.0, 0.0, 0.0
    for step, value in curve:
        step = min(float(step), float(task_steps))
        if step < previous:
            raise ValueError(f"curve steps must increase, got {step} after {previous}")
        area += value * (step - previous)
        previous = step
    area += value * (task_steps - previous)
    return area / task_steps


def forward_transfer(auc: float, reference_auc: float) -> float:
    """Continual World's normalised forward transfer; NaN when the reference area is 1 (or unknown)."""
    if math.isnan(auc) or math.isnan(reference_auc) or reference_auc >= 1.0:
        return math.nan
    return (auc - reference_auc) / (1.0 - reference_auc)


@dataclasses.dataclass
class ContinualMetrics:
    """Per-task rows (`COLUMNS`) and the three averages."""

    rows: list[dict[str, Any]]
    average_performance: float
    forgetting: float
    forward_transfer: float
    forward_transfer_tasks: int
    reference_run: str | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "average_performance": self.average_performance,
            "forgetting": self.forgetting,
            "forward_transfer": self.forward_transfer,
            "forward_transfer_tasks": self.forward_transfer_tasks,
            "reference_run": self.reference_run,
        }

    def to_csv(self) -> str:
        lines = [",".join(COLUMNS)]
        for row in self.rows:
            lines.append(",".join(_csv_cell(row[c]) for c in COLUMNS))
        return "\n".join(lines) + "\n"

    def markdown(self) -> str:
        lines = ["| # | task | end of task | final | forgetting | AUC | ref. AUC | FT |", "|---|---|---|---|---|---|---|---|"]
        for row in self.rows:
            cells = [str(row["task_index"]), row["task"]] + [_fmt(row[c]) for c in COLUMNS[2:]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append(
            f"\naverage performance {_fmt(self.average_performance)}, forgetting {_fmt(self.forgetting)}, "
            f"forward transfer {_fmt(self.forward_transfer)} (over {self.forward_transfer_tasks} tasks)"
        )
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _csv_cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _as_float(value: float | None) -> float:
    return math.nan if value is None else float(value)


def continual_metrics(
    tasks: Sequence[str],
    success_matrix: Sequence[Sequence[float | None]],
    curves: Sequence[Curve],
    task_steps: int,
    reference_curves: dict[str, Curve] | None = None,
    reference_run: str | None = None,
) -> ContinualMetrics:
    """Continual World metrics from a CRL run's evaluations.

    `success_matrix[i][j]`: success on task j at the end of task i (None where not evaluated);
    `curves[i]`: task i's success curve during its own training; `reference_curves[task]`: the
    same curve from a from-scratch run of that task (by env id), for forward transfer.
    """
    n = len(tasks)
    if len(success_matrix) != n or len(curves) != n:
        raise ValueError(f"need one matrix row and one curve per task ({n}), got {len(success_matrix)} and {len(curves)}")
    final_row = success_matrix[-1]
    rows = []
    for i, task in enumerate(tasks):
        end_of_task, final = _as_float(success_matrix[i][i]), _as_float(final_row[i])
        auc = curve_auc(curves[i], task_steps)
        reference = (reference_curves or {}).get(task)
        reference_auc = curve_auc(reference, task_steps) if reference else math.nan
        rows.append({
            "task_index": i, "task": task, "success_end_of_task": end_of_task, "success_final": final,
            "forgetting": end_of_task - final, "auc": auc, "reference_auc": reference_auc,
            "forward_transfer": forward_transfer(auc, reference_auc),
        })
    transfers = [r["forward_transfer"] for r in rows]
    finals = [r["success_final"] for r in rows]
    forgettings = [r["forgetting"] for r in rows]
    return ContinualMetrics(
        rows=rows,
        average_performance=math.nan if any(math.isnan(v) for v in finals) else float(np.mean(finals)),
        forgetting=math.nan if any(math.isnan(v) for v in forgettings) else float(np.mean(forgettings)),
        forward_transfer=_nanmean(transfers),
        forward_transfer_tasks=sum(not math.isnan(v) for v in transfers),
        reference_run=reference_run,
    )


def _finished_run(run_path: str | Path, role: str) -> tuple[dict[str, Any], int]:
    """(summary.json, env steps per task) of a finished run directory."""
    run = RunDir.open(run_path)
    summary = run.summary
    if summary is None:
        raise FileNotFoundError(f"{role} {str(run.root)!r} has no summary.json (is it a finished run directory?)")
    return summary, Config.from_saved(run.config).task_steps


def reference_curves(run_path: str | Path, task_steps: int) -> dict[str, Curve]:
    """Success curves per env id from a finished reference run (its summary.json), checked for the budget."""
    summary, ref_steps = _finished_run(run_path, "reference run")
    if ref_steps != task_steps:
        raise ValueError(f"reference run {str(run_path)!r} trained {ref_steps} steps per task, this run {task_steps}: "
                         "forward transfer needs the same budget")
    curves = summary.get("task_curves")
    if not curves:
        raise ValueError(f"reference run {str(run_path)!r} records no task_curves (made by an older version?)")
    reference: dict[str, Curve] = {}
    for task, curve in zip(summary["tasks"], curves):
        reference.setdefault(task, curve)  # a task repeated in the sequence: its first, from-scratch training
    return reference


def run_continual_metrics(run_path: str | Path, reference_run: str | Path | None = None) -> ContinualMetrics:
    """Continual World metrics of a finished CRL run directory (optionally against a reference run)."""
    summary, task_steps = _finished_run(run_path, "run")
    if summary.get("protocol") != "crl":
        raise ValueError(f"{str(run_path)!r} is a {summary.get('protocol')!r} run; Continual World metrics need a CRL run")
    reference = reference_curves(reference_run, task_steps) if reference_run else None
    curves = summary.get("task_curves") or [[] for _ in summary["tasks"]]
    return continual_metrics(summary["tasks"], summary["success_matrix"], curves, task_steps, reference,
                             str(reference_run) if reference_run else None)
