"""`sphere bench`: update-phase time with and without SPHERE, training throughput on the built-in suite, eNTK cost,
and (with the `bench` extra) env-steps/s against SBX PPO on Gymnasium MuJoCo and on MetaWorld.

Measurements are interleaved (baseline, SPHERE, baseline, ...) because timings on a shared CPU
drift within minutes; the median over repetitions is reported. Results go to a JSON file with
machine information, plus a Markdown table beside it that docs/benchmarks.md quotes.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from sphere_rl import __version__
from sphere_rl.algo.ppo import PPO, Batch
from sphere_rl.config import Config, preset
from sphere_rl.protocols.runner import Runner
from sphere_rl.runs.atomic import atomic_write_json, atomic_write_text

H1_OBS, H1_ACT = 51, 19  # HumanoidBench H1 sizes, the paper's setting for the overhead table


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "sphere_rl": __version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _random_batch(cfg: Config, obs_dim: int, act_dim: int, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    n = cfg.batch_size
    arr = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    return Batch(arr(n, obs_dim), arr(n, act_dim), arr(n) - 20.0, arr(n), arr(n))


def _wall_timer(run: Callable[[], Any]) -> Callable[[], float]:
    """A function that calls `run` and returns its wall time; `run` is called once here to compile it."""
    jax.block_until_ready(run())

    def once() -> float:
        start = time.perf_counter()
        jax.block_until_ready(run())
        return time.perf_counter() - start

    return once


def _update_phase_timer(cfg: Config) -> Callable[[], float]:
    """Wall time of one full update phase on a random batch."""
    ppo = PPO(cfg, H1_OBS, H1_ACT)
    state = ppo.init(jax.random.PRNGKey(0))
    batch = _random_batch(cfg, H1_OBS, H1_ACT)
    lr = jnp.float32(cfg.ppo.lr)
    return _wall_timer(lambda: ppo.update_phase(state, batch, jax.random.PRNGKey(2), lr))


def _optimizer_floor_timer(cfg: Config) -> Callable[[], float]:
    """The optimiser alone (global-norm clip + Adam on actor and critic) for as many steps as an update phase.

    Every minibatch step must read and write every parameter and both Adam moments, whatever the
    dispatch: this is the memory-traffic floor under an update phase.
    """
    ppo = PPO(cfg, H1_OBS, H1_ACT)
    state = ppo.init(jax.random.PRNGKey(0))
    n_steps = cfg.ppo.n_epochs * (cfg.batch_size // cfg.ppo.minibatch_size)

    @jax.jit
    def run(state):
        def step(state, i):
            grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3) * i, state.params)
            return ppo.apply_gradients(state, grads), None

        return jax.lax.scan(step, state, jnp.arange(n_steps, dtype=jnp.float32))[0]

    return _wall_timer(lambda: run(state))


UPDATE_VARIANTS: dict[str, list[str]] = {
    "topk_moe sparse": ["net.actor=topk_moe", "net.dispatch=sparse"],
    "topk_moe dense-masked": ["net.actor=topk_moe", "net.dispatch=dense"],
    "dense_moe": ["net.actor=dense_moe"],
    "ds_moe sparse": ["net.actor=ds_moe", "net.dispatch=sparse"],
}
"""Actor configurations timed by the update suite (each with and without SPHERE)."""


def bench_update_phase(experts: tuple[int, ...], repeats: int, n_epochs: int,
                       variants: dict[str, list[str]] = UPDATE_VARIANTS) -> list[dict[str, Any]]:
    """Update-phase time per actor kind and E, with and without SPHERE, and the optimiser floor.

    Paper-size actors (3x256 experts and gate, k=2, obs 51 / action 19), 2048 samples, minibatch 64,
    `n_epochs` epochs, no early stop. For each E every timer runs once per round, rounds repeated
    `repeats` times (interleaved: machine drift hits all alike); medians reported.
    """
    rows = []
    for e in experts:
        common = [f"net.n_experts={e}", "ppo.kl_mode=none", "ppo.target_kl=none", f"ppo.n_epochs={n_epochs}", "run.tasks=arm/reach"]
        timers: dict[tuple[str, str], Callable[[], float]] = {}
        for name, extra in variants.items():
            for reg in ("none", "sphere"):
                timers[(name, reg)] = _update_phase_timer(Config().override([*common, *extra, f"reg.name={reg}"]).validate())
        timers[("optimizer floor", "none")] = _optimizer_floor_timer(Config().override([*common, "net.actor=topk_moe"]).validate())
        times: dict[tuple[str, str], list[float]] = {k: [] for k in timers}
        for _ in range(repeats):
            for key, timer in timers.items():
                times[key].append(timer())
        median = {k: statistics.median(v) for k, v in times.items()}
        reference = median[("topk_moe dense-masked", "none")] if ("topk_moe dense-masked", "none") in median else None
        for name in variants:
            base, reg = median[(name, "none")], median[(name, "sphere")]
            row = {
                "actor": name, "n_experts": e, "n_epochs": n_epochs, "minibatch_steps": n_epochs * 2048 // 64,
                "seconds": base, "sphere_seconds": reg, "sphere_overhead_pct": 100.0 * (reg - base) / base,
                "vs_topk_dense_masked": base / reference if reference else None,
                "optimizer_floor_seconds": median[("optimizer floor", "none")],
                "all_seconds": times[(name, "none")], "all_sphere_seconds": times[(name, "sphere")],
            }
            rows.append(row)
            print(f"E={e:>3} {name:<22} {base:6.2f} s  + SPHERE {reg:6.2f} s ({row['sphere_overhead_pct']:+5.1f} %)"
                  + (f"  {row['vs_topk_dense_masked']:.2f}x Top-K dense-masked" if reference else ""), flush=True)
        print(f"E={e:>3} optimizer floor (Top-K params) {median[('optimizer floor', 'none')]:6.2f} s", flush=True)
    return rows


def bench_dense_reference(repeats: int, n_epochs: int) -> dict[str, Any]:
    """The same update phase for the dense 3x256 actor (official PPO), as a reference for the MoE cost."""
    cfg = Config().override(["net.actor=mlp", "ppo.kl_mode=none", "ppo.target_kl=none", f"ppo.n_epochs={n_epochs}", "run.tasks=arm/reach"]).validate()
    timer = _update_phase_timer(cfg)
    seconds = statistics.median(timer() for _ in range(repeats))
    print(f"dense 3x256 actor: update phase {seconds:.2f} s", flush=True)
    return {"n_epochs": n_epochs, "seconds": seconds}


def bench_training_throughput(preset_name: str, iterations: int) -> dict[str, Any]:
    """Env steps per second of the fused loop (rollout + GAE + update) on the first task of a preset."""
    cfg = preset(preset_name, ["run.progress=false"])
    out = {}
    for label, extra in (("topk_moe", []), ("topk_moe+sphere", ["reg.name=sphere"])):
        c = cfg.override(extra).validate()
        runner = Runner(c, None, progress=False)
        loop, params = runner.loop_for(runner.tasks[0])
        agent, carry = runner._start_task(None, 0)
        lr = jnp.float32(c.ppo.lr)
        agent, carry, m = loop.iteration(agent, carry, params, lr)  # compile
        jax.block_until_ready(m)
        start = time.perf_counter()
        for _ in range(iterations):
            agent, carry, m = loop.iteration(agent, carry, params, lr)
        jax.block_until_ready(m)
        seconds = time.perf_counter() - start
        out[label] = {"env_steps_per_s": iterations * c.batch_size / seconds, "seconds": seconds, "iterations": iterations,
                      "batch_size": c.batch_size}
        print(f"{preset_name} {label}: {out[label]['env_steps_per_s']:,.0f} env steps/s (rollout + update)", flush=True)
    return out


BENCH_SUITES = ("update", "ntk", "sbx", "metaworld", "sweep", "seeds", "methods")
"""`update`: update-phase time per actor kind and E, SPHERE overhead, optimiser floor, training throughput;
`ntk`: cost of r_e(K); `sbx`: end-to-end env-steps/s against SBX PPO on Hopper-v5 and Humanoid-v5;
`metaworld`: the same against SBX PPO on metaworld/hammer-v3, with the ratio to the raw simulator rate
(`sbx` and `metaworld` need the `bench` extra); `sweep`: scheduling overhead and job start-up of a demo sweep
on Ray, loading 1,000 runs, the report's size and load time (`experiments/bench_sweep.py`; opt-in)."""
DEFAULT_BENCH_SUITES = ("update", "ntk", "sbx")
"""What `sphere bench` runs without `--suite`: `metaworld` is opt-in (it adds minutes of MetaWorld simulation)."""
METAWORLD_BENCH_ENVS = ("metaworld/hammer-v3",)
"""The `metaworld` suite's env: the first task of Continual World's CW10."""


