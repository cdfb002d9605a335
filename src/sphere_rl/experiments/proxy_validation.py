"""`sphere proxy`: does the proxy r_e(A) track the exact r_e(K)? (SPEC §2, the paper's proxy scatter.)

Both are logged in every diagnostics.csv row on the same probe set, so a CRL run with diagnostics
every few evaluations gives (r_e(A), r_e(K)) pairs over its checkpoints. We report Spearman's rank
correlation pooled over all rows of all runs, per run, and within each task (where the spread comes
from training on one task only), and save a scatter plot.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from sphere_rl.config import preset
from sphere_rl.protocols.runner import Runner
from sphere_rl.runs import RunDir
from sphere_rl.runs.atomic import atomic_write_bytes, atomic_write_json
from sphere_rl.runs.logger import read_metrics

VARIANTS = {"topk_moe": [], "topk_moe+sphere": ["reg.name=sphere"]}


def _spearman(x: list[float], y: list[float]) -> dict[str, float]:
    if len(x) < 3:
        return {"rho": float("nan"), "p": float("nan"), "n": len(x)}
    result = stats.spearmanr(x, y)
    return {"rho": float(result.statistic), "p": float(result.pvalue), "n": len(x)}


def proxy_pairs(run_dirs: dict[str, str | Path]) -> dict[str, list[dict[str, Any]]]:
    """(task_index, env_step, r_e(A), r_e(K)) per diagnostics row of each labelled run."""
    pairs = {}
    for label, path in run_dirs.items():
        csv = Path(path) / "diagnostics.csv"
        if not csv.is_file():
            raise FileNotFoundError(f"{csv} does not exist (run with diag.enabled=true)")
        rows = [r for r in read_metrics(csv) if r.get("ntk/effective_rank") is not None]
        if not rows:
            raise ValueError(f"{csv} has no r_e(K) values (run with diag.ntk=true)")
        pairs[label] = [{"task_index": r["task_index"], "env_step": r["env_step"], "proxy": r["proxy/effective_rank"],
                         "ntk": r["ntk/effective_rank"]} for r in rows]
    return pairs


def proxy_statistics(pairs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    everything = [p for rows in pairs.values() for p in rows]
    out: dict[str, Any] = {"pooled": _spearman([p["proxy"] for p in everything], [p["ntk"] for p in everything])}
    out["per_run"] = {label: _spearman([p["proxy"] for p in rows], [p["ntk"] for p in rows]) for label, rows in pairs.items()}
    within = []
    for rows in pairs.values():
        for t in sorted({p["task_index"] for p in rows}):
            task_rows = [p for p in rows if p["task_index"] == t]
            s = _spearman([p["proxy"] for p in task_rows], [p["ntk"] for p in task_rows])
            if not np.isnan(s["rho"]):
                within.append(s["rho"])
    out["within_task_rho"] = {"mean": float(np.mean(within)) if within else float("nan"),
                              "min": float(np.min(within)) if within else float("nan"),
                              "max": float(np.max(within)) if within else float("nan"), "n_groups": len(within)}
    return out


def plot_proxy_scatter(pairs: dict[str, list[dict[str, Any]]], statistics: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    markers = "osd^v<>"
    for i, (label, rows) in enumerate(pairs.items()):
        sc = ax.scatter([p["proxy"] for p in rows], [p["ntk"] for p in rows], c=[p["task_index"] for p in rows],
                        cmap="viridis", marker=markers[i % len(markers)], s=22, alpha=0.8, label=label)
    fig.colorbar(sc, ax=ax, label="task index")
    pooled = statistics["pooled"]
    ax.set_title(f"proxy vs exact spectral rank (Spearman ρ = {pooled['rho']:.2f}, n = {pooled['n']})", fontsize=10)
    ax.set_xlabel("r_e(A): routing-weighted last-layer features")
    ax.set_ylabel("r_e(K): empirical NTK of the action mean")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def run_proxy_validation(run_dirs: list[str] | None = None, out_dir: str = "runs/proxy", seed: int = 0,
                         overrides: list[str] | None = None, diag_every: int = 25_000) -> dict[str, Any]:
    """Analyse existing runs, or train the demo CRL pair (Top-K MoE, + SPHERE) with diagnostics every `diag_every` steps."""
    parent = Path(out_dir) / time.strftime("%Y%m%d-%H%M%S")
    if run_dirs:
        labelled = {Path(p).name: Path(p) for p in run_dirs}
    else:
        labelled = {}
        for label, extra in VARIANTS.items():
            cfg = preset("demo", [f"seed={seed}", f"diag.every={diag_every}", *extra, *(overrides or [])])
            run_dir = RunDir.create(parent, name=label.replace("+", "_"), config=cfg.to_dict(), seed=seed)
            print(f"== {label}: CRL on {cfg.run.tasks}, diagnostics every {cfg.diag.every:,} steps")
            Runner(cfg, run_dir).run()
            labelled[label] = run_dir.root
    pairs = proxy_pairs(labelled)
    statistics = proxy_statistics(pairs)
    png = plot_proxy_scatter(pairs, statistics, parent / "proxy_scatter.png")
    report = {"runs": {k: str(v) for k, v in labelled.items()}, "statistics": statistics, "pairs": pairs, "plot": str(png)}
    atomic_write_json(parent / "proxy_validation.json", report)
    pooled = statistics["pooled"]
    print(f"Spearman r_e(A) vs r_e(K): pooled ρ = {pooled['rho']:.3f} (p = {pooled['p']:.2g}, n = {pooled['n']})")
    for label, s in statistics["per_run"].items():
        print(f"  {label}: ρ = {s['rho']:.3f} (p = {s['p']:.2g}, n = {s['n']})")
    w = statistics["within_task_rho"]
    print(f"  within a task: mean ρ = {w['mean']:.3f} over {w['n_groups']} (run, task) groups (min {w['min']:.2f}, max {w['max']:.2f})")
    print(f"plot: {png}\nreport: {parent / 'proxy_validation.json'}")
    return report
