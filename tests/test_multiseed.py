"""Many seeds in one process (protocols.multiseed): equal to the seeds run one by one up to float
rounding, deterministic, and resumed bit-identically after a crash."""

import numpy as np
import pytest

from sphere_rl.config import Config, ConfigError
from sphere_rl.experiments.kill_resume import SMALL_CRL, compare_runs
from sphere_rl.protocols.multiseed import SeedGroup
from sphere_rl.protocols.runner import Runner
from sphere_rl.runs import RunDir
from sphere_rl.runs.logger import read_metrics

SEEDS = (0, 1, 2)
TIMING = {"steps_per_s", "wall_time_s", "ntk/seconds"}
FIT_SPEEDS = ("fit/auc", "fit/final")


def _cfgs(*extra):
    return [Config().override([*SMALL_CRL, f"seed={s}", *extra]).validate() for s in SEEDS]


def _group(root, name="g", cfgs=None):
    cfgs = cfgs or _cfgs()
    dirs = [RunDir.create(root / name, name=f"seed_{c.seed}", config=c.to_dict(), seed=c.seed) for c in cfgs]
    return SeedGroup(cfgs, dirs, progress=False), dirs


@pytest.fixture(scope="module")
def group_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("group")
    group, dirs = _group(root)
    results = group.run()
    return root, dirs, results


@pytest.fixture(scope="module")
def alone_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("alone")
    dirs = []
    for cfg in _cfgs():
        run_dir = RunDir.create(root, name=f"seed_{cfg.seed}", config=cfg.to_dict(), seed=cfg.seed)
        Runner(cfg, run_dir).run()
        dirs.append(run_dir)
    return dirs


def test_each_seed_of_a_group_is_an_ordinary_run(group_runs):
    _, dirs, results = group_runs
    assert [r.run_dir for r in results] == [str(d.root) for d in dirs]
    for d in dirs:
        assert d.is_complete
        for name in ("config.json", "manifest.json", "metrics.csv", "eval.csv", "diagnostics.csv",
                     "continual_metrics.csv", "probes/task_00.npz", "probes/task_01_actor.msgpack"):
            assert d.path(name).exists(), name
        assert d.checkpoints.all_steps() == [1280, 1536]  # keep_checkpoints=2
    # the seeds differ from each other
    finals = [tuple(r.final_return) for r in results]
    assert len(set(finals)) == len(SEEDS)


def test_a_group_equals_its_seeds_run_alone_up_to_float_rounding(group_runs, alone_runs):
    """Vmapped programs are compiled differently from the single-seed one (other fusions and loop
    orders), so results agree to float32 rounding at the first update and drift slowly after: the
    first update's loss to 1e-6 relative; every logged number, over the whole run, to 1e-3 of its
    column's largest magnitude (so that values crossing zero are judged on the column's scale), except
    the loss-share ratios, whose denominator |L_pi + c_ent L_ent| passes near zero (rounding there is
    amplified without bound), and the target-fitting probe's speeds (`fit/auc`, `fit/final`): those
    take 200 Adam steps of their own from the drifted parameters and amplify the drift (a CI machine
    measured `fit/final` 0.0452 alone vs 0.0469 grouped), so they get 5e-2 here, and the test below
    checks them exactly against the probe recomputed from the seed's own checkpoint; integer and text
    columns exactly."""
    _, group_dirs, _ = group_runs
    ratios = {"reg/loss_share"}
    for alone, grouped in zip(alone_runs, group_dirs):
        for name in ("metrics.csv", "eval.csv", "diagnostics.csv"):
            a, b = read_metrics(alone.path(name)), read_metrics(grouped.path(name))
            assert len(a) == len(b) and a
            assert [r.keys() for r in a] == [r.keys() for r in b]
            for k in a[0].keys() - TIMING - ratios:
                va, vb = [r[k] for r in a], [r[k] for r in b]
                present = [v for v in va + vb if v is not None]
                if present and all(isinstance(v, float) for v in present):  # empty cells: measured on some rows
                    va = np.asarray([np.nan if v is None else v for v in va])
                    vb = np.asarray([np.nan if v is None else v for v in vb])
                    scale = np.nanmax(np.abs(va)) if np.isfinite(va).any() else 0.0
                    assert np.array_equal(np.isnan(va), np.isnan(vb)), (name, k)
                    rel = 5e-2 if k in FIT_SPEEDS else 1e-3
                    ok = np.isnan(va) | (np.abs(va - vb) <= rel * scale + 1e-6)
                    assert ok.all(), (name, k, va[~ok], vb[~ok])
                else:
                    assert va == vb, (name, k)
        first_a, first_b = read_metrics(alone.path("metrics.csv"))[0], read_metrics(grouped.path("metrics.csv"))[0]
        assert abs(first_a["loss"] - first_b["loss"]) <= 1e-6 * abs(first_a["loss"])


