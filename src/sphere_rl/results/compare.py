"""From the results table to the statistics of a sweep: per-run values, score matrices, `sphere compare`.

A *cell* is one combination of the config fields that differ between runs, seed excluded (e.g.
``reg.name=sphere, run.protocol=crl``). ``compare_report(results, by="reg.name")`` compares the
levels of ``by`` within every combination of the other cell columns (so SPHERE is compared with
the baseline under RL and, separately, under CRL), with the statistics of :mod:`.stats`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np
import pandas as pd

from sphere_rl.results import stats
from sphere_rl.results.table import Results

__all__ = ["per_run_values", "task_end_rows", "score_matrices", "groups_within", "compare_groups", "compare_report", "GroupComparison",
           "PER_TASK_METRICS"]

PER_TASK_METRICS = ("final_success", "final_return", "ntk_rank", "proxy_rank")
"""Summary metrics with one value per task; as a per-run value they are averaged over tasks."""


def per_run_values(results: Results, metric: str = "average_success") -> pd.DataFrame:
    """One row per complete run: ``run``, the cell columns, ``seed`` and ``metric``.

    ``metric`` is a column of ``results.runs`` (``average_success``, ``cw.forgetting``, ``wall_time_s``,
    ...), a per-task summary metric (:data:`PER_TASK_METRICS`), averaged over the run's tasks, or a
    diagnostics column (``rlprobe/auc``, ``fit/auc``, ``dormant_ratio``, ...) averaged over the run's
    task-end rows.
    """
    runs = results.runs[results.runs["complete"]]
    keep = ["run", *results.cell_columns, *(["seed"] if "seed" in runs.columns else [])]
    if metric in runs.columns and metric not in keep:
        frame = runs[keep + [metric]].copy()
    elif metric in PER_TASK_METRICS:
        rows = results.select("summary", metric)
        means = rows.groupby("run", observed=True)["value"].mean().rename(metric)
        frame = runs[keep].join(means, on="run")
    elif not (rows := task_end_rows(results, metric)).empty:
        means = rows.groupby("run", observed=True)["value"].mean().rename(metric)
        frame = runs[keep].join(means, on="run")
    else:
        known = sorted(c for c in runs.columns if c.startswith("cw.")) + ["average_success", "env_steps", "wall_time_s"]
        raise ValueError(f"unknown metric {metric!r}; per-run metrics: {', '.join(known + list(PER_TASK_METRICS))}, "
                         "or a diagnostics column logged at task ends (fit/auc, rlprobe/auc, dormant_ratio, ...)")
    return frame.reset_index(drop=True)


def task_end_rows(results: Results, metric: str) -> pd.DataFrame:
    """The diagnostics rows of `metric` at task ends (finite values only)."""
    rows = results.select("diagnostics", metric)
    if rows.empty or "task_end" not in rows.columns:
        return rows.iloc[0:0]
    end = pd.to_numeric(rows["task_end"].astype("string").str.lower().map({"true": 1, "1": 1, "false": 0, "0": 0}),
                        errors="coerce")
    return rows[(end == 1) & np.isfinite(rows["value"].to_numpy(dtype=float))]


def score_matrices(results: Results, metric: str = "final_success", *, by: list[str] | None = None) -> dict[str, np.ndarray]:
    """Cell label -> (runs x tasks) matrix of a per-task summary metric (rliable's input)."""
    by = results.cell_columns if by is None else by
    rows = results.select("summary", metric).dropna(subset=["task_index"])
    wide = rows.pivot_table(index="run", columns="task_index", values="value", observed=True)
    runs = results.runs[results.runs["complete"]].set_index("run")
    out: dict[str, np.ndarray] = {}
    for key, group in runs.groupby(by, sort=True) if by else [((), runs)]:
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(f"{c}={v}" for c, v in zip(by, key)) or "all runs"
        matrix = wide.reindex(group.index).to_numpy(dtype=float)
        matrix = matrix[~np.isnan(matrix).all(axis=1)]
        if len(matrix):
            out[label] = matrix
    return out


def groups_within(results: Results, by: str) -> Iterator[tuple[str, list[str]]]:
    """(label, runs) for every combination of the cell columns other than ``by``."""
    if by not in results.runs.columns:
        raise ValueError(f"--by {by!r} is not a config field of these runs")
    others = [c for c in results.cell_columns if c != by]
    runs = results.runs[results.runs["complete"]]
    if not others:
        yield "all runs", list(runs["run"])
        return
    for key, group in runs.groupby(others, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        yield ", ".join(f"{c}={v}" for c, v in zip(others, key)), list(group["run"])


@dataclasses.dataclass
class GroupComparison:
    """The statistics of one group (a combination of the other cell columns) as display tables."""

    label: str
    comparison: pd.DataFrame | None
    """`stats.compare_cells` formatted: every level of `by` against the baseline (None: one level only)."""
    per_task: pd.DataFrame | None
    """`stats.summarize` of final success, runs x tasks (stratified bootstrap), formatted."""
    continual: pd.DataFrame | None
    """`stats.continual_summary` of the Continual World metrics (CRL runs), formatted."""
    raw: pd.DataFrame | None = None
    """The unformatted `compare_cells` table."""


def compare_groups(results: Results, *, by: str = "reg.name", metric: str = "average_success",
                   baseline: Any = None, reps: int = 2000, seed: int = 0) -> list[GroupComparison]:
    """Compare the levels of ``by`` within every combination of the other cell columns. ``by`` may name
    several fields, comma-separated (``reg.name,reg.mode``): their combinations are the levels."""
    results, by = results.combine(f.strip() for f in by.split(",") if f.strip())
    if by not in results.cell_columns:
        varying = ", ".join(results.cell_columns) or "none"
        raise ValueError(f"--by {by!r} does not vary between the runs (fields that vary: {varying})")
    values = per_run_values(results, metric)
    out = []
    for label, runs in groups_within(results, by):
        group = values[values["run"].isin(runs)].dropna(subset=[metric])
        comparison = raw = per_task = continual = None
        if group[by].nunique() >= 2:
            raw = stats.compare_cells(group, by=by, value=metric, baseline=baseline, reps=reps, seed=seed)
            comparison = stats.format_comparison(raw)
        sub = results.subset(runs)
        matrices = score_matrices(sub, "final_success", by=[by])
        if matrices and len({m.shape[1] for m in matrices.values()}) == 1:
            per_task = stats.format_summary(stats.summarize(matrices, reps=reps, seed=seed))
        cw = [c for c in ("cw.average_performance", "cw.forgetting", "cw.forward_transfer") if c in results.runs.columns]
        if cw:
            crl = per_run_values(sub, cw[0])
            for col in cw[1:]:
                crl[col] = per_run_values(sub, col)[col].to_numpy()
            crl = crl.dropna(subset=[cw[0]])
            if len(crl):
                names = [c[3:] for c in cw]
                summary = stats.continual_summary(crl.rename(columns=dict(zip(cw, names))), by=by, metrics=names,
                                                  reps=reps, seed=seed)
                continual = stats.format_continual(summary, metrics=names)
        out.append(GroupComparison(label, comparison, per_task, continual, raw))
    return out


def compare_report(results: Results, *, by: str = "reg.name", metric: str = "average_success",
                   baseline: Any = None, reps: int = 2000, seed: int = 0) -> str:
    """The text `sphere compare` prints: per group, the comparison against the baseline and the cells."""
    groups = compare_groups(results, by=by, metric=metric, baseline=baseline, reps=reps, seed=seed)
    n = int(results.runs["complete"].sum())
    lines = [f"{n} complete runs in {results.root}; comparing {by} on {metric} "
             f"(95 % CIs: bootstrap over runs, {reps} resamples; p-values not corrected for multiple comparisons)"]
    for group in groups:
        lines += ["", f"## {group.label}", ""]
        if group.comparison is None:
            lines.append(f"only one level of {by} here; nothing to compare")
        else:
            lines.append(stats.to_text(group.comparison))
        if group.per_task is not None:
            lines += ["", "final success, runs x tasks (stratified bootstrap over runs within each task):", ""]
            lines.append(stats.to_text(group.per_task))
        if group.continual is not None:
            lines += ["", "Continual World metrics (mean [95 % CI] over runs):", ""]
            lines.append(stats.to_text(group.continual))
    return "\n".join(lines)
