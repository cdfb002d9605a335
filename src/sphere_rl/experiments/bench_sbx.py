"""Training throughput of our PPO against SBX PPO (the JAX port of Stable-Baselines3) on Gymnasium envs.

Needs the `bench` extra: `pip install -c constraints.txt -c constraints-bench.txt -e ".[bench]"`.
Run a comparison with `python -m sphere_rl.experiments.bench_sbx --env Hopper-v5 --quick`, or on
MetaWorld with `--env metaworld/hammer-v3`.

Which envs
----------
Any env both learners can step as a Gymnasium env (`bench_env` resolves the id once for all sides):

* a Gymnasium id (`Hopper-v5` or `gym:Hopper-v5`): ours trains on `run.tasks=gym:Hopper-v5`, SBX's
  `make_vec_env` gets the id and calls `gymnasium.make` itself;
* an id of our registry whose factory builds a single `gymnasium.Env` (not a JAX-native one), such
  as `metaworld/hammer-v3`: ours trains on `run.tasks=metaworld/hammer-v3`, SBX's `make_vec_env`
  gets the registry's factory (`sphere_rl.envs.env_spec(id).factory`, the callable our
  `envs.make` wraps), so both step the very same env class with the same arguments. MetaWorld
  truncates its 500-step episodes itself; SB3's DummyVecEnv marks them `TimeLimit.truncated` and
  SBX bootstraps them, as ours does.

What is measured
----------------
Both learners train on the same env for the same number of env steps, with the same
network and hyperparameters, in the same command. Every measurement runs in a fresh Python
process (`sys.executable -m sphere_rl.experiments.bench_sbx --child ...`), so JIT caches, thread
pools and memory do not carry over from one to the next. With `repeats > 1` the order alternates
(ours, SBX, SBX, ours, ...) so that slow drift of a shared machine hits both sides alike; medians
are reported. For each side:

* `total_s`: wall time from building the learner (env, networks) to the end of training, JIT
  compilation included (no persistent compilation cache on either side: `SPHERE_JAX_CACHE=off`
  and `JAX_COMPILATION_CACHE_DIR` removed in the children); `end_to_end_steps_per_s` divides the
  env steps by it.
* `steady_steps_per_s`: env steps of iterations 2..N over their wall time, i.e. without the first
  rollout + update (which holds the compiles). Ours: a timestamp after each iteration. SBX: a
  callback that timestamps each rollout start (= the end of the previous update) and the end of
  training.
* `raw`: the simulator alone under random actions, same env, same `num_envs`, in both vector env
  types (`raw_sync_vector_env`: the gymnasium SyncVectorEnv our loop uses; `raw_dummy_vec_env`:
  SB3's DummyVecEnv that SBX uses): the ceiling that any learner on this machine stays below.
  `ratio_ours_over_raw` divides our rates by the SyncVectorEnv rate: the share of the simulator's
  own speed that our loop keeps.

Our side drives the training loop directly, exactly as `Runner.run` does per iteration
(`loop.iteration` with the scheduled learning rate, then `jax.device_get` of the metrics), without
evaluation, diagnostics, checkpoints, logging files or a progress bar (as
`bench.bench_training_throughput` does). SBX runs `PPO("MlpPolicy", venv, **kwargs).learn(...)`
the way its users run it (verbose 0, default log interval).

Mapping decisions (see `sbx_kwargs` and `sbx_env_kwargs`)
----------------------------------------------------------
* Hyperparameters are OURS for both (the official HumanoidBench setting: n_steps 16, minibatch 64,
  10 epochs, dense 3x256 actor and critic, ReLU), not SBX's defaults. `num_envs` is the same on both
  sides; the quick default is smaller than the paper's 128 so that a comparison fits in minutes on
  2 CPU cores.
* Network: `net.actor=mlp`, `net.critic=mlp`; `net_arch = {"pi": hidden_sizes, "vf":
  critic_hidden_sizes}`; `activation_fn` is our own activation function object for both;
  `log_std_init` as ours; `ortho_init=True` (SBX then initialises only the action head
  orthogonally with gain 0.01; its hidden layers keep Flax's default init while ours are
  orthogonal(sqrt 2): initialisation does not change the cost of a step). Adam eps = `ppo.adam_eps`;
  both clip the global gradient norm of actor and critic separately with `ppo.max_grad_norm`.
* Learning rate: constant on both sides (`ppo.lr_final` is set to `ppo.lr`).
* `ppo.kl_mode=none`, `ppo.target_kl=none`: with a target KL, SBX adapts the learning rate (our
  `kl_mode=adaptive_lr`), a data-dependent rate that would make the two runs' work diverge; with it
  off, both do exactly n_epochs * batch / minibatch gradient steps per rollout.
* Observation normalisation: SBX's PPO has none of its own; SB3 users wrap the env in
  `VecNormalize`. Ours normalises inside the jitted policy call (`ppo.normalize_obs`, on by
  default). Fair and representative: when `ppo.normalize_obs` is on, SBX gets
  `VecNormalize(norm_obs=True, norm_reward=False, clip_obs=ppo.obs_clip, epsilon=1e-8)` (the same
  running mean/variance and clip as ours, on the host in numpy); when it is off, neither normalises.
  Rewards are not normalised on either side.
* Vector env: ours is gymnasium's SyncVectorEnv (same-step autoreset, wrapped by our
  `GymVectorAdapter`); SBX gets SB3's `DummyVecEnv` from `make_vec_env` (each env wrapped in SB3's
  `Monitor`). Both step the envs one after another in the main process and reset a finished env in
  the same step; DummyVecEnv keeps per-env info dicts, SyncVectorEnv batches them. The `raw` rows
  show what this difference costs by itself.
* Threads: both children get the same environment (the parent's, with the compilation cache off).
  XLA keeps its defaults (its CPU thread pool uses every core); `OMP_NUM_THREADS`, `MKL_NUM_THREADS`
  and `XLA_FLAGS` are passed through unchanged and recorded. The SBX child imports torch (SB3 keeps
  the rollout buffer in torch tensors); it calls `torch.set_num_threads(os.cpu_count())` so torch
  uses the same core count, and records the value.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from sphere_rl.config import Config

GYM_PREFIX = "gym:"

DEFAULT_ENV_IDS = ("Hopper-v5", "Humanoid-v5")
"""The envs compared when none are named (`sphere bench --suite sbx`)."""
QUICK = {"total_steps": 20_480, "num_envs": 16}
"""Quick comparison: both sides + simulator rates on one env in about 1.5 (Hopper) to 2.5 (Humanoid)
minutes on 2 busy CPU cores (80 iterations of 256 samples, 79 of them in the steady-state window)."""
FULL = {"total_steps": 409_600, "num_envs": 128}
"""Full comparison at the paper's num_envs (128 envs x 16 steps = 2048 samples per rollout)."""
RAW_STEPS_MAX = 20_000
"""Random-action simulator steps per vector env type (at most `total_steps`)."""
BENCH_PACKAGES = ("sbx", "stable_baselines3", "torch", "mujoco")
DIST_NAMES = ("sbx-rl", "stable-baselines3", "torch", "mujoco", "gymnasium", "jax", "flax", "optax", "numpy")

