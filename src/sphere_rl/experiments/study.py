"""`sphere study`: one table for a grid of architectures x methods x protocols over seeds (issue 17's study).

A *row* is one combination of the cell columns other than the method and the protocol (for the study
sweep: the actor kind); a *method* is one combination of the method fields that vary (`reg.name`,
`reg.mode`, `reg.coef`, `reg.scale`, `methods` and the methods' own settings: `none`, `sphere/grad/0.001`,
`reset[log_std]`, ...). For every row and method the table gives,
over seeds, with 95 % bootstrap CIs (`results.stats`):

- CRL average success and RL average success (final success of each task after its own training);
- the RL - CRL gap, paired by seed (an RL run and a CRL run of the same seed train task 0 identically,
  so the gap is the cost of training after other tasks);
- the first task's final success under CRL: learning from scratch, where there is no plasticity to lose
  yet; a method that lowers it slows plain learning;
- r_e(K) averaged over the CRL run's task ends, and CRL forgetting;
- against the baseline method of the same row: the differences of CRL and RL success, of the gap and of
  the first task, each with its CI and Welch p-value (not corrected for multiple comparisons).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from sphere_rl.results import stats
from sphere_rl.results.compare import task_end_rows, per_run_values
from sphere_rl.results.table import Results

__all__ = ["METHOD_FIELDS", "VISIT_METRICS", "study_frame", "study_table", "format_study", "visits_table",
           "format_visits", "write_study"]

METHOD_FIELDS: tuple[str, ...] = ("reg.name", "reg.mode", "reg.coef", "reg.scale", "methods")
"""Config fields that make a method (with the settings sections of the registered methods); those that vary
between the runs form the method column."""

PROTOCOL = "run.protocol"


def _first_task(results: Results) -> pd.Series:
    rows = results.select("summary", "final_success")
    rows = rows[rows["task_index"] == 0]
    return rows.groupby("run", observed=True)["value"].first().rename("first_task")


def _listed(value: Any) -> list[str]:
    """The `methods` column of a run (a JSON list as the results table stores it, or a list) as names."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if not isinstance(value, str) or not value.strip():
        return []
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = [v.strip(" '\"") for v in value.strip("[]").split(",") if v.strip(" '\"")]
    return [str(v) for v in parsed] if isinstance(parsed, list) else [str(parsed)]


