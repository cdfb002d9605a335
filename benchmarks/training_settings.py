"""How much do the official training settings move results? A measured comparison on the built-in suite.

Trains the `demo` preset (CRL on arm6, small Top-K MoE, 400k steps per task) for every combination of
  settings: `old` = ppo.kl_mode=early_stop + net.init=orthogonal (this library before 0.3; SB3's reading of
            target_kl, the usual PPO init, schedule over the whole task)
            `official` = ppo.kl_mode=adaptive_lr + net.init=official (the official SPHERE runs; the defaults now)
  method:   Top-K MoE, Top-K MoE + SPHERE (loss mode, ratio 0.05, as `sphere demo`)
and seeds, each run its own `sphere train` process with one XLA thread, `--jobs` at a time. Writes every run
directory under RUNS and the summary (per-task success, CRL average, r_e(K), paired differences with
t-test p-values and bootstrap CIs) to OUT/training_settings.json and .md.

    .venv/bin/python benchmarks/training_settings.py --seeds 3 --jobs 2 --out benchmarks/results/training-settings-demo
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

SETTINGS = {
    "old": ["ppo.kl_mode=early_stop", "net.init=orthogonal", "ppo.lr_end_fraction=1.0"],
    "official": ["ppo.kl_mode=adaptive_lr", "net.init=official"],
}
METHODS = {"topk_moe": [], "topk_moe+sphere": ["reg.name=sphere"]}


def _run(out: Path, name: str, overrides: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    cmd = [sys.executable, "-m", "sphere_rl.cli", "train", "--preset", "demo", "--out-dir", str(out), "--name", name,
           "run.progress=false", "run.tensorboard=false", *overrides]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def _bootstrap_ci(values: np.ndarray, n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95 % CI of the mean (few seeds: wide and optimistic; reported as such)."""
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(n, len(values)), replace=True).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(runs: Path, out: Path, seeds: list[int]) -> dict:
    cells = {}
    (out / "summaries").mkdir(parents=True, exist_ok=True)
    for setting, method in itertools.product(SETTINGS, METHODS):
        rows = []
        for seed in seeds:
            name = f"{setting}-{method.replace('+', '_')}-seed{seed}"
            text = (runs / name / "summary.json").read_text()
            (out / "summaries" / f"{name}.json").write_text(text)
            rows.append(json.loads(text))
        success = np.array([r["final_success"] for r in rows])
        ntk = np.array([[np.nan if v is None else v for v in r["ntk_rank"]] for r in rows], float)
        cells[f"{setting}/{method}"] = {
            "tasks": rows[0]["tasks"],
            "final_success": success.tolist(),
            "average_success": success.mean(axis=1).tolist(),
            "average_success_mean": float(success.mean()),
            "average_success_std": float(success.mean(axis=1).std(ddof=1)) if len(seeds) > 1 else float("nan"),
            "average_success_ci95": _bootstrap_ci(success.mean(axis=1)),
            "ntk_rank_mean_per_task": np.nanmean(ntk, axis=0).tolist(),
            "wall_time_s": [r["wall_time_s"] for r in rows],
        }
    comparisons = {}
    pairs = [(f"official/{m}", f"old/{m}") for m in METHODS] + [(f"{s}/topk_moe+sphere", f"{s}/topk_moe") for s in SETTINGS]
    for a, b in pairs:
        diff = np.array(cells[a]["average_success"]) - np.array(cells[b]["average_success"])
        p = float(stats.ttest_rel(cells[a]["average_success"], cells[b]["average_success"]).pvalue) if np.std(diff) > 0 else float("nan")
        comparisons[f"{a} - {b}"] = {"mean": float(diff.mean()), "per_seed": diff.tolist(), "ci95": _bootstrap_ci(diff),
                                     "paired_t_p": p}
    return {"preset": "demo", "seeds": seeds, "settings": SETTINGS, "methods": METHODS, "cells": cells,
            "comparisons": comparisons}


def markdown(summary: dict) -> str:
    cells = summary["cells"]
    tasks = next(iter(cells.values()))["tasks"]
    lines = [f"CRL on arm6, `demo` preset, seeds {summary['seeds']}: final success of each task at the end of its training "
             "(mean over seeds), CRL average (mean ± std, bootstrap 95 % CI over seeds), mean r_e(K) over tasks.", "",
             "| setting / method | " + " | ".join(t.split("/")[-1] for t in tasks) + " | average | 95 % CI | r_e(K) |",
             "|---|" + "---|" * (len(tasks) + 3)]
    for name, c in cells.items():
        per_task = np.mean(c["final_success"], axis=0)
        lo, hi = c["average_success_ci95"]
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in per_task)
                     + f" | {c['average_success_mean']:.2f} ± {c['average_success_std']:.2f} | [{lo:.2f}, {hi:.2f}] | "
                     f"{np.nanmean(c['ntk_rank_mean_per_task']):.1f} |")
    lines += ["", "| difference (CRL average success) | mean | per seed | 95 % CI | paired t p |", "|---|---|---|---|---|"]
    for name, d in summary["comparisons"].items():
        lo, hi = d["ci95"]
        lines.append(f"| {name} | {d['mean']:+.3f} | {', '.join(f'{v:+.2f}' for v in d['per_seed'])} | [{lo:+.2f}, {hi:+.2f}] "
                     f"| {d['paired_t_p']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/training-settings-demo")
    parser.add_argument("--runs", default="runs/training-settings", help="parent of the run directories (checkpoints: not for git)")
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args()
    out, runs = Path(args.out), Path(args.runs)
    seeds = list(range(args.seeds))
    if not args.summarize_only:
        (runs / "logs").mkdir(parents=True, exist_ok=True)
        queue = [(s, m, seed) for seed in seeds for s in SETTINGS for m in METHODS]
        running: list[tuple[str, subprocess.Popen]] = []
        t0 = time.time()
        while queue or running:
            while queue and len(running) < args.jobs:
                setting, method, seed = queue.pop(0)
                name = f"{setting}-{method.replace('+', '_')}-seed{seed}"
                if (runs / name / "summary.json").exists():
                    continue
                running.append((name, _run(runs, name, [*SETTINGS[setting], *METHODS[method], f"seed={seed}"],
                                           runs / "logs" / f"{name}.log")))
            time.sleep(2)
            for item in list(running):
                if item[1].poll() is not None:
                    running.remove(item)
                    print(f"[{time.time() - t0:6.0f} s] {item[0]} exit {item[1].returncode}", flush=True)
    summary = summarize(runs, out, seeds)
    (out / "training_settings.json").write_text(json.dumps(summary, indent=2))
    (out / "training_settings.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