def test_a_groups_fitting_probe_is_the_probe_of_each_seeds_own_parameters(group_runs):
    """The last task end's `fit/*` numbers of every grouped seed equal the target-fitting probe run
    afresh (single-seed code) on the agent restored from that seed's final checkpoint, to float32
    rounding: the group measures each seed on its own parameters and probe states."""
    _, group_dirs, _ = group_runs
    for cfg, grouped in zip(_cfgs(), group_dirs):
        last = [r for r in read_metrics(grouped.path("diagnostics.csv")) if r.get("fit/final") is not None][-1]
        runner = Runner(cfg, RunDir.open(grouped.root))
        state, agent, _, _ = runner._restore()
        assert state["env_step"] == last["env_step"]
        again = runner.diagnostics.measure(agent, last["task_index"], full=False, fit=True).metrics
        for k in (*FIT_SPEEDS, "fit/initial_loss"):
            assert again[k] == pytest.approx(last[k], rel=1e-5, abs=1e-7), k


def test_a_group_is_deterministic(group_runs, tmp_path):
    _, dirs, _ = group_runs
    group, again = _group(tmp_path)
    group.run()
    for a, b in zip(dirs, again):
        assert compare_runs(a.root, b.root) == []


class _Crash(Exception):
    pass


def _crash_after(group, n_calls):
    loop, _ = group.runners[0].loop_for(group.runners[0].tasks[0])
    real, calls = loop.run_calls, {"n": 0}

    def run_calls(kind, owns, shared):
        if kind == "iteration":
            calls["n"] += 1
            if calls["n"] > n_calls:
                raise _Crash()
        return real(kind, owns, shared)

    loop.run_calls = run_calls


@pytest.mark.parametrize("crash_after, drop_newest_of_seed", [(9, None), (9, 1), (2, None)])
def test_a_crashed_group_resumes_every_seed_exactly(group_runs, tmp_path, crash_after, drop_newest_of_seed):
    """Crash inside task 1 (iteration 10), also with one seed's newest checkpoint lost (the group resumes
    every seed from the newest step they all have), and before the first checkpoint (all from step 0)."""
    _, ref_dirs, _ = group_runs
    group, dirs = _group(tmp_path)
    _crash_after(group, crash_after)
    with pytest.raises(_Crash):
        group.run()
    if drop_newest_of_seed is not None:
        manager = dirs[drop_newest_of_seed].checkpoints
        manager.path_for(manager.latest_step()).unlink()
    resumed = SeedGroup(_cfgs(), [RunDir.open(d.root) for d in dirs], progress=False)
    resumed.run(resume=True)
    for a, b in zip(ref_dirs, dirs):
        assert compare_runs(a.root, b.root) == []


def test_a_group_compiles_its_iteration_once():
    group = SeedGroup(_cfgs(), progress=False)
    group.run()
    loop, _ = group.runners[0].loop_for(group.runners[0].tasks[0])
    assert loop.iteration_many._cache_size() == 1  # both tasks, every learning rate
    assert loop.evaluate_many._cache_size() == 1


def test_a_group_refuses_configs_that_differ_beyond_the_seed_and_host_envs():
    with pytest.raises(ConfigError, match="equal except for seed"):
        SeedGroup([*_cfgs()[:1], Config().override([*SMALL_CRL, "seed=5", "ppo.lr=1e-3"]).validate()])
    with pytest.raises(ConfigError, match="seeds must differ"):
        SeedGroup([_cfgs()[0], _cfgs()[0]])
    host = [Config().override(["run.tasks=gym:Pendulum-v1", f"seed={s}"]).validate() for s in (0, 1)]
    with pytest.raises(ConfigError, match="JAX-native"):
        SeedGroup(host)
