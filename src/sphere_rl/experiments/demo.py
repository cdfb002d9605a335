"""`sphere demo`: does SPHERE help a Top-K MoE policy through the built-in CRL sequence? Answered
with seeds and confidence intervals.

Top-K MoE and Top-K MoE + SPHERE (loss mode), CRL through `arm6`, `--seeds` each (default 5). Each
method's seeds train as one seed group (vmapped, `protocols.multiseed`); the two groups train side
by side, one process each, so both CPU cores work. Every seed is an ordinary run directory under
`runs/demo/<time>/<method>/seed_<s>/`.

It prints, per task, the mean final success of each method with its 95 % bootstrap CI and the mean
r_e(K) at the task's end; the CRL average success of each method; the difference (SPHERE minus
Top-K) with its 95 % bootstrap CI, Welch's t-test and Mann-Whitney U p-values; and says plainly
whether the difference is significant at the 5 % level. The plot (`demo.png`) shows the same with
CIs and every seed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from sphere_rl.config import PRESETS, preset

__all__ = ["VARIANTS", "run_demo", "demo_statistics", "format_demo"]

VARIANTS: dict[str, list[str]] = {"Top-K MoE": [], "Top-K MoE + SPHERE": ["reg.name=sphere"]}
"""The two methods: label -> overrides of the `demo` preset. The first is the baseline."""

DEMO_SCHEDULE: list[str] = ["run.steps_per_task=200000", "run.eval_every=100000", "run.eval_episodes=16",
                             "diag.every=200000", "run.checkpoint_every=100000"]
"""Where the demo departs from the `demo` preset, to answer in about 5 minutes on 2 CPU cores: half the
budget per task (200k steps; the preset: 400k), evaluations every 100k steps with 16 episodes (the
preset: 50k, 32), diagnostics at task ends only (the preset: at every evaluation). The network and
PPO settings are the preset's."""

SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _folder(label: str) -> str:
    return label.lower().replace(" + ", "_").replace(" ", "_").replace("-", "")


def _train_group(preset_name: str, extra: list[str], seeds: list[int], root: str) -> None:
    """One method's seed group (in a child process)."""
    from sphere_rl.compilation_cache import enable_compilation_cache
    from sphere_rl.protocols.multiseed import SeedGroup, create_group

    enable_compilation_cache()
    schedule = DEMO_SCHEDULE if preset_name == "demo" else []
    cfgs = [preset(preset_name, [*schedule, f"seed={s}", "run.progress=false", *extra]).validate() for s in seeds]
    runs = create_group(cfgs, Path(root).parent, Path(root).name)
    SeedGroup(cfgs, runs, progress=False).run()


def _logged_steps(root: Path) -> int:
    """Env steps logged so far by every seed of every method under `root` (the progress bar)."""
    from sphere_rl.runs.logger import last_env_step

    return sum(max(last_env_step(path), 0) for path in root.glob("*/seed_*/metrics.csv"))


def run_demo(out_dir: str = "runs/demo", seeds: tuple[int, ...] = (0, 1, 2, 3, 4), quick: bool = False,
             parallel: bool = True) -> dict[str, Any]:
    """Train both methods over `seeds`, print the comparison and write demo.png and demo.json."""
    from tqdm.auto import tqdm

    name = "demo-quick" if quick else "demo"
    parent = Path(out_dir) / time.strftime("%Y%m%d-%H%M%S")
    schedule = DEMO_SCHEDULE if name == "demo" else []
    cfg = preset(name, schedule)
    print(f"sphere demo: preset '{name}' ({PRESETS[name]['description']})"
          + (f"\nwith {' '.join(schedule)} (the demo's budget)" if schedule else ""))
    print(f"CRL, {', '.join(VARIANTS)}; seeds {', '.join(map(str, seeds))} "
          f"({len(seeds)} per method, each method's seeds in one process, the two side by side)")
    start = time.perf_counter()
    jobs = {label: (name, extra, list(seeds), str(parent / _folder(label))) for label, extra in VARIANTS.items()}
    if parallel:
        from sphere_rl import envs

        total = len(seeds) * len(VARIANTS) * cfg.run.steps_per_task * len(envs.resolve_sequence(cfg.run.tasks))
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: XLA reads its flags at start
        previous = os.environ.get("XLA_FLAGS")
        os.environ["XLA_FLAGS"] = f"{previous or ''} {SINGLE_THREAD_XLA}".strip()
        try:
            procs = [context.Process(target=_train_group, args=job, daemon=True) for job in jobs.values()]
            for p in procs:
                p.start()
        finally:
            if previous is None:
                os.environ.pop("XLA_FLAGS", None)
            else:
                os.environ["XLA_FLAGS"] = previous
        with tqdm(total=total, unit="step", unit_scale=True, mininterval=1.0, dynamic_ncols=True,
                  desc=f"{len(seeds) * len(VARIANTS)} runs") as bar:
            while any(p.is_alive() for p in procs):
                time.sleep(1.0)
                bar.update(_logged_steps(parent) - bar.n)
            bar.update(_logged_steps(parent) - bar.n)
        failed = [label for label, p in zip(jobs, procs) if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"demo: training {', '.join(failed)} failed (exit codes "
                               f"{[p.exitcode for p in procs]}); its runs are in {parent}")
    else:
        for job in jobs.values():
            _train_group(*job)
    wall = time.perf_counter() - start
    summaries = {label: _summaries(Path(job[3])) for label, job in jobs.items()}
    stats = demo_statistics(summaries)
    stats["wall_s"] = wall
    stats["preset"] = name
    print()
    print(format_demo(stats))
    print(f"\ntrained {len(seeds) * len(VARIANTS)} runs in {wall / 60:.1f} min")
    from sphere_rl.report.plots import plot_seed_comparison
    from sphere_rl.runs.atomic import atomic_write_json

    png = plot_seed_comparison({label: [Path(job[3]) / f"seed_{s}" for s in seeds] for label, job in jobs.items()},
                               stats, parent / "demo.png")
    atomic_write_json(parent / "demo.json", stats)
    print(f"plot: {png}\nruns: {parent} (sphere compare {parent} --by reg.name; sphere report {parent})")
    return stats