BENCH_OVERRIDES = (
    "net.actor=mlp",
    "net.critic=mlp",
    "reg.name=none",
    "ppo.kl_mode=none",
    "ppo.target_kl=none",
    "run.protocol=rl",
    "diag.enabled=false",
    "run.progress=false",
    "run.tensorboard=false",
)
"""Applied to the library defaults before the caller's overrides (which may change any of them;
`sbx_kwargs` then refuses what SBX cannot express)."""


# ---------------------------------------------------------------------------------------
# configuration mapping (pure: no sbx, torch or mujoco import)
# ---------------------------------------------------------------------------------------

def sbx_available() -> bool:
    """True when sbx-rl, stable-baselines3, torch and mujoco are importable (the `bench` extra)."""
    return all(importlib.util.find_spec(name) is not None for name in BENCH_PACKAGES)


def gym_id_of(env_id: str) -> str:
    """The bare Gymnasium id: `Hopper-v5` and `gym:Hopper-v5` both give `Hopper-v5`."""
    gym_id = env_id[len(GYM_PREFIX):] if env_id.startswith(GYM_PREFIX) else env_id
    if not gym_id.strip() or "," in gym_id:
        raise ValueError(f"expected one Gymnasium env id such as 'Hopper-v5', got {env_id!r}")
    return gym_id


