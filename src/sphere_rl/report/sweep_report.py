"""`sphere report SWEEP_DIR`: one self-contained HTML file with the statistics, the paper's figures and
the 3D update-geometry view of a sweep (or of any folder of runs).

Everything comes from the results table (:mod:`sphere_rl.results.table`) except the feature PCA,
which loads the final checkpoints and measures them on held-out states
(:mod:`sphere_rl.protocols.heldout`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sphere_rl.report import figures as F
from sphere_rl.report.geometry import GeometryRun
from sphere_rl.report.html import Figure, Geometry, Heading, Table, Text, write_report
from sphere_rl.results.compare import compare_groups
from sphere_rl.results.table import Results, load_results

__all__ = ["build_sweep_report", "geometry_runs", "stage_names", "report_sections"]

_H1_NAMES = {"stand": "Stand", "walk": "Walk", "pole": "Pole", "slide": "Slide", "run": "Run", "stair": "Stair"}


def stage_names(tasks: list[str]) -> list[str]:
    """``["Initialise", "Stand", "Walk", ...]`` for H1; other families keep the task's last id part."""
    names = []
    for task in tasks:
        short = str(task).split("/")[-1]
        names.append(_H1_NAMES.get(short.removeprefix("h1-"), short) if short.startswith("h1-") else short)
    return ["Initialise", *names]


GEOMETRY_MAX_METHODS = 4
"""Columns of the 3D view at most (each is two WebGL scenes); further methods are listed, not drawn."""


def geometry_runs(results: Results, protocol: str | None = None,
                  max_methods: int = GEOMETRY_MAX_METHODS) -> list[GeometryRun]:
    """One :class:`GeometryRun` per method (mean over its seeds of the top-3 eigenvalues of K at
    initialisation and at every task end); the baseline (``none``) first, at most ``max_methods``."""
    runs = F._with_labels(results, results.runs[results.runs["complete"]][["run"]])
    if protocol is not None:
        runs = runs[runs[F.PROTOCOL].astype(str) == protocol]
    if runs.empty:
        return []
    arch = sorted(runs[F.ARCH].astype(str).unique())[0]
    runs = runs[runs[F.ARCH].astype(str) == arch]
    long = results.long
    eig_metrics = ["ntk_eig_1", "ntk_eig_2", "ntk_eig_3"]
    ends = long[(long["source"] == "summary") & long["metric"].isin(eig_metrics + ["ntk_rank"])]
    init = long[(long["source"] == "diagnostics") & (long["env_step"] == 0)
                & long["metric"].isin(["ntk/eig_1", "ntk/eig_2", "ntk/eig_3", "ntk/effective_rank"])]
    tasks = (long[(long["source"] == "summary") & (long["metric"] == "final_success")]
             .drop_duplicates("task_index").sort_values("task_index")["task"].astype(str).tolist())
    out = []
    methods = sorted(runs["method"].unique(), key=lambda m: (m != "none", m))
    for method in methods:
        members = set(runs[runs["method"] == method]["run"])
        stage_eigs, stage_ranks = [], []
        init_rows = init[init["run"].isin(members)]
        if init_rows.empty:
            continue
        wide = init_rows.pivot_table(index="run", columns="metric", values="value", observed=True)
        stage_eigs.append(tuple(wide[[f"ntk/eig_{i}" for i in (1, 2, 3)]].mean().to_numpy()))
        stage_ranks.append(float(wide["ntk/effective_rank"].mean()))
        end_rows = ends[ends["run"].isin(members)]
        for t in range(len(tasks)):
            at = end_rows[end_rows["task_index"] == t].pivot_table(index="run", columns="metric", values="value",
                                                                    observed=True)
            if at.empty or not set(eig_metrics) <= set(at.columns):
                break
            stage_eigs.append(tuple(at[eig_metrics].mean().to_numpy()))
            stage_ranks.append(float(at["ntk_rank"].mean()))
        if len(stage_eigs) != len(tasks) + 1 or not np.isfinite(np.array(stage_eigs)).all():
            continue
        label = f"{method} ({len(members)} seed{'s' if len(members) > 1 else ''}, {arch})"
        out.append(GeometryRun(label=label, stages=stage_names(tasks), eigenvalues=stage_eigs,
                               effective_rank=stage_ranks))
    return out[:max_methods]


