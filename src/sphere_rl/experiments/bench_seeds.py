"""`sphere bench --suite seeds`: what many seeds in one process (a seed group) cost against one seed.

Each measurement is a fresh child process (so its peak resident memory is its own) training the
`demo` preset (Top-K MoE, E=4, k=2, 2x64; 64 envs x 32 steps) on `tasks` (default arm2: reach, permute)
for `steps` steps each, with the demo's evaluation and diagnostics schedule, nothing written to
disk: 1 seed alone (`Runner`) and N seeds as one `SeedGroup`. Reported: wall time from the start of
training to the end (start-up and compilation included), its ratio to one seed, the time of one
fused iteration (1 seed: `JaxLoop.iteration`; N: `run_calls`, vmapped), and peak resident memory.
Both run with XLA's default threading and with one XLA thread (`--single-thread`), as a sweep runs
them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

__all__ = ["bench_seeds", "seeds_markdown"]

_CHILD = r"""
import json, resource, sys, time
import jax, jax.numpy as jnp
from sphere_rl.compilation_cache import enable_compilation_cache
from sphere_rl.config import preset
from sphere_rl.experiments.demo import DEMO_SCHEDULE
from sphere_rl.protocols.multiseed import SeedGroup
from sphere_rl.protocols.runner import Runner
from sphere_rl.algo.jax_loop import stack_trees

enable_compilation_cache()
n, tasks, steps = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cfgs = [preset("demo", [*DEMO_SCHEDULE, "run.progress=false", f"run.tasks={tasks}", f"run.steps_per_task={steps}",
                        f"seed={s}"]).validate() for s in range(n)]
start = time.perf_counter()
if n == 1:
    runner = Runner(cfgs[0], None, progress=False)
    runner.run()
else:
    group = SeedGroup(cfgs, progress=False)
    group.run()
    runner = group.runners[0]
wall = time.perf_counter() - start
loop, params = runner.loop_for(runner.tasks[0])
agents, carries = zip(*[runner._start_task(None, 0) for _ in range(n)])
lr = jnp.float32(3e-4)
def once():
    if n == 1:
        return loop.iteration(agents[0], carries[0], params, lr)
    return loop.run_calls("iteration", list(zip(agents, carries)), (params, lr))
jax.block_until_ready(once())
reps = 5
t = time.perf_counter()
for _ in range(reps):
    jax.block_until_ready(once())
iteration = (time.perf_counter() - t) / reps
print(json.dumps({"n": n, "wall_s": wall, "iteration_s": iteration, "env_steps": n * len(runner.tasks) * steps,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def _measure(n: int, tasks: str, steps: int, single_thread: bool) -> dict[str, Any]:
    env = dict(os.environ)
    if single_thread:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                            "intra_op_parallelism_threads=1").strip()
    out = subprocess.run([sys.executable, "-c", _CHILD, str(n), tasks, str(steps)], env=env, capture_output=True,
                         text=True, timeout=7200)
    if out.returncode != 0:
        raise RuntimeError(f"bench child (n={n}) failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_seeds(seeds: int = 8, tasks: str = "arm2", steps: int = 102_400,
                single_thread: bool = False) -> dict[str, Any]:
    """1 seed vs `seeds` seeds in one process; see the module docstring."""
    one = _measure(1, tasks, steps, single_thread)
    print(f"1 seed: {one['wall_s']:.1f} s, iteration {1000 * one['iteration_s']:.1f} ms, "
          f"peak {one['peak_rss_gib']:.2f} GiB", flush=True)
    many = _measure(seeds, tasks, steps, single_thread)
    ratio = many["wall_s"] / one["wall_s"]
    print(f"{seeds} seeds: {many['wall_s']:.1f} s ({ratio:.2f}x one seed), iteration {1000 * many['iteration_s']:.1f} ms "
          f"({many['iteration_s'] / one['iteration_s']:.2f}x), peak {many['peak_rss_gib']:.2f} GiB", flush=True)
    return {"tasks": tasks, "steps_per_task": steps, "single_thread": single_thread, "one": one, "many": many,
            "seeds": seeds, "wall_ratio": ratio, "iteration_ratio": many["iteration_s"] / one["iteration_s"],
            "per_seed_speedup": seeds / ratio}


def seeds_markdown(result: dict[str, Any]) -> list[str]:
    one, many, n = result["one"], result["many"], result["seeds"]
    threads = "one XLA thread" if result["single_thread"] else "XLA's default threads"
    return [
        f"Many seeds in one process ({result['tasks']}, {result['steps_per_task']:,} steps per task, demo preset, "
        f"{threads}):", "",
        "| | wall (s) | vs 1 seed | one iteration (ms) | peak memory (GiB) |",
        "|---|---|---|---|---|",
        f"| 1 seed | {one['wall_s']:.1f} | 1.00x | {1000 * one['iteration_s']:.1f} | {one['peak_rss_gib']:.2f} |",
        f"| {n} seeds, one process | {many['wall_s']:.1f} | {result['wall_ratio']:.2f}x | "
        f"{1000 * many['iteration_s']:.1f} | {many['peak_rss_gib']:.2f} |",
        "", f"Per-seed throughput: {result['per_seed_speedup']:.2f}x one seed alone.",
    ]