def _summaries(group: Path) -> list[dict[str, Any]]:
    index = json.loads((group / "group.json").read_text())
    return [json.loads((group / run / "summary.json").read_text()) for run in index["runs"]]


def demo_statistics(summaries: dict[str, list[dict[str, Any]]], reps: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """The demo's numbers from each method's per-seed summary.json dicts (the first method is the baseline).

    Per task and method: mean final success and r_e(K) at the task's end over seeds, with 95 % percentile
    bootstrap CIs (`results.stats.mean_ci`); per method: CRL average success (mean over tasks, per seed)
    with its CI; the difference of the second method minus the first with its bootstrap CI, Welch's and
    Mann-Whitney's p-values, Hedges' g (`results.stats.pairwise`)."""
    from sphere_rl.results.stats import mean_ci, pairwise

    labels = list(summaries)
    tasks = summaries[labels[0]][0]["tasks"]
    out: dict[str, Any] = {"tasks": tasks, "methods": labels, "seeds": {}, "per_task": [], "average": {}}
    averages = {}
    for label in labels:
        runs = summaries[label]
        success = np.asarray([r["final_success"] for r in runs], dtype=float)  # (seeds, tasks)
        averages[label] = success.mean(axis=1)
        out["seeds"][label] = len(runs)
        out["average"][label] = dict(zip(("mean", "lo", "hi"), mean_ci(averages[label], reps=reps, seed=seed)))
        out["average"][label]["per_seed"] = averages[label].tolist()
    for t, task in enumerate(tasks):
        row: dict[str, Any] = {"task": task}
        for label in labels:
            runs = summaries[label]
            success = np.asarray([r["final_success"][t] for r in runs], dtype=float)
            ranks = np.asarray([(r.get("ntk_rank") or [None] * len(tasks))[t] for r in runs], dtype=float)
            row[label] = {"success": dict(zip(("mean", "lo", "hi"), mean_ci(success, reps=reps, seed=seed))),
                          "ntk_rank": dict(zip(("mean", "lo", "hi"), mean_ci(ranks, reps=reps, seed=seed)))}
        out["per_task"].append(row)
    if len(labels) == 2 and all(len(v) >= 2 for v in averages.values()):
        base, other = labels
        p = pairwise(averages[other], averages[base], reps=reps, seed=seed)
        out["difference"] = {"of": f"{other} - {base}", "value": p.difference, "lo": p.difference_lo,
                             "hi": p.difference_hi, "welch_p": p.welch_p, "mwu_p": p.mwu_p, "hedges_g": p.hedges_g,
                             "significant": bool(p.welch_p < 0.05 and not (p.difference_lo <= 0.0 <= p.difference_hi))}
    return out


def _interval(d: dict[str, float], digits: int = 2) -> str:
    if not np.isfinite(d["mean"]):
        return "-"
    if not np.isfinite(d["lo"]):
        return f"{d['mean']:.{digits}f}"
    return f"{d['mean']:.{digits}f} [{d['lo']:.{digits}f}, {d['hi']:.{digits}f}]"


def format_demo(stats: dict[str, Any]) -> str:
    """The demo's report as text: per-task table, averages, difference and verdict."""
    labels = stats["methods"]
    lines = ["final success per task, mean over seeds [95 % bootstrap CI]; r_e(K) at the task's end (mean)"]
    head = f"{'task':<22}" + "".join(f"{label:>30}{'r_e(K)':>8}" for label in labels)
    lines += [head, "-" * len(head)]
    for row in stats["per_task"]:
        cells = "".join(f"{_interval(row[label]['success']):>30}{_interval(row[label]['ntk_rank'], 1).split(' ')[0]:>8}"
                        for label in labels)
        lines.append(f"{row['task'].split('/')[-1]:<22}{cells}")
    lines.append("-" * len(head))
    lines.append(f"{'CRL average':<22}" + "".join(f"{_interval(stats['average'][label]):>30}{'':>8}" for label in labels))
    n = ", ".join(f"{stats['seeds'][label]} seeds" for label in labels)
    diff = stats.get("difference")
    if diff is None:
        lines.append(f"\n{n}: too few seeds for a difference with a CI (one seed: indicative only)")
        return "\n".join(lines)
    lines.append(f"\n{diff['of']}: {diff['value']:+.3f} [{diff['lo']:+.3f}, {diff['hi']:+.3f}] "
                 f"(95 % bootstrap CI; Welch p = {diff['welch_p']:.3g}, Mann-Whitney p = {diff['mwu_p']:.3g}, "
                 f"Hedges' g = {diff['hedges_g']:+.2f}; {n})")
    if diff["significant"]:
        direction = "better" if diff["value"] > 0 else "worse"
        lines.append(f"verdict: SPHERE's CRL average success is significantly {direction} at the 5 % level "
                     "(p < 0.05 and the CI excludes 0).")
    else:
        lines.append("verdict: no significant difference at the 5 % level (the CI includes 0 or p >= 0.05); "
                     "more seeds would narrow the CI.")
    return "\n".join(lines)
