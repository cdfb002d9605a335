"""`sphere bench --suite sweep`: what running many runs costs beyond the runs themselves.

1. **Scheduling overhead**: a sweep of the demo preset (Top-K MoE, four seeds: jobs of equal length,
   so the wall time measures scheduling, not how unequal jobs pack; a quarter of the demo's budget
   unless ``full``) on a local Ray; its wall time against the sum of its jobs' own wall times divided
   by the CPUs (target <= 1.1x), and each job's start-up (:func:`_startup`; target <= 5 s).
2. **Results loading**: `load_results` on 1,000 run directories made by copying the sweep's runs
   (configs varied, so they form 10 cells x 100 seeds) (target <= 10 s).
3. **Report**: `sphere report` of a 100-run copy, its size (target <= 15 MB) and the time headless
   Chromium takes to load it and draw the 3D view (target <= 3 s), when Chromium and Playwright are
   installed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["bench_sweep", "sweep_markdown", "synthetic_runs"]

_COPIED = ("config.json", "manifest.json", "summary.json", "eval.csv", "diagnostics.csv", "continual_metrics.csv")


def _startup(records: list[dict[str, Any]], n_cpus: int) -> list[dict[str, float]]:
    """Per job, from the moment a CPU was free for it (submission for the first ``n_cpus`` jobs, else the
    earliest not-yet-reused finish of an earlier job):

    - ``process``: Ray dispatch, a fresh worker process and its imports (until the job function runs);
    - ``build``: the run directory and the runner (config, envs, networks, optimiser);
    - ``setup``: before the first iteration: probe set, initial diagnostics (an eNTK), loop creation;
    - ``compile``: the first iteration's extra time over the second, i.e. loading its compiled program
      from the persistent cache (or compiling it on a miss);
    - ``startup``: ``process + build + compile``, what running a job as a sweep job adds (``setup`` is
      work every run does, in or out of a sweep)."""
    timed = [r["timing"] for r in records if r.get("timing", {}).get("second_iteration_at")]
    timed.sort(key=lambda t: t["entered_at"])
    out = []
    for i, t in enumerate(timed):
        if i < n_cpus:
            free = t["submitted_at"]
        else:
            earlier = sorted(u["finished_at"] for u in timed[:i] if u.get("finished_at"))
            free = max(earlier[i - n_cpus], t["submitted_at"]) if i - n_cpus < len(earlier) else t["entered_at"]
        first = t["first_iteration_at"] - t["training_started_at"]
        second = t["second_iteration_at"] - t["first_iteration_at"]
        parts = {"process": t["entered_at"] - free, "build": t["ready_at"] - t["entered_at"],
                 "setup": t["training_started_at"] - t["ready_at"], "compile": max(first - second, 0.0)}
        parts["startup"] = parts["process"] + parts["build"] + parts["compile"]
        out.append(parts)
    return out


def synthetic_runs(templates: list[Path], out: Path, n_runs: int, n_cells: int = 10) -> Path:
    """``n_runs`` run directories copied from ``templates`` (round robin) with ``reg.coef`` set per cell and
    the seed per copy, so they load as ``n_cells`` cells; checkpoints and probes are not copied."""
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n_runs):
        src = templates[i % len(templates)]
        dst = out / "runs" / f"synthetic-{i:05d}"
        dst.mkdir(parents=True)
        for name in _COPIED:
            if (src / name).is_file():
                shutil.copyfile(src / name, dst / name)
        config = json.loads((dst / "config.json").read_text())
        config["seed"] = i // n_cells
        config["reg"]["coef"] = round(0.01 * (1 + i % n_cells), 3)
        (dst / "config.json").write_text(json.dumps(config))
    return out


def _browser_load_seconds(path: Path) -> dict[str, float] | None:
    """``opened``: seconds to the page's ``load`` event (text, tables and figures shown); ``drawn``: to the
    3D view drawn (it renders after ``load``). None without Chromium or Playwright."""
    import shutil as _sh

    chromium = _sh.which("chromium") or _sh.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if chromium is None:
        return None
    args = ["--headless=new", "--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            start = time.perf_counter()
            page.goto(path.resolve().as_uri(), wait_until="load", timeout=120_000)
            opened = time.perf_counter() - start
            page.wait_for_function("() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
                                   ".every(g => g._fullLayout && g.querySelector('canvas'))", timeout=120_000)
            return {"opened": opened, "drawn": time.perf_counter() - start}
        finally:
            browser.close()


def bench_sweep(full: bool = False, seeds: int = 4, n_cpus: int | None = None, work_dir: str | None = None) -> dict[str, Any]:
    from sphere_rl.report.sweep_report import build_sweep_report
    from sphere_rl.results.table import load_results
    from sphere_rl.sweeps.launch import launch
    from sphere_rl.sweeps.spec import SweepSpec

    root = Path(work_dir or tempfile.mkdtemp(prefix="sphere-bench-sweep-"))
    overrides = () if full else ("run.steps_per_task=100000", "run.eval_every=25000", "run.checkpoint_every=50000")
    spec = SweepSpec(presets=("demo",), seeds=tuple(range(seeds)), overrides=overrides, name="bench")
    outcome = launch(spec, root / "sweep", num_cpus=n_cpus, progress=False, seeds_per_process=1)
    records = list(outcome.records.values())
    job_walls = [r["wall_s"] for r in records if r.get("state") == "done"]
    ideal = sum(job_walls) / max(outcome.n_cpus, 1)
    startup = _startup(records, outcome.n_cpus)
    result: dict[str, Any] = {
        "sweep": {"jobs": len(records), "cpus": outcome.n_cpus, "budget": "demo" if full else "demo, 100k steps per task",
                  "wall_s": outcome.wall_s, "sum_job_wall_s": sum(job_walls), "ideal_wall_s": ideal,
                  "overhead_ratio": outcome.wall_s / ideal if ideal else None,
                  "startup": startup,
                  **{f"{k}_median_s": float(np.median([p[k] for p in startup])) if startup else None
                     for k in ("process", "build", "setup", "compile", "startup")},
                  "startup_max_s": max(p["startup"] for p in startup) if startup else None},
    }
    templates = sorted((root / "sweep" / "runs").iterdir())
    synth = synthetic_runs(templates, root / "synthetic-1000", 1000)
    start = time.perf_counter()
    results = load_results(synth)
    result["results_load"] = {"runs": len(results.runs), "rows": len(results.long),
                              "seconds": time.perf_counter() - start}
    small = synthetic_runs(templates, root / "synthetic-100", 100)
    start = time.perf_counter()
    report = build_sweep_report(small, small / "report.html", reps=500)
    result["report"] = {"runs": 100, "build_seconds": time.perf_counter() - start,
                        "size_mb": report.stat().st_size / 1e6, "browser_load_seconds": _browser_load_seconds(report)}
    if work_dir is None:
        shutil.rmtree(root, ignore_errors=True)
    return result


def sweep_markdown(r: dict[str, Any]) -> list[str]:
    s, load, rep = r["sweep"], r["results_load"], r["report"]
    seconds = rep["browser_load_seconds"]
    browser = "n/a (no chromium/playwright)" if seconds is None else \
        f"opened {seconds['opened']:.2f} s, 3D drawn {seconds['drawn']:.2f} s"
    return [
        "| sweep measurement | value | target |", "|---|---|---|",
        f"| {s['jobs']} jobs ({s['budget']}) on {s['cpus']} CPUs: wall time | {s['wall_s']:.0f} s | |",
        f"| sum of job wall times / CPUs | {s['ideal_wall_s']:.0f} s | |",
        f"| wall / ideal | {s['overhead_ratio']:.2f}x | <= 1.1x |",
        f"| job start-up: Ray + process + imports / run directory + runner / compile-cache load (medians) | "
        f"{s['process_median_s']:.1f} s / {s['build_median_s']:.1f} s / {s['compile_median_s']:.1f} s | |",
        f"| job start-up, sum of the three, median / max | {s['startup_median_s']:.1f} s / {s['startup_max_s']:.1f} s "
        f"| <= 5 s |",
        f"| per-run set-up before training (probe set, initial eNTK diagnostics), median | "
        f"{s['setup_median_s']:.1f} s | |",
        f"| `load_results` on {load['runs']} runs ({load['rows']:,} rows) | {load['seconds']:.1f} s | <= 10 s |",
        f"| report of {rep['runs']} runs: build / size | {rep['build_seconds']:.1f} s / {rep['size_mb']:.1f} MB | <= 15 MB |",
        f"| report in headless Chromium (SwiftShader WebGL) | {browser} | opens <= 3 s |",
    ]
