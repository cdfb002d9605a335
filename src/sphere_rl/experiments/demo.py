"""`sphere demo`: CRL through the built-in arm suite, Top-K MoE vs Top-K MoE + SPHERE, one seed.

Uses the `demo` preset (a smaller MoE and budget than the paper, so it finishes in minutes on a
2-core CPU; the library defaults stay the paper's). Prints a per-task table with the proxy r_e(A)
and writes a PNG next to the two run directories.
"""

from __future__ import annotations

import time
from pathlib import Path

from sphere_rl.config import PRESETS, preset
from sphere_rl.protocols.runner import Runner
from sphere_rl.report.plots import plot_crl_comparison
from sphere_rl.report.tables import results_table
from sphere_rl.runs import RunDir

VARIANTS = {"topk_moe": [], "topk_moe+sphere": ["reg.name=sphere"]}


def run_demo(out_dir: str = "runs/demo", seed: int = 0, quick: bool = False) -> dict:
    name = "demo-quick" if quick else "demo"
    parent = Path(out_dir) / time.strftime("%Y%m%d-%H%M%S")
    print(f"sphere demo: preset '{name}' ({PRESETS[name]['description']})")
    results = {}
    for label, extra in VARIANTS.items():
        cfg = preset(name, [f"seed={seed}", *extra])
        print(f"\n== {label}: {cfg.net.actor} E={cfg.net.n_experts} k={cfg.net.top_k} "
              f"{'x'.join(map(str, cfg.net.hidden_sizes))}, reg={cfg.reg.name}, "
              f"{cfg.run.steps_per_task:,} steps/task on {cfg.run.tasks}")
        run_dir = RunDir.create(parent, name=label.replace("+", "_"), config=cfg.to_dict(), seed=seed)
        results[label] = Runner(cfg, run_dir).run()
    print()
    print(results_table(results))
    png = plot_crl_comparison(results, parent / "demo.png")
    a, b = (results[k].average_success for k in VARIANTS)
    print(f"\nCRL average success: Top-K MoE {a:.3f} vs + SPHERE {b:.3f} (one seed: indicative, not a result)")
    print(f"plot: {png}\nruns: {parent}")
    return results