@dataclasses.dataclass(frozen=True)
class BenchEnv:
    """How each side builds one env of a compared id (see `bench_env`)."""

    name: str
    """The id as reported: the bare Gymnasium id (`Hopper-v5`) or our registry id (`metaworld/hammer-v3`)."""
    task: str
    """Our `run.tasks`: `gym:Hopper-v5`, or the registry id itself."""
    single_env: str | Callable[[], Any]
    """The first argument of SB3's `make_vec_env`: the Gymnasium id, or our registry's factory of one env."""


def bench_env(env_id: str) -> BenchEnv:
    """Resolve `Hopper-v5`, `gym:Hopper-v5` or a Gymnasium-backed registry id such as `metaworld/hammer-v3`.

    A bare id registered in `sphere_rl.envs` is ours (as in `run.tasks`); any other is a Gymnasium
    id. JAX-native ids, sequences, lists and unknown ids raise ValueError: SBX needs one Gymnasium env.
    """
    from sphere_rl import envs

    needs = ("the SBX comparison needs one Gymnasium env: a Gymnasium id such as Hopper-v5 or an id of "
             "sphere_rl.envs with a Gymnasium factory such as metaworld/hammer-v3")
    if "," in env_id or not env_id.strip():
        raise ValueError(f"{env_id!r}: {needs}")
    if not env_id.startswith(GYM_PREFIX):
        try:
            spec = envs.env_spec(env_id)
        except envs.UnknownEnvError:
            spec = None
        if spec is not None:
            if spec.jax_native:
                raise ValueError(f"{env_id!r} is JAX-native (no Gymnasium env to give SBX); {needs}")
            return BenchEnv(name=env_id, task=env_id, single_env=spec.factory)
    gym_id = gym_id_of(env_id)
    try:
        envs.validate_env_id(GYM_PREFIX + gym_id)
    except envs.UnknownEnvError as error:
        raise ValueError(f"{env_id!r}: {needs}. {error}") from None
    return BenchEnv(name=gym_id, task=GYM_PREFIX + gym_id, single_env=gym_id)


def bench_config(env_id: str, total_steps: int, num_envs: int, overrides: Sequence[str] = ()) -> Config:
    """Our Config for one comparison: library defaults + `BENCH_OVERRIDES` + env/budget + `overrides`.

    The learning rate is made constant afterwards (`ppo.lr_final = ppo.lr`), whatever the overrides say.
    """
    budget = [
        f"run.tasks={bench_env(env_id).task}",
        f"ppo.num_envs={int(num_envs)}",
        f"run.steps_per_task={int(total_steps)}",
        f"run.eval_every={int(total_steps) + 1}",
        f"run.log_every={int(total_steps) + 1}",
        f"run.checkpoint_every={int(total_steps) + 1}",
    ]
    cfg = Config().override([*BENCH_OVERRIDES, *budget, *overrides])
    cfg = cfg.override({"ppo.lr_final": cfg.ppo.lr})
    return cfg.validate()