def _feature_sets(results: Results, heldout: str, max_runs: int) -> dict[str, list[np.ndarray]]:
    from sphere_rl.protocols.heldout import heldout_features
    from sphere_rl.runs.checkpoint import CheckpointError

    runs = F._with_labels(results, results.runs[results.runs["complete"]][["run", "seed"]])
    if (runs[F.PROTOCOL].astype(str) == "crl").any():
        runs = runs[runs[F.PROTOCOL].astype(str) == "crl"]
    out: dict[str, list[np.ndarray]] = {}
    for method, group in runs.sort_values("seed").groupby("method"):
        for run in list(group["run"])[:max_runs]:
            try:
                out.setdefault(method, []).append(heldout_features(str(results.root / run), heldout))
            except (FileNotFoundError, ValueError, CheckpointError):
                continue  # no good checkpoint or a different observation size: left out of the PCA
    return {m: v for m, v in out.items() if v}


def _overview(results: Results) -> list[Any]:
    runs = results.runs
    done = int(runs["complete"].sum())
    lines = [f"**{len(runs)} runs** ({done} complete) in `{results.root}`."]
    if results.cell_columns:
        cells = runs[runs["complete"]].groupby(results.cell_columns, observed=True).size()
        lines.append(f"Cells (config fields that differ between runs, seed excluded): "
                     f"`{', '.join(results.cell_columns)}`; {len(cells)} cells with "
                     f"{cells.min()}-{cells.max()} complete runs (seeds) each.")
        if cells.max() < 2:
            lines.append("One seed per cell: every comparison below is indicative only.")
    const = results.constant_config
    shown = {k: const[k] for k in ("run.tasks", "run.steps_per_task", "net.actor", "run.protocol", "ppo.kl_mode",
                                    "net.n_experts", "net.top_k", "reg.mode") if k in const}
    if shown:
        lines.append("Shared by every run: " + ", ".join(f"`{k}={v}`" for k, v in shown.items()) + ".")
    index = results.root / "sweep.json"
    items: list[Any] = [Heading("Overview"), Text("\n\n".join(lines))]
    if index.is_file():
        specs = json.loads(index.read_text(encoding="utf-8")).get("specs", [])
        for spec in specs:
            grid = " ".join(f"--grid {k}={','.join(map(str, v))}" for k, v in spec.get("grid", {}).items())
            seeds = spec.get("seeds", [])
            seed_text = f"{min(seeds)}-{max(seeds)}" if seeds == list(range(min(seeds), max(seeds) + 1)) else ",".join(map(str, seeds))
            items.append(Text(f"Sweep: `sphere sweep {' '.join('--preset ' + p for p in spec.get('presets', []))} "
                              f"{grid} --seeds {seed_text} {' '.join(spec.get('overrides', []))}`".replace("  ", " ")))
    return items


