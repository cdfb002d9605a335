"""Does a spectral number track how fast a network can still learn? Rank correlations of a direct
plasticity probe with the spectral diagnostics, across checkpoints, methods and seeds.

The probe (default `fit/auc`, the target-fitting probe: lower = learns faster) and the spectral
metrics are read from the diagnostics rows where the probe was measured (initialisation and task
ends). Rows of one run are not independent, so the confidence interval of Spearman's ρ comes from
a bootstrap that resamples whole runs (a cluster bootstrap), and the p-value of scipy's
`spearmanr` over all rows (which treats rows as independent) is given only as a reference.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.stats

from sphere_rl.results.table import Results

__all__ = ["SPECTRAL", "DEFICIT_AGAINST", "probe_frame", "probe_correlations", "clustered_spearman", "deficit_frame",
           "deficit_correlations", "within_groups"]

SPECTRAL: tuple[str, ...] = ("ntk/effective_rank", "proxy/effective_rank", "ntk/eig_min", "ntk/condition")
"""r_e(K), r_e(A), K's smallest non-zero eigenvalue and its condition number."""


def probe_frame(results: Results, probe: str = "fit/auc", against: Sequence[str] = SPECTRAL) -> pd.DataFrame:
    """One row per (run, env step) at which `probe` was measured, with `probe` and every metric of
    `against` as columns (NaN where one is missing)."""
    rows = results.select("diagnostics", [probe, *against])
    if rows.empty:
        return pd.DataFrame(columns=["run", "env_step", probe, *against])
    wide = rows.pivot_table(index=["run", "env_step"], columns="metric", values="value", aggfunc="first", observed=True)
    wide = wide.reset_index()
    if probe not in wide.columns:
        return pd.DataFrame(columns=["run", "env_step", probe, *against])
    wide = wide[wide[probe].notna()]
    for metric in against:
        if metric not in wide.columns:
            wide[metric] = np.nan
    return wide[["run", "env_step", probe, *against]].reset_index(drop=True)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.all(x[keep] == x[keep][0]) or np.all(y[keep] == y[keep][0]):
        return math.nan
    return float(scipy.stats.spearmanr(x[keep], y[keep]).statistic)


