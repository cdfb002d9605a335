"""Matplotlib figures made from run results (PNG, headless)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sphere_rl.runs.atomic import atomic_write_bytes  # noqa: E402
from sphere_rl.runs.logger import read_metrics  # noqa: E402


def _write_png(fig: plt.Figure, path: str | Path) -> Path:
    """Render `fig` as a 120-dpi PNG written atomically to `path`, then close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def plot_crl_comparison(results: dict[str, Any], path: str | Path) -> Path:
    """Three panels: final success per task, proxy r_e(A) at each task end, and the success of the
    task being trained over env steps (from each run's eval.csv)."""
    labels = list(results)
    tasks = results[labels[0]].tasks
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    x = np.arange(len(tasks))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        r = results[label]
        axes[0].bar(x + i * width - 0.4 + width / 2, r.final_success, width, label=f"{label} (avg {r.average_success:.2f})")
        axes[1].plot(x, r.proxy_rank, marker="o", label=label)
        if r.run_dir:
            rows = [row for row in read_metrics(Path(r.run_dir) / "eval.csv") if row["eval_task_index"] == row["task_index"]]
            axes[2].plot([row["env_step"] for row in rows], [row["success"] for row in rows], label=label)
    for ax in axes[:2]:
        ax.set_xticks(x, tasks, rotation=30, ha="right", fontsize=8)
    axes[0].set_ylabel("final success (deterministic policy)")
    axes[0].set_ylim(0, 1.05)
    axes[1].set_ylabel("proxy r_e(A) at task end")
    axes[2].set_xlabel("env steps (tasks in sequence)")
    axes[2].set_ylabel("success on the current task")
    axes[2].set_ylim(-0.02, 1.02)
    steps_per_task = results[labels[0]].env_steps / max(len(tasks), 1)
    for k in range(1, len(tasks)):
        axes[2].axvline(k * steps_per_task, color="grey", lw=0.5, ls=":")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Continual RL on the built-in arm suite")
    fig.tight_layout()
    return _write_png(fig, path)


def plot_seed_comparison(runs: dict[str, list[str | Path]], stats: dict[str, Any], path: str | Path) -> Path:
    """The demo's figure, every number with its 95 % bootstrap CI over seeds: final success per task
    (bars, seeds as dots), r_e(K) at each task's end (bands), and the success of the task being trained
    over env steps (mean over seeds, band). `runs`: method -> its seeds' run directories; `stats`:
    :func:`sphere_rl.experiments.demo.demo_statistics`."""
    from sphere_rl.results.stats import mean_ci

    labels = list(runs)
    tasks = stats["tasks"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.4))
    x = np.arange(len(tasks))
    width = 0.8 / len(labels)
    colors = plt.get_cmap("tab10")
    for i, label in enumerate(labels):
        color = colors(i)
        succ = [row[label]["success"] for row in stats["per_task"]]
        mean = np.asarray([s["mean"] for s in succ])
        err = np.asarray([[s["mean"] - s["lo"] for s in succ], [s["hi"] - s["mean"] for s in succ]])
        xs = x + i * width - 0.4 + width / 2
        avg = stats["average"][label]
        axes[0].bar(xs, mean, width * 0.95, yerr=np.nan_to_num(err), capsize=3, color=color, alpha=0.8,
                    label=f"{label}: avg {avg['mean']:.2f} [{avg['lo']:.2f}, {avg['hi']:.2f}]")
        per_seed = np.asarray([json.loads((Path(r) / "summary.json").read_text())["final_success"] for r in runs[label]])
        for t in range(len(tasks)):
            axes[0].scatter(np.full(per_seed.shape[0], xs[t]), per_seed[:, t], s=7, color="black", zorder=3)
        ranks = [row[label]["ntk_rank"] for row in stats["per_task"]]
        axes[1].plot(x, [r["mean"] for r in ranks], marker="o", color=color, label=label)
        axes[1].fill_between(x, [r["lo"] for r in ranks], [r["hi"] for r in ranks], color=color, alpha=0.2)
        curves = []
        for run in runs[label]:
            rows = [row for row in read_metrics(Path(run) / "eval.csv") if row["eval_task_index"] == row["task_index"]]
            curves.append(([row["env_step"] for row in rows], [row["success"] for row in rows]))
        steps = curves[0][0]
        if all(c[0] == steps for c in curves):
            values = np.asarray([c[1] for c in curves], dtype=float)
            bands = np.asarray([mean_ci(values[:, k], reps=1000) for k in range(values.shape[1])])
            axes[2].plot(steps, bands[:, 0], color=color, label=label)
            axes[2].fill_between(steps, bands[:, 1], bands[:, 2], color=color, alpha=0.2)
    for ax in axes[:2]:
        ax.set_xticks(x, [t.split("/")[-1] for t in tasks], rotation=30, ha="right", fontsize=8)
    n = ", ".join(f"{stats['seeds'][label]}" for label in labels)
    axes[0].set_ylabel("final success (mean, 95 % CI; dots: seeds)")
    axes[0].set_ylim(0, 1.05)
    axes[1].set_ylabel("r_e(K) at the task's end (mean, 95 % CI)")
    axes[2].set_xlabel("env steps (tasks in sequence)")
    axes[2].set_ylabel("success on the current task (mean, 95 % CI)")
    axes[2].set_ylim(-0.02, 1.02)
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    title = "Continual RL on the built-in arm suite"
    diff = stats.get("difference")
    if diff:
        title += (f": {diff['of']} = {diff['value']:+.3f} [{diff['lo']:+.3f}, {diff['hi']:+.3f}], "
                  f"Welch p = {diff['welch_p']:.2g} ({n} seeds)")
    fig.suptitle(title)
    fig.tight_layout()
    return _write_png(fig, path)
