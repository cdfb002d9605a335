"""The RL plasticity probe (`diag.rl_probe_steps`): a copy of the agent trains briefly on the held-out
task at initialisation and every task end. It must measure the agent it is given, leave the run itself
unchanged, run vmapped in seed groups and resume exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphere_rl.config import Config, ConfigError
from sphere_rl.experiments.kill_resume import SMALL_CRL, compare_runs
from sphere_rl.protocols.multiseed import SeedGroup
from sphere_rl.protocols.runner import _RL_PROBE, Runner
from sphere_rl.runs import RunDir
from sphere_rl.runs.logger import read_metrics

PROBE_ROLLOUTS = 16
PROBE = ("diag.rl_probe_steps=2000", "run.keep_checkpoints=10")
"""2000 steps: 16 rollouts of 16 envs x 8 steps, in which the arm's episodes (at most 60 steps) end twice."""
COLUMNS = ("rlprobe/initial", "rlprobe/final", "rlprobe/auc", "rlprobe/initial_return", "rlprobe/final_return",
           "rlprobe/return_auc")
TIMING = {"steps_per_s", "wall_time_s", "ntk/seconds"}


def _cfg(*extra, seed=0):
    return Config().override([*SMALL_CRL, f"seed={seed}", *extra]).validate()


def _train(root, name, cfg):
    run_dir = RunDir.create(root, name=name, config=cfg.to_dict(), seed=cfg.seed)
    Runner(cfg, run_dir).run()
    return run_dir


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    return _train(root, "on", _cfg(*PROBE)), _train(root, "off", _cfg("run.keep_checkpoints=10"))


def _rows(run_dir, table):
    return read_metrics(run_dir.path(table))


def _num(row, key):
    """A cell as a float; an empty cell (a column the row does not have) is NaN."""
    value = row.get(key)
    return float("nan") if value in (None, "") else float(value)


def test_the_probe_logs_its_columns_at_initialisation_and_task_ends_only(probed):
    on, _ = probed
    rows = _rows(on, "diagnostics.csv")
    probed_rows = [r for r in rows if np.isfinite(_num(r, "rlprobe/auc"))]
    assert [(r["env_step"], r["task_index"]) for r in probed_rows] == [(0, 0), (768, 0), (1536, 1)]
    for r in probed_rows:
        for c in COLUMNS:
            assert np.isfinite(_num(r, c)), c
        assert 0.0 <= _num(r, "rlprobe/auc") <= 1.0 and 0.0 <= _num(r, "rlprobe/final") <= 1.0
    assert all(np.isnan(_num(r, "rlprobe/auc")) for r in rows if r not in probed_rows)


def test_the_probe_leaves_the_run_itself_unchanged(probed):
    """Same training, evaluations and other diagnostics, number for number, with and without the probe."""
    on, off = probed
    for table in ("metrics.csv", "eval.csv", "diagnostics.csv", "continual_metrics.csv"):
        a, b = _rows(on, table), _rows(off, table)
        assert len(a) == len(b), table
        for ra, rb in zip(a, b):
            keys = (set(ra) | set(rb)) - TIMING - set(COLUMNS)
            for k in keys:
                x, y = ra.get(k), rb.get(k)
                assert x == y or (isinstance(x, float) and np.isnan(x) and np.isnan(y)), (table, k, x, y)


def _probe_by_hand(runner, agent, t):
    """The probe computed step by step with the loop's public calls (what the docs promise it is)."""
    cfg = runner.cfg
    loop, params = runner.loop_for("arm/heldout")
    key = jax.random.fold_in(jax.random.fold_in(runner.base_key, _RL_PROBE), t + 1)
    agent = runner.ppo.start_task(runner.ppo.reset_optimizer(agent) if cfg.run.reset_optimizer else agent)
    before = jax.device_get(loop.evaluate(agent, params, jax.random.fold_in(key, 1)))
    agent, carry = loop.start(agent, jax.random.fold_in(key, 0), params)
    succ, ret = [], []
    for i in range(PROBE_ROLLOUTS):
        lr = jnp.asarray(runner.ppo.iteration_learning_rate(i), jnp.float32)
        agent, carry, m = loop.iteration(agent, carry, params, lr)
        m = jax.device_get(m)
        if m["episodes"]:  # the curve's points are the rollouts in which episodes ended
            succ.append(float(m["episode_success_sum"]) / float(m["episodes"]))
            ret.append(float(m["episode_return_sum"]) / float(m["episodes"]))
    assert len(succ) >= 2
    after = jax.device_get(loop.evaluate(agent, params, jax.random.fold_in(key, 1)))
    return {"rlprobe/initial": float(before["success"]), "rlprobe/final": float(after["success"]),
            "rlprobe/auc": float(np.mean(succ)), "rlprobe/initial_return": float(before["return"]),
            "rlprobe/final_return": float(after["return"]), "rlprobe/return_auc": float(np.mean(ret))}