def report_sections(results: Results, *, by: str | None = None, heldout: str | None = None, reps: int = 2000,
                    figures_dir: str | Path | None = None, max_pca_runs: int = 3) -> list[Any]:
    """Every section of the report, in order (also usable to build other pages)."""
    from sphere_rl.protocols.heldout import default_heldout

    items = _overview(results)
    results = results.complete()  # statistics and figures: finished runs only
    saved: list[Path] = []

    def figure(fig: Any, name: str, caption: str) -> None:
        if fig is None:
            return
        if figures_dir is not None:
            saved.extend(F.save_figure(fig, figures_dir, name))
        items.append(Figure(fig, caption=caption))
        import matplotlib.pyplot as plt

        plt.close(fig)

    if by is None:
        from sphere_rl.experiments.study import METHOD_FIELDS

        method = [f for f in METHOD_FIELDS if f in results.cell_columns]
        by = ",".join(method) if method else (results.cell_columns or [None])[0]
    if by is not None:
        items += [Heading("Statistics"), Text(
            f"Levels of `{by}` compared on each run's average final success, within every combination of the "
            "other cell fields. 95 % CIs: bootstrap over runs (IQM: rliable); Welch's t and Mann-Whitney U "
            "p-values, not corrected for multiple comparisons; Hedges' g; P(> baseline): rliable's "
            "probability of improvement. See docs/statistics.md.")]
        for group in compare_groups(results, by=by, reps=reps):
            items.append(Heading(group.label, level=3))
            if group.comparison is not None:
                items.append(Table(group.comparison, caption=f"average success by {by}"))
            if group.per_task is not None:
                items.append(Table(group.per_task, caption="final success, runs x tasks (stratified bootstrap)"))
            if group.continual is not None:
                items.append(Table(group.continual, caption="Continual World metrics"))
        items.append(Heading("Per task"))
        items.append(Table(_per_task_table(results), caption="final success per task: mean [95 % CI] over seeds"))
    items += _study_section(results, reps)

    items.append(Heading("Figures"))
    figure(F.success_bars(results), "success_bars",
           "RL vs CRL average success per architecture and method (bars: mean, whiskers: 95 % CI, dots: seeds).")
    figure(F.performance_profiles(results, reps=min(reps, 500)), "performance_profiles",
           "Performance profiles of final success (rliable).")
    figure(F.ntk_rank_across_tasks(results), "ntk_rank_across_tasks",
           "r_e(K), the effective rank of the exact eNTK, at initialisation and at the end of every task "
           "(mean over seeds, 95 % CI band).")
    fig, corr = F.proxy_scatter(results)
    if fig is not None:
        figure(fig, "proxy_scatter",
               f"The proxy r_e(A) against the exact r_e(K) over all {corr['n']} diagnostics rows: Spearman "
               f"rho {corr['spearman_rho']:.3f} (p {corr['spearman_p']:.2g}), Pearson r {corr['pearson_r']:.3f}. "
               "Rows of one run are not independent; the p-value is optimistic.")
    tasks = sorted({str(t) for t in results.long["task"].dropna().unique()})
    heldout = heldout or default_heldout(tasks)
    if heldout:
        fig, ranks = F.feature_pca(_feature_sets(results, heldout, max_pca_runs), heldout)
        if fig is not None:
            figure(fig, "feature_pca",
                   f"PCA of the last hidden layer's routing-weighted features on 512 held-out states of `{heldout}` "
                   f"(uniformly random actions, the same states for every run), final checkpoints of CRL runs "
                   f"(first {max_pca_runs} seeds per method). Top: the first seed's projection; bottom: "
                   "explained variance per component, mean over seeds.")
            items.append(Table(ranks, caption="feature effective rank on held-out states (mean [95 % CI] over seeds)"))
    overhead = F.overhead_table(results)
    if not overhead.empty:
        items += [Heading("Cost"), Text(
            "Wall time of each run (training, evaluation and diagnostics) and its ratio to the baseline method "
            "in the same protocol and architecture, as measured in this sweep (runs shared the machine, one per "
            "CPU). The update-phase overhead alone is measured by `sphere bench`."), Table(overhead)]
    protocol = "crl" if "crl" in set(results.runs.get(F.PROTOCOL, pd.Series(dtype=str)).astype(str)) else None
    geo = geometry_runs(results, protocol, max_methods=10**6)
    if geo:
        shown, left = geo[:GEOMETRY_MAX_METHODS], geo[GEOMETRY_MAX_METHODS:]
        stages = " → ".join(geo[0].stages)
        items += [Heading("Update geometry"), Text(
            "A gradient step moves the policy's outputs by K ∇_f L, where K is the empirical NTK. Top row: the unit "
            "sphere of gradient directions ∇_f L; bottom row: its image under K restricted to K's top-3 eigenspace, "
            "an ellipsoid with semi-axes lambda_1..3 (normalised by lambda_1, mean over seeds) at each stage "
            f"({stages}). A collapsed spectrum flattens the ellipsoid: updates can move the outputs in fewer "
            "directions. Use the slider, Play / Reset and the mesh switch; drag to rotate."),
            Geometry(shown, caption=f"{'CRL' if protocol == 'crl' else 'all'} runs; baseline first")]
        if left:
            items.append(Text(f"{len(left)} more methods are not drawn (the view shows {GEOMETRY_MAX_METHODS}): "
                              + ", ".join(f"`{g.label}`" for g in left) + ". Their eigenvalues are in the results "
                              "table (`summary` rows `ntk_eig_1..3`)."))
    items += [Heading("Runs"), Table(_runs_table(results))]
    if saved:
        items.append(Text(f"Figures also written as PNG and PDF to `{Path(saved[0]).parent}`."))
    return items


