"""Diagnostics during training and `sphere diagnose`: probe sets, diagnostics.csv, summary, CLI."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphere_rl.cli import main
from sphere_rl.config import Config, ConfigError
from sphere_rl.diagnostics.ntk import empirical_ntk, ntk_spectrum
from sphere_rl.diagnostics.probe import ProbeSet
from sphere_rl.protocols.runner import Runner
from sphere_rl.runs import RunDir
from sphere_rl.runs.logger import read_metrics

N_PROBE = 48
SMALL_RUN = [
    "net.actor=topk_moe", "net.n_experts=3", "net.top_k=1", "net.hidden_sizes=12,12", "net.gate_hidden_sizes=8",
    "net.critic_hidden_sizes=12", "ppo.num_envs=8", "ppo.n_steps=8", "ppo.minibatch_size=32", "ppo.n_epochs=2",
    "run.tasks=arm2", "run.steps_per_task=192", "run.eval_every=128", "run.log_every=128",
    "run.checkpoint_every=128", "run.eval_episodes=2", "run.progress=false", "run.tensorboard=false",
    f"diag.n_states={N_PROBE}", "diag.probe_steps=4",
]


def small_config(*extra: str) -> Config:
    return Config().override([*SMALL_RUN, *extra]).validate()


@pytest.fixture(scope="module")
def diag_run(tmp_path_factory):
    cfg = small_config()
    run_dir = RunDir.create(tmp_path_factory.mktemp("diag"), name="run", config=cfg.to_dict(), seed=cfg.seed)
    result = Runner(cfg, run_dir).run()
    return cfg, run_dir, result


def test_diagnostics_rows_probe_files_and_summary(diag_run):
    cfg, run_dir, result = diag_run
    rows = read_metrics(run_dir.path("diagnostics.csv"))
    # The untrained agent at env step 0, then (192 steps per task in rollouts of 64) task step 128
    # (eval_every) and 192 (task end).
    assert [(r["env_step"], r["task_index"], r["task_step"], r["task_end"]) for r in rows] == [
        (0, 0, 0, 0), (128, 0, 128, 0), (192, 0, 192, 1), (320, 1, 128, 0), (384, 1, 192, 1)]
    initial, rows = rows[0], rows[1:]
    assert result.initial_ntk_rank == initial["ntk/effective_rank"]
    assert result.initial_ntk_top_eigenvalues == [initial[f"ntk/eig_{i}"] for i in (1, 2, 3)]
    assert initial["weight_change"] == 0.0  # measured before the first update
    for column in ("ntk/effective_rank", "ntk/eig_1", "ntk/eig_3", "proxy/effective_rank", "dormant_ratio",
                   "weight_change", "expert_load/0", "routing_entropy", "grad_norm", "feature_stable_rank"):
        assert column in rows[0], column
    for r in rows:
        assert 1.0 <= r["ntk/effective_rank"] <= N_PROBE
        assert r["ntk/eig_1"] >= r["ntk/eig_2"] >= r["ntk/eig_3"] >= 0
        assert r["weight_change"] > 0  # training moved the weights away from the task's start
        assert sum(r[f"expert_load/{e}"] for e in range(3)) == pytest.approx(1.0)

    for t in range(2):
        probe = ProbeSet.load(run_dir.path("probes", f"task_{t:02d}.npz"))
        assert probe.states.shape == (N_PROBE, 15) and probe.task_index == t and probe.task == result.tasks[t]
        assert run_dir.path("probes", f"task_{t:02d}_actor.msgpack").is_file()
    # Different tasks, different probe states.
    assert not np.allclose(ProbeSet.load(run_dir.path("probes", "task_00.npz")).states,
                           ProbeSet.load(run_dir.path("probes", "task_01.npz")).states)

    ends = [r for r in rows if r["task_end"]]
    assert result.ntk_rank == [r["ntk/effective_rank"] for r in ends]
    assert result.proxy_rank == [r["proxy/effective_rank"] for r in ends]
    assert result.ntk_top_eigenvalues == [[r[f"ntk/eig_{i}"] for i in (1, 2, 3)] for r in ends]
    summary = json.loads(run_dir.path("summary.json").read_text())
    assert summary["ntk_rank"] == result.ntk_rank and len(summary["task_end_diagnostics"]) == 2


def test_logged_ntk_rank_matches_an_independent_brute_force(diag_run):
    """The final row's r_e(K) equals a float64 full-Jacobian eNTK of the final checkpoint on the stored probe."""
    cfg, run_dir, _ = diag_run
    runner = Runner(cfg, run_dir, progress=False)
    tree, _, _ = run_dir.checkpoints.restore_latest(runner.checkpoint_target)
    agent = tree["agent"]
    probe = ProbeSet.load(run_dir.path("probes", "task_01.npz"))
    obs = runner.ppo.normalize_obs(agent, jnp.asarray(probe.states))
    actor = runner.ppo.actor
    with jax.enable_x64(True):
        params64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), agent.params["actor"])
        jac = jax.jacrev(lambda p: actor.apply(p, jnp.asarray(obs, jnp.float64)).mean)(params64)
        flat = np.concatenate([np.asarray(j).reshape(N_PROBE, 3, -1) for j in jax.tree_util.tree_leaves(jac)], -1)
    expected = ntk_spectrum(np.einsum("iap,jap->ij", flat, flat)).effective_rank
    logged = read_metrics(run_dir.path("diagnostics.csv"))[-1]["ntk/effective_rank"]
    assert logged == pytest.approx(expected, rel=1e-4)
    # ... and the generic path agrees on the same inputs.
    generic = empirical_ntk(lambda p, x: actor.apply(p, x).mean, agent.params["actor"], obs)
    assert ntk_spectrum(generic).effective_rank == pytest.approx(expected, rel=1e-4)


