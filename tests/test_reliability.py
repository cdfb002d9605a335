"""Reliability: divergence guards, integrity of everything resume reads, and exact resume after faults."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphere_rl.algo.ppo import PPO, Batch, all_finite
from sphere_rl.config import Config
from sphere_rl.protocols.runner import Runner, RunDivergedError
from sphere_rl.runs import RunDir
from sphere_rl.runs.checkpoint import nonfinite_leaves
from sphere_rl.runs.logger import read_metrics

SMALL = [
    "net.actor=topk_moe", "net.n_experts=3", "net.top_k=2", "net.hidden_sizes=16,16", "net.gate_hidden_sizes=16",
    "net.critic_hidden_sizes=16,16", "ppo.num_envs=16", "ppo.n_steps=8", "ppo.minibatch_size=32", "ppo.n_epochs=2",
    "run.tasks=arm2", "run.steps_per_task=768", "run.eval_every=256", "run.log_every=128",
    "run.checkpoint_every=256", "run.eval_episodes=4", "run.progress=false", "run.tensorboard=false",
    "reg.name=sphere",
]


def small_config(*extra: str) -> Config:
    return Config().override([*SMALL, *extra]).validate()


def _batch(rng: np.random.Generator, n: int = 128, obs_dim: int = 5, action_dim: int = 2) -> Batch:
    return Batch(*(jnp.asarray(rng.normal(size=s), jnp.float32)
                   for s in [(n, obs_dim), (n, action_dim), (n,), (n,), (n,)]))


def _leaves_equal(a, b) -> bool:
    return all(np.asarray(x).tobytes() == np.asarray(y).tobytes()
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ---------------------------------------------------------------- divergence: the update phase


@pytest.mark.parametrize("kl_mode", ["adaptive_lr", "early_stop", "none"])
def test_all_nonfinite_minibatches_leave_the_agent_untouched(kl_mode):
    cfg = small_config(f"ppo.kl_mode={kl_mode}", "ppo.target_kl=0.01")
    ppo = PPO(cfg, obs_dim=5, action_dim=2)
    state = ppo.init(jax.random.PRNGKey(0))
    batch = _batch(np.random.default_rng(0))._replace(obs=jnp.full((128, 5), jnp.nan, jnp.float32))
    new, metrics = ppo.update_phase(state, batch, jax.random.PRNGKey(1), jnp.float32(3e-4))
    n_steps = cfg.ppo.n_epochs * cfg.n_minibatches
    assert float(metrics["nonfinite_updates"]) == n_steps and float(metrics["n_updates"]) == 0
    assert np.isnan(float(metrics["loss"]))  # nothing finite to average: NaN, not a made-up 0
    assert float(metrics["early_stopped"]) == 0.0  # a non-finite step does not stop the phase
    # parameters, Adam moments and step counts, and the adaptive rate are bit-identical
    assert _leaves_equal(new.params, state.params)
    assert _leaves_equal(new.kl_lr, state.kl_lr)
    assert _leaves_equal(jax.tree.leaves(new.opt_state["actor"])[1:], jax.tree.leaves(state.opt_state["actor"])[1:])


def test_some_nonfinite_rows_skip_exactly_their_minibatches():
    """A NaN in one row poisons its minibatch's loss: that step is skipped, every other one applied."""
    cfg = small_config("ppo.kl_mode=none")
    ppo = PPO(cfg, obs_dim=5, action_dim=2)
    state = ppo.init(jax.random.PRNGKey(0))
    batch = _batch(np.random.default_rng(1))
    bad_rows = [3, 77]
    batch = batch._replace(advantages=batch.advantages.at[jnp.asarray(bad_rows)].set(jnp.inf))
    key = jax.random.PRNGKey(2)
    new, metrics = ppo.update_phase(state, batch, key, jnp.float32(3e-4))
    # the same shuffles the phase draws (one permutation per epoch): count minibatches holding a bad row
    expected = 0
    for epoch_key in jax.random.split(key, cfg.ppo.n_epochs):
        perm = np.asarray(jax.random.permutation(epoch_key, cfg.batch_size)).reshape(cfg.n_minibatches, -1)
        expected += sum(bool(np.isin(bad_rows, mb).any()) for mb in perm)
    assert 1 <= expected < cfg.ppo.n_epochs * cfg.n_minibatches
    assert float(metrics["nonfinite_updates"]) == expected
    assert float(metrics["n_updates"]) == cfg.ppo.n_epochs * cfg.n_minibatches - expected
    assert bool(all_finite(new.params)) and np.isfinite(float(metrics["loss"]))
    assert not _leaves_equal(new.params, state.params)


