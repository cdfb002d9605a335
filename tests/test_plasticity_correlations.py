"""Rank correlations of the plasticity probe with spectral metrics (results.plasticity) against scipy
and a hand-written cluster bootstrap on a synthetic long table."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from sphere_rl.results.plasticity import probe_correlations, probe_frame
from sphere_rl.results.table import Results


def _results(rng):
    rows = []
    for r in range(6):
        for step in (0, 100, 200, 300):
            rank = rng.uniform(5, 15)
            rows += [
                {"run": f"r{r}", "source": "diagnostics", "env_step": step, "metric": "fit/auc",
                 "value": 1.0 / rank + rng.normal(0, 0.01)},
                {"run": f"r{r}", "source": "diagnostics", "env_step": step, "metric": "ntk/effective_rank", "value": rank},
                {"run": f"r{r}", "source": "diagnostics", "env_step": step, "metric": "ntk/condition",
                 "value": rng.uniform(1, 100)},
            ]
        # a diagnostics row without the probe (between task ends): not used
        rows.append({"run": f"r{r}", "source": "diagnostics", "env_step": 50, "metric": "ntk/effective_rank", "value": 99.0})
    long = pd.DataFrame(rows)
    runs = pd.DataFrame({"run": [f"r{r}" for r in range(6)], "complete": True})
    return Results(runs=runs, long=long, constant_config={}, root=Path("."))


def test_spearman_and_cluster_bootstrap_match_a_direct_computation():
    results = _results(np.random.default_rng(0))
    frame = probe_frame(results, against=("ntk/effective_rank", "ntk/condition"))
    assert len(frame) == 24 and 50 not in set(frame["env_step"])
    table = probe_correlations(results, against=("ntk/effective_rank", "ntk/condition"), reps=300, seed=1)
    row = table.set_index("metric").loc["ntk/effective_rank"]
    expected = scipy.stats.spearmanr(frame["fit/auc"], frame["ntk/effective_rank"])
    assert row["spearman"] == pytest.approx(expected.statistic) and row["spearman"] < -0.9
    assert row["p_rows"] == pytest.approx(expected.pvalue)
    assert row["n_rows"] == 24 and row["n_runs"] == 6
    # the same cluster bootstrap by hand: resample runs, recompute rho, percentile interval
    rng = np.random.default_rng(1)
    runs = frame["run"].unique()
    draws = [rng.choice(runs, size=len(runs), replace=True) for _ in range(300)]
    boot = [scipy.stats.spearmanr(pd.concat([frame[frame["run"] == r] for r in d])[["fit/auc", "ntk/effective_rank"]]).statistic
            for d in draws]
    assert (row["lo"], row["hi"]) == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])))
    cond = table.set_index("metric").loc["ntk/condition"]
    assert cond["lo"] < cond["spearman"] < cond["hi"] and abs(cond["spearman"]) < 0.6


def test_missing_probe_or_metric_gives_nan_not_an_error():
    results = _results(np.random.default_rng(0))
    table = probe_correlations(results, against=("ntk/eig_min",), reps=50)
    assert table.loc[0, "n_rows"] == 0 and np.isnan(table.loc[0, "spearman"])
    empty = probe_correlations(results, probe="nothing/here", reps=50)
    assert (empty["n_rows"] == 0).all()
