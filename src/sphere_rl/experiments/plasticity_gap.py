"""`sphere plasticity`: is plasticity loss visible? RL (each task from scratch) vs CRL over seeds.

For every seed it trains the same configuration under both protocols and compares, task by
task, the final success of the task just trained. Plasticity loss shows as CRL < RL on later
tasks. Writes `plasticity_gap.json` and `plasticity_gap.md` into the output folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from sphere_rl.config import preset
from sphere_rl.protocols.runner import Runner
from sphere_rl.runs import RunDir
from sphere_rl.runs.atomic import atomic_write_json, atomic_write_text


def run_plasticity_gap(
    seeds: int = 3,
    out_dir: str = "runs/plasticity",
    overrides: list[str] | None = None,
    preset_name: str = "demo",
) -> dict[str, Any]:
    parent = Path(out_dir) / time.strftime("%Y%m%d-%H%M%S")
    success: dict[str, list[list[float]]] = {"rl": [], "crl": []}
    for seed in range(seeds):
        for protocol in ("rl", "crl"):
            cfg = preset(preset_name, [*(overrides or []), f"seed={seed}", f"run.protocol={protocol}"])
            run_dir = RunDir.create(parent, name=f"{protocol}-seed{seed}", config=cfg.to_dict(), seed=seed)
            result = Runner(cfg, run_dir).run()
            success[protocol].append(result.final_success)
            print(f"seed {seed} {protocol:>3}: " + " ".join(f"{s:.2f}" for s in result.final_success))
    summary = summarize_gap(result.tasks, np.array(success["rl"]), np.array(success["crl"]))
    summary.update({"preset": preset_name, "overrides": overrides or [], "seeds": seeds, "config": cfg.to_dict()})
    atomic_write_json(parent / "plasticity_gap.json", summary)
    atomic_write_text(parent / "plasticity_gap.md", gap_markdown(summary))
    print(gap_markdown(summary))
    print(f"written to {parent}")
    return summary


def summarize_gap(tasks: list[str], rl: np.ndarray, crl: np.ndarray) -> dict[str, Any]:
    """Per-task mean ± std of RL and CRL success (seeds x tasks arrays) and the gap on later tasks.

    `later_gap` is mean over seeds of (RL - CRL) averaged over tasks 2..n; its p-value is a
    one-sided paired t-test over seeds (RL > CRL), reported for what it is with few seeds.
    """
    later_rl, later_crl = rl[:, 1:].mean(axis=1), crl[:, 1:].mean(axis=1)
    diff = later_rl - later_crl
    if len(diff) > 1 and np.std(diff) > 0:
        p_value = float(stats.ttest_rel(later_rl, later_crl, alternative="greater").pvalue)
    else:
        p_value = float("nan")
    return {
        "tasks": tasks,
        "rl_success": rl.tolist(),
        "crl_success": crl.tolist(),
        "rl_mean": rl.mean(axis=0).tolist(),
        "rl_std": rl.std(axis=0).tolist(),
        "crl_mean": crl.mean(axis=0).tolist(),
        "crl_std": crl.std(axis=0).tolist(),
        "later_gap": float(diff.mean()),
        "later_gap_std": float(diff.std()),
        "later_gap_p_value": p_value,
    }


def gap_markdown(summary: dict[str, Any]) -> str:
    lines = ["| task | RL success | CRL success | RL − CRL |", "|---|---|---|---|"]
    for i, task in enumerate(summary["tasks"]):
        rl, crl = summary["rl_mean"][i], summary["crl_mean"][i]
        lines.append(f"| {task} | {rl:.2f} ± {summary['rl_std'][i]:.2f} | {crl:.2f} ± {summary['crl_std'][i]:.2f} | {rl - crl:+.2f} |")
    lines.append(
        f"\nLater tasks (2..n), RL − CRL: {summary['later_gap']:+.3f} ± {summary['later_gap_std']:.3f} "
        f"over {len(summary['rl_success'])} seeds (one-sided paired t-test p = {summary['later_gap_p_value']:.3g})."
    )
    return "\n".join(lines)