def bench_markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['devices']}, jax {m['jax']}; {m['time']}.", ""]
    if results.get("update_phase"):
        rows = results["update_phase"]
        lines += ["| actor | E | update phase (s) | vs Top-K dense-masked | + SPHERE (s) | SPHERE overhead | optimiser floor (s) |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            ratio = f"{r['vs_topk_dense_masked']:.2f}x" if r.get("vs_topk_dense_masked") else ""
            lines.append(f"| {r['actor']} | {r['n_experts']} | {r['seconds']:.2f} | {ratio} | {r['sphere_seconds']:.2f} | "
                         f"{r['sphere_overhead_pct']:+.1f} % | {r['optimizer_floor_seconds']:.2f} |")
        lines.append(f"| dense 3x256 (official PPO) | | {results['dense_update']['seconds']:.2f} | | | | |")
        lines.append(f"\n(2048 samples, minibatch 64, {rows[0]['n_epochs']} epoch(s) = {rows[0]['minibatch_steps']} minibatch steps, "
                     "no early stop; experts and gate 3x256, k=2, obs 51, action 19; median of interleaved repeats. "
                     "Optimiser floor: global-norm clip + Adam alone on the Top-K actor and critic for the same number of steps.)")
    if results.get("throughput"):
        lines += ["", "| training throughput | env steps/s |", "|---|---|"]
        for preset_name, variants in results["throughput"].items():
            for label, v in variants.items():
                lines.append(f"| {preset_name}, {label} | {v['env_steps_per_s']:,.0f} |")
    if "ntk" in results:
        from sphere_rl.experiments.bench_ntk import ntk_markdown

        lines += ["", ntk_markdown(results["ntk"])]
    from sphere_rl.experiments.bench_sbx import markdown as sbx_markdown

    for suite in ("sbx", "metaworld"):
        if results.get(suite):
            lines += ["", sbx_markdown(results[suite])]
    if results.get("sweep"):
        from sphere_rl.experiments.bench_sweep import sweep_markdown

        lines += ["", *sweep_markdown(results["sweep"])]
    if results.get("seeds"):
        from sphere_rl.experiments.bench_seeds import seeds_markdown

        lines += ["", *seeds_markdown(results["seeds"])]
    if results.get("methods"):
        from sphere_rl.experiments.bench_methods import methods_markdown

        lines += ["", *methods_markdown(results["methods"])]
    return "\n".join(lines) + "\n"


def run_bench(out: str = "benchmarks/results", quick: bool = False, experts: tuple[int, ...] = (10, 20, 40),
              suites: tuple[str, ...] = DEFAULT_BENCH_SUITES) -> dict[str, Any]:
    unknown = sorted(set(suites) - set(BENCH_SUITES))
    if unknown:
        raise ValueError(f"unknown bench suite(s) {unknown}; choose from {BENCH_SUITES}")
    results: dict[str, Any] = {"machine": machine_info(), "quick": quick, "suites": list(suites)}
    print(f"sphere bench on {results['machine']['processor']} ({results['machine']['cpu_count']} CPUs)")
    if "update" in suites:
        results["throughput"] = {"demo": bench_training_throughput("demo", iterations=5 if quick else 40)}
        n_epochs = 1 if quick else 10
        results["dense_update"] = bench_dense_reference(repeats=2, n_epochs=n_epochs)
        results["update_phase"] = bench_update_phase(experts, repeats=2, n_epochs=n_epochs)
    from sphere_rl.experiments.bench_sbx import DEFAULT_ENV_IDS, run_sbx_bench, sbx_available

    for suite, env_ids in (("sbx", DEFAULT_ENV_IDS), ("metaworld", METAWORLD_BENCH_ENVS)):
        if suite not in suites:
            continue
        if sbx_available():
            # Always the short training budget (16 envs, 20,480 steps): the full one takes hours on a small
            # CPU; the steady-state rate is what the ratio is about. Two interleaved repeats unless --quick.
            results[suite] = run_sbx_bench(env_ids=env_ids, quick=True, repeats=1 if quick else 2, out=None)
        else:
            print(f"{suite} suite skipped: install the bench extra "
                  "(pip install -c constraints.txt -c constraints-bench.txt -e '.[bench]')")
    if "sweep" in suites:
        from sphere_rl.experiments.bench_sweep import bench_sweep

        results["sweep"] = bench_sweep(full=not quick)
    if "seeds" in suites:
        from sphere_rl.experiments.bench_seeds import bench_seeds

        results["seeds"] = bench_seeds(steps=20_480 if quick else 102_400)
    if "methods" in suites:
        from sphere_rl.experiments.bench_methods import bench_methods

        results["methods"] = bench_methods(repeats=1 if quick else 2, n_epochs=1 if quick else 10)
    if "ntk" in suites:
        from sphere_rl.experiments.bench_ntk import bench_ntk

        if quick:
            results["ntk"] = bench_ntk(states=(256, 512), experts=(10,), generic_states={"cw": (64,)}, repeats=1)
        else:
            results["ntk"] = bench_ntk(experts=experts)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out)
    atomic_write_json(out_dir / f"bench-{stamp}.json", results)
    atomic_write_text(out_dir / f"bench-{stamp}.md", bench_markdown(results))
    print(bench_markdown(results))
    print(f"written to {out_dir / f'bench-{stamp}.json'}")
    return results