def test_all_finite_ignores_integer_leaves_and_finds_inf():
    tree = {"a": jnp.ones(3), "n": jnp.arange(3), "k": jax.random.PRNGKey(0)}
    assert bool(all_finite(tree))
    assert not bool(all_finite({**tree, "b": jnp.asarray([1.0, -jnp.inf])}))
    assert nonfinite_leaves({**tree, "b": np.asarray([np.nan])}) == ["['b']"]


# ---------------------------------------------------------------- divergence: the run


def test_a_diverging_run_stops_with_a_clear_message_and_finite_checkpoints(tmp_path, capsys):
    """A huge learning rate with no KL control: the first update ruins the policy, every later step is
    non-finite; the run stops at the limit, and every checkpoint it wrote holds finite numbers."""
    cfg = small_config("ppo.lr=1e4", "ppo.kl_mode=none", "run.max_nonfinite_updates=20", "diag.enabled=false")
    run_dir = RunDir.create(tmp_path, name="div", config=cfg.to_dict(), seed=cfg.seed)
    with pytest.raises(RunDivergedError, match=r"run diverged: 23 update steps .* run.max_nonfinite_updates=20\), "
                                               r"the last at env step 384, .*last checkpoint \(env step 256\) is finite"):
        Runner(cfg, run_dir).run()
    assert "8 non-finite update step(s) skipped at env step 256" in capsys.readouterr().err
    assert not run_dir.is_complete
    steps = run_dir.checkpoints.all_steps()
    assert steps == [256]
    runner = Runner(cfg, RunDir.open(run_dir.root))
    tree, meta, _ = runner.load_checkpoint()
    assert nonfinite_leaves(tree) == [] and meta["nonfinite_updates"] == 15
    rows = read_metrics(run_dir.path("metrics.csv"))
    assert [r["nonfinite_updates"] for r in rows] == [7.0, 8.0]
    assert np.isnan(rows[1]["loss"]) and rows[1]["n_updates"] == 0.0
    # resuming repeats the same steps and stops at the same place
    with pytest.raises(RunDivergedError, match="the last at env step 384"):
        runner.run(resume=True)


def test_a_nonfinite_agent_after_an_iteration_is_replaced_by_the_one_before(tmp_path):
    """What the update phase cannot see (e.g. a NaN observation reaching the normaliser) is caught after
    the iteration: the previous agent is kept and the event counts."""
    cfg = small_config("run.max_nonfinite_updates=1", "diag.enabled=false", "run.protocol=rl", "run.tasks=arm/reach")
    runner = Runner(cfg, None)
    loop, _ = runner.loop_for(runner.tasks[0])
    real, calls, seen = loop.iteration, {"n": 0}, []

    def iteration(agent, carry, params, lr):
        calls["n"] += 1
        seen.append(agent)
        agent, carry, metrics = real(agent, carry, params, lr)
        if calls["n"] in (2, 4):
            agent = agent.replace(obs_rms=agent.obs_rms.replace(mean=agent.obs_rms.mean.at[0].set(jnp.nan)))
        return agent, carry, metrics

    loop.iteration = iteration
    with pytest.raises(RunDivergedError, match=r"run diverged: 2 update steps .*limit run.max_nonfinite_updates=1"):
        runner.run()
    assert calls["n"] == 4
    assert seen[2] is seen[1]  # iteration 3 started from the agent iteration 2 started from


# ---------------------------------------------------------------- integrity of what resume reads


class _Crash(Exception):
    pass