def test_the_probe_trains_the_agent_of_that_moment_on_the_heldout_task(probed):
    """At initialisation the fresh agent, at the end of task 0 the checkpointed agent of that step."""
    on, _ = probed
    runner = Runner(_cfg(*PROBE), on)
    rows = {r["env_step"]: r for r in _rows(on, "diagnostics.csv") if np.isfinite(_num(r, "rlprobe/auc"))}
    fresh, _ = runner._start_task(None, 0)  # the untrained agent as the run holds it: task 0's first observations normalise it
    tree, _, _ = runner.load_checkpoint(768)
    for step, agent, t in ((0, fresh, -1), (768, tree["agent"], 0)):
        expected = _probe_by_hand(runner, agent, t)
        for c in COLUMNS:
            assert _num(rows[step], c) == pytest.approx(expected[c], rel=1e-5, abs=1e-6), (step, c)
    assert _num(rows[768], "rlprobe/return_auc") != _num(rows[0], "rlprobe/return_auc")  # two different agents


def _group(root, cfgs):
    dirs = [RunDir.create(root, name=f"seed_{c.seed}", config=c.to_dict(), seed=c.seed) for c in cfgs]
    return SeedGroup(cfgs, dirs, progress=False), dirs


class _Crash(Exception):
    pass


def test_a_group_probes_every_seed_and_resumes_inside_a_probe_exactly(tmp_path):
    cfgs = [_cfg(*PROBE, seed=s) for s in (0, 1)]
    ref_group, ref_dirs = _group(tmp_path / "ref", cfgs)
    ref_group.run()
    group, dirs = _group(tmp_path / "crashed", cfgs)
    loop, _ = group.runners[0].loop_for("arm/heldout")
    real, calls = loop.run_calls, {"n": 0}

    def run_calls(kind, owns, shared):  # iterations: the first probe's, task 0's 6, then task 0's probe
        if kind == "iteration":
            calls["n"] += 1
            if calls["n"] > PROBE_ROLLOUTS + 6 + 1:
                raise _Crash()
        return real(kind, owns, shared)

    loop.run_calls = run_calls
    with pytest.raises(_Crash):
        group.run()
    assert [d.checkpoints.latest_step() for d in dirs] == [512, 512]  # the task end's checkpoint (768) follows its probe
    SeedGroup(cfgs, [RunDir.open(d.root) for d in dirs], progress=False).run(resume=True)
    for a, b in zip(ref_dirs, dirs):
        assert compare_runs(a.root, b.root) == []
    probes = [[_num(r, "rlprobe/return_auc") for r in _rows(d, "diagnostics.csv") if np.isfinite(_num(r, "rlprobe/auc"))]
              for d in ref_dirs]
    assert len(probes[0]) == len(probes[1]) == 3 and probes[0] != probes[1]


def test_the_probe_refuses_a_task_it_cannot_run():
    with pytest.raises(ConfigError, match="diag.rl_probe_task"):
        Config().override(["run.tasks=cw10", "diag.rl_probe_steps=1000"]).validate()
    with pytest.raises(ConfigError, match="diag.rl_probe_task"):
        Config().override(["diag.rl_probe_steps=1000", "diag.rl_probe_task=arm/nope"]).validate()
    with pytest.raises(ConfigError, match="diag.rl_probe_task: gym:Pendulum-v1 has observation and action sizes"):
        Runner(_cfg("diag.rl_probe_steps=1000", "diag.rl_probe_task=gym:Pendulum-v1"))
    # off: nothing is checked, nothing runs
    assert Runner(_cfg("diag.rl_probe_steps=0", "diag.rl_probe_task=gym:Pendulum-v1")).rl_probe_task is None
