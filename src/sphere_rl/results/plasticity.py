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

__all__ = ["SPECTRAL", "probe_frame", "probe_correlations"]

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
    frame = probe_frame(results, probe, against)
    runs = frame["run"].unique() if len(frame) else np.array([])
    by_run = {r: frame[frame["run"] == r] for r in runs}
    rng = np.random.default_rng(seed)
    draws = [rng.choice(runs, size=len(runs), replace=True) for _ in range(reps)] if len(runs) >= 2 else []
    out = []
    for metric in against:
        x, y = frame[probe].to_numpy(float), frame[metric].to_numpy(float)
        keep = np.isfinite(x) & np.isfinite(y)
        rho = _spearman(x, y)
        p = float(scipy.stats.spearmanr(x[keep], y[keep]).pvalue) if np.isfinite(rho) else math.nan
        lo = hi = math.nan
        if draws and np.isfinite(rho):
            boot = []
            for draw in draws:
                sample = pd.concat([by_run[r] for r in draw])
                boot.append(_spearman(sample[probe].to_numpy(float), sample[metric].to_numpy(float)))
            boot = np.asarray(boot)
            boot = boot[np.isfinite(boot)]
            if boot.size:
                alpha = (1.0 - confidence) / 2.0
                lo, hi = (float(v) for v in np.quantile(boot, [alpha, 1.0 - alpha]))
        out.append({"metric": metric, "n_rows": int(keep.sum()), "n_runs": int(frame.loc[keep, "run"].nunique()),
                    "spearman": rho, "lo": lo, "hi": hi, "p_rows": p})
    return pd.DataFrame(out, columns=["metric", "n_rows", "n_runs", "spearman", "lo", "hi", "p_rows"])
