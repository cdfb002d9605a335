"""Statistics of sweep results: aggregates with bootstrap CIs, pairwise tests, effect sizes, tables.

Conventions
-----------
* A *cell* is one combination a sweep compares (method, architecture, protocol); its *runs* are
  its seeds.
* A `ScoreMatrix` holds one cell's scores as a 2-D float array `(n_runs, n_tasks)`: one row per
  run, one column per task (e.g. final success in [0, 1]). All cells of one comparison share their
  tasks, so they have the same number of columns.
* A *per-run* array is 1-D: one aggregate per run (e.g. each seed's average success).

Few-seed RL (Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice", NeurIPS) asks
for interval estimates rather than point estimates, robust aggregates (IQM) and probabilities of
improvement; rliable implements them and this module calls it. Pairwise tests and effect sizes come
from scipy. `docs/statistics.md` gives every formula and when to use which.

Randomness: rliable 1.2 draws its bootstrap resamples with `np.random.choice`, i.e. from NumPy's
*global* RNG, whatever `random_state` it is given. Every function here that calls rliable seeds the
global RNG with its `seed` for the duration of the call and puts the previous global state back
afterwards (`_numpy_global_seed`), so results are reproducible and callers' global RNG streams are
untouched. This is not thread-safe: do not run these functions in several threads of one process.
Our own bootstraps (mean differences, `continual_summary`) use `scipy.stats.bootstrap` with a local
`np.random.default_rng(seed)`. Each cell is bootstrapped with the same `seed`, so a cell's interval
does not depend on which other cells are in the table.

One run per cell gives no interval: the CI columns are NaN and `note` says `ONE_RUN_NOTE`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.special
import scipy.stats
from rliable import library as rly
from rliable import metrics as rly_metrics

ScoreMatrix = npt.NDArray[np.float64]
"""One cell's scores, shape `(n_runs, n_tasks)`: row = run (seed), column = task."""

ONE_RUN_NOTE = "one run: indicative only"
"""The `note` of a row computed from a single run: a point estimate without an interval."""

SUMMARY_METRICS = ("mean", "median", "iqm", "optimality_gap")
"""The aggregates of `summarize`, each with `_lo` / `_hi` bootstrap bounds."""

CONTINUAL_METRICS = ("average_performance", "forgetting", "forward_transfer")
"""Continual World metrics of a CRL run (`protocols/continual_metrics.py`)."""

MISSING = "—"
"""How the formatters print a missing number (NaN / None)."""


# ---------------------------------------------------------------------------------------------------
# Input checks


