"""The demo's statistics against scipy on the same arrays, its verdict, and `sphere train --seeds`."""

import json

import numpy as np
import pytest
import scipy.stats

from sphere_rl.cli import main
from sphere_rl.experiments.demo import demo_statistics, format_demo
from sphere_rl.results.stats import mean_ci

TASKS = ["arm/reach", "arm/push", "arm/permute"]


def _summaries(success: np.ndarray, ranks: np.ndarray) -> list[dict]:
    return [{"tasks": TASKS, "final_success": s.tolist(), "ntk_rank": r.tolist()} for s, r in zip(success, ranks)]


def _scipy_ci(x, reps=10_000, seed=0):
    res = scipy.stats.bootstrap((np.asarray(x, float),), np.mean, n_resamples=reps, method="percentile",
                                confidence_level=0.95, rng=np.random.default_rng(seed))
    return res.confidence_interval.low, res.confidence_interval.high


def test_demo_statistics_equal_scipy_on_the_same_arrays():
    rng = np.random.default_rng(3)
    a_succ, b_succ = rng.uniform(0.2, 0.8, size=(5, 3)), rng.uniform(0.3, 0.9, size=(6, 3))
    a_rank, b_rank = rng.uniform(5, 10, size=(5, 3)), rng.uniform(8, 14, size=(6, 3))
    stats = demo_statistics({"base": _summaries(a_succ, a_rank), "other": _summaries(b_succ, b_rank)})
    for t in range(3):
        for label, succ, rank in (("base", a_succ, a_rank), ("other", b_succ, b_rank)):
            cell = stats["per_task"][t][label]
            assert cell["success"]["mean"] == pytest.approx(succ[:, t].mean(), abs=1e-12)
            assert (cell["success"]["lo"], cell["success"]["hi"]) == pytest.approx(_scipy_ci(succ[:, t]), abs=1e-12)
            assert cell["ntk_rank"]["mean"] == pytest.approx(rank[:, t].mean(), abs=1e-12)
    avg_a, avg_b = a_succ.mean(axis=1), b_succ.mean(axis=1)
    assert stats["average"]["other"]["per_seed"] == pytest.approx(avg_b.tolist())
    diff = stats["difference"]
    assert diff["value"] == pytest.approx(avg_b.mean() - avg_a.mean(), abs=1e-12)
    assert diff["welch_p"] == pytest.approx(scipy.stats.ttest_ind(avg_b, avg_a, equal_var=False).pvalue, rel=1e-12)
    assert diff["mwu_p"] == pytest.approx(scipy.stats.mannwhitneyu(avg_b, avg_a, alternative="two-sided").pvalue, rel=1e-12)
    res = scipy.stats.bootstrap((avg_b, avg_a), lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis),
                                n_resamples=10_000, method="percentile", paired=False, vectorized=True,
                                rng=np.random.default_rng(0))
    assert (diff["lo"], diff["hi"]) == pytest.approx((res.confidence_interval.low, res.confidence_interval.high), abs=1e-12)


def test_the_verdict_follows_the_numbers():
    rng = np.random.default_rng(0)
    ranks = np.full((5, 3), 7.0)
    clear = demo_statistics({"Top-K MoE": _summaries(rng.uniform(0.0, 0.2, (5, 3)), ranks),
                             "Top-K MoE + SPHERE": _summaries(rng.uniform(0.8, 1.0, (5, 3)), ranks)})
    assert clear["difference"]["significant"] and clear["difference"]["value"] > 0.5
    assert "significantly better at the 5 % level" in format_demo(clear)
    same = rng.uniform(0.3, 0.7, (10, 3))
    none = demo_statistics({"Top-K MoE": _summaries(same[:5], ranks), "Top-K MoE + SPHERE": _summaries(same[5:], ranks)})
    if not none["difference"]["significant"]:
        assert "no significant difference" in format_demo(none)
    one = demo_statistics({"a": _summaries(same[:1], ranks[:1]), "b": _summaries(same[1:2], ranks[:1])})
    assert "difference" not in one and "one seed: indicative only" in format_demo(one)


def test_mean_ci_edge_cases():
    assert mean_ci([0.5]) == (0.5, pytest.approx(np.nan, nan_ok=True), pytest.approx(np.nan, nan_ok=True))
    assert mean_ci([0.25, 0.25, 0.25]) == (0.25, 0.25, 0.25)
    assert all(np.isnan(v) for v in mean_ci([np.nan, np.inf]))


TINY = ["net.n_experts=2", "net.hidden_sizes=8", "net.gate_hidden_sizes=8", "net.critic_hidden_sizes=8",
        "ppo.num_envs=8", "ppo.n_steps=8", "ppo.minibatch_size=32", "ppo.n_epochs=1", "run.tasks=arm2",
        "run.steps_per_task=128", "run.eval_every=64", "run.log_every=64", "run.checkpoint_every=64",
        "run.eval_episodes=2", "run.progress=false", "run.tensorboard=false"]


def test_train_seeds_makes_a_group_of_ordinary_runs_and_resumes_it(tmp_path, capsys):
    assert main(["train", "--preset", "demo-quick", *TINY, "--seeds", "0-2", "--out-dir", str(tmp_path), "--name", "g"]) == 0
    out = capsys.readouterr().out
    assert "3 seeds: 0, 1, 2, in one process" in out
    assert "(95 % bootstrap CI over 3 seeds)" in out
    group = tmp_path / "g"
    index = json.loads((group / "group.json").read_text())
    assert index["seeds"] == [0, 1, 2] and index["runs"] == ["seed_0", "seed_1", "seed_2"]
    for s in range(3):
        summary = json.loads((group / f"seed_{s}" / "summary.json").read_text())
        assert len(summary["final_success"]) == 2
        assert json.loads((group / f"seed_{s}" / "config.json").read_text())["seed"] == s
    assert main(["train", "--resume", str(group)]) == 0
    assert "is complete (3 seeds); nothing to resume" in capsys.readouterr().out
    # a group folder cannot be created twice
    assert main(["train", "--preset", "demo-quick", *TINY, "--seeds", "0-2", "--out-dir", str(tmp_path), "--name", "g"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_train_seeds_refuses_bad_seed_lists(tmp_path, capsys):
    assert main(["train", "--preset", "demo-quick", "--seeds", "3-1", "--out-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sphere: config error: --seeds") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_quick_demo_end_to_end(tmp_path, capsys):
    """`sphere demo --quick --seeds 0-1`: both methods' seed groups in two processes, the statistics
    printed, demo.png / demo.json written, every seed an ordinary finished run."""
    assert main(["demo", "--quick", "--seeds", "0-1", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "CRL average" in out and "verdict:" in out and "(95 % bootstrap CI; Welch p =" in out
    (parent,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    stats = json.loads((parent / "demo.json").read_text())
    assert stats["methods"] == ["Top-K MoE", "Top-K MoE + SPHERE"] and stats["seeds"] == {"Top-K MoE": 2, "Top-K MoE + SPHERE": 2}
    assert (parent / "demo.png").stat().st_size > 10_000
    for method in ("topk_moe", "topk_moe_sphere"):
        for seed in (0, 1):
            summary = json.loads((parent / method / f"seed_{seed}" / "summary.json").read_text())
            assert len(summary["final_success"]) == 2
    per_seed = stats["average"]["Top-K MoE"]["per_seed"]
    assert per_seed == [np.mean(json.loads((parent / "topk_moe" / f"seed_{s}" / "summary.json").read_text())["final_success"])
                        for s in (0, 1)]
