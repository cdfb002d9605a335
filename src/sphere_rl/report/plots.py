"""Matplotlib figures made from run results (PNG, headless)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sphere_rl.runs.atomic import atomic_write_bytes  # noqa: E402
from sphere_rl.runs.logger import read_metrics  # noqa: E402


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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())
