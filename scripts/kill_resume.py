#!/usr/bin/env python
"""Kill -9 a small CRL run at random moments and check that it resumes to identical numbers.

    python scripts/kill_resume.py --trials 20 --seed 0 [--work DIR] [--out results.json]

Each trial starts `sphere train` (two tasks of the built-in suite, SPHERE, diagnostics on), kills it
with SIGKILL at a random point of its training (0-0.1 s after its metrics.csv first shows an env
step drawn uniformly over the budget), then runs
`sphere train --resume` until it finishes; a quarter of the resumes are themselves killed at a random
moment (double kills). Every finished trial is compared with the uninterrupted run, table by table,
timing columns aside (sphere_rl.experiments.kill_resume). Exit code 0 when every trial is identical.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from sphere_rl.experiments.kill_resume import random_trials


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--double-kill", type=float, default=0.25, help="probability that a resume is killed too")
    parser.add_argument("--work", default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--out", default=None, help="write the trials as JSON here")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="kill-resume-"))
    start = time.perf_counter()
    result = random_trials(args.trials, work, seed=args.seed, double_kill=args.double_kill)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["machine"] = f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}"
    print(f"{result['identical']}/{result['n']} identical, "
          f"reference run {result['reference_wall_s']} s, total {result['wall_s']} s; runs in {work}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["identical"] == result["n"] else 1


if __name__ == "__main__":
    sys.exit(main())