def _setting(value: Any) -> str:
    """A method setting for a label: lists without brackets or quotes (`log_std,heads`)."""
    if isinstance(value, (list, tuple)) or (isinstance(value, str) and value.startswith("[")):
        return ",".join(_listed(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def _method_labels(runs: pd.DataFrame, fields: list[str]) -> pd.Series:
    """A run's method: `none` without any; else its methods joined with ` + `: SPHERE as `sphere` followed by
    its mode, coefficient and scale where those are among `fields` (a default `reg.coef`, None, shown as the
    mode's value: `sphere/loss/0.05`; `sphere/grad/1/trace`), every other listed method by name with its settings among `fields` in
    brackets (`reset[log_std]`)."""
    from sphere_rl.config import MODE_DEFAULT_COEF

    def label(row: pd.Series) -> str:
        listed = _listed(row.get("methods"))
        parts = []
        if row.get("reg.name") == "sphere" or "sphere" in listed:
            text = "sphere"
            for f in ("reg.mode", "reg.coef", "reg.scale"):
                if f not in fields:
                    continue
                value = row.get(f)
                if f == "reg.coef" and (value is None or (isinstance(value, float) and math.isnan(value))):
                    value = MODE_DEFAULT_COEF.get(str(row.get("reg.mode", "loss")), 0.05)
                text += "/" + (f"{value:g}" if isinstance(value, float) else str(value))
            parts.append(text)
        for name in listed:
            if name == "sphere":
                continue
            settings = [_setting(row.get(f)) for f in fields if f.startswith(f"{name}.")]
            parts.append(name + (f"[{', '.join(settings)}]" if settings else ""))
        return " + ".join(parts) or "none"

    return runs.apply(label, axis=1)


def _method_fields(results: Results, method: Sequence[str] | None) -> list[str]:
    """The config fields that tell methods apart: `method` if given, else those of :data:`METHOD_FIELDS`
    and of the registered methods' own sections that vary between the runs."""
    if method:
        missing = [f for f in method if f not in results.runs.columns]
        if missing:
            raise ValueError(f"--method: {', '.join(missing)} is not a config field of these runs")
        return list(method)
    from sphere_rl.methods import METHODS

    sections = {spec.section for spec in METHODS.values() if spec.section} - {"reg", "net"}
    return [c for c in results.cell_columns if c in METHOD_FIELDS or c.split(".")[0] in sections]


def study_frame(results: Results, *, method: Sequence[str] | None = None) -> tuple[pd.DataFrame, list[str], list[str]]:
    """One row per complete run: its row key columns, `method`, `protocol`, `seed` and the per-run values
    (`average_success`, `first_task`, `ntk_rank`, `forgetting`). Returns (frame, method fields, row columns)."""
    results = results.complete()
    if PROTOCOL not in results.runs.columns:
        raise ValueError("the runs have no run.protocol")
    fields = _method_fields(results, method)
    row_cols = [c for c in results.cell_columns if c not in (*fields, PROTOCOL)]
    runs = results.runs.set_index("run")
    frame = per_run_values(results, "average_success")
    frame["method"] = _method_labels(runs.loc[frame["run"]].reset_index(), fields).to_numpy()
    frame["protocol"] = runs.loc[frame["run"], PROTOCOL].to_numpy()
    frame = frame.join(_first_task(results), on="run")
    frame["ntk_rank"] = per_run_values(results, "ntk_rank")["ntk_rank"].to_numpy()
    forgetting = runs.get("cw.forgetting")
    frame["forgetting"] = forgetting.reindex(frame["run"]).to_numpy(dtype=float) if forgetting is not None else np.nan
    return frame, fields, row_cols


def _ci(values: Any, reps: int, seed: int) -> tuple[float, float, float, int]:
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    mean, lo, hi = stats.mean_ci(x, reps=reps, seed=seed)
    return mean, lo, hi, int(x.size)


def _paired_gap(cell: pd.DataFrame) -> pd.Series:
    """RL minus CRL average success per seed (seeds with both protocols)."""
    wide = cell.pivot_table(index="seed", columns="protocol", values="average_success", aggfunc="first")
    if not {"rl", "crl"} <= set(wide.columns):
        return pd.Series(dtype=float)
    return (wide["rl"] - wide["crl"]).dropna()


def _difference(x: Any, y: Any, reps: int, seed: int) -> tuple[float, float, float, float]:
    """(difference of means, lo, hi, Welch p) of two groups of runs; NaN when either has fewer than 2."""
    x, y = (np.asarray(v, dtype=float) for v in (x, y))
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size < 2 or y.size < 2:
        return (math.nan,) * 4
    r = stats.pairwise(x, y, reps=reps, seed=seed)
    return r.difference, r.difference_lo, r.difference_hi, r.welch_p


def study_table(results: Results, *, method: Sequence[str] | None = None, baseline: str | None = None,
                reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The numbers of the study table: one row per (row key, method), columns `<name>`, `<name>_lo`,
    `<name>_hi` for every estimate, `d_<name>`/`_lo`/`_hi`/`_p` against `baseline` (default: `none` when
    there is one, else the first method in sorted order) and `n_<protocol>` (runs)."""
    frame, _, row_cols = study_frame(results, method=method)
    methods = sorted(frame["method"].unique(), key=lambda m: (m != "none", str(m)))
    base = baseline if baseline is not None else methods[0]
    if base not in methods:
        raise ValueError(f"baseline {base!r} is not a method of these runs: {', '.join(map(str, methods))}")
    groups = frame.groupby(row_cols, sort=True) if row_cols else [((), frame)]
    out = []
    for key, rows in groups:
        key = key if isinstance(key, tuple) else (key,)
        ref = rows[rows["method"] == base]
        for m in methods:
            cell = rows[rows["method"] == m]
            if cell.empty:
                continue
            crl, rl = cell[cell["protocol"] == "crl"], cell[cell["protocol"] == "rl"]
            record: dict[str, Any] = {**dict(zip(row_cols, key)), "method": m,
                                      "n_crl": len(crl), "n_rl": len(rl)}
            estimates = {"crl": crl["average_success"], "rl": rl["average_success"], "gap": _paired_gap(cell),
                         "first_task": crl["first_task"], "ntk_rank": crl["ntk_rank"], "forgetting": crl["forgetting"]}
            for name, values in estimates.items():
                record[name], record[f"{name}_lo"], record[f"{name}_hi"], _ = _ci(values, reps, seed)
            if m != base:
                ref_crl, ref_rl = ref[ref["protocol"] == "crl"], ref[ref["protocol"] == "rl"]
                against = {"crl": (crl["average_success"], ref_crl["average_success"]),
                           "rl": (rl["average_success"], ref_rl["average_success"]),
                           "gap": (_paired_gap(cell), _paired_gap(ref)),
                           "first_task": (crl["first_task"], ref_crl["first_task"]),
                           "ntk_rank": (crl["ntk_rank"], ref_crl["ntk_rank"])}
                for name, (x, y) in against.items():
                    d = _difference(x, y, reps, seed)
                    record[f"d_{name}"], record[f"d_{name}_lo"], record[f"d_{name}_hi"], record[f"d_{name}_p"] = d
            out.append(record)
    table = pd.DataFrame(out)
    table.attrs["baseline"] = base
    table.attrs["row_columns"] = row_cols
    return table


VISIT_METRICS: dict[str, str] = {"final_success": "success", "ntk_rank": "r_e(K)", "fit/auc": "fit/auc",
                                 "rlprobe/auc": "rlprobe/auc", "policy_entropy": "entropy"}
"""Per-task values the visits table follows: summary metrics (per task) and diagnostics columns at task ends
(taken when logged)."""


def _per_task(results: Results, runs: pd.Index) -> pd.DataFrame:
    """One row per (CRL run, task index): `task` and every logged metric of :data:`VISIT_METRICS`."""
    frames = []
    for metric in VISIT_METRICS:
        rows = results.select("summary", metric)
        if rows.empty:
            rows = task_end_rows(results, metric)
        rows = rows[rows["run"].isin(runs)].dropna(subset=["task_index"])
        if rows.empty:
            continue
        rows = rows.assign(task_index=rows["task_index"].astype(int))
        frames.append(rows.groupby(["run", "task_index"], observed=True)
                      .agg(task=("task", "first"), value=("value", "mean")).rename(columns={"value": metric}))
    if not frames:
        return pd.DataFrame()
    out = frames[0]
    for frame in frames[1:]:
        out = out.join(frame.drop(columns="task"), how="outer")
    return out.reset_index()


def visits_table(results: Results, *, method: Sequence[str] | None = None, baseline: str | None = None,
                 reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """For CRL runs whose sequence repeats tasks (`arm6,arm6,...`): per row key, method and visit v (the
    v-th time the tasks come round), over seeds with 95 % bootstrap CIs, the mean over that visit's tasks of
    each logged :data:`VISIT_METRICS` value (success after the task's own training, r_e(K) and probe speeds
    at the task's end). Then, per run, the last visit minus the first (paired within the run) and the
    least-squares slope of r_e(K) over the task index (`ntk_slope`, per task); against `baseline`, the last
    visit's success and r_e(K) (difference, CI, Welch p). Empty when no run repeats a task."""
    frame, _, row_cols = study_frame(results, method=method)
    crl = frame[frame["protocol"] == "crl"].set_index("run")
    per_task = _per_task(results, crl.index)
    if per_task.empty:
        return pd.DataFrame()
    per_task = per_task.sort_values(["run", "task_index"])
    per_task["visit"] = per_task.groupby(["run", "task"], observed=True).cumcount() + 1
    if per_task["visit"].max() < 2:
        return pd.DataFrame()
    metrics = [m for m in VISIT_METRICS if m in per_task.columns and per_task[m].notna().any()]
    last = int(per_task["visit"].max())
    by_visit = per_task.groupby(["run", "visit"], observed=True)[metrics].mean()
    per_run = pd.DataFrame({m: by_visit[m].xs(last, level="visit") - by_visit[m].xs(1, level="visit")
                            for m in metrics})
    if "ntk_rank" in metrics:
        def slope(rows: pd.DataFrame) -> float:
            ok = rows.dropna(subset=["ntk_rank"])
            return float(np.polyfit(ok["task_index"], ok["ntk_rank"], 1)[0]) if len(ok) >= 2 else math.nan
        per_run["ntk_slope"] = per_task.groupby("run", observed=True)[["task_index", "ntk_rank"]].apply(slope)
    by_visit = by_visit.reset_index().join(crl[[*row_cols, "method"]], on="run")
    per_run = per_run.join(crl[[*row_cols, "method"]])
    row_of = (lambda df: list(zip(*(df[c] for c in row_cols)))) if row_cols else (lambda df: [()] * len(df))
    by_visit["_row"], per_run["_row"] = row_of(by_visit), row_of(per_run)
    methods = sorted(crl["method"].unique(), key=lambda m: (m != "none", str(m)))
    base = baseline if baseline is not None else methods[0]

    def estimates(record: dict[str, Any], values: pd.DataFrame, names: list[str]) -> dict[str, Any]:
        for m in names:
            record[m], record[f"{m}_lo"], record[f"{m}_hi"], _ = _ci(values[m], reps, seed)
        return record

    out = []
    for row in sorted(set(by_visit["_row"])):
        for m in methods:
            cells = by_visit[(by_visit["_row"] == row) & (by_visit["method"] == m)]
            if cells.empty:
                continue
            head = {**dict(zip(row_cols, row)), "method": m}
            for visit, cell in cells.groupby("visit"):
                out.append(estimates({**head, "visit": str(visit), "n": len(cell)}, cell, metrics))
            mine = per_run[(per_run["_row"] == row) & (per_run["method"] == m)]
            out.append(estimates({**head, "visit": f"{last} − 1", "n": len(mine)}, mine,
                                 [c for c in (*metrics, "ntk_slope") if c in mine.columns]))
            if m != base:
                ref = by_visit[(by_visit["_row"] == row) & (by_visit["method"] == base) & (by_visit["visit"] == last)]
                now = cells[cells["visit"] == last]
                record = {**head, "visit": f"{last}: vs {base}", "n": len(now)}
                for name in ("final_success", "ntk_rank"):
                    if name in metrics:
                        d = _difference(now[name], ref[name], reps, seed)
                        record[name], record[f"{name}_lo"], record[f"{name}_hi"], record[f"{name}_p"] = d
                out.append(record)
    table = pd.DataFrame(out)
    table.attrs["baseline"] = base
    table.attrs["metrics"] = metrics
    table.attrs["row_columns"] = list(row_cols)
    return table


def format_visits(table: pd.DataFrame, *, digits: int = 3) -> pd.DataFrame:
    """The visits table for display: one column per metric, `value [lo, hi]`."""
    keys = [c for c in table.columns if c in ("method", "visit", "n")
            or not any(c.startswith(m) for m in (*VISIT_METRICS, "ntk_slope"))]
    out = table[keys].copy()
    for m in [*table.attrs.get("metrics", []), "ntk_slope"]:
        if m not in table.columns:
            continue
        label = "r_e(K) slope per task" if m == "ntk_slope" else VISIT_METRICS[m]
        out[label] = [stats.format_interval(v, lo, hi, digits) if np.isfinite(v) else "" for v, lo, hi in
                      zip(table[m], table[f"{m}_lo"], table[f"{m}_hi"])]
        if f"{m}_p" in table.columns:
            out[f"p ({label})"] = [stats.format_p(p) if np.isfinite(p) else "" for p in table[f"{m}_p"]]
    return out.reset_index(drop=True)


_LABELS = {"crl": "CRL avg success", "rl": "RL avg success", "gap": "RL − CRL gap", "first_task": "first task (CRL)",
           "ntk_rank": "r_e(K), CRL task ends", "forgetting": "forgetting (CRL)"}


def format_study(table: pd.DataFrame, *, digits: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the cells' estimates, the differences against the baseline) as display tables."""
    row_cols = list(table.attrs.get("row_columns", []))
    keys = [*row_cols, "method"]
    cells = table[keys].copy()
    cells["seeds (CRL/RL)"] = [f"{int(a)}/{int(b)}" for a, b in zip(table["n_crl"], table["n_rl"])]
    for name, label in _LABELS.items():
        cells[label] = [stats.format_interval(v, lo, hi, digits) for v, lo, hi in
                        zip(table[name], table[f"{name}_lo"], table[f"{name}_hi"])]
    base = table.attrs.get("baseline")
    rest = table[table["method"] != base] if "d_crl" in table.columns else table.iloc[0:0]
    diffs = rest[keys].copy()
    for name in ("crl", "rl", "gap", "first_task", "ntk_rank"):
        if f"d_{name}" not in rest.columns:
            continue
        label = f"Δ {_LABELS[name].split(',')[0]} vs {base}"
        diffs[label] = [stats.format_interval(v, lo, hi, digits) for v, lo, hi in
                        zip(rest[f"d_{name}"], rest[f"d_{name}_lo"], rest[f"d_{name}_hi"])]
        diffs[f"p ({name})"] = [stats.format_p(p) for p in rest[f"d_{name}_p"]]
    return cells.reset_index(drop=True), diffs.reset_index(drop=True)


def write_study(results: Results, out_dir: str | Path, *, method: Sequence[str] | None = None,
                baseline: str | None = None, reps: int = 2000, seed: int = 0,
                visits: pd.DataFrame | None = None) -> tuple[str, list[Path]]:
    """Write `study.csv` (the numbers) and `study.md` (the two display tables) into `out_dir`; returns the
    markdown text and the files written. `visits`: the :func:`visits_table` of the same arguments when the
    caller already has it (computed here otherwise)."""
    from sphere_rl.runs.atomic import atomic_write_text

    table = study_table(results, method=method, baseline=baseline, reps=reps, seed=seed)
    cells, diffs = format_study(table)
    if visits is None:
        visits = visits_table(results, method=method, baseline=baseline, reps=reps, seed=seed)
    n = int(results.runs["complete"].sum())
    lines = [
        f"{n} complete runs in {results.root}; 95 % CIs: percentile bootstrap over runs ({reps} resamples); "
        f"the gap is paired by seed; p: Welch's t-test, not corrected for multiple comparisons.",
        "", "### Cells", "", stats.to_markdown(cells),
        "", f"### Against {table.attrs['baseline']} (same row)", "",
        stats.to_markdown(diffs) if len(diffs) else "(one method only)", "",
    ]
    if len(visits):
        lines += ["### By visit (CRL runs whose sequence repeats its tasks)", "", VISITS_NOTE, "",
                  stats.to_markdown(format_visits(visits)), ""]
    text = "\n".join(lines)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_text(out / "study.md", text), atomic_write_text(out / "study.csv", table.to_csv(index=False))]
    if len(visits):
        written.append(atomic_write_text(out / "visits.csv", visits.to_csv(index=False)))
    return text, [Path(p) for p in written]


VISITS_NOTE = ("Visit v: the v-th time the sequence's tasks come round; each value is the mean over that visit's "
               "tasks (success after the task's own training; r_e(K) and probe speeds at its end), then over "
               "seeds. `L − 1`: the last visit minus the first, paired within each run. `L: vs <baseline>`: the "
               "last visit against the baseline's (Welch p).")
