"""End-to-end training: determinism, kill-and-resume equality, corrupt checkpoints, compile-once, learning."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphere_rl.algo.ppo import PPO, Batch
from sphere_rl.config import Config
from sphere_rl.protocols.runner import Runner
from sphere_rl.runs import RunDir
from sphere_rl.runs.checkpoint import CorruptCheckpointWarning
from sphere_rl.runs.logger import read_metrics

TIMING = {"steps_per_s", "wall_time_s", "ntk/seconds"}

TINY = [
    "net.actor=topk_moe", "net.n_experts=3", "net.top_k=2", "net.hidden_sizes=16,16", "net.gate_hidden_sizes=16",
    "net.critic_hidden_sizes=16,16", "ppo.num_envs=16", "ppo.n_steps=8", "ppo.minibatch_size=32", "ppo.n_epochs=2",
    "run.tasks=arm2", "run.steps_per_task=768", "run.eval_every=256", "run.log_every=256",
    "run.checkpoint_every=256", "run.eval_episodes=4", "run.progress=false", "run.tensorboard=false",
    "reg.name=sphere",
]


def tiny_config(*extra: str) -> Config:
    return Config().override([*TINY, *extra]).validate()


def _run(cfg: Config, root, name: str):
    run_dir = RunDir.create(root, name=name, config=cfg.to_dict(), seed=cfg.seed)
    return run_dir, Runner(cfg, run_dir).run()


def _rows(run_dir, kind):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_metrics(run_dir.path(f"{kind}.csv"))]


def _assert_same_rows(a, b):
    assert len(a) == len(b) and len(a) > 0
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            va, vb = ra[k], rb[k]
            same = (va == vb) or (isinstance(va, float) and isinstance(vb, float) and np.isnan(va) and np.isnan(vb))
            assert same, f"column {k} at env_step {ra.get('env_step')}: {va} != {vb}"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    cfg = tiny_config()
    return _run(cfg, tmp_path_factory.mktemp("ref"), "ref")


def test_two_runs_same_seed_identical(reference_run, tmp_path):
    ref_dir, ref = reference_run
    run_dir, again = _run(tiny_config(), tmp_path, "again")
    _assert_same_rows(_rows(ref_dir, "metrics"), _rows(run_dir, "metrics"))
    _assert_same_rows(_rows(ref_dir, "eval"), _rows(run_dir, "eval"))
    _assert_same_rows(_rows(ref_dir, "diagnostics"), _rows(run_dir, "diagnostics"))
    assert ref.final_success == again.final_success and ref.final_return == again.final_return
    assert len(ref.final_success) == 2 and len(ref.success_matrix) == 2
    assert ref.success_matrix[0][1] is None and ref.success_matrix[1][0] is not None


def test_different_seed_differs(reference_run, tmp_path):
    ref_dir, _ = reference_run
    run_dir, _ = _run(tiny_config("seed=1"), tmp_path, "seed1")
    a, b = _rows(ref_dir, "metrics"), _rows(run_dir, "metrics")
    assert any(ra["loss"] != rb["loss"] for ra, rb in zip(a, b))


class _Crash(Exception):
    pass


def _crash_after(runner: Runner, n_calls: int) -> None:
    loop, _ = runner.loop_for(runner.tasks[0])
    real = loop.iteration
    calls = {"n": 0}

    def iteration(*args):
        calls["n"] += 1
        if calls["n"] > n_calls:
            raise _Crash()
        return real(*args)

    loop.iteration = iteration


@pytest.mark.parametrize("crash_after", [3, 8])  # inside task 0; inside task 1 (6 iterations per task)
def test_kill_and_resume_gives_identical_numbers(reference_run, tmp_path, crash_after):
    ref_dir, ref = reference_run
    cfg = tiny_config()
    run_dir = RunDir.create(tmp_path, name="crashy", config=cfg.to_dict(), seed=cfg.seed)
    runner = Runner(cfg, run_dir)
    _crash_after(runner, crash_after)
    with pytest.raises(_Crash):
        runner.run()
    assert not run_dir.is_complete
    resumed = Runner(cfg, RunDir.open(run_dir.root)).run(resume=True)
    _assert_same_rows(_rows(ref_dir, "metrics"), _rows(run_dir, "metrics"))
    _assert_same_rows(_rows(ref_dir, "eval"), _rows(run_dir, "eval"))
    _assert_same_rows(_rows(ref_dir, "diagnostics"), _rows(run_dir, "diagnostics"))
    assert resumed.final_success == ref.final_success and resumed.final_return == ref.final_return
    assert resumed.proxy_rank == ref.proxy_rank and resumed.ntk_rank == ref.ntk_rank


def test_corrupt_newest_checkpoint_falls_back_and_still_matches(reference_run, tmp_path):
    ref_dir, ref = reference_run
    cfg = tiny_config()
    run_dir = RunDir.create(tmp_path, name="corrupt", config=cfg.to_dict(), seed=cfg.seed)
    runner = Runner(cfg, run_dir)
    _crash_after(runner, 9)
    with pytest.raises(_Crash):
        runner.run()
    steps = run_dir.checkpoints.all_steps()
    assert len(steps) >= 2
    newest = run_dir.checkpoints.path_for(steps[-1])
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = Runner(cfg, RunDir.open(run_dir.root)).run(resume=True)
    assert any(issubclass(w.category, CorruptCheckpointWarning) and "truncated" in str(w.message) for w in caught)
    _assert_same_rows(_rows(ref_dir, "metrics"), _rows(run_dir, "metrics"))
    assert resumed.final_success == ref.final_success


def test_rl_task0_equals_crl_task0(reference_run, tmp_path):
    ref_dir, _ = reference_run
    run_dir, rl = _run(tiny_config("run.protocol=rl"), tmp_path, "rl")
    crl_rows = [r for r in _rows(ref_dir, "metrics") if r["task_index"] == 0]
    rl_rows = [r for r in _rows(run_dir, "metrics") if r["task_index"] == 0]
    _assert_same_rows(crl_rows, rl_rows)
    assert rl.success_matrix[1][0] is None  # RL evaluates only the current task


def test_update_phase_and_iteration_compile_once():
    cfg = tiny_config()
    runner = Runner(cfg, None, progress=False)
    runner.run()
    loop, _ = runner.loop_for(runner.tasks[0])
    assert loop.iteration._cache_size() == 1  # both tasks and every lr value share one compilation
    ppo = PPO(cfg, obs_dim=5, action_dim=2)
    state = ppo.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    for lr in (3e-4, 1e-4):
        batch = Batch(*(jnp.asarray(rng.normal(size=s), jnp.float32) for s in
                        [(128, 5), (128, 2), (128,), (128,), (128,)]))
        state, _ = ppo.update_phase(state, batch, jax.random.PRNGKey(1), jnp.float32(lr))
    assert ppo.update_phase._cache_size() == 1


def test_short_run_learns_the_easy_task(tmp_path):
    cfg = Config().override([
        "net.actor=mlp", "net.hidden_sizes=64,64", "net.critic_hidden_sizes=64,64", "ppo.num_envs=64",
        "ppo.n_steps=32", "ppo.minibatch_size=512", "ppo.n_epochs=4", "run.protocol=rl", "run.tasks=arm/reach",
        "run.steps_per_task=200_000", "run.eval_every=20_000", "run.eval_episodes=32", "run.progress=false",
        "run.tensorboard=false",
    ]).validate()
    run_dir, result = _run(cfg, tmp_path, "learn")
    evals = read_metrics(run_dir.path("eval.csv"))
    first, last = evals[0], evals[-1]
    # a random policy has return about -55 and success about 0 on arm/reach (see test_envs)
    assert last["return"] > first["return"] + 20.0, (first, last)
    assert result.final_success[0] >= 0.2, result.final_success


def test_gymnasium_env_trains_through_the_adapter(tmp_path):
    cfg = Config().override([
        "net.actor=topk_moe", "net.n_experts=2", "net.hidden_sizes=8", "net.gate_hidden_sizes=8",
        "net.critic_hidden_sizes=8", "ppo.num_envs=4", "ppo.n_steps=16", "ppo.minibatch_size=32", "ppo.n_epochs=2",
        "run.tasks=gym:Pendulum-v1", "run.steps_per_task=448", "run.eval_every=192", "run.log_every=192",
        "run.checkpoint_every=192", "run.eval_episodes=2", "run.progress=false", "run.tensorboard=false",
    ]).validate()
    run_dir, result = _run(cfg, tmp_path, "pendulum")
    rows = read_metrics(run_dir.path("metrics.csv"))
    assert [r["env_step"] for r in rows] == [192, 384, 448]
    assert all(np.isfinite(r["loss"]) for r in rows)
    evals = read_metrics(run_dir.path("eval.csv"))
    assert len(evals) == 3 and all(-2000 < e["return"] < 0 for e in evals)  # Pendulum returns are negative
    assert result.final_success == [0.0]
    # same seed, same machine: identical numbers for host envs too (a fresh run, not a resume)
    again_dir, again = _run(cfg, tmp_path, "pendulum-again")
    _assert_same_rows(_rows(run_dir, "metrics"), _rows(again_dir, "metrics"))


def test_report_table_and_plot_from_a_run(reference_run, tmp_path):
    from sphere_rl.report.plots import plot_crl_comparison
    from sphere_rl.report.tables import results_table

    _, result = reference_run
    table = results_table({"a": result, "b": result})
    assert "arm/reach" in table and "arm/permute" in table and f"{result.average_success:>8.2f}" in table
    assert f"{result.ntk_rank[1]:>7.1f} {result.proxy_rank[1]:>7.1f}" in table
    png = plot_crl_comparison({"a": result, "b": result}, tmp_path / "fig" / "demo.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