def _study_section(results: Results, reps: int) -> list[Any]:
    """`sphere study`'s two tables, when the runs hold RL and CRL runs of some method (else nothing)."""
    from sphere_rl.experiments.study import format_study, study_table

    protocols = set(results.runs.get(F.PROTOCOL, pd.Series(dtype=str)).astype(str))
    if not {"rl", "crl"} <= protocols:
        return []
    try:
        table = study_table(results, reps=reps)
    except ValueError:
        return []
    cells, diffs = format_study(table)
    items: list[Any] = [Heading("RL vs CRL per architecture and method"), Text(
        "Over seeds, with 95 % bootstrap CIs: CRL and RL average success, the RL − CRL gap paired by seed (the cost "
        "of training after other tasks), the first task's success under CRL (learning from scratch: what a method "
        "costs where there is nothing to lose yet), r_e(K) averaged over the CRL task ends and CRL forgetting. "
        "`sphere study` prints the same tables (docs/statistics.md)."), Table(cells, caption="cells")]
    if len(diffs):
        items.append(Table(diffs, caption=f"against {table.attrs['baseline']} in the same row: differences [95 % CI] "
                                          "and Welch p (not corrected for multiple comparisons)"))
    return items


def _per_task_table(results: Results) -> pd.DataFrame:
    rows = results.select("summary", "final_success").dropna(subset=["task_index"])
    if rows.empty:
        return pd.DataFrame()
    labelled = F._with_labels(results, rows[["run", "task_index", "task", "value"]])
    cell_cols = [c for c in (F.PROTOCOL, F.ARCH) if labelled[c].nunique() > 1] + ["method"]
    table: dict[str, dict[str, str]] = {}
    for key, group in labelled.groupby(cell_cols, observed=True):
        key = key if isinstance(key, tuple) else (key,)
        name = " / ".join(str(k) for k in key)
        for task, by_task in group.groupby("task", observed=True):
            mean, lo, hi = F._mean_ci(by_task["value"].to_numpy())
            ci = "" if np.isnan(lo) else f" [{lo:.2f}, {hi:.2f}]"
            table.setdefault(str(task), {})[name] = f"{mean:.2f}{ci}"
    order = labelled.drop_duplicates("task").sort_values("task_index")["task"].astype(str)
    return pd.DataFrame(table).T.reindex(order)


def _runs_table(results: Results) -> pd.DataFrame:
    cols = ["run", *results.cell_columns, *(["seed"] if "seed" in results.runs.columns and "seed" not in results.cell_columns else []),
            "complete", "average_success", "wall_time_s"]
    return results.runs[[c for c in cols if c in results.runs.columns]].sort_values(
        [c for c in [*results.cell_columns, "seed"] if c in results.runs.columns])


def build_sweep_report(path: str | Path, out: str | Path | None = None, *, heldout: str | None = None,
                       reps: int = 2000, figures_dir: str | Path | None = None, by: str | None = None) -> Path:
    """Write ``out`` (default ``PATH/report.html``); figures also as PNG + PDF into ``figures_dir`` if given."""
    results = load_results(path)
    if not results.runs["complete"].any():
        raise ValueError(f"no finished runs (with summary.json) under {path}: nothing to report")
    out = Path(out) if out else Path(path) / "report.html"
    title = f"sphere-rl report: {Path(path).resolve().name}"
    return write_report(out, title=title, sections=report_sections(results, by=by, heldout=heldout, reps=reps,
                                                                   figures_dir=figures_dir))

