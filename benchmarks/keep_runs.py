"""Keep the files `sphere study` / `sphere results` read from finished runs, without checkpoints.

    python benchmarks/keep_runs.py runs/coef10 benchmarks/results/study-topk

copies, for every finished run directory under SRC (config.json, manifest.json and summary.json
present), its config, manifest, summary, evaluation, diagnostics, Continual World metrics and
intervention events into DEST under the same relative path: about 30 kB per run, small enough to
commit, so that a later
session (or a reader) can add runs beside them and recompute every table with `sphere study DEST`.
Checkpoints, TensorBoard files, probe buffers and the per-update metrics stay behind.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from sphere_rl.results.table import find_runs

KEPT = ("config.json", "manifest.json", "summary.json", "eval.csv", "diagnostics.csv",
        "continual_metrics.csv", "events.csv")


def finished_runs(src: Path) -> list[Path]:
    """Every finished run directory (the results table's run directories with a summary.json) under ``src``."""
    return [run for run in find_runs(src) if (run / "summary.json").is_file()]


def keep(src: Path, dest: Path) -> int:
    """Copy the kept files of each finished run under ``src`` to ``dest``; returns the number of runs."""
    runs = finished_runs(src)
    for run in runs:
        target = dest / run.relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in KEPT:
            if (run / name).is_file():
                shutil.copy2(run / name, target / name)
    return len(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="folder with run directories (a sweep's --out-dir)")
    parser.add_argument("dest", type=Path, help="where to copy them (e.g. benchmarks/results/NAME)")
    args = parser.parse_args(argv)
    if not args.src.is_dir():
        print(f"keep_runs: src: no such folder: {args.src}", file=sys.stderr)
        return 2
    n = keep(args.src, args.dest)
    if n == 0:
        print(f"keep_runs: src: no finished runs under {args.src}", file=sys.stderr)
        return 2
    print(f"kept {n} runs under {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
