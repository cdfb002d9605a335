"""`sphere bench --suite methods`: what every plasticity method costs, against no method, at the paper's size.

For each registered method the update phase (paper-size Top-K MoE actor: 10 experts of 3x256, k=2,
gate 3x256; obs 51, action 19; 2048 samples, minibatch 64, `n_epochs` epochs; sparse dispatch) is timed
with that method alone and with none, interleaved in rounds (machine drift hits every method alike),
medians reported. Interventions also get the time of one firing (`on_task_switch` or
`after_iteration`, on 512 probe states), which happens once per task or every `every` update phases,
not every update, and their update phase is timed on the agent after a firing (for `injection` it then
evaluates the two frozen networks too). `sphere methods` prints the newest measurement it finds in `benchmarks/results/`.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sphere_rl.algo.ppo import PPO
from sphere_rl.config import Config

__all__ = ["bench_methods", "methods_markdown", "latest_method_costs", "METHOD_OVERRIDES"]

OBS, ACT = 51, 19
"""HumanoidBench H1's observation and action sizes (the paper's setting)."""

METHOD_OVERRIDES: dict[str, list[str]] = {
    "none": [],
    "sphere": ["reg.name=sphere"],
    "load_balance": ["net.load_balance_coef=0.01"],
}
"""Overrides that switch each method on; any other registered method: `methods=[<name>]`."""


def _overrides(name: str) -> list[str]:
    return METHOD_OVERRIDES.get(name, [f"methods=[{name}]"])


def _timer(fn: Callable[[], Any]) -> Callable[[], float]:
    import time

    jax.block_until_ready(fn())  # compile

    def once() -> float:
        start = time.perf_counter()
        jax.block_until_ready(fn())
        return time.perf_counter() - start

    return once


def bench_methods(repeats: int = 2, n_epochs: int = 10, names: tuple[str, ...] | None = None,
                  extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Median update-phase seconds per method and its overhead against `none`; interventions also the
    seconds of one firing. `extra`: more overrides for every config (tests use a small network)."""
    from sphere_rl.algo.ppo import Batch
    from sphere_rl.methods import METHODS

    names = names or ("none", *sorted(METHODS))
    common = ["net.actor=topk_moe", "net.dispatch=sparse", "ppo.kl_mode=none", "ppo.target_kl=none", "diag.ntk=false",
              f"ppo.n_epochs={n_epochs}", "run.tasks=arm/reach", *extra]
    rng = np.random.default_rng(0)
    timers: dict[str, Callable[[], float]] = {}
    firing: dict[str, Callable[[], float]] = {}
    for name in names:
        cfg = Config().override([*common, *_overrides(name)]).validate()
        ppo = PPO(cfg, OBS, ACT)
        state = ppo.init(jax.random.PRNGKey(0))
        n = cfg.batch_size
        batch = Batch(*(jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(n, OBS), (n, ACT), (n,), (n,), (n,)]))
        lr = jnp.float32(cfg.ppo.lr)
        if ppo.interventions:
            probe = jnp.asarray(rng.normal(size=(512, OBS)), jnp.float32)
            first = ppo.interventions[0].first_iteration
            if first is not None:
                fire = lambda p=ppo, s=state, i=first: p.after_iteration(s, probe, jax.random.PRNGKey(3), i)[0]  # noqa: E731
            else:
                fire = lambda p=ppo, s=state: p.task_switch(s, jax.random.PRNGKey(3), 1)[0]  # noqa: E731
            firing[name] = _timer(lambda f=fire: f().params)
            state = fire()  # the update phase is timed as it runs once the method has acted (injection: 2 more nets)
        timers[name] = _timer(lambda p=ppo, s=state, b=batch: p.update_phase(s, b, jax.random.PRNGKey(2), lr))
    times: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(repeats):
        for name, timer in timers.items():
            times[name].append(timer())
    base = statistics.median(times["none"]) if "none" in times else None
    rows = []
    for name in names:
        seconds = statistics.median(times[name])
        row = {"method": name, "kind": "none" if name == "none" else METHODS[name].kind, "seconds": seconds,
               "overhead_pct": 100.0 * (seconds - base) / base if base else None, "all_seconds": times[name],
               "n_epochs": n_epochs, "minibatch_steps": n_epochs * (2048 // 64)}
        if name in firing:
            row["firing_seconds"] = statistics.median([firing[name]() for _ in range(repeats)])
        rows.append(row)
        print(f"{name:<14} {seconds:6.2f} s" + (f" ({row['overhead_pct']:+6.1f} %)" if base else "")
              + (f"  one firing {row['firing_seconds']:.3f} s" if "firing_seconds" in row else ""), flush=True)
    return rows


def methods_markdown(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| method | kind | update phase (s) | vs none | one firing (s) |", "|---|---|---|---|---|"]
    for r in rows:
        over = f"{r['overhead_pct']:+.1f} %" if r.get("overhead_pct") is not None and r["method"] != "none" else ""
        fire = f"{r['firing_seconds']:.3f}" if "firing_seconds" in r else ""
        lines.append(f"| {r['method']} | {r['kind']} | {r['seconds']:.2f} | {over} | {fire} |")
    steps = rows[0]["minibatch_steps"] if rows else 0
    lines.append(f"\n(Top-K MoE, 10 experts of 3x256, k=2, sparse dispatch; obs 51, action 19; 2048 samples, minibatch "
                 f"64, {steps} minibatch steps; median of interleaved rounds. A firing happens once per task switch "
                 "or every `every` update phases.)")
    return lines


def latest_method_costs(folder: str | Path = "benchmarks/results") -> tuple[dict[str, dict[str, Any]], str] | None:
    """({method: row}, file name) of the newest bench results file with a `methods` suite, or None."""
    import json

    for path in sorted(Path(folder).glob("bench-*.json"), reverse=True):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if data.get("methods"):
            return {r["method"]: r for r in data["methods"]}, path.name
    return None