def _crash_after(runner: Runner, n_calls: int) -> None:
    loop, _ = runner.loop_for(runner.tasks[0])
    real, calls = loop.iteration, {"n": 0}

    def iteration(*args):
        calls["n"] += 1
        if calls["n"] > n_calls:
            raise _Crash()
        return real(*args)

    loop.iteration = iteration


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from sphere_rl.experiments.kill_resume import SMALL_CRL

    cfg = Config().override(list(SMALL_CRL)).validate()
    run_dir = RunDir.create(tmp_path_factory.mktemp("ref"), name="ref", config=cfg.to_dict(), seed=cfg.seed)
    Runner(cfg, run_dir).run()
    return cfg, run_dir


def _crashed_copy(reference, tmp_path, n_iterations: int) -> RunDir:
    cfg, _ = reference
    run_dir = RunDir.create(tmp_path, name="crashed", config=cfg.to_dict(), seed=cfg.seed)
    runner = Runner(cfg, run_dir)
    _crash_after(runner, n_iterations)
    with pytest.raises(_Crash):
        runner.run()
    return run_dir


def _resume_and_compare(reference, run_dir) -> None:
    from sphere_rl.experiments.kill_resume import compare_runs

    cfg, ref_dir = reference
    Runner(cfg, RunDir.open(run_dir.root)).run(resume=True)
    assert compare_runs(ref_dir.root, run_dir.root) == []


def test_tables_cut_before_the_checkpoint_are_rebuilt_exactly(reference, tmp_path):
    """A power cut can lose CSV rows that were written but not yet durable when the checkpoint was (a
    disk that reorders writes): the checkpoint holds the rows since the previous one, so the resumed
    tables equal an uninterrupted run's."""
    run_dir = _crashed_copy(reference, tmp_path, 9)  # checkpoints at 256 ... 1024; killed at iteration 10
    step = run_dir.checkpoints.latest_step()
    assert step == 1024
    for name in ("metrics.csv", "eval.csv", "diagnostics.csv"):
        path = run_dir.path(name)
        rows = read_metrics(path)
        keep = [r for r in rows if r["env_step"] <= 768]
        assert len(keep) < len(rows)
        lines = path.read_text().splitlines(keepends=True)
        # what was durable at the previous checkpoint (768), and a torn piece of the next row
        path.write_text("".join(lines[: len(keep) + 1]) + lines[len(keep) + 1][:9])
    with pytest.warns(RuntimeWarning, match="dropping incomplete last line"):
        _resume_and_compare(reference, run_dir)


