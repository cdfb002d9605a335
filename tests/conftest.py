"""Shared test set-up: a persistent compilation cache so identical programs compile once per session, and a
tiny CRL run over host (Gymnasium) envs.

`make test` runs the suite in two pytest-xdist workers (one per core of the CI machine, whole files to a
worker); each worker's XLA then uses one thread, as the runs of a sweep do, so the two do not fight over the
cores. The flag is set before anything imports jax."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import pytest  # noqa: E402

from sphere_rl.compilation_cache import enable_compilation_cache  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
    enable_compilation_cache(tmp_path_factory.mktemp("jax-cache"))


TINY_HOST_CRL = (
    "net.actor=topk_moe", "net.n_experts=2", "net.hidden_sizes=8", "net.gate_hidden_sizes=8",
    "net.critic_hidden_sizes=8", "ppo.n_epochs=1", "run.eval_episodes=1", "run.progress=false",
    "run.tensorboard=false", "diag.enabled=false", "diag.n_states=16", "diag.probe_steps=8",
)
"""A Top-K MoE of width 8 with one epoch and no diagnostics: exercises the pipeline, learns nothing."""


@pytest.fixture
def tiny_host_crl(tmp_path):
    """`run(tasks, steps_per_task, *overrides)` trains a tiny CRL run over `tasks` and returns (RunDir, RunResult);
    every evaluation, log and checkpoint falls at the end of each task."""
    from sphere_rl.config import Config
    from sphere_rl.protocols.runner import Runner
    from sphere_rl.runs import RunDir

    def run(tasks, steps_per_task, *overrides):
        cfg = Config().override([
            *TINY_HOST_CRL, f"run.tasks={','.join(tasks)}", f"run.steps_per_task={steps_per_task}",
            *(f"run.{k}={steps_per_task}" for k in ("eval_every", "log_every", "checkpoint_every")), *overrides,
        ]).validate()
        run_dir = RunDir.create(tmp_path, name="tiny", config=cfg.to_dict(), seed=cfg.seed)
        return run_dir, Runner(cfg, run_dir).run()

    return run