def _check_options(reps: int, confidence: float, seed: int) -> None:
    if isinstance(reps, bool) or not isinstance(reps, (int, np.integer)) or reps < 1:
        raise ValueError(f"reps must be a positive integer, got {reps!r}")
    if not isinstance(confidence, (int, float, np.floating)) or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be a number strictly between 0 and 1, got {confidence!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")


def as_score_matrix(scores: npt.ArrayLike, *, name: str = "scores") -> ScoreMatrix:
    """One cell's scores as a float `(n_runs, n_tasks)` array; ValueError naming `name` if unusable.

    Rejects non-numbers, arrays that are not 2-D, empty cells and NaN / infinite scores.
    """
    try:
        matrix = np.array(scores, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: scores must be numbers ({error})") from None
    if matrix.ndim != 2:
        hint = "; for one task per run pass scores[:, None]" if matrix.ndim == 1 else ""
        raise ValueError(f"{name}: expected a 2-D (n_runs, n_tasks) array, got shape {matrix.shape}{hint}")
    if matrix.size == 0:
        raise ValueError(f"{name}: empty cell, shape {matrix.shape} (need at least one run and one task)")
    bad = ~np.isfinite(matrix)
    if bad.any():
        runs = sorted({int(i) for i in np.nonzero(bad)[0]})
        raise ValueError(f"{name}: {int(bad.sum())} NaN or infinite score(s) in run(s) {runs}; "
                         "drop or fix those runs first")
    return matrix


def _as_runs(values: npt.ArrayLike, *, name: str, min_runs: int) -> npt.NDArray[np.float64]:
    """A 1-D finite per-run array with at least `min_runs` entries."""
    try:
        runs = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: values must be numbers ({error})") from None
    if runs.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of per-run values, got shape {runs.shape}")
    if runs.size == 0:
        raise ValueError(f"{name}: empty, no runs")
    if not np.isfinite(runs).all():
        raise ValueError(f"{name}: {int((~np.isfinite(runs)).sum())} NaN or infinite value(s); drop those runs first")
    if runs.size < min_runs:
        raise ValueError(f"{name}: {runs.size} run(s), this needs at least {min_runs}")
    return runs


def _score_dict(scores: Mapping[str, npt.ArrayLike]) -> dict[str, ScoreMatrix]:
    """Checked score matrices of every cell, all with the same number of tasks."""
    if not scores:
        raise ValueError("no cells: the score dict is empty")
    matrices = {cell: as_score_matrix(m, name=f"cell {cell!r}") for cell, m in scores.items()}
    tasks = {cell: m.shape[1] for cell, m in matrices.items()}
    if len(set(tasks.values())) > 1:
        raise ValueError(f"mismatched task counts across cells {tasks}: every cell must be scored on the same tasks")
    return matrices


@contextlib.contextmanager
def _numpy_global_seed(seed: int) -> Iterator[None]:
    """Seeds NumPy's global RNG for the block (rliable resamples from it), then restores its state."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _interval_estimates(data: ScoreMatrix | list[ScoreMatrix], func: Callable[..., np.ndarray], *,
                        reps: int, confidence: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """rliable's point estimates `(k,)` and percentile CIs `(2, k)` of `func` for one cell.

    A matrix is resampled by stratified bootstrap (runs resampled within each task); a list of
    matrices (e.g. `[x, y]` for a probability of improvement) has each matrix resampled on its own.
    """
    with _numpy_global_seed(seed):
        points, intervals = rly.get_interval_estimates(
            {"cell": data}, func, method="percentile", reps=reps, confidence_interval_size=confidence)
    return np.atleast_1d(np.asarray(points["cell"], dtype=np.float64)), np.asarray(intervals["cell"], dtype=np.float64)


def _bootstrap_interval(samples: tuple[np.ndarray, ...], statistic: Callable[..., np.ndarray], *,
                        reps: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI of `statistic` (vectorised, takes `axis`), each sample resampled on its own."""
    result = scipy.stats.bootstrap(samples, statistic, n_resamples=reps, confidence_level=confidence,
                                   method="percentile", vectorized=True, paired=False,
                                   rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def mean_ci(values: npt.ArrayLike, *, reps: int = 2000, confidence: float = 0.95,
            seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi) of the finite values: the percentile-bootstrap CI of their mean
    (`scipy.stats.bootstrap`, seeded). One value: (value, NaN, NaN); none: all NaN; all equal: the value
    as both bounds."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    if x.size == 1:
        return float(x[0]), math.nan, math.nan
    if np.all(x == x[0]):
        return float(x[0]), float(x[0]), float(x[0])
    lo, hi = _bootstrap_interval((x,), _mean, reps=reps, confidence=confidence, seed=seed)
    return float(np.mean(x)), lo, hi


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


# ---------------------------------------------------------------------------------------------------
# Aggregates of score matrices (rliable)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate and its confidence interval."""

    value: float
    """The point estimate on the data as given."""
    lo: float
    """Lower bound of the interval; NaN when no interval can be given (one run)."""
    hi: float
    """Upper bound of the interval; NaN when no interval can be given (one run)."""
    confidence: float
    """Coverage of the interval, e.g. 0.95."""


def iqm(scores: npt.ArrayLike) -> float:
    """Interquartile mean of all run×task scores: the mean of the middle 50 % (rliable `aggregate_iqm`).

    It is `scipy.stats.trim_mean(scores, 0.25, axis=None)`: `floor(0.25 n)` values are cut at each
    end of the n sorted scores, so when n is not a multiple of 4 slightly more than half is kept.
    """
    return float(rly_metrics.aggregate_iqm(as_score_matrix(scores)))


def _summary_aggregates(gamma: float) -> Callable[[np.ndarray], np.ndarray]:
    def aggregates(scores: np.ndarray) -> np.ndarray:
        return np.array([
            rly_metrics.aggregate_mean(scores),
            rly_metrics.aggregate_median(scores),
            rly_metrics.aggregate_iqm(scores),
            rly_metrics.aggregate_optimality_gap(scores, gamma),
        ])
    return aggregates


def summarize(scores: Mapping[str, npt.ArrayLike], *, reps: int = 2000, confidence: float = 0.95,
              seed: int = 0, gamma: float = 1.0) -> pd.DataFrame:
    """One row per cell: sizes, aggregates and their stratified-bootstrap CIs (rliable).

    Args:
      scores: cell name -> `ScoreMatrix` `(n_runs, n_tasks)`; every cell has the same tasks.
      reps: bootstrap replications.
      confidence: coverage of the intervals.
      seed: seeds rliable's resampling (the same for every cell); the global RNG is restored after.
      gamma: optimality-gap threshold, the score counted as "optimal" (1 for success rates).

    Returns:
      A frame indexed by `cell` (in the dict's order) with columns `n_runs`, `n_tasks`; `mean`
      (over runs and tasks), `std` (over runs of each run's task-mean, ddof=1; NaN for one run);
      `median` (over tasks of the per-task mean over runs, rliable's definition); `iqm` (over all
      run×task scores); `optimality_gap` (`gamma - mean(min(score, gamma))`); each aggregate with
      `_lo` / `_hi` percentile bounds from a stratified bootstrap (runs resampled within each task);
      and `note` (`ONE_RUN_NOTE` for a single run, whose bounds are NaN, else empty).
    """
    _check_options(reps, confidence, seed)
    matrices = _score_dict(scores)
    aggregates = _summary_aggregates(float(gamma))
    rows = []
    for cell, matrix in matrices.items():
        n_runs, n_tasks = matrix.shape
        if n_runs >= 2:
            points, intervals = _interval_estimates(matrix, aggregates, reps=reps, confidence=confidence, seed=seed)
        else:
            points, intervals = aggregates(matrix), np.full((2, len(SUMMARY_METRICS)), math.nan)
        per_run = matrix.mean(axis=1)
        row: dict[str, Any] = {"cell": cell, "n_runs": n_runs, "n_tasks": n_tasks,
                               "std": float(np.std(per_run, ddof=1)) if n_runs >= 2 else math.nan}
        for i, name in enumerate(SUMMARY_METRICS):
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = float(points[i]), intervals[0, i], intervals[1, i]
        row["note"] = ONE_RUN_NOTE if n_runs == 1 else ""
        rows.append(row)
    columns = ["cell", "n_runs", "n_tasks", "mean", "mean_lo", "mean_hi", "std"]
    for name in SUMMARY_METRICS[1:]:
        columns += [name, f"{name}_lo", f"{name}_hi"]
    return pd.DataFrame(rows, columns=[*columns, "note"]).set_index("cell")


def _improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array([rly_metrics.probability_of_improvement(x, y)])


def probability_of_improvement(x: npt.ArrayLike, y: npt.ArrayLike, *, reps: int = 2000,
                               confidence: float = 0.95, seed: int = 0) -> Estimate:
    """P(X > Y): probability that a run of X beats a run of Y on a task, averaged over tasks (rliable).

    Per task it is the Mann–Whitney `U / (n_x n_y)` = P(X > Y) + 0.5 P(X = Y); the interval
    resamples the runs of `x` and of `y` independently, within each task. `x` and `y` are score
    matrices with the same tasks (different run counts are fine). With one run in either, the
    interval is NaN. Costs `reps × n_tasks` Mann–Whitney calls (~0.5 ms each).
    """
    _check_options(reps, confidence, seed)
    xm, ym = as_score_matrix(x, name="x"), as_score_matrix(y, name="y")
    if xm.shape[1] != ym.shape[1]:
        raise ValueError(f"mismatched task counts: x has {xm.shape[1]} task(s), y has {ym.shape[1]}")
    if min(xm.shape[0], ym.shape[0]) < 2:
        return Estimate(float(_improvement(xm, ym)[0]), math.nan, math.nan, confidence)
    points, intervals = _interval_estimates([xm, ym], _improvement, reps=reps, confidence=confidence, seed=seed)
    return Estimate(float(points[0]), float(intervals[0, 0]), float(intervals[1, 0]), confidence)


def performance_profile(scores: Mapping[str, npt.ArrayLike], taus: npt.ArrayLike, *, per_task_mean: bool = False,
                        reps: int = 2000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Score distributions: per cell and threshold tau, the fraction of scores above tau, with CIs.

    With `per_task_mean=False` (rliable's default, lower variance) the fraction is over all run×task
    scores; with `True`, over tasks of the per-task mean over runs. Intervals come from rliable's
    `create_performance_profile` (stratified bootstrap); NaN for a cell with one run.

    Returns a long frame with columns `cell`, `tau`, `fraction`, `lo`, `hi` (cells in the dict's
    order, taus in the given order).
    """
    _check_options(reps, confidence, seed)
    matrices = _score_dict(scores)
    try:
        tau_values = np.array(taus, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"taus must be numbers ({error})") from None
    if tau_values.ndim != 1 or tau_values.size == 0 or not np.isfinite(tau_values).all():
        raise ValueError(f"taus must be a non-empty 1-D array of finite thresholds, got {tau_values!r}")
    profile_of = rly.average_score_distributions if per_task_mean else rly.score_distributions
    frames = []
    for cell, matrix in matrices.items():
        if matrix.shape[0] >= 2:
            with _numpy_global_seed(seed):
                profiles, intervals = rly.create_performance_profile(
                    {"cell": matrix}, tau_values, use_score_distribution=not per_task_mean,
                    reps=reps, confidence_interval_size=confidence)
            fraction, (lo, hi) = profiles["cell"], intervals["cell"]
        else:
            fraction = profile_of(matrix, tau_values)
            lo = hi = np.full(tau_values.size, math.nan)
        frames.append(pd.DataFrame({"cell": cell, "tau": tau_values, "fraction": np.asarray(fraction, float),
                                    "lo": np.asarray(lo, float), "hi": np.asarray(hi, float)}))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------------
# Two groups of per-run values (scipy)


def cohens_d(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Cohen's d: `(mean(x) - mean(y)) / s_pooled`, `s_pooled² = ((n_x-1) s_x² + (n_y-1) s_y²) / (n_x+n_y-2)`.

    Variances with ddof=1; needs two runs in each group. When both groups are constant, d is NaN
    for equal means and ±inf otherwise.
    """
    xs, ys = _as_runs(x, name="x", min_runs=2), _as_runs(y, name="y", min_runs=2)
    return _cohens_d(xs, ys)


def _cohens_d(x: np.ndarray, y: np.ndarray) -> float:
    nx, ny = x.size, y.size
    pooled = math.sqrt(((nx - 1) * np.var(x, ddof=1) + (ny - 1) * np.var(y, ddof=1)) / (nx + ny - 2))
    difference = float(np.mean(x) - np.mean(y))
    if pooled == 0.0:
        return math.nan if difference == 0.0 else math.copysign(math.inf, difference)
    return difference / pooled


def hedges_correction(dof: int) -> float:
    """Hedges' exact small-sample factor `J(m) = Γ(m/2) / (sqrt(m/2) Γ((m-1)/2))`, `m = n_x + n_y - 2`.

    J < 1 and tends to 1; the common approximation is `1 - 3 / (4m - 1)`.
    """
    if dof < 2:
        raise ValueError(f"Hedges' correction needs n_x + n_y - 2 >= 2, got {dof}")
    return math.exp(scipy.special.gammaln(dof / 2) - scipy.special.gammaln((dof - 1) / 2)) / math.sqrt(dof / 2)


def hedges_g(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Hedges' g: Cohen's d times `hedges_correction(n_x + n_y - 2)`, unbiased for small groups."""
    xs, ys = _as_runs(x, name="x", min_runs=2), _as_runs(y, name="y", min_runs=2)
    return _cohens_d(xs, ys) * hedges_correction(xs.size + ys.size - 2)


def probability_of_superiority(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Common-language effect size A = P(X > Y) + 0.5 P(X = Y) over all pairs, = U_x / (n_x n_y)."""
    xs, ys = _as_runs(x, name="x", min_runs=1), _as_runs(y, name="y", min_runs=1)
    return float(scipy.stats.mannwhitneyu(xs, ys, alternative="two-sided").statistic) / (xs.size * ys.size)


@dataclasses.dataclass(frozen=True)
class PairwiseResult:
    """Two groups of per-run values X and Y compared; every difference and effect is X minus Y."""

    n_x: int
    """Runs of X."""
    n_y: int
    """Runs of Y."""
    mean_x: float
    """Mean of X over runs."""
    mean_y: float
    """Mean of Y over runs."""
    difference: float
    """`mean_x - mean_y`."""
    difference_lo: float
    """Lower bound of the percentile-bootstrap CI of the difference (X and Y resampled independently)."""
    difference_hi: float
    """Upper bound of that CI."""
    confidence: float
    """Coverage of the difference CI, e.g. 0.95."""
    welch_t: float
    """Welch's t statistic (unequal variances; scipy `ttest_ind(equal_var=False)`)."""
    welch_dof: float
    """Welch–Satterthwaite degrees of freedom of that t."""
    welch_p: float
    """Two-sided p-value of Welch's t-test (means equal). scipy gives p = 0 when both groups are
    constant with different means, NaN when they are constant and equal."""
    mwu_u: float
    """Mann–Whitney U of X: number of pairs with x > y plus half the ties."""
    mwu_p: float
    """Two-sided Mann–Whitney p-value (scipy's `method="auto"`: exact when a group has <= 8 runs and
    there are no ties, else the normal approximation with tie correction)."""
    cohens_d: float
    """Cohen's d: difference over the pooled standard deviation (ddof=1)."""
    hedges_g: float
    """Hedges' g: d times the exact small-sample correction J(n_x + n_y - 2)."""
    prob_superiority: float
    """A = P(X > Y) + 0.5 P(X = Y) = `mwu_u / (n_x n_y)`; 0.5 = no effect."""
    rank_biserial: float
    """Rank-biserial correlation `2 A - 1` in [-1, 1]."""


def pairwise(x: npt.ArrayLike, y: npt.ArrayLike, *, reps: int = 2000, confidence: float = 0.95,
             seed: int = 0) -> PairwiseResult:
    """Compares two 1-D arrays of per-run values (each needs at least two runs, all finite).

    Welch's t-test and the two-sided Mann–Whitney U test (scipy), Cohen's d, Hedges' g, the
    probability of superiority and the rank-biserial correlation, and the mean difference with a
    percentile-bootstrap CI (`scipy.stats.bootstrap`, X and Y resampled independently, seeded).
    """
    _check_options(reps, confidence, seed)
    xs, ys = _as_runs(x, name="x", min_runs=2), _as_runs(y, name="y", min_runs=2)
    with warnings.catch_warnings():
        # Constant groups: scipy warns about precision loss and returns NaN / inf, which we keep.
        warnings.simplefilter("ignore", RuntimeWarning)
        welch = scipy.stats.ttest_ind(xs, ys, equal_var=False)
    mwu = scipy.stats.mannwhitneyu(xs, ys, alternative="two-sided")
    superiority = float(mwu.statistic) / (xs.size * ys.size)
    d = _cohens_d(xs, ys)
    lo, hi = _bootstrap_interval((xs, ys), _mean_difference, reps=reps, confidence=confidence, seed=seed)
    return PairwiseResult(
        n_x=int(xs.size), n_y=int(ys.size), mean_x=float(np.mean(xs)), mean_y=float(np.mean(ys)),
        difference=float(np.mean(xs) - np.mean(ys)), difference_lo=lo, difference_hi=hi, confidence=confidence,
        welch_t=float(welch.statistic), welch_dof=float(welch.df), welch_p=float(welch.pvalue),
        mwu_u=float(mwu.statistic), mwu_p=float(mwu.pvalue),
        cohens_d=d, hedges_g=d * hedges_correction(xs.size + ys.size - 2),
        prob_superiority=superiority, rank_biserial=2.0 * superiority - 1.0,
    )


# ---------------------------------------------------------------------------------------------------
# Tables of per-run frames


def _check_frame(per_run: pd.DataFrame, by: str, columns: Sequence[str]) -> None:
    if not isinstance(per_run, pd.DataFrame):
        raise ValueError(f"per_run must be a pandas DataFrame, got {type(per_run).__name__}")
    missing = [c for c in (by, *columns) if c not in per_run.columns]
    if missing:
        raise ValueError(f"per_run has no column(s) {missing} (columns: {list(per_run.columns)})")
    if per_run.empty:
        raise ValueError("per_run is empty: no runs")
    if per_run[by].isna().any():
        raise ValueError(f"column {by!r} is missing in {int(per_run[by].isna().sum())} run(s); "
                         "fill it (e.g. with 'none') before grouping")


def _numeric_column(per_run: pd.DataFrame, column: str) -> pd.Series:
    try:
        values = pd.to_numeric(per_run[column], errors="raise").astype(np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"column {column!r} must be numeric ({error})") from None
    if np.isinf(values).any():
        raise ValueError(f"column {column!r} has {int(np.isinf(values).sum())} infinite value(s)")
    return values


def _sorted_levels(levels: Sequence[Hashable]) -> list[Hashable]:
    try:
        return sorted(levels)  # type: ignore[type-var]
    except TypeError:  # mixed types: order by their text
        return sorted(levels, key=str)


def _groups(per_run: pd.DataFrame, by: str) -> dict[Hashable, pd.DataFrame]:
    """The runs of each level of `by`, levels in sorted order."""
    groups = dict(iter(per_run.groupby(by, sort=False, dropna=False)))
    return {level: groups[level] for level in _sorted_levels(list(groups))}


def _resolve_baseline(levels: Sequence[Hashable], baseline: Any, by: str) -> Hashable:
    if baseline is None:
        return levels[0]
    for level in levels:
        if level == baseline:
            return level
    for level in levels:  # a level named on the command line arrives as text
        if str(level) == str(baseline):
            return level
    raise ValueError(f"baseline {baseline!r} is not a level of {by!r} (levels: {list(levels)})")


def _iqm(scores: np.ndarray) -> np.ndarray:
    return np.array([rly_metrics.aggregate_iqm(scores)])


def _iqm_over_runs(runs: np.ndarray, *, reps: int, confidence: float, seed: int) -> Estimate:
    """IQM of per-run values with rliable's bootstrap over runs (one task); no interval for one run."""
    if runs.size < 2:
        return Estimate(float(_iqm(runs[:, None])[0]), math.nan, math.nan, confidence)
    points, intervals = _interval_estimates(runs[:, None], _iqm, reps=reps, confidence=confidence, seed=seed)
    return Estimate(float(points[0]), float(intervals[0, 0]), float(intervals[1, 0]), confidence)


def compare_cells(per_run: pd.DataFrame, *, by: str, value: str, baseline: Any = None, reps: int = 2000,
                  confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """The table `sphere compare` prints: every level of `by` against a baseline level, on `value`.

    Args:
      per_run: one row per run, with the cell column `by` (e.g. "reg.name") and the per-run value
        column `value` (e.g. "average_success"; higher is better, finite, no NaN).
      by: the column whose levels are compared.
      value: the per-run value compared.
      baseline: the level the others are compared with (matched by value, then by its text);
        default the first level in sorted order.
      reps, confidence, seed: bootstrap replications, CI coverage, seed (the same for every row).

    Returns:
      A frame indexed by the levels of `by` (baseline first, then the others sorted) with columns
      `baseline` (bool), `n`, `mean`, `std` (ddof=1), `iqm` with `iqm_lo` / `iqm_hi` (rliable
      bootstrap over runs), and against the baseline: `difference` (mean - baseline mean) with
      `difference_lo` / `difference_hi`, `welch_p`, `mwu_p`, `hedges_g` (see `pairwise`) and
      `p_improvement` = P(level > baseline) with `p_improvement_lo` / `p_improvement_hi`
      (`probability_of_improvement`). The baseline row has NaN there. A level or baseline with one
      run gets a difference and a P(improvement) point estimate only, explained in `note`.
      p-values are not corrected for comparing several levels. `attrs` holds `by`, `value`,
      `baseline` and `confidence` for `format_comparison`.
    """
    _check_options(reps, confidence, seed)
    _check_frame(per_run, by, [value])
    per_run = per_run.reset_index(drop=True)
    values = _numeric_column(per_run, value)
    if values.isna().any():
        bad = per_run.loc[values.isna(), by]
        raise ValueError(f"column {value!r} is NaN in {len(bad)} run(s) (levels {_sorted_levels(list(set(bad)))}); "
                         "drop those runs or fix them before comparing")
    groups = {level: values.loc[group.index].to_numpy() for level, group in _groups(per_run, by).items()}
    base = _resolve_baseline(list(groups), baseline, by)
    base_runs = groups[base]
    rows = []
    for level in [base, *(lv for lv in groups if lv != base)]:
        runs = groups[level]
        n = runs.size
        runs_iqm = _iqm_over_runs(runs, reps=reps, confidence=confidence, seed=seed)
        row: dict[str, Any] = {
            by: level, "baseline": bool(level == base), "n": n, "mean": float(np.mean(runs)),
            "std": float(np.std(runs, ddof=1)) if n >= 2 else math.nan,
            "iqm": runs_iqm.value, "iqm_lo": runs_iqm.lo, "iqm_hi": runs_iqm.hi,
        }
        for column in ("difference", "difference_lo", "difference_hi", "welch_p", "mwu_p", "hedges_g",
                       "p_improvement", "p_improvement_lo", "p_improvement_hi"):
            row[column] = math.nan
        notes = [ONE_RUN_NOTE] if n == 1 else []
        if level != base:
            improvement = probability_of_improvement(runs[:, None], base_runs[:, None], reps=reps,
                                                     confidence=confidence, seed=seed)
            row.update(p_improvement=improvement.value, p_improvement_lo=improvement.lo,
                       p_improvement_hi=improvement.hi)
            if n >= 2 and base_runs.size >= 2:
                result = pairwise(runs, base_runs, reps=reps, confidence=confidence, seed=seed)
                row.update(difference=result.difference, difference_lo=result.difference_lo,
                           difference_hi=result.difference_hi, welch_p=result.welch_p, mwu_p=result.mwu_p,
                           hedges_g=result.hedges_g)
            else:
                row["difference"] = float(np.mean(runs) - np.mean(base_runs))
                if base_runs.size == 1:
                    notes.append("baseline has one run: no test")
        row["note"] = "; ".join(notes)
        rows.append(row)
    table = pd.DataFrame(rows).set_index(by)
    table.attrs.update(by=by, value=value, baseline=base, confidence=confidence)
    return table


def continual_summary(per_run: pd.DataFrame, *, by: str, metrics: Sequence[str] = CONTINUAL_METRICS,
                      reps: int = 2000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per level of `by`: mean over runs of each Continual World metric with a bootstrap CI.

    NaN-aware: a run whose metric is NaN (e.g. forward transfer without a reference run) is left
    out of that metric only. The CI is a percentile bootstrap over the remaining runs
    (`scipy.stats.bootstrap`, seeded), NaN with fewer than two.

    Returns a frame indexed by the sorted levels of `by` with `n_runs` and, for each metric `m`,
    columns `m` (mean), `m_lo`, `m_hi` and `m_n` (runs with a value), and `note` (one run; a metric
    missing or from one run only).
    """
    _check_options(reps, confidence, seed)
    metrics = list(metrics)
    if not metrics:
        raise ValueError("no metrics to summarise")
    _check_frame(per_run, by, metrics)
    per_run = per_run.reset_index(drop=True)
    columns = {metric: _numeric_column(per_run, metric) for metric in metrics}
    rows = []
    for level, group in _groups(per_run, by).items():
        row: dict[str, Any] = {by: level, "n_runs": len(group)}
        notes = [ONE_RUN_NOTE] if len(group) == 1 else []
        for metric in metrics:
            runs = columns[metric].loc[group.index].to_numpy()
            runs = runs[~np.isnan(runs)]
            lo = hi = math.nan
            if runs.size >= 2:
                lo, hi = _bootstrap_interval((runs,), _mean, reps=reps, confidence=confidence, seed=seed)
            elif runs.size == 0:
                notes.append(f"{metric}: missing")
            elif len(group) > 1:
                notes.append(f"{metric}: one run")
            row.update({metric: float(np.mean(runs)) if runs.size else math.nan,
                        f"{metric}_lo": lo, f"{metric}_hi": hi, f"{metric}_n": int(runs.size)})
        row["note"] = "; ".join(notes)
        rows.append(row)
    return pd.DataFrame(rows).set_index(by)


# ---------------------------------------------------------------------------------------------------
# Plain-text formatting


def _is_missing(x: Any) -> bool:
    return x is None or (isinstance(x, (float, np.floating)) and math.isnan(x))


def _decimals(magnitude: float, digits: int) -> int:
    """Decimals that show `digits` significant digits of a number of this magnitude (0 to 6)."""
    if magnitude == 0.0 or not math.isfinite(magnitude):
        return 0
    return max(0, min(6, digits - 1 - math.floor(math.log10(magnitude))))


def _fixed(x: float, decimals: int) -> str:
    text = f"{x:.{decimals}f}"
    return text.lstrip("-") if float(text) == 0.0 else text  # no "-0.00"


def format_number(x: Any, digits: int = 3) -> str:
    """A number with `digits` significant digits, without exponent for 0.001 <= |x| < 1e6.

    Integers print whole, NaN / None as `MISSING`, infinities as `inf` / `-inf`.
    """
    if _is_missing(x):
        return MISSING
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    value = float(x)
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value != 0.0 and not 1e-3 <= abs(value) < 1e6:
        return f"{value:.{max(digits - 1, 0)}e}"
    return _fixed(value, _decimals(abs(value), digits))


def format_p(p: Any) -> str:
    """A p-value: two significant digits, `<0.001` below 0.001, `MISSING` for NaN."""
    if _is_missing(p):
        return MISSING
    p = float(p)
    return "<0.001" if p < 1e-3 else _fixed(p, _decimals(p, 2))


def _format_group(values: Sequence[float], digits: int) -> list[str]:
    """Numbers printed with one shared number of decimals, set by the largest (e.g. a mean and its CI)."""
    finite = [abs(float(v)) for v in values if not _is_missing(v) and math.isfinite(float(v))]
    largest = max(finite, default=0.0)
    if largest != 0.0 and not 1e-3 <= largest < 1e6:
        return [format_number(v, digits) for v in values]
    decimals = _decimals(largest, digits)
    return [MISSING if _is_missing(v) else format_number(v) if math.isinf(float(v)) else _fixed(float(v), decimals)
            for v in values]


def format_interval(value: Any, lo: Any, hi: Any, digits: int = 3) -> str:
    """`value [lo, hi]` with shared decimals; only `value` when the interval is missing."""
    text = _format_group([value, lo, hi], digits)
    return text[0] if _is_missing(lo) or _is_missing(hi) else f"{text[0]} [{text[1]}, {text[2]}]"


def format_mean_std(mean: Any, std: Any, digits: int = 3) -> str:
    """`mean ± std` with shared decimals; only the mean when `std` is missing."""
    text = _format_group([mean, std], digits)
    return text[0] if _is_missing(std) else f"{text[0]} ± {text[1]}"


def _ci_label(confidence: Any) -> str:
    return f"{100 * float(confidence):g}% CI" if isinstance(confidence, (int, float)) else "CI"


def format_comparison(table: pd.DataFrame, *, digits: int = 3) -> pd.DataFrame:
    """`compare_cells`'s table as display strings: one column per quantity, intervals in brackets."""
    label = _ci_label(table.attrs.get("confidence"))
    base = table.attrs.get("baseline")
    versus = f"vs {base}" if base is not None else "vs baseline"
    rows = []
    for _, row in table.iterrows():
        is_base = bool(row["baseline"])
        rows.append({
            "n": str(int(row["n"])),
            "mean ± std": format_mean_std(row["mean"], row["std"], digits),
            f"IQM [{label}]": format_interval(row["iqm"], row["iqm_lo"], row["iqm_hi"], digits),
            f"difference {versus} [{label}]": "baseline" if is_base else
            format_interval(row["difference"], row["difference_lo"], row["difference_hi"], digits),
            "Welch p": "" if is_base else format_p(row["welch_p"]),
            "MWU p": "" if is_base else format_p(row["mwu_p"]),
            "Hedges g": "" if is_base else format_number(row["hedges_g"], digits),
            f"P(> baseline) [{label}]": "" if is_base else
            format_interval(row["p_improvement"], row["p_improvement_lo"], row["p_improvement_hi"], digits),
            "note": row["note"],
        })
    return pd.DataFrame(rows, index=table.index)


def format_summary(summary: pd.DataFrame, *, digits: int = 3, confidence: float = 0.95) -> pd.DataFrame:
    """`summarize`'s table as display strings: runs, tasks, mean ± std and each aggregate with its CI."""
    label = _ci_label(confidence)
    rows = []
    for _, row in summary.iterrows():
        shown = {"runs": str(int(row["n_runs"])), "tasks": str(int(row["n_tasks"])),
                 "mean ± std (over runs)": format_mean_std(row["mean"], row["std"], digits)}
        titles = {"mean": "mean", "median": "median", "iqm": "IQM", "optimality_gap": "optimality gap"}
        for name, title in titles.items():
            shown[f"{title} [{label}]"] = format_interval(row[name], row[f"{name}_lo"], row[f"{name}_hi"], digits)
        shown["note"] = row["note"]
        rows.append(shown)
    return pd.DataFrame(rows, index=summary.index)


def format_continual(summary: pd.DataFrame, *, metrics: Sequence[str] = CONTINUAL_METRICS, digits: int = 3,
                     confidence: float = 0.95) -> pd.DataFrame:
    """`continual_summary`'s table as display strings: each metric as `mean [lo, hi]`, plus `(n=k)`
    when only k of the level's runs have a value."""
    label = _ci_label(confidence)
    rows = []
    for _, row in summary.iterrows():
        shown = {"runs": str(int(row["n_runs"]))}
        for metric in metrics:
            text = format_interval(row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"], digits)
            if int(row[f"{metric}_n"]) < int(row["n_runs"]):
                text += f" (n={int(row[f'{metric}_n'])})"
            shown[f"{metric.replace('_', ' ')} [{label}]"] = text
        shown["note"] = row["note"]
        rows.append(shown)
    return pd.DataFrame(rows, index=summary.index)


def _cells(df: pd.DataFrame, digits: int) -> tuple[list[str], list[list[str]], list[bool]]:
    """Header, text rows and right-alignment flags; the index is the first column unless it is a plain range."""
    show_index = not (isinstance(df.index, pd.RangeIndex) and df.index.name is None)
    header = ([str(df.index.name or "")] if show_index else []) + [str(c) for c in df.columns]
    numeric = ([pd.api.types.is_numeric_dtype(df.index.dtype)] if show_index else []) + [
        pd.api.types.is_numeric_dtype(df[c].dtype) and not pd.api.types.is_bool_dtype(df[c].dtype) for c in df.columns]
    rows = []
    for index, row in zip(df.index, df.itertuples(index=False, name=None)):
        values = ([index] if show_index else []) + list(row)
        rows.append([v if isinstance(v, str) else format_number(v, digits) for v in values])
    return header, rows, numeric


def to_markdown(df: pd.DataFrame, *, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table of `df`: floats with `digits` significant digits, numbers right-aligned."""
    header, rows, numeric = _cells(df, digits)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join("---:" if right else "---" for right in numeric) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def to_text(df: pd.DataFrame, *, digits: int = 3) -> str:
    """`df` as an aligned plain-text table (columns two spaces apart, numbers right-aligned)."""
    header, rows, numeric = _cells(df, digits)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if right else c.ljust(w) for c, w, right in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])