def test_damaged_tables_older_than_the_previous_checkpoint_warn_and_keep_their_rows(reference, tmp_path):
    run_dir = _crashed_copy(reference, tmp_path, 9)
    path = run_dir.path("metrics.csv")
    text = path.read_text()
    path.write_text(text.replace("arm/reach", "arm/reacH", 1))  # an edit far before the last checkpoint
    runner = Runner(reference[0], RunDir.open(run_dir.root))
    with pytest.warns(RuntimeWarning, match=r"metrics.csv in .* changed before the checkpoint of step 1024"):
        runner.run(resume=True)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_probe_and_anchor_files_are_restored_from_the_checkpoint(reference, tmp_path, damage):
    """Probe states and anchor of the current task are inside the checkpoint: damaged or lost files
    do not change the resumed run's diagnostics, and resume rewrites them."""
    run_dir = _crashed_copy(reference, tmp_path, 9)  # inside task 1
    for name in ("task_01.npz", "task_01_actor.msgpack"):
        path = run_dir.path("probes", name)
        good = path.read_bytes()
        if damage == "truncate":
            path.write_bytes(good[: len(good) // 2])
        elif damage == "flip":
            data = bytearray(good)
            data[len(data) // 2] ^= 0x10
            path.write_bytes(bytes(data))
        else:
            path.unlink()
    _resume_and_compare(reference, run_dir)
    ref_dir = reference[1]
    for name in ("task_01.npz", "task_01_actor.msgpack"):
        assert run_dir.path("probes", name).read_bytes() == ref_dir.path("probes", name).read_bytes()


def test_damaged_probe_file_at_a_task_start_is_redrawn(reference, tmp_path):
    """Killed at a task boundary: the next task's probe is drawn from the same agent again."""
    run_dir = _crashed_copy(reference, tmp_path, 7)  # first iteration of task 1 ran, its checkpoint is 768
    assert run_dir.checkpoints.latest_step() == 768
    run_dir.path("probes", "task_01.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.warns(RuntimeWarning, match=r"task_01.npz: unreadable"):
        _resume_and_compare(reference, run_dir)


def test_every_checkpoint_corrupt_is_one_clear_error(reference, tmp_path):
    from sphere_rl.runs.checkpoint import NoValidCheckpointError

    run_dir = _crashed_copy(reference, tmp_path, 9)
    for step in run_dir.checkpoints.all_steps():
        path = run_dir.checkpoints.path_for(step)
        path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning), pytest.raises(NoValidCheckpointError, match=r"all 2 failed verification"):
        Runner(reference[0], RunDir.open(run_dir.root)).run(resume=True)


def test_damaged_manifest_is_set_aside_on_resume(reference, tmp_path):
    import json

    run_dir = _crashed_copy(reference, tmp_path, 4)
    run_dir.path("manifest.json").write_text('{"seed": 0, "resu')
    with pytest.warns(RuntimeWarning, match="manifest.json: unreadable"):
        _resume_and_compare(reference, run_dir)
    manifest = json.loads(run_dir.path("manifest.json").read_text())
    assert "previous manifest was unreadable" in manifest["note"] and len(manifest["resumes"]) == 1
    assert run_dir.path("manifest.json.corrupt").read_text() == '{"seed": 0, "resu'


# ---------------------------------------------------------------- kill -9 matrix (real processes, the real CLI)

KILL_MATRIX = {
    "before the first checkpoint": ["iteration:1"],
    "inside the first task": ["iteration:3"],
    "at the task switch": ["after_checkpoint:3"],
    "during a checkpoint write": ["checkpoint_write:4"],
    "after the final checkpoint": ["after_checkpoint:6"],
    "twice (mid-task, then mid-write)": ["iteration:2", "checkpoint_write:2"],
}


def test_kill_matrix_resumes_to_identical_numbers(tmp_path):
    """SIGKILL at each point of the matrix, `sphere train --resume` to the end: the same numbers as an
    uninterrupted run, bit for bit (timing columns aside). Two children at a time, one XLA thread each."""
    from concurrent.futures import ThreadPoolExecutor

    from sphere_rl.experiments.kill_resume import compare_runs, kill_point_trial, reference_run

    with ThreadPoolExecutor(2) as pool:
        ref_future = pool.submit(reference_run, tmp_path)
        trials = {label: pool.submit(kill_point_trial, tmp_path, f"kill-{i}", points)
                  for i, (label, points) in enumerate(KILL_MATRIX.items())}
        ref, _ = ref_future.result()
        results = {label: f.result() for label, f in trials.items()}
    for i, (label, result) in enumerate(results.items()):
        assert all(result["killed"]), (label, result)  # every kill point was reached
        run = tmp_path / f"kill-{i}"
        assert compare_runs(ref, run) == [], label
        assert not list(run.rglob("*.tmp")), label  # a write cut by the kill leaves no temp file behind


# ---------------------------------------------------------------- what the command line says


def test_a_diverged_run_is_one_line_and_exit_1(tmp_path, capsys):
    from sphere_rl.cli import main

    args = ["train", "--preset", "demo", *SMALL, "ppo.lr=1e4", "ppo.kl_mode=none", "run.max_nonfinite_updates=0",
            "diag.enabled=false", "--out-dir", str(tmp_path), "--name", "div"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sphere: run diverged: 7 update steps had a non-finite loss, gradient or result "
                              "(limit run.max_nonfinite_updates=0), the last at env step 128")
    assert "Traceback" not in "\n".join(err)


def test_permission_denied_is_one_line(tmp_path, capsys, monkeypatch):
    """Tests run as root here, where chmod cannot deny anything: the OS error is raised where the run
    directory is created, as a read-only out-dir would."""
    from sphere_rl.cli import main

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro"))

    monkeypatch.setattr(RunDir, "create", denied)
    assert main(["train", "--preset", "demo-quick", "--out-dir", str(tmp_path / "ro")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"sphere: cannot write {tmp_path / 'ro'}: permission denied"