def probe_correlations(results: Results, probe: str = "fit/auc", against: Sequence[str] = SPECTRAL, *,
                       reps: int = 2000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Spearman's ρ of `probe` with each metric of `against` over every (run, env step) where the probe
    was measured; a percentile CI from resampling runs with replacement; scipy's row-level p-value.

    Returns one row per metric: `metric`, `n_rows`, `n_runs`, `spearman`, `lo`, `hi`, `p_rows`."""
    return clustered_spearman(probe_frame(results, probe, against), probe, against, reps=reps,
                              confidence=confidence, seed=seed)


def clustered_spearman(frame: pd.DataFrame, target: str, against: Sequence[str], *, reps: int = 2000,
                       confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Spearman's ρ of column `target` of `frame` with each column of `against`, over its rows; the CI
    resamples the values of its `run` column with replacement (rows of one run are not independent)."""
    runs = frame["run"].unique() if len(frame) else np.array([])
    by_run = {r: frame[frame["run"] == r] for r in runs}
    rng = np.random.default_rng(seed)
    draws = [rng.choice(runs, size=len(runs), replace=True) for _ in range(reps)] if len(runs) >= 2 else []
    out = []
    for metric in against:
        x, y = frame[target].to_numpy(float), frame[metric].to_numpy(float)
        keep = np.isfinite(x) & np.isfinite(y)
        rho = _spearman(x, y)
        p = float(scipy.stats.spearmanr(x[keep], y[keep]).pvalue) if np.isfinite(rho) else math.nan
        lo = hi = math.nan
        if draws and np.isfinite(rho):
            boot = []
            for draw in draws:
                sample = pd.concat([by_run[r] for r in draw])
                boot.append(_spearman(sample[target].to_numpy(float), sample[metric].to_numpy(float)))
            boot = np.asarray(boot)
            boot = boot[np.isfinite(boot)]
            if boot.size:
                alpha = (1.0 - confidence) / 2.0
                lo, hi = (float(v) for v in np.quantile(boot, [alpha, 1.0 - alpha]))
        out.append({"metric": metric, "n_rows": int(keep.sum()), "n_runs": int(frame.loc[keep, "run"].nunique()),
                    "spearman": rho, "lo": lo, "hi": hi, "p_rows": p})
    return pd.DataFrame(out, columns=["metric", "n_rows", "n_runs", "spearman", "lo", "hi", "p_rows"])


DEFICIT_AGAINST: tuple[str, ...] = (*SPECTRAL, "dormant_ratio", "feature_stable_rank", "weight_norm", "grad_norm",
                                    "policy_entropy", "fit/auc")
"""What `deficit_frame` pairs with the next task's deficit by default: the spectral numbers and the usual
plasticity metrics (dead units, feature rank, weight growth, gradient size, policy entropy, the
target-fitting probe)."""


def deficit_frame(results: Results, against: Sequence[str] = DEFICIT_AGAINST) -> pd.DataFrame:
    """Does the state of a CRL agent at the end of task t-1 predict how badly it learns task t?

    One row per (CRL run, task t >= 1): `deficit` = the mean final success on task t of the RL runs of the
    same cell (same config but the protocol and seed: learning task t from scratch) minus this run's final
    success on task t, beside every metric of `against` at the run's task end t-1. Subtracting the RL
    mean removes how hard task t is, so what is left is the cost of having trained on the earlier tasks."""
    runs = results.runs[results.runs["complete"]]
    if "run.protocol" not in runs.columns:
        return pd.DataFrame(columns=["run", "task_index", "deficit", *against])
    cells = [c for c in results.cell_columns if c != "run.protocol"]
    success = results.select("summary", "final_success").dropna(subset=["task_index"])
    success = success[success["run"].isin(runs["run"])][["run", "task_index", "value"]]
    info = runs.set_index("run")[[*cells, "run.protocol"]]
    success = success.join(info, on="run")
    cell_key = (lambda frame: frame[cells].astype(str).agg("|".join, axis=1)) if cells else (lambda frame: pd.Series("", index=frame.index))
    success["cell"] = cell_key(success)
    rl = success[success["run.protocol"] == "rl"].groupby(["cell", "task_index"])["value"].mean().rename("rl_mean")
    crl = success[success["run.protocol"] == "crl"].join(rl, on=["cell", "task_index"])
    crl = crl[(crl["task_index"] >= 1) & crl["rl_mean"].notna()].copy()
    crl["deficit"] = crl["rl_mean"] - crl["value"]
    diag = results.select("diagnostics", list(against))
    diag = diag[diag["task_end"].astype("string").str.lower().isin(["true", "1"])]
    wide = diag.pivot_table(index=["run", "task_index"], columns="metric", values="value", aggfunc="last", observed=True)
    wide = wide.reset_index()
    wide["task_index"] = wide["task_index"].astype(int) + 1  # the end of task t-1 goes with task t
    out = crl[["run", "task_index", "deficit"]].copy()
    out["task_index"] = out["task_index"].astype(int)
    out = out.merge(wide, on=["run", "task_index"], how="left")
    for metric in against:
        if metric not in out.columns:
            out[metric] = np.nan
    return out[["run", "task_index", "deficit", *against]].reset_index(drop=True)


def within_groups(frame: pd.DataFrame, by: str, columns: Sequence[str]) -> pd.DataFrame:
    """`frame` with each of `columns` replaced by its centred rank within each value of `by` (rank / count
    - mean, NaN kept): what is left of a column once the groups' levels are removed. A Spearman ρ of these
    is a correlation *within* groups, e.g. within one task index, where trends along the sequence that
    both columns follow cannot make it."""
    out = frame.copy()
    for column in columns:
        ranks = frame.groupby(by)[column].rank(pct=True)
        out[column] = ranks - ranks.groupby(frame[by]).transform("mean")
    return out


def deficit_correlations(results: Results, against: Sequence[str] = DEFICIT_AGAINST, *, reps: int = 2000,
                         confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Spearman's ρ of the next task's deficit (:func:`deficit_frame`) with each metric at the previous task
    end, with a cluster-bootstrap CI over runs: over all (run, task) rows (`spearman`, `lo`, `hi`) and
    within task indices (`within`, `within_lo`, `within_hi`, :func:`within_groups`), since the deficit
    and most metrics drift along the sequence. A positive ρ: the larger the metric, the worse the agent
    learns the next task."""
    frame = deficit_frame(results, against)
    pooled = clustered_spearman(frame, "deficit", against, reps=reps, confidence=confidence, seed=seed)
    within = clustered_spearman(within_groups(frame, "task_index", ["deficit", *against]), "deficit", against,
                                reps=reps, confidence=confidence, seed=seed)
    pooled["within"], pooled["within_lo"], pooled["within_hi"] = within["spearman"], within["lo"], within["hi"]
    return pooled
