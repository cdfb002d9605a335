"""Statistics of sweep results: hand-worked numbers, the same numbers from scipy / rliable called directly,
properties (shift, swap, intervals, determinism), the one-run policy, bad input and the text formatters."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from rliable import library as rly
from rliable import metrics as rly_metrics

from sphere_rl.results import stats
from sphere_rl.results.stats import (
    MISSING,
    ONE_RUN_NOTE,
    cohens_d,
    compare_cells,
    continual_summary,
    format_comparison,
    format_continual,
    format_interval,
    format_mean_std,
    format_number,
    format_p,
    format_summary,
    hedges_correction,
    hedges_g,
    iqm,
    pairwise,
    performance_profile,
    probability_of_improvement,
    probability_of_superiority,
    summarize,
    to_markdown,
    to_text,
)

REPS = 300

# 3 runs x 3 tasks, worked by hand below.
M = np.array([[0.0, 0.5, 1.0],
              [0.2, 0.4, 1.0],
              [0.1, 0.9, 0.7]])

X4 = np.array([1.0, 2.0, 3.0, 4.0])
Y4 = np.array([3.0, 4.0, 5.0, 8.0])


def _global_rng_fingerprint():
    state = np.random.get_state()
    return state[1].copy(), state[2]


def _brute_superiority(x, y):
    wins = 0.0
    for a in x:
        for b in y:
            wins += 1.0 if a > b else 0.5 if a == b else 0.0
    return wins / (len(x) * len(y))


# ---------------------------------------------------------------------------------------------------
# Hand-worked numbers


def test_iqm_by_hand():
    # 8 scores sorted: 0.0 0.1 | 0.2 0.3 0.4 0.5 | 0.8 0.9 -> the middle four: 1.4 / 4
    assert iqm([[0.1, 0.9, 0.4, 0.2], [0.8, 0.0, 0.5, 0.3]]) == pytest.approx(0.35)
    # 9 scores sorted: 0.0 0.1 | 0.2 0.4 0.5 0.7 0.9 | 1.0 1.0; floor(9/4) = 2 cut at each end -> 2.7 / 5
    assert iqm(M) == pytest.approx(0.54)


def test_summarize_by_hand():
    row = summarize({"m": M}, reps=REPS).loc["m"]
    assert (row["n_runs"], row["n_tasks"]) == (3, 3)
    # task means 0.1, 0.6, 0.9 -> mean 1.6 / 3, median 0.6
    assert row["mean"] == pytest.approx(1.6 / 3)
    assert row["median"] == pytest.approx(0.6)
    assert row["iqm"] == pytest.approx(0.54)
    # per-run means 1.5/3, 1.6/3, 1.7/3: deviations -0.1/3, 0, 0.1/3 -> var = 2 (0.1/3)^2 / 2, std = 0.1/3
    assert row["std"] == pytest.approx(0.1 / 3)
    # gamma = 1: nothing is clipped, gap = 1 - mean
    assert row["optimality_gap"] == pytest.approx(1 - 1.6 / 3)
    # gamma = 0.8: clipped scores 0, .5, .8, .2, .4, .8, .1, .8, .7 sum to 4.3 -> gap 0.8 - 4.3 / 9
    clipped = summarize({"m": M}, reps=REPS, gamma=0.8).loc["m"]
    assert clipped["optimality_gap"] == pytest.approx(0.8 - 4.3 / 9)
    assert row["note"] == ""


def test_effect_sizes_by_hand():
    # x: mean 2.5, squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5 -> var 5/3
    # y: mean 5,   squared deviations 4 + 1 + 0 + 9 = 14           -> var 14/3
    # pooled var = (3 * 5/3 + 3 * 14/3) / (4 + 4 - 2) = 19/6
    d = (2.5 - 5.0) / math.sqrt(19 / 6)
    assert cohens_d(X4, Y4) == pytest.approx(d)
    # J(6) = Gamma(3) / (sqrt(3) Gamma(5/2)) = 2 / (sqrt(3) * 3/4 * sqrt(pi)) = 8 / (3 sqrt(3 pi))
    j = 8 / (3 * math.sqrt(3 * math.pi))
    assert hedges_correction(6) == pytest.approx(j)
    assert hedges_g(X4, Y4) == pytest.approx(d * j)
    # the usual approximation 1 - 3 / (4 m - 1) is close for m = 6, and J -> 1
    assert hedges_correction(6) == pytest.approx(1 - 3 / 23, abs=2e-3)
    assert hedges_correction(10_000) == pytest.approx(1.0, abs=1e-4)


def test_superiority_by_hand():
    # pairs with x > y: 4 > 3 only; ties: 3 = 3 and 4 = 4 -> (1 + 0.5 * 2) / 16
    assert probability_of_superiority(X4, Y4) == pytest.approx(2 / 16)
    assert probability_of_superiority(X4, Y4) == pytest.approx(_brute_superiority(X4, Y4))
    result = pairwise(X4, Y4, reps=REPS)
    assert result.prob_superiority == pytest.approx(2 / 16)
    assert result.rank_biserial == pytest.approx(2 * 2 / 16 - 1)
    assert result.mwu_u == pytest.approx(2.0)
    assert result.difference == pytest.approx(-2.5)
    assert (result.mean_x, result.mean_y, result.n_x, result.n_y) == (2.5, 5.0, 4, 4)


def test_constant_groups():
    # both constant: d undefined when equal, infinite when not
    assert math.isnan(cohens_d([1.0, 1.0], [1.0, 1.0]))
    assert cohens_d([2.0, 2.0], [1.0, 1.0]) == math.inf
    result = pairwise([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], reps=REPS)
    assert result.difference == 0.0 and result.prob_superiority == 0.5 and math.isnan(result.welch_p)


# ---------------------------------------------------------------------------------------------------
# The same numbers from the libraries called directly


def _rng_matrices(seed=0, shape_x=(5, 3), shape_y=(4, 3)):
    rng = np.random.default_rng(seed)
    return rng.random(shape_x), rng.random(shape_y)


def test_pairwise_matches_scipy():
    rng = np.random.default_rng(3)
    x, y = rng.normal(0.6, 0.1, 5), rng.normal(0.5, 0.2, 7)
    result = pairwise(x, y, reps=REPS, seed=4)
    welch = scipy.stats.ttest_ind(x, y, equal_var=False)
    assert result.welch_t == welch.statistic and result.welch_p == welch.pvalue and result.welch_dof == welch.df
    mwu = scipy.stats.mannwhitneyu(x, y, alternative="two-sided")
    assert result.mwu_u == mwu.statistic and result.mwu_p == mwu.pvalue
    assert result.prob_superiority == pytest.approx(_brute_superiority(x, y))
    boot = scipy.stats.bootstrap((x, y), lambda a, b, axis: a.mean(axis) - b.mean(axis), n_resamples=REPS,
                                 method="percentile", vectorized=True, rng=np.random.default_rng(4))
    assert (result.difference_lo, result.difference_hi) == pytest.approx(
        (boot.confidence_interval.low, boot.confidence_interval.high))


def test_summarize_matches_rliable():
    x, y = _rng_matrices()
    table = summarize({"x": x, "y": y}, reps=REPS, seed=7)
    aggregate = lambda s: np.array([rly_metrics.aggregate_mean(s), rly_metrics.aggregate_median(s),  # noqa: E731
                                    rly_metrics.aggregate_iqm(s), rly_metrics.aggregate_optimality_gap(s)])
    for cell, scores in (("x", x), ("y", y)):
        np.random.seed(7)  # rliable resamples from the global RNG
        points, intervals = rly.get_interval_estimates({cell: scores}, aggregate, reps=REPS)
        for i, name in enumerate(stats.SUMMARY_METRICS):
            assert table.loc[cell, name] == points[cell][i]
            assert table.loc[cell, f"{name}_lo"] == intervals[cell][0, i]
            assert table.loc[cell, f"{name}_hi"] == intervals[cell][1, i]


def test_probability_of_improvement_matches_rliable():
    x, y = _rng_matrices(1)
    estimate = probability_of_improvement(x, y, reps=200, seed=5)
    assert estimate.value == rly_metrics.probability_of_improvement(x, y)
    # per task it is the brute-force probability of superiority, averaged over tasks
    assert estimate.value == pytest.approx(np.mean([_brute_superiority(x[:, t], y[:, t]) for t in range(3)]))
    np.random.seed(5)
    _, intervals = rly.get_interval_estimates(
        {"p": [x, y]}, lambda a, b: np.array([rly_metrics.probability_of_improvement(a, b)]), reps=200)
    assert (estimate.lo, estimate.hi) == (intervals["p"][0, 0], intervals["p"][1, 0])
    assert estimate.lo <= estimate.value <= estimate.hi and estimate.confidence == 0.95


def test_performance_profile_matches_rliable():
    x, y = _rng_matrices(2)
    taus = np.array([0.2, 0.5, 0.8])
    profile = performance_profile({"x": x, "y": y}, taus, reps=REPS, seed=3)
    assert list(profile.columns) == ["cell", "tau", "fraction", "lo", "hi"]
    for cell, scores in (("x", x), ("y", y)):
        rows = profile[profile["cell"] == cell]
        np.testing.assert_array_equal(rows["fraction"], [(scores > t).mean() for t in taus])
        np.random.seed(3)
        _, intervals = rly.create_performance_profile({cell: scores}, taus, reps=REPS)
        np.testing.assert_array_equal(rows["lo"], intervals[cell][0])
        np.testing.assert_array_equal(rows["hi"], intervals[cell][1])
    per_task = performance_profile({"x": x}, taus, per_task_mean=True, reps=REPS)
    np.testing.assert_array_equal(per_task["fraction"], [(x.mean(axis=0) > t).mean() for t in taus])


def test_global_rng_untouched_and_deterministic():
    x, y = _rng_matrices(4)
    np.random.seed(123)
    before = _global_rng_fingerprint()
    first = summarize({"x": x, "y": y}, reps=REPS, seed=11)
    probability_of_improvement(x, y, reps=50, seed=11)
    performance_profile({"x": x}, [0.5], reps=50, seed=11)
    after = _global_rng_fingerprint()
    np.testing.assert_array_equal(before[0], after[0])
    assert before[1] == after[1]
    pd.testing.assert_frame_equal(first, summarize({"x": x, "y": y}, reps=REPS, seed=11))
    assert not summarize({"x": x}, reps=REPS, seed=12).loc["x"].equals(first.loc["x"])
    # a cell's interval does not depend on the other cells in the table
    pd.testing.assert_series_equal(first.loc["y"], summarize({"y": y}, reps=REPS, seed=11).loc["y"])


# ---------------------------------------------------------------------------------------------------
# Properties

small_runs = st.lists(st.floats(0.0, 1.0, allow_nan=False, width=32), min_size=2, max_size=6)
PROPERTY = settings(max_examples=20, deadline=None, derandomize=True)


@PROPERTY
@given(small_runs, small_runs, st.floats(-2.0, 2.0, width=32))
def test_shifting_y_shifts_the_difference(x, y, c):
    base = pairwise(x, y, reps=200, seed=1)
    shifted = pairwise(x, np.asarray(y) + c, reps=200, seed=1)
    assert shifted.difference == pytest.approx(base.difference - c, abs=1e-9)
    assert shifted.difference_lo == pytest.approx(base.difference_lo - c, abs=1e-9)
    assert shifted.difference_hi == pytest.approx(base.difference_hi - c, abs=1e-9)


@PROPERTY
@given(small_runs, small_runs)
def test_swapping_flips_signs(x, y):
    xy, yx = pairwise(x, y, reps=200), pairwise(y, x, reps=200)
    assert yx.difference == pytest.approx(-xy.difference)
    assert yx.prob_superiority == pytest.approx(1 - xy.prob_superiority)
    assert yx.rank_biserial == pytest.approx(-xy.rank_biserial)
    assert yx.cohens_d == pytest.approx(-xy.cohens_d, nan_ok=True)
    assert yx.hedges_g == pytest.approx(-xy.hedges_g, nan_ok=True)
    assert yx.welch_p == pytest.approx(xy.welch_p, nan_ok=True)
    assert yx.mwu_p == pytest.approx(xy.mwu_p)
    assert xy.prob_superiority == pytest.approx(_brute_superiority(x, y))
    p_xy = probability_of_improvement(np.asarray(x)[:, None], np.asarray(y)[:, None], reps=1)
    p_yx = probability_of_improvement(np.asarray(y)[:, None], np.asarray(x)[:, None], reps=1)
    assert p_yx.value == pytest.approx(1 - p_xy.value)


@PROPERTY
@given(small_runs, small_runs, st.integers(0, 2**32 - 1))
def test_intervals_hold_the_estimate_and_are_deterministic(x, y, seed):
    result = pairwise(x, y, reps=200, seed=seed)
    assert result.difference_lo - 1e-12 <= result.difference <= result.difference_hi + 1e-12
    np.testing.assert_equal(dataclasses.asdict(result), dataclasses.asdict(pairwise(x, y, reps=200, seed=seed)))
    row = summarize({"c": np.asarray(x)[:, None]}, reps=200, seed=seed).loc["c"]
    assert row["mean_lo"] - 1e-12 <= row["mean"] <= row["mean_hi"] + 1e-12
    for name in stats.SUMMARY_METRICS:
        assert row[f"{name}_lo"] <= row[f"{name}_hi"]


# ---------------------------------------------------------------------------------------------------
# Tables of per-run frames


def _runs_frame():
    rng = np.random.default_rng(8)
    return pd.DataFrame({
        "reg.name": ["sphere"] * 5 + ["none"] * 4 + ["l2"] * 4,
        "average_success": np.r_[rng.uniform(0.4, 0.9, 5), rng.uniform(0.1, 0.6, 4), rng.uniform(0.2, 0.7, 4)],
    })


def test_compare_cells():
    frame = _runs_frame()
    table = compare_cells(frame, by="reg.name", value="average_success", baseline="none", reps=REPS, seed=2)
    assert list(table.index) == ["none", "l2", "sphere"]  # baseline first, then sorted
    assert table.index.name == "reg.name" and table.attrs["baseline"] == "none"
    runs = {k: g["average_success"].to_numpy() for k, g in frame.groupby("reg.name")}
    base = table.loc["none"]
    assert bool(base["baseline"]) and base["n"] == 4
    assert all(math.isnan(base[c]) for c in ("difference", "welch_p", "mwu_p", "hedges_g", "p_improvement"))
    for level in ("l2", "sphere"):
        row, x, y = table.loc[level], runs[level], runs["none"]
        assert row["n"] == len(x) and row["mean"] == pytest.approx(x.mean())
        assert row["std"] == pytest.approx(np.std(x, ddof=1))
        assert row["iqm"] == pytest.approx(scipy.stats.trim_mean(x, 0.25))
        assert row["iqm_lo"] <= row["iqm"] <= row["iqm_hi"]
        assert row["difference"] == pytest.approx(x.mean() - y.mean())
        assert row["welch_p"] == scipy.stats.ttest_ind(x, y, equal_var=False).pvalue
        assert row["mwu_p"] == scipy.stats.mannwhitneyu(x, y, alternative="two-sided").pvalue
        assert row["hedges_g"] == pytest.approx(hedges_g(x, y))
        # one task: rliable's probability of improvement is the probability of superiority
        assert row["p_improvement"] == pytest.approx(_brute_superiority(x, y))
        assert row["p_improvement_lo"] <= row["p_improvement"] <= row["p_improvement_hi"]
        assert row["note"] == ""
    # default baseline: the first level in sorted order
    default = compare_cells(frame, by="reg.name", value="average_success", reps=50)
    assert default.attrs["baseline"] == "l2" and list(default.index) == ["l2", "none", "sphere"]


def test_compare_cells_numeric_levels_and_one_run():
    frame = pd.DataFrame({"reg.coef": [0.1, 0.1, 0.1, 1.0, 1.0, 1.0, 10.0],
                          "average_success": [0.2, 0.3, 0.25, 0.5, 0.6, 0.4, 0.9]})
    table = compare_cells(frame, by="reg.coef", value="average_success", baseline="1.0", reps=REPS)
    assert list(table.index) == [1.0, 0.1, 10.0]
    single = table.loc[10.0]
    assert single["note"] == ONE_RUN_NOTE and single["n"] == 1 and math.isnan(single["std"])
    assert single["difference"] == pytest.approx(0.9 - 0.5)
    assert single["p_improvement"] == 1.0 and math.isnan(single["p_improvement_lo"])
    assert math.isnan(single["welch_p"]) and math.isnan(single["iqm_lo"])
    one_baseline = compare_cells(frame, by="reg.coef", value="average_success", baseline=10.0, reps=50)
    assert one_baseline.loc[0.1, "note"] == "baseline has one run: no test"


def test_continual_summary_is_nan_aware():
    frame = pd.DataFrame({
        "method": ["a", "a", "a", "b", "b", "c"],
        "average_performance": [0.5, 0.7, 0.6, 0.2, 0.4, 0.9],
        "forgetting": [0.1, 0.0, 0.2, 0.3, 0.5, 0.0],
        "forward_transfer": [0.2, math.nan, 0.4, math.nan, math.nan, 0.1],
    })
    table = continual_summary(frame, by="method", reps=REPS, seed=1)
    assert list(table.index) == ["a", "b", "c"]
    a, b, c = table.loc["a"], table.loc["b"], table.loc["c"]
    assert a["average_performance"] == pytest.approx(0.6) and a["forgetting"] == pytest.approx(0.1)
    assert a["forward_transfer"] == pytest.approx(0.3) and a["forward_transfer_n"] == 2
    assert a["average_performance_lo"] <= 0.6 <= a["average_performance_hi"]
    boot = scipy.stats.bootstrap((np.array([0.5, 0.7, 0.6]),), np.mean, n_resamples=REPS, method="percentile",
                                 rng=np.random.default_rng(1))
    assert a["average_performance_lo"] == pytest.approx(boot.confidence_interval.low)
    assert a["average_performance_hi"] == pytest.approx(boot.confidence_interval.high)
    assert math.isnan(b["forward_transfer"]) and b["forward_transfer_n"] == 0
    assert b["note"] == "forward_transfer: missing"
    assert c["note"] == ONE_RUN_NOTE and math.isnan(c["forgetting_lo"]) and c["forgetting"] == 0.0
    shown = format_continual(table)
    assert shown.loc["a", "forward transfer [95% CI]"].endswith("(n=2)")


def test_one_run_cell_in_summarize():
    table = summarize({"one": M[:1], "many": M}, reps=REPS)
    one = table.loc["one"]
    assert one["note"] == ONE_RUN_NOTE and one["mean"] == pytest.approx(0.5)
    assert all(math.isnan(one[f"{n}_{b}"]) for n in stats.SUMMARY_METRICS for b in ("lo", "hi"))
    assert math.isnan(one["std"])
    assert table.loc["many", "note"] == ""


# ---------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("call, message", [
    (lambda: summarize({}), "empty"),
    (lambda: summarize({"a": np.zeros((0, 3))}), "empty cell"),
    (lambda: summarize({"a": np.zeros(3)}), "2-D"),
    (lambda: summarize({"a": np.zeros((2, 3)), "b": np.zeros((2, 4))}), "mismatched task counts"),
    (lambda: summarize({"a": [[0.1, math.nan], [0.2, 0.3]]}), "NaN"),
    (lambda: summarize({"a": [["x", "y"]]}), "numbers"),
    (lambda: summarize({"a": M}, reps=0), "reps"),
    (lambda: summarize({"a": M}, confidence=1.5), "confidence"),
    (lambda: summarize({"a": M}, seed=-1), "seed"),
    (lambda: probability_of_improvement(M, M[:, :2]), "mismatched task counts"),
    (lambda: performance_profile({"a": M}, []), "taus"),
    (lambda: pairwise([0.5], [0.1, 0.2]), "at least 2"),
    (lambda: pairwise([0.5, math.nan], [0.1, 0.2]), "NaN"),
    (lambda: pairwise([[0.5, 0.4]], [0.1, 0.2]), "1-D"),
    (lambda: hedges_g([1.0, 2.0], [3.0]), "at least 2"),
    (lambda: compare_cells(_runs_frame(), by="reg.nam", value="average_success"), "no column"),
    (lambda: compare_cells(_runs_frame(), by="reg.name", value="average_success", baseline="sphere2"),
     "not a level"),
    (lambda: compare_cells(_runs_frame().iloc[:0], by="reg.name", value="average_success"), "empty"),
    (lambda: compare_cells(_runs_frame().assign(average_success=math.nan), by="reg.name", value="average_success"),
     "NaN"),
    (lambda: compare_cells(_runs_frame().assign(average_success="high"), by="reg.name", value="average_success"),
     "numeric"),
    (lambda: compare_cells(_runs_frame().assign(**{"reg.name": None}), by="reg.name", value="average_success"),
     "missing"),
    (lambda: continual_summary(_runs_frame(), by="reg.name"), "no column"),
])
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------------------
# Formatting


def test_format_numbers():
    assert format_number(0.51234) == "0.512"
    assert format_number(12.345) == "12.3"
    assert format_number(1234.6) == "1235"
    assert format_number(0.0123456) == "0.0123"
    assert format_number(0.0001234) == "1.23e-04"
    assert format_number(0.0) == "0"
    assert format_number(-0.0004) == "-4.00e-04"
    assert format_number(7) == "7"
    assert format_number(math.nan) == MISSING and format_number(None) == MISSING
    assert format_number(-math.inf) == "-inf"
    assert format_p(0.0004) == "<0.001" and format_p(0.02564) == "0.026" and format_p(0.5) == "0.50"
    assert format_interval(0.5123, 0.4, 0.61) == "0.512 [0.400, 0.610]"
    assert format_interval(0.5123, math.nan, math.nan) == "0.512"
    assert format_mean_std(0.5123, 0.0312) == "0.512 ± 0.031"
    assert format_mean_std(-0.00001, 0.2) == "0.000 ± 0.200"


def test_markdown_and_text_tables():
    frame = pd.DataFrame({"n": [3, 12], "mean": [0.51234, 12.3456], "note": ["", "one run"]},
                         index=pd.Index(["a", "bb"], name="cell"))
    assert to_markdown(frame) == (
        "| cell | n | mean | note |\n"
        "|---|---:|---:|---|\n"
        "| a | 3 | 0.512 |  |\n"
        "| bb | 12 | 12.3 | one run |")
    assert to_text(frame) == (
        "cell   n   mean  note\n"
        "----  --  -----  -------\n"
        "a      3  0.512\n"
        "bb    12   12.3  one run")
    assert to_markdown(pd.DataFrame({"a|b": ["x|y"]})) == "| a\\|b |\n|---|\n| x\\|y |"


def test_formatted_comparison_and_summary():
    table = compare_cells(_runs_frame(), by="reg.name", value="average_success", baseline="none", reps=100)
    shown = format_comparison(table)
    assert shown.loc["none", "difference vs none [95% CI]"] == "baseline"
    assert shown.loc["sphere", "Welch p"] == format_p(table.loc["sphere", "welch_p"])
    assert shown.loc["sphere", "IQM [95% CI]"].count("[") == 1
    text = to_markdown(shown)
    assert text.splitlines()[0].startswith("| reg.name | n | mean ± std |") and len(text.splitlines()) == 5
    summary = format_summary(summarize({"m": M, "one": M[:1]}, reps=100))
    assert summary.loc["one", "note"] == ONE_RUN_NOTE and summary.loc["one", "IQM [95% CI]"] == "0.500"
