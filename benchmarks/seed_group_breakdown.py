"""Where a seed group's time goes: rollout and update phase of one fused iteration, 1 seed vs N vmapped.

    python benchmarks/seed_group_breakdown.py            # XLA's default threads
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        python benchmarks/seed_group_breakdown.py        # one XLA thread, as a sweep runs

The `demo` preset with the demo's schedule on `arm2`: for sparse and dense dispatch, milliseconds per
call (after compilation) of the whole iteration, the rollout (scan of 32 steps x 64 envs) and the
update phase (GAE + 4 epochs x 4 minibatches of 512), for 1 seed (`jit`) and for N seeds (`jit(vmap)`).
Then the XLA matmul ceiling on this machine: 21 chained products in one call, for the experts'
shape (512x64 by 64x64), batched, and a large 2048^3 product. docs/benchmarks.md ("Many seeds in
one process") quotes its output; `sphere bench --suite seeds` measures the whole runs.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from sphere_rl.algo.jax_loop import JaxLoop, stack_trees
from sphere_rl.algo.ppo import PPO
from sphere_rl.algo.rollout import learn_from_rollout
from sphere_rl.config import preset
from sphere_rl.experiments.demo import DEMO_SCHEDULE
from sphere_rl.protocols.runner import Runner


def ms_per_call(f, *args, reps: int) -> float:
    jax.block_until_ready(f(*args))
    start = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(f(*args))
    return 1000 * (time.perf_counter() - start) / reps


def iteration_parts(n: int) -> None:
    cfg = preset("demo", [*DEMO_SCHEDULE, "run.progress=false", "run.tasks=arm2"]).validate()
    runner = Runner(cfg, None, progress=False)
    loop, params = runner.loop_for(runner.tasks[0])
    agents, carries = zip(*[runner._start_task(None, 0) for _ in range(n)])
    lr = jnp.float32(3e-4)
    for dispatch in ("sparse", "dense"):
        own = JaxLoop(PPO(cfg.override({"net.dispatch": dispatch}), loop.ppo.obs_dim, loop.ppo.action_dim), loop.env)

        def rollout(agent, carry, env_params, own=own):
            return jax.lax.scan(lambda c, x: own._rollout_step(env_params, c, x), (agent, carry), None,
                                length=cfg.ppo.n_steps)

        def update(agent, carry, traj, lr, own=own):
            return learn_from_rollout(own.ppo, agent, traj, carry.raw_obs, carry.key, lr)

        (agent, carry), traj = jax.jit(rollout)(agents[0], carries[0], params)
        one = {"iteration": ms_per_call(own.iteration, agents[0], carries[0], params, lr, reps=10),
               "rollout": ms_per_call(jax.jit(rollout), agents[0], carries[0], params, reps=10),
               "update": ms_per_call(jax.jit(update), agent, carry, traj, lr, reps=10)}
        stacked_agents, stacked_carries = stack_trees(list(agents)), stack_trees(list(carries))
        rollout_n = jax.jit(jax.vmap(rollout, in_axes=(0, 0, None)))
        update_n = jax.jit(jax.vmap(update, in_axes=(0, 0, 0, None)))
        (agent_n, carry_n), traj_n = rollout_n(stacked_agents, stacked_carries, params)
        many = {"iteration": ms_per_call(jax.jit(jax.vmap(own._iteration, in_axes=(0, 0, None, None))),
                                         stacked_agents, stacked_carries, params, lr, reps=5),
                "rollout": ms_per_call(rollout_n, stacked_agents, stacked_carries, params, reps=5),
                "update": ms_per_call(update_n, agent_n, carry_n, traj_n, lr, reps=5)}
        for part in ("iteration", "rollout", "update"):
            print(f"{dispatch:6s} {part:9s}  1 seed {one[part]:7.1f} ms   {n} seeds {many[part]:7.1f} ms "
                  f"({many[part] / one[part]:.1f}x)", flush=True)


def matmul_ceiling() -> None:
    key = jax.random.PRNGKey(0)
    for batch, m, k, n in [(1, 512, 64, 64), (4, 512, 64, 64), (32, 512, 64, 64), (1, 2048, 2048, 2048)]:
        x, w = jax.random.normal(key, (batch, m, k)), jax.random.normal(key, (batch, k, n))

        def chained(x, w):
            out = jnp.einsum("bmk,bkn->bmn", x, w)
            step = lambda c, _: (c + jnp.einsum("bmk,bkn->bmn", x + c[..., :1] * 0, w), None)
            return jax.lax.scan(step, out, None, length=20)[0]

        ms = ms_per_call(jax.jit(chained), x, w, reps=5 if m == 2048 else 50)
        print(f"matmul [{batch}] {m}x{k} @ {k}x{n}: {21 * 2 * batch * m * k * n / ms / 1e6:.1f} GFLOP/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=8, help="seeds of the vmapped group (default 8)")
    args = parser.parse_args()
    iteration_parts(args.seeds)
    matmul_ceiling()


if __name__ == "__main__":
    main()