def sbx_kwargs(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of `sbx.PPO("MlpPolicy", venv, **kwargs)` equivalent to our `cfg`.

    Raises ValueError naming every setting SBX's PPO cannot express. The vector env side
    (`n_envs`, seed, observation normalisation) is `sbx_env_kwargs`.
    """
    from sphere_rl.nets.layers import activation_fn

    n, p = cfg.net, cfg.ppo
    problems = []
    if n.actor != "mlp":
        problems.append(f"net.actor={n.actor!r}: SBX PPO has only a dense MLP actor (use net.actor=mlp)")
    if n.critic != "mlp":
        problems.append(f"net.critic={n.critic!r}: SBX PPO has only a dense MLP critic (use net.critic=mlp)")
    if cfg.reg.name != "none":
        problems.append(f"reg.name={cfg.reg.name!r}: SBX PPO has no regulariser (use reg.name=none)")
    if p.kl_mode != "none":
        problems.append(f"ppo.kl_mode={p.kl_mode!r}: the comparison runs without a target KL, so both sides do the "
                        "same number of gradient steps (use ppo.kl_mode=none ppo.target_kl=none)")
    if p.lr_final != p.lr:
        problems.append(f"ppo.lr_final={p.lr_final!r} differs from ppo.lr={p.lr!r}: the comparison uses a constant "
                        "learning rate on both sides")
    if problems:
        raise ValueError("this config cannot be expressed as SBX PPO: " + "; ".join(problems))
    return {
        "learning_rate": p.lr,
        "n_steps": p.n_steps,
        "batch_size": p.minibatch_size,
        "n_epochs": p.n_epochs,
        "gamma": p.gamma,
        "gae_lambda": p.gae_lambda,
        "clip_range": p.clip_range,
        "clip_range_vf": None,
        "normalize_advantage": p.normalize_advantage,
        "ent_coef": p.ent_coef,
        "vf_coef": p.vf_coef,
        "max_grad_norm": p.max_grad_norm,
        "target_kl": None,
        "seed": cfg.seed,
        "device": "cpu",
        "verbose": 0,
        "policy_kwargs": {
            "net_arch": {"pi": list(n.hidden_sizes), "vf": list(n.critic_hidden_sizes)},
            "activation_fn": activation_fn(n.activation),
            "ortho_init": True,
            "log_std_init": n.log_std_init,
            "optimizer_kwargs": {"eps": p.adam_eps},
        },
    }


def sbx_env_kwargs(cfg: Config) -> dict[str, Any]:
    """The SB3 vector env matching our loop: `make_vec_env` arguments and `VecNormalize` arguments (or None)."""
    p = cfg.ppo
    env = bench_env(cfg.run.tasks)
    vec_normalize = None
    if p.normalize_obs:
        vec_normalize = {"norm_obs": True, "norm_reward": False, "clip_obs": p.obs_clip, "gamma": p.gamma, "epsilon": 1e-8}
    return {
        "env_id": env.name,
        "n_envs": p.num_envs,
        "seed": cfg.seed,
        "vec_env_cls": "DummyVecEnv",
        "vec_normalize": vec_normalize,
    }


def jsonable(value: Any) -> Any:
    """`value` with callables replaced by their names (for the JSON record of `sbx_kwargs`)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if callable(value):
        return getattr(value, "__name__", repr(value))
    return value


# ---------------------------------------------------------------------------------------
# the children: one measurement each, in a fresh process
# ---------------------------------------------------------------------------------------

def _thread_settings() -> dict[str, Any]:
    return {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")}


def _timing_record(t_build: float, t_learn: float, t_end: float, iteration_ends: list[float], batch_size: int) -> dict[str, Any]:
    """Rates from absolute timestamps: build start, learn start, learn end, and the end of every iteration."""
    iterations = len(iteration_ends)
    env_steps = iterations * batch_size
    record: dict[str, Any] = {
        "iterations": iterations,
        "batch_size": batch_size,
        "env_steps": env_steps,
        "setup_s": t_learn - t_build,
        "learn_s": t_end - t_learn,
        "total_s": t_end - t_build,
        "first_iteration_s": (iteration_ends[0] - t_learn) if iteration_ends else None,
    }
    record["end_to_end_steps_per_s"] = env_steps / record["total_s"]
    record["learn_steps_per_s"] = env_steps / record["learn_s"]
    if iterations >= 2:
        steady_s = iteration_ends[-1] - iteration_ends[0]
        record["steady_s"] = steady_s
        record["steady_steps"] = (iterations - 1) * batch_size
        record["steady_steps_per_s"] = record["steady_steps"] / steady_s
    else:
        record["steady_s"] = record["steady_steps"] = record["steady_steps_per_s"] = None
    return record


def _child_ours(spec: dict[str, Any]) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from sphere_rl.protocols.runner import Runner

    cfg = Config.from_dict(spec["config"]).validate()
    t_build = time.perf_counter()
    runner = Runner(cfg, None, progress=False)
    loop, params = runner.loop_for(runner.tasks[0])
    agent, carry = runner._start_task(None, 0)  # initial weights + vector env, as SBX's constructor
    t_learn = time.perf_counter()
    iterations = cfg.iterations_per_task
    ends, episodes, return_sum = [], 0.0, 0.0
    for it in range(iterations):  # what Runner.run does per iteration, minus eval/diag/logging/checkpoints
        lr = jnp.asarray(runner.ppo.iteration_learning_rate(it), jnp.float32)
        agent, carry, metrics = loop.iteration(agent, carry, params, lr)
        metrics = jax.device_get(metrics)
        ends.append(time.perf_counter())
        episodes += float(metrics["episodes"])
        return_sum += float(metrics["episode_return_sum"])
    t_end = ends[-1]
    record = _timing_record(t_build, t_learn, t_end, ends, cfg.batch_size)
    record.update({
        "episodes": int(episodes),
        "mean_episode_return": return_sum / episodes if episodes else None,
        "threads": {**_thread_settings(), "torch_imported": "torch" in sys.modules},
        "vector_env": type(loop.env.env).__name__,
    })
    loop.env.close()
    return record


def _child_sbx(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    from sbx import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    class RolloutClock(BaseCallback):
        """Timestamps every rollout start (= the end of the previous update) and the end of training."""

        def __init__(self) -> None:
            super().__init__()
            self.starts: list[float] = []
            self.end = 0.0
            self.episodes = 0
            self.return_sum = 0.0

        def _on_rollout_start(self) -> None:
            self.starts.append(time.perf_counter())

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                episode = info.get("episode")
                if episode is not None:
                    self.episodes += 1
                    self.return_sum += float(episode["r"])
            return True

        def _on_training_end(self) -> None:
            self.end = time.perf_counter()

    cfg = Config.from_dict(spec["config"]).validate()
    kwargs, env_kw = sbx_kwargs(cfg), sbx_env_kwargs(cfg)
    single_env = bench_env(cfg.run.tasks).single_env
    t_build = time.perf_counter()
    venv = make_vec_env(single_env, n_envs=env_kw["n_envs"], seed=env_kw["seed"], vec_env_cls=DummyVecEnv)
    if env_kw["vec_normalize"] is not None:
        venv = VecNormalize(venv, **env_kw["vec_normalize"])
    model = PPO("MlpPolicy", venv, **kwargs)
    clock = RolloutClock()
    t_learn = time.perf_counter()
    model.learn(total_timesteps=cfg.run.steps_per_task, callback=clock)
    t_end = time.perf_counter()
    ends = [*clock.starts[1:], clock.end or t_end]
    record = _timing_record(t_build, t_learn, t_end, ends, cfg.batch_size)
    if model.num_timesteps != record["env_steps"]:
        raise RuntimeError(f"SBX ran {model.num_timesteps} env steps, the clock counted {record['env_steps']}")
    record.update({
        "episodes": clock.episodes,
        "mean_episode_return": clock.return_sum / clock.episodes if clock.episodes else None,
        "threads": {**_thread_settings(), "torch_num_threads": torch.get_num_threads()},
        "vector_env": type(venv).__name__ + ("(DummyVecEnv)" if env_kw["vec_normalize"] is not None else ""),
    })
    venv.close()
    return record


def _raw_rate(env: Any, num_envs: int, n_vector_steps: int, step: Callable[[Any], Any], seed: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    space = env.action_space
    low = np.broadcast_to(getattr(env, "single_action_space", space).low, (num_envs, *space.shape[-1:]))
    high = np.broadcast_to(getattr(env, "single_action_space", space).high, low.shape)
    start = time.perf_counter()
    for _ in range(n_vector_steps):
        step(rng.uniform(low, high).astype(np.float32))
    seconds = time.perf_counter() - start
    return {"env_steps": n_vector_steps * num_envs, "seconds": seconds, "steps_per_s": n_vector_steps * num_envs / seconds}


def _child_raw(spec: dict[str, Any]) -> dict[str, Any]:
    from sphere_rl import envs

    cfg = Config.from_dict(spec["config"]).validate()
    n, seed = cfg.ppo.num_envs, cfg.seed
    vector_steps = max(1, math.ceil(spec["raw_steps"] / n))
    out: dict[str, Any] = {}
    env = envs.make(cfg.run.tasks, num_envs=n, seed=seed)
    env.reset(seed=seed)
    out["raw_sync_vector_env"] = _raw_rate(env, n, vector_steps, env.step, seed)
    env.close()
    if importlib.util.find_spec("stable_baselines3") is not None:
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.vec_env import DummyVecEnv

        venv = make_vec_env(bench_env(cfg.run.tasks).single_env, n_envs=n, seed=seed, vec_env_cls=DummyVecEnv)
        venv.reset()
        out["raw_dummy_vec_env"] = _raw_rate(venv, n, vector_steps, venv.step, seed)
        venv.close()
    return out


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"ours": _child_ours, "sbx": _child_sbx, "raw": _child_raw}


def child_environment() -> dict[str, str]:
    """The environment of every child: the parent's, with no persistent JAX compilation cache."""
    env = dict(os.environ)
    env["SPHERE_JAX_CACHE"] = "off"
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def _run_child(kind: str, spec: dict[str, Any], timeout_s: float | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sphere-bench-sbx-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "sphere_rl.experiments.bench_sbx", "--child", kind,
               "--spec", str(spec_path), "--result", str(result_path)]
        try:
            proc = subprocess.run(cmd, env=child_environment(), capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the {kind} measurement took longer than {timeout_s} s") from None
        if proc.returncode != 0 or not result_path.exists():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
            raise RuntimeError(f"the {kind} measurement failed (exit {proc.returncode}):\n{tail}")
        return json.loads(result_path.read_text())


# ---------------------------------------------------------------------------------------
# the comparison
# ---------------------------------------------------------------------------------------

SUMMARY_KEYS = ("end_to_end_steps_per_s", "learn_steps_per_s", "steady_steps_per_s", "total_s", "setup_s",
                "learn_s", "first_iteration_s")


def _median_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {}
    for key in SUMMARY_KEYS:
        values = [r[key] for r in runs if r.get(key) is not None]
        summary[key] = statistics.median(values) if values else None
    return summary


def _ratio_over_raw(ours: dict[str, Any], raw: dict[str, Any]) -> dict[str, float | None]:
    """Our median rates over the random-action rate of the SyncVectorEnv our loop steps."""
    simulator = (raw.get("raw_sync_vector_env") or {}).get("steps_per_s")
    return {key: ours[key] / simulator if ours.get(key) and simulator else None
            for key in ("end_to_end_steps_per_s", "steady_steps_per_s")}


def _versions() -> dict[str, str | None]:
    out = {}
    for name in DIST_NAMES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def compare_with_sbx(
    env_id: str = "Hopper-v5",
    total_steps: int = QUICK["total_steps"],
    num_envs: int = QUICK["num_envs"],
    repeats: int = 1,
    overrides: Sequence[str] = (),
    *,
    raw: bool = True,
    timeout_s: float | None = 1800.0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train ours and SBX on `env_id` with the same settings, each measurement in a fresh process.

    `env_id` is a Gymnasium id or a Gymnasium-backed id of our registry (see `bench_env`).
    `overrides` are our dotted config overrides (applied after the bench settings). Returns a dict
    with machine info, versions, our config, the SBX kwargs used, every run of both sides, their
    medians, the ratios ours / SBX and (with `raw`) the random-action simulator rates and the
    ratios ours / raw (SyncVectorEnv).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not sbx_available():
        missing = [name for name in BENCH_PACKAGES if importlib.util.find_spec(name) is None]
        raise RuntimeError(f"SBX comparison needs {missing}; install the bench extra: "
                           "pip install -c constraints.txt -c constraints-bench.txt -e \".[bench]\"")
    from sphere_rl.experiments.bench import machine_info

    cfg = bench_config(env_id, total_steps, num_envs, overrides)
    kwargs = sbx_kwargs(cfg)  # raises before any process starts if SBX cannot express cfg
    spec = {"config": cfg.to_dict(), "raw_steps": min(int(total_steps), RAW_STEPS_MAX)}
    say = print if verbose else (lambda *a, **k: None)
    name = bench_env(env_id).name
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "sbx": []}
    for r in range(repeats):
        order = ("ours", "sbx") if r % 2 == 0 else ("sbx", "ours")
        for side in order:
            record = _run_child(side, spec, timeout_s)
            runs[side].append(record)
            steady = record["steady_steps_per_s"]
            say(f"{name} {side:>4} run {r + 1}/{repeats}: {record['end_to_end_steps_per_s']:,.0f} env-steps/s end to end, "
                f"{'n/a' if steady is None else f'{steady:,.0f}'} steady, {record['total_s']:.1f} s", flush=True)
    result: dict[str, Any] = {
        "machine": machine_info(),
        "versions": _versions(),
        "env_id": name,
        "settings": {
            "total_steps": int(total_steps), "env_steps": runs["ours"][0]["env_steps"], "num_envs": cfg.ppo.num_envs,
            "n_steps": cfg.ppo.n_steps, "minibatch_size": cfg.ppo.minibatch_size, "n_epochs": cfg.ppo.n_epochs,
            "hidden_sizes": list(cfg.net.hidden_sizes), "critic_hidden_sizes": list(cfg.net.critic_hidden_sizes),
            "activation": cfg.net.activation, "normalize_obs": cfg.ppo.normalize_obs, "repeats": repeats,
            "overrides": list(overrides),
        },
        "config": cfg.to_dict(),
        "sbx_kwargs": jsonable(kwargs),
        "sbx_env": sbx_env_kwargs(cfg),
        "child_environment": {"SPHERE_JAX_CACHE": "off", "JAX_COMPILATION_CACHE_DIR": None, **_thread_settings()},
        "ours": {"runs": runs["ours"], "median": _median_summary(runs["ours"])},
        "sbx": {"runs": runs["sbx"], "median": _median_summary(runs["sbx"])},
    }
    ratio = {}
    for key in ("end_to_end_steps_per_s", "steady_steps_per_s", "learn_steps_per_s"):
        a, b = result["ours"]["median"][key], result["sbx"]["median"][key]
        ratio[key] = a / b if a and b else None
    result["ratio_ours_over_sbx"] = ratio
    if raw:
        result["raw"] = _run_child("raw", spec, timeout_s)
        for vector_env, v in result["raw"].items():
            say(f"{name} {vector_env}: {v['steps_per_s']:,.0f} env-steps/s (random actions)", flush=True)
        result["ratio_ours_over_raw"] = _ratio_over_raw(result["ours"]["median"], result["raw"])
    say(f"{name} ours / SBX: end to end x{_fmt_ratio(ratio['end_to_end_steps_per_s'])}, "
        f"steady x{_fmt_ratio(ratio['steady_steps_per_s'])}"
        + (f"; ours / raw SyncVectorEnv: steady x{_fmt_ratio(result['ratio_ours_over_raw']['steady_steps_per_s'])}"
           if raw else ""), flush=True)
    return result


# ---------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------

def _fmt_rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _fmt_s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def markdown(result: dict[str, Any] | list[dict[str, Any]]) -> str:
    """A Markdown table of one comparison (or of several, one block per env)."""
    results = result if isinstance(result, list) else [result]
    lines: list[str] = []
    if results:
        m = results[0].get("machine", {})
        v = results[0].get("versions", {})
        lines += [f"Machine: {m.get('processor', '?')}, {m.get('cpu_count', '?')} CPUs, jax {m.get('jax', '?')}; "
                  f"sbx-rl {v.get('sbx-rl', '?')}, stable-baselines3 {v.get('stable-baselines3', '?')}, "
                  f"torch {v.get('torch', '?')}, mujoco {v.get('mujoco', '?')}; {m.get('time', '')}.", ""]
    for res in results:
        s, ours, sbx = res["settings"], res["ours"]["median"], res["sbx"]["median"]
        ratio = res.get("ratio_ours_over_sbx", {})
        over_raw = res.get("ratio_ours_over_raw", {})
        net = "x".join(str(h) for h in s["hidden_sizes"])
        lines += [
            f"**{res['env_id']}**: {s['env_steps']:,} env steps, {s['num_envs']} envs x {s['n_steps']} steps, minibatch "
            f"{s['minibatch_size']}, {s['n_epochs']} epochs, MLP {net} {s['activation']}, "
            f"obs normalisation {'on' if s['normalize_obs'] else 'off'}, median of {s['repeats']} run(s).",
            "",
            "| | ours (sphere_rl) | SBX | ours / SBX | ours / raw |",
            "|---|---|---|---|---|",
            f"| env-steps/s end to end (compile included) | {_fmt_rate(ours['end_to_end_steps_per_s'])} | "
            f"{_fmt_rate(sbx['end_to_end_steps_per_s'])} | {_fmt_ratio(ratio.get('end_to_end_steps_per_s'))} | "
            f"{_fmt_ratio(over_raw.get('end_to_end_steps_per_s'))} |",
            f"| env-steps/s steady state (after iteration 1) | {_fmt_rate(ours['steady_steps_per_s'])} | "
            f"{_fmt_rate(sbx['steady_steps_per_s'])} | {_fmt_ratio(ratio.get('steady_steps_per_s'))} | "
            f"{_fmt_ratio(over_raw.get('steady_steps_per_s'))} |",
            f"| wall s (setup + training) | {_fmt_s(ours['total_s'])} | {_fmt_s(sbx['total_s'])} | | |",
            f"| first iteration s (compiles) | {_fmt_s(ours['first_iteration_s'])} | {_fmt_s(sbx['first_iteration_s'])} | | |",
        ]
        raw = res.get("raw") or {}
        if raw:
            labels = {"raw_sync_vector_env": "gymnasium SyncVectorEnv", "raw_dummy_vec_env": "SB3 DummyVecEnv"}
            cells = ", ".join(f"{labels.get(k, k)} {_fmt_rate(v['steps_per_s'])}" for k, v in raw.items())
            lines += ["", f"Simulator alone (random actions, {s['num_envs']} envs): {cells} env-steps/s; "
                          "ours / raw divides our rate by the SyncVectorEnv rate (the vector env our loop steps)."]
        lines.append("")
    return "\n".join(lines)


def run_sbx_bench(env_ids: Sequence[str] = DEFAULT_ENV_IDS, quick: bool = True, repeats: int = 1,
                  overrides: Sequence[str] = (), out: str | None = "benchmarks/results",
                  total_steps: int | None = None, num_envs: int | None = None) -> list[dict[str, Any]]:
    """`compare_with_sbx` on each env (quick or full defaults); writes bench-sbx-<time>.json/.md under `out`."""
    for env_id in env_ids:
        bench_env(env_id)  # an unusable id fails now, not after minutes of measuring the ones before it
    defaults = QUICK if quick else FULL
    results = [
        compare_with_sbx(env_id, total_steps or defaults["total_steps"], num_envs or defaults["num_envs"], repeats, overrides)
        for env_id in env_ids
    ]
    text = markdown(results)
    print(text)
    if out:
        from sphere_rl.runs.atomic import atomic_write_json, atomic_write_text

        stamp = time.strftime("%Y%m%d-%H%M%S")
        atomic_write_json(Path(out) / f"bench-sbx-{stamp}.json", {"quick": quick, "results": results})
        atomic_write_text(Path(out) / f"bench-sbx-{stamp}.md", text)
        print(f"written to {Path(out) / f'bench-sbx-{stamp}.json'}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sphere_rl.experiments.bench_sbx",
                                     description="Training throughput of our PPO against SBX PPO on Gymnasium envs "
                                                 "(Gymnasium MuJoCo ids, MetaWorld ids of sphere_rl.envs).")
    parser.add_argument("--env", action="append",
                        help="Gymnasium env id, or an id of sphere_rl.envs with a Gymnasium factory such as "
                             "metaworld/hammer-v3 (repeatable; default Hopper-v5 and Humanoid-v5)")
    parser.add_argument("--quick", action="store_true", help=f"quick defaults {QUICK} instead of full {FULL}")
    parser.add_argument("--total-steps", type=int, default=None, help="env steps per training run")
    parser.add_argument("--num-envs", type=int, default=None, help="parallel envs (same for both)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side, interleaved; medians reported")
    parser.add_argument("--override", action="append", default=[], help="our dotted config override, e.g. net.activation=tanh")
    parser.add_argument("--out", default="benchmarks/results", help="folder for JSON and Markdown ('' to skip writing)")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        record = CHILDREN[args.child](json.loads(Path(args.spec).read_text()))
        Path(args.result).write_text(json.dumps(record))
        return 0
    run_sbx_bench(env_ids=tuple(args.env or DEFAULT_ENV_IDS), quick=args.quick, repeats=args.repeats,
                  overrides=tuple(args.override), out=args.out or None, total_steps=args.total_steps,
                  num_envs=args.num_envs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