def test_sphere_diagnose_reproduces_the_last_row(diag_run, tmp_path, capsys):
    _, run_dir, _ = diag_run
    out = tmp_path / "report.json"
    anchor = run_dir.path("probes", "task_01_actor.msgpack")
    saved_anchor = anchor.read_bytes()
    anchor.unlink()  # a run without the task's anchor: diagnose must not record one
    probes_before = sorted(p.name for p in run_dir.path("probes").iterdir())
    try:
        assert main(["diagnose", str(run_dir.root), "--out", str(tmp_path / "no_anchor.json")]) == 0
        assert sorted(p.name for p in run_dir.path("probes").iterdir()) == probes_before
        assert "weight_change" not in json.loads((tmp_path / "no_anchor.json").read_text())["metrics"]
    finally:
        anchor.write_bytes(saved_anchor)
    assert main(["diagnose", str(run_dir.root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "r_e(K)" in printed and "r_e(A)" in printed
    report = json.loads(out.read_text())
    last = read_metrics(run_dir.path("diagnostics.csv"))[-1]
    assert report["task_index"] == 1 and report["n_states"] == N_PROBE
    for key in ("ntk/effective_rank", "proxy/effective_rank", "dormant_ratio", "weight_change"):
        assert report["metrics"][key] == pytest.approx(last[key], rel=1e-9), key
    assert report["ntk_eigenvalues"][0] == pytest.approx(last["ntk/eig_1"], rel=1e-9)

    assert main(["diagnose", str(run_dir.root), "--task", "0", "--n-states", "16", "--no-ntk", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n_states"] == 16 and report["ntk_eigenvalues"] is None and report["task_index"] == 0

    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((10, 4), np.float32))
    assert main(["diagnose", str(run_dir.root), "--probe", str(wrong)]) == 2
    assert "features" in capsys.readouterr().err
    assert main(["diagnose", str(run_dir.root), "--probe", str(tmp_path / "missing.npz")]) == 2


def test_diagnostics_off_still_reports_the_proxy(tmp_path):
    cfg = small_config("diag.enabled=false", "run.tasks=arm/reach")
    run_dir = RunDir.create(tmp_path, name="off", config=cfg.to_dict(), seed=cfg.seed)
    result = Runner(cfg, run_dir).run()
    assert not run_dir.path("diagnostics.csv").exists()
    assert len(result.proxy_rank) == 1 and result.proxy_rank[0] > 0
    assert result.ntk_rank == [None]


@pytest.mark.parametrize("override, field", [
    ("diag.ntk_method=fast", "diag.ntk_method"),
    ("diag.ntk_reduction=diag", "diag.ntk_reduction"),
    ("diag.n_states=0", "diag.n_states"),
    ("diag.every=-5", "diag.every"),
    ("diag.dormant_tau=1.5", "diag.dormant_tau"),
])
def test_bad_diagnostics_config_names_the_field(override, field):
    with pytest.raises(ConfigError, match=field):
        small_config(override)


def test_every_diagnostics_column_is_documented(diag_run):
    import re
    from pathlib import Path

    _, run_dir, _ = diag_run
    doc = (Path(__file__).parents[1] / "docs" / "metrics.md").read_text()
    columns = read_metrics(run_dir.path("diagnostics.csv"))[0].keys()
    templates = [(r"expert_load/\d+$", "expert_load/<e>"), (r"expert_\d+$", "expert_<e>"),
                 (r"layer_\d+$", "layer_<l>"), (r"eig_\d+$", "eig_1")]
    for column in columns:
        documented = column
        for pattern, placeholder in templates:
            documented = re.sub(pattern, placeholder, documented)
        assert f"`{documented}`" in doc, f"diagnostics.csv column {column!r} is not in docs/metrics.md"


def test_proxy_statistics_on_hand_made_pairs():
    from sphere_rl.experiments.proxy_validation import proxy_statistics

    monotone = [{"task_index": t, "env_step": i, "proxy": float(i), "ntk": float(i) ** 2} for i, t in enumerate([0, 0, 0, 1, 1, 1])]
    reversed_ = [{**p, "ntk": -p["ntk"]} for p in monotone]
    stats = proxy_statistics({"up": monotone})
    assert stats["pooled"]["rho"] == pytest.approx(1.0) and stats["pooled"]["n"] == 6
    assert stats["within_task_rho"] == {"mean": pytest.approx(1.0), "min": pytest.approx(1.0), "max": pytest.approx(1.0), "n_groups": 2}
    both = proxy_statistics({"up": monotone, "down": reversed_})
    assert both["per_run"]["down"]["rho"] == pytest.approx(-1.0)
    assert both["within_task_rho"]["mean"] == pytest.approx(0.0)


def test_sphere_proxy_on_an_existing_run(diag_run, tmp_path, capsys):
    _, run_dir, _ = diag_run
    assert main(["proxy", "--runs", str(run_dir.root), "--out-dir", str(tmp_path)]) == 0
    assert "Spearman" in capsys.readouterr().out
    (report_path,) = tmp_path.glob("*/proxy_validation.json")
    report = json.loads(report_path.read_text())
    assert report["statistics"]["pooled"]["n"] == 5 and -1.0 <= report["statistics"]["pooled"]["rho"] <= 1.0
    assert (report_path.parent / "proxy_scatter.png").read_bytes()[:4] == b"\x89PNG"
