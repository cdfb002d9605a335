"""`sphere bench --suite ntk`: cost of the exact eNTK r_e(K), structured vs generic path.

Each measurement runs in a fresh spawned process, so its peak resident memory (`ru_maxrss`) is its
own: the process imports JAX, builds the actor, computes K once (compile + run) and then times
`repeats` more runs. Reported: median seconds of the timed runs (K and its eigenvalues), the first
call with compilation, peak RSS, and the RSS before the first call (JAX + the model).
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import time
from typing import Any

SHAPES = {"h1": (51, 19), "cw": (39, 4)}
"""Observation and action sizes: HumanoidBench H1 and MetaWorld (Continual World)."""


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def _measure(job: dict[str, Any]) -> dict[str, Any]:
    import jax
    import numpy as np

    from sphere_rl import nets
    from sphere_rl.compilation_cache import enable_compilation_cache
    from sphere_rl.config import NetConfig
    from sphere_rl.diagnostics.ntk import actor_ntk, ntk_spectrum

    enable_compilation_cache()
    obs_dim, action_dim = SHAPES[job["shape"]]
    width = (256, 256, 256)
    actor = nets.make_actor(NetConfig(actor="topk_moe", n_experts=job["n_experts"], top_k=2, hidden_sizes=width,
                                      gate_hidden_sizes=width), action_dim)
    obs = jax.random.normal(jax.random.PRNGKey(1), (job["n_states"], obs_dim))
    params = actor.init(jax.random.PRNGKey(0), obs[:2])
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
    rss_before = _rss_gib()

    def once() -> tuple[float, float]:
        start = time.perf_counter()
        spectrum = ntk_spectrum(actor_ntk(actor, params, obs, method=job["method"]))
        return time.perf_counter() - start, spectrum.effective_rank

    first, rank = once()
    timed = [once()[0] for _ in range(job["repeats"])]
    return {**job, "n_params": n_params, "first_call_s": first, "seconds": statistics.median(timed) if timed else first,
            "all_s": timed, "effective_rank": rank, "peak_rss_gib": _rss_gib(), "rss_before_gib": rss_before}


def _in_fresh_process(job: dict[str, Any]) -> dict[str, Any]:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, (job,))


GENERIC_STATES = {"h1": (64, 128), "cw": (64, 128, 256)}
"""The generic path grows as N² Jacobian-chunk products (about 1 min at N = 64 for the H1 actor here), so
it is measured on smaller probe sets; its growth with N is the point of the comparison."""


def bench_ntk(states: tuple[int, ...] = (256, 512, 1024), experts: tuple[int, ...] = (10, 20, 40),
              generic_states: dict[str, tuple[int, ...]] | None = None, repeats: int = 2) -> list[dict[str, Any]]:
    """Structured path for every N (E=10) and every E (N=512); generic path for `generic_states[shape]` (E=10)."""
    generic_states = GENERIC_STATES if generic_states is None else generic_states
    jobs = []
    for shape in SHAPES:
        jobs += [dict(shape=shape, n_experts=10, n_states=n, method="structured", repeats=repeats) for n in states]
        jobs += [dict(shape=shape, n_experts=e, n_states=512, method="structured", repeats=repeats) for e in experts if e != 10]
        jobs += [dict(shape=shape, n_experts=10, n_states=n, method="generic", repeats=0) for n in generic_states.get(shape, ())]
    rows = []
    for job in jobs:
        row = _in_fresh_process(job)
        print(f"eNTK {row['method']:<10} {row['shape']} E={row['n_experts']:>2} N={row['n_states']:>4}: "
              f"{row['seconds']:7.2f} s (first call {row['first_call_s']:.1f} s), peak RSS {row['peak_rss_gib']:.2f} GiB, "
              f"r_e(K) {row['effective_rank']:.1f}", flush=True)
        rows.append(row)
    return rows


def ntk_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| actor (obs / action) | E | N | path | seconds | first call (s) | peak RSS (GiB) | r_e(K) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        obs_dim, action_dim = SHAPES[r["shape"]]
        lines.append(f"| {r['shape']} ({obs_dim} / {action_dim}) | {r['n_experts']} | {r['n_states']} | {r['method']} | "
                     f"{r['seconds']:.2f} | {r['first_call_s']:.1f} | {r['peak_rss_gib']:.2f} | {r['effective_rank']:.1f} |")
    lines.append("\n(Top-K MoE actor, k = 2, experts and gate 3×256, `trace` reduction; seconds = median of the timed "
                 "calls after the first, K plus float64 eigenvalues; peak RSS of a fresh process that ran only this "
                 "measurement.)")
    return "\n".join(lines) + "\n"
