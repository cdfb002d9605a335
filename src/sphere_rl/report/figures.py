"""The paper's figures from a results table (matplotlib; PNG for the report, PDF beside it for papers).

Every figure takes :class:`~sphere_rl.results.table.Results` and returns a matplotlib ``Figure``
(or None when the runs do not hold what it needs, e.g. no CRL run, no r_e(K)); error bars and bands
are 95 % bootstrap CIs over runs (seeds). A *method* is a cell without its protocol and
architecture fields, so "reg.name=sphere" is one method under RL and CRL and on every actor.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats as sps  # noqa: E402

from sphere_rl.results.compare import per_run_values  # noqa: E402
from sphere_rl.results.table import Results  # noqa: E402

__all__ = ["success_bars", "ntk_rank_across_tasks", "performance_profiles", "proxy_scatter", "feature_pca", "overhead_table",
           "visits_curves", "method_label", "save_figure", "png_bytes", "FIGURES"]

PROTOCOL, ARCH = "run.protocol", "net.actor"


def _mean_ci(values: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return np.nan, np.nan, np.nan
    if len(values) == 1:
        return float(values[0]), np.nan, np.nan
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(reps, len(values)), replace=True).mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(lo), float(hi)


def method_columns(results: Results) -> list[str]:
    return [c for c in results.cell_columns if c not in (PROTOCOL, ARCH)]


def method_label(row: pd.Series | dict[str, Any], columns: list[str]) -> str:
    """``reg.name=sphere`` -> ``sphere``; several fields -> ``reg.name=sphere, reg.coef=0.1``."""
    if not columns:
        return "all runs"
    if len(columns) == 1:
        return str(row[columns[0]])
    return ", ".join(f"{c}={row[c]}" for c in columns)


def _with_labels(results: Results, frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    cols = method_columns(results)
    runs = results.runs.set_index("run")
    for col in {*cols, PROTOCOL, ARCH}:
        if col not in frame.columns:
            frame[col] = frame["run"].map(runs[col]) if col in runs.columns else results.constant_config.get(col)
    from sphere_rl.experiments.study import _method_fields, _method_labels

    fields = [c for c in _method_fields(results, None) if c in cols]
    if not fields or not len(frame):
        frame["method"] = frame.apply(lambda r: method_label(r, cols), axis=1) if len(frame) else []
        return frame
    # plasticity methods by name (`none`, `sphere/loss/0.05`, `reset[log_std]`), other varying fields as k=v
    if "reg.name" not in frame.columns:
        frame["reg.name"] = frame["run"].map(runs["reg.name"]) if "reg.name" in runs.columns else \
            results.constant_config.get("reg.name")
    others = [c for c in cols if c not in fields]
    labels = _method_labels(frame, fields)
    if others:
        labels = labels + ", " + frame.apply(lambda r: ", ".join(f"{c}={r[c]}" for c in others), axis=1)
    frame["method"] = labels.to_numpy()
    return frame


def success_bars(results: Results, metric: str = "average_success") -> plt.Figure | None:
    """RL vs CRL average success per architecture and method, mean over seeds with 95 % CIs."""
    values = _with_labels(results, per_run_values(results, metric)).dropna(subset=[metric])
    if values.empty:
        return None
    archs = sorted(values[ARCH].astype(str).unique())
    methods = sorted(values["method"].astype(str).unique())
    protocols = [p for p in ("rl", "crl") if p in set(values[PROTOCOL].astype(str))] or sorted(values[PROTOCOL].astype(str).unique())
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(archs) * len(methods)), 4.0))
    width = 0.8 / (len(methods) * len(protocols))
    colors = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")  # one colour per method
    for i, arch in enumerate(archs):
        for j, method in enumerate(methods):
            for k, protocol in enumerate(protocols):
                sel = values[(values[ARCH].astype(str) == arch) & (values["method"] == method)
                             & (values[PROTOCOL].astype(str) == protocol)][metric].to_numpy()
                if len(sel) == 0:
                    continue
                mean, lo, hi = _mean_ci(sel)
                x = i + (j * len(protocols) + k + 0.5) * width - 0.4
                err = None if np.isnan(lo) else [[mean - lo], [hi - mean]]
                ax.bar(x, mean, width * 0.95, yerr=err, capsize=3, color=colors(j), alpha=1.0 if protocol == "crl" else 0.45,
                       hatch=None if protocol == "crl" else "//", edgecolor="black", linewidth=0.5,
                       label=f"{method} ({protocol.upper()})" if i == 0 else None)
                ax.scatter(np.full(len(sel), x), sel, s=8, color="black", zorder=3)
    ax.set_xticks(range(len(archs)), archs)
    ax.set_ylabel(metric.replace("_", " ") + " (mean, 95 % CI; dots: seeds)")
    ax.set_ylim(0, 1.05 if metric == "average_success" else None)
    if len(methods) * len(protocols) > 8:  # many bars: the legend beside the axes, not over them
        ax.legend(fontsize=8, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("RL vs CRL success per architecture and method")
    fig.tight_layout()
    return fig


def ntk_rank_across_tasks(results: Results) -> plt.Figure | None:
    """r_e(K) at initialisation and at the end of every task, per method (mean, 95 % CI band), one panel per protocol."""
    ends = results.select("summary", "ntk_rank").dropna(subset=["value", "task_index"])
    if ends.empty:
        return None
    init = results.select("diagnostics", "ntk/effective_rank")
    init = init[init["env_step"] == 0][["run", "value"]]
    rows = pd.concat([ends[["run", "task_index", "value"]],
                      init.assign(task_index=-1)[["run", "task_index", "value"]]], ignore_index=True)
    rows = _with_labels(results, rows)
    protocols = [p for p in ("rl", "crl") if p in set(rows[PROTOCOL].astype(str))]
    tasks = results.select("summary", "final_success").drop_duplicates("task_index").sort_values("task_index")
    names = ["init"] + [str(t).split("/")[-1] for t in tasks["task"]]
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.5 * len(protocols), 3.8), squeeze=False, sharey=True)
    for ax, protocol in zip(axes[0], protocols):
        sub = rows[rows[PROTOCOL].astype(str) == protocol]
        for (method, arch), group in sub.groupby(["method", ARCH], observed=True):
            xs, means, los, his = [], [], [], []
            for t, by_task in group.groupby("task_index"):
                mean, lo, hi = _mean_ci(by_task["value"].to_numpy())
                xs.append(int(t) + 1), means.append(mean), los.append(lo), his.append(hi)
            label = method if rows[ARCH].nunique() == 1 else f"{method} ({arch})"
            line, = ax.plot(xs, means, marker="o", label=label)
            ax.fill_between(xs, los, his, color=line.get_color(), alpha=0.2)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{protocol.upper()}: r_e(K) at each task end")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("effective rank of the eNTK, r_e(K)")
    fig.tight_layout()
    return fig


def performance_profiles(results: Results, reps: int = 2000) -> plt.Figure | None:
    """Fraction of (run, task) final successes above tau, per method (rliable, 95 % stratified-bootstrap
    bands), one panel per protocol and architecture."""
    from sphere_rl.results import stats
    from sphere_rl.results.compare import score_matrices

    runs = _with_labels(results, results.runs[results.runs["complete"]][["run"]])
    if runs.empty:
        return None
    panels = list(runs.groupby([PROTOCOL, ARCH], observed=True))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), squeeze=False, sharey=True)
    taus = np.linspace(0.0, 1.0, 21)
    for ax, ((protocol, arch), group) in zip(axes[0], panels):
        matrices = {}
        for method, members in group.groupby("method"):
            m = score_matrices(results.subset(members["run"]), "final_success", by=[])
            if m:
                matrices[method] = next(iter(m.values()))
        if not matrices:
            continue
        profile = stats.performance_profile(matrices, taus, reps=reps)
        for method, rows in profile.groupby("cell", sort=False):
            line, = ax.plot(rows["tau"], rows["fraction"], label=f"{method} ({matrices[method].shape[0]} runs)")
            ax.fill_between(rows["tau"], rows["lo"], rows["hi"], color=line.get_color(), alpha=0.2)
        ax.set_title(f"{str(protocol).upper()}, {arch}", fontsize=10)
        ax.set_xlabel("final success threshold tau")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("fraction of (run, task) with success > tau")
    fig.suptitle("performance profiles (rliable; bands: 95 % stratified bootstrap)", fontsize=10)
    fig.tight_layout()
    return fig


def proxy_scatter(results: Results) -> tuple[plt.Figure | None, dict[str, float]]:
    """r_e(A) against r_e(K) over every diagnostics row, per method; Spearman and Pearson over all rows."""
    diag = results.select("diagnostics", ["ntk/effective_rank", "proxy/effective_rank"])
    if diag.empty:
        return None, {}
    wide = diag.pivot_table(index=["run", "env_step"], columns="metric", values="value", observed=True).dropna()
    if len(wide) < 3 or "ntk/effective_rank" not in wide or "proxy/effective_rank" not in wide:
        return None, {}
    wide = _with_labels(results, wide.reset_index())
    x, y = wide["ntk/effective_rank"].to_numpy(), wide["proxy/effective_rank"].to_numpy()
    rho, p_rho = sps.spearmanr(x, y)
    r, p_r = sps.pearsonr(x, y)
    corr = {"n": int(len(wide)), "spearman_rho": float(rho), "spearman_p": float(p_rho),
            "pearson_r": float(r), "pearson_p": float(p_r)}
    fig, ax = plt.subplots(figsize=(5.0, 4.2))
    for method, group in wide.groupby("method"):
        ax.scatter(group["ntk/effective_rank"], group["proxy/effective_rank"], s=10, alpha=0.6, label=method)
    ax.set_xlabel("r_e(K), exact eNTK")
    ax.set_ylabel("r_e(A), proxy")
    ax.set_title(f"proxy vs exact: Spearman {rho:.2f} (n={len(wide)})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, corr


def feature_pca(features: dict[str, list[np.ndarray]], heldout: str) -> tuple[plt.Figure | None, pd.DataFrame]:
    """Per method: 2-D PCA of the last hidden layer's features Phi on held-out states (first run), and the
    explained-variance spectrum (mean over runs); returns the figure and a table of feature ranks."""
    if not features:
        return None, pd.DataFrame()
    from sphere_rl.diagnostics.spectral import effective_rank

    methods = list(features)
    fig, axes = plt.subplots(2, len(methods), figsize=(3.6 * len(methods), 6.4), squeeze=False)
    rows = []
    for j, method in enumerate(methods):
        ratios, ranks = [], []
        for phi in features[method]:
            centred = phi - phi.mean(axis=0)
            singular = np.linalg.svd(centred, compute_uv=False)
            var = singular**2
            ratios.append(var[:10] / max(var.sum(), 1e-12))
            ranks.append(effective_rank(var))
        first = features[method][0] - features[method][0].mean(axis=0)
        _, _, vt = np.linalg.svd(first, full_matrices=False)
        proj = first @ vt[:2].T
        axes[0][j].scatter(proj[:, 0], proj[:, 1], s=4, alpha=0.5)
        axes[0][j].set_title(f"{method}\nr_e(Phi cov) {np.mean(ranks):.1f}", fontsize=9)
        axes[0][j].set_xlabel("PC 1", fontsize=8)
        axes[0][j].set_ylabel("PC 2", fontsize=8)
        mean_ratio = np.mean([np.pad(r, (0, 10 - len(r))) for r in ratios], axis=0)
        axes[1][j].bar(np.arange(1, 11), mean_ratio)
        axes[1][j].set_ylim(0, 1)
        axes[1][j].set_xlabel("principal component", fontsize=8)
        axes[1][j].set_ylabel("explained variance", fontsize=8)
        lo = np.nan if len(ranks) < 2 else _mean_ci(np.array(ranks))[1]
        hi = np.nan if len(ranks) < 2 else _mean_ci(np.array(ranks))[2]
        rows.append({"method": method, "runs": len(ranks), "feature effective rank": float(np.mean(ranks)),
                     "CI low": lo, "CI high": hi, "PC1 share": float(mean_ratio[0]),
                     "top-3 share": float(mean_ratio[:3].sum())})
    fig.suptitle(f"last-hidden-layer features on held-out states of {heldout} (final checkpoints)", fontsize=10)
    fig.tight_layout()
    return fig, pd.DataFrame(rows)


def overhead_table(results: Results, baseline: str | None = None) -> pd.DataFrame:
    """Wall time per run and its ratio to the baseline method (same protocol and architecture), 95 % CIs."""
    values = _with_labels(results, per_run_values(results, "wall_time_s")).dropna(subset=["wall_time_s"])
    if values.empty:
        return pd.DataFrame()
    methods = sorted(values["method"].unique())
    base = baseline if baseline in methods else ("none" if "none" in methods else methods[0])
    rows = []
    for (protocol, arch), group in values.groupby([PROTOCOL, ARCH], observed=True):
        ref = group[group["method"] == base]["wall_time_s"].to_numpy()
        for method, sub in group.groupby("method"):
            times = sub["wall_time_s"].to_numpy()
            mean, lo, hi = _mean_ci(times)
            row = {"protocol": protocol, "actor": arch, "method": method, "runs": len(times),
                   "wall time s": mean, "CI low": lo, "CI high": hi}
            if len(ref) and method != base:
                rng = np.random.default_rng(0)
                boot = (rng.choice(times, (2000, len(times))).mean(1) / rng.choice(ref, (2000, len(ref))).mean(1))
                row.update({"x baseline": times.mean() / ref.mean(), "ratio CI low": float(np.percentile(boot, 2.5)),
                            "ratio CI high": float(np.percentile(boot, 97.5))})
            rows.append(row)
    return pd.DataFrame(rows)


_VISIT_PANELS = {"final_success": "success after the task's training", "ntk_rank": "r_e(K) at task ends",
                 "fit/auc": "target-fitting probe, fit/auc (lower: faster)", "policy_entropy": "policy entropy at task ends"}


def visits_curves(visits: pd.DataFrame) -> plt.Figure | None:
    """One panel per metric of a by-visit table (`experiments.study.visits_table`): each method's mean over
    seeds at every visit of a repeating sequence with its 95 % bootstrap CI band (the table's own numbers),
    so that what changes from one round of the tasks to the next is seen at a glance. None when the table is
    empty (no sequence repeats its tasks)."""
    if visits is None or visits.empty:
        return None
    rows = visits[visits["visit"].astype(str).str.fullmatch(r"\d+")].copy()
    rows["v"] = rows["visit"].astype(int)
    metrics = [m for m in _VISIT_PANELS if m in rows.columns and rows[m].notna().any()]
    row_cols = list(visits.attrs.get("row_columns", []))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for key, group in rows.groupby([*row_cols, "method"], sort=False):
            key = key if isinstance(key, tuple) else (key,)
            group = group.sort_values("v")
            line, = ax.plot(group["v"], group[metric], marker="o", ms=3, label=" ".join(str(k) for k in key))
            ax.fill_between(group["v"], group[f"{metric}_lo"], group[f"{metric}_hi"], color=line.get_color(), alpha=0.2)
        ax.set_title(_VISIT_PANELS[metric], fontsize=9)
        ax.set_xlabel("visit (round of the tasks)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def png_bytes(fig: plt.Figure, dpi: int = 110) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_figure(fig: plt.Figure, folder: str | Path, name: str) -> list[Path]:
    """``name.png`` and ``name.pdf`` in ``folder`` (atomic writes)."""
    from sphere_rl.runs.atomic import atomic_write_bytes

    folder = Path(folder)
    pdf = io.BytesIO()
    fig.savefig(pdf, format="pdf")
    return [atomic_write_bytes(folder / f"{name}.png", png_bytes(fig, dpi=150)),
            atomic_write_bytes(folder / f"{name}.pdf", pdf.getvalue())]


FIGURES: dict[str, Callable[..., Any]] = {
    "success_bars": success_bars, "ntk_rank_across_tasks": ntk_rank_across_tasks,
    "performance_profiles": performance_profiles, "proxy_scatter": proxy_scatter,
}
"""Figures made from the results table alone (the feature PCA also needs checkpoints)."""
