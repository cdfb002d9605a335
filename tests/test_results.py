"""The results table, `sphere compare`, the paper's figures and `sphere report`, on hand-built run
directories whose every number is known, so counts and statistics are checked against numpy/scipy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from sphere_rl.cli import main
from sphere_rl.config import preset
from sphere_rl.report import figures as F
from sphere_rl.report.sweep_report import build_sweep_report, geometry_runs, stage_names
from sphere_rl.results import stats
from sphere_rl.results.compare import compare_groups, per_run_values, score_matrices
from sphere_rl.results.table import LONG_COLUMNS, load_results

TASKS = ["arm/reach", "arm/permute", "arm/reach-left"]
STEPS = 4096  # env steps per task in the synthetic runs (two rollouts of the demo preset)


def success(method: str, protocol: str, seed: int) -> list[float]:
    """Known final successes: SPHERE +0.1 on every task, CRL -0.3 on later tasks, seed jitter 0.01*seed."""
    base = [0.9, 0.8, 0.7]
    return [round(min(1.0, b + (0.1 if method == "sphere" else 0.0) - (0.3 if protocol == "crl" and t else 0.0)
                      + 0.01 * seed), 4) for t, b in enumerate(base)]


def make_run(root: Path, method: str, protocol: str, seed: int, complete: bool = True) -> Path:
    cfg = preset("demo-quick", {"reg.name": method, "run.protocol": protocol, "seed": seed,
                                "run.tasks": ",".join(TASKS), "run.steps_per_task": STEPS})
    run = root / "runs" / f"{method}-{protocol}-{seed}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(cfg.to_json())
    (run / "manifest.json").write_text(json.dumps({"seed": seed}))
    final = success(method, protocol, seed)
    ntk = [10.0 + seed + (5.0 if method == "sphere" else 0.0) - t for t in range(3)]
    eval_rows = ["env_step,task_index,task,task_step,eval_task_index,eval_task,return,success"]
    diag_rows = ["env_step,task_index,task,task_step,task_end,ntk/effective_rank,ntk/eig_1,ntk/eig_2,ntk/eig_3,"
                 "proxy/effective_rank,dormant_ratio"]
    diag_rows.append(f"0,0,{TASKS[0]},0,0,{8.0 + seed},100.0,50.0,10.0,{4.0 + seed},0.0")
    curves, matrix = [], []
    for t, task in enumerate(TASKS):
        end = (t + 1) * STEPS
        half = t * STEPS + STEPS // 2
        eval_rows.append(f"{half},{t},{task},{STEPS // 2},{t},{task},1.0,{final[t] / 2}")
        eval_rows.append(f"{end},{t},{task},{STEPS},{t},{task},2.0,{final[t]}")
        curves.append([[STEPS // 2, final[t] / 2], [STEPS, final[t]]])
        matrix.append([final[j] if j <= t else None for j in range(3)])
        diag_rows.append(f"{half},{t},{task},{STEPS // 2},0,{ntk[t] + 1},90.0,40.0,9.0,{ntk[t] / 2 + 0.5},0.1")
        diag_rows.append(f"{end},{t},{task},{STEPS},1,{ntk[t]},80.0,30.0,{8.0 - t},{ntk[t] / 2},0.2")
    (run / "eval.csv").write_text("\n".join(eval_rows) + "\n")
    (run / "diagnostics.csv").write_text("\n".join(diag_rows) + "\n")
    if complete:
        summary = {"protocol": protocol, "tasks": TASKS, "final_success": final, "final_return": [2.0] * 3,
                   "proxy_rank": [n / 2 for n in ntk], "ntk_rank": ntk,
                   "ntk_top_eigenvalues": [[80.0, 30.0, 8.0 - t] for t in range(3)], "success_matrix": matrix,
                   "task_curves": curves, "env_steps": 3 * STEPS, "wall_time_s": 10.0 + (5.0 if method == "sphere" else 0.0),
                   "average_success": float(np.mean(final))}
        if protocol == "crl":
            summary["continual"] = {"average_performance": float(np.mean(final)), "forgetting": 0.0,
                                    "forward_transfer": None}
            (run / "continual_metrics.csv").write_text(
                "task_index,task,success_end_of_task,success_final,forgetting,auc,reference_auc,forward_transfer\n"
                + "".join(f"{t},{TASKS[t]},{final[t]},{final[t]},0.0,0.5,,\n" for t in range(3)))
        (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    for method in ("none", "sphere"):
        for protocol in ("rl", "crl"):
            for seed in range(4):
                make_run(root, method, protocol, seed)
    make_run(root, "none", "crl", 9, complete=False)  # a run still going
    return root


def test_table_schema_and_row_counts(sweep):
    res = load_results(sweep)
    assert len(res.runs) == 17 and res.runs["complete"].sum() == 16
    assert list(res.long.columns[:len(LONG_COLUMNS)]) == list(LONG_COLUMNS)
    assert res.cell_columns == ["reg.name", "run.protocol"] and res.varying[-1] == "seed"
    assert res.constant_config["run.tasks"] == ",".join(TASKS) and "reg.name" not in res.constant_config
    long = res.long
    counts = long.groupby("source", observed=True).size().to_dict()
    # eval: 17 runs x 6 rows x 2 numeric metrics; diagnostics: 17 x 7 rows x 6 metrics (task_end is an id column)
    assert counts["eval"] == 17 * 6 * 2 and counts["diagnostics"] == 17 * 7 * 6
    # continual: 8 complete CRL runs x 3 tasks x 6 metrics (the incomplete run wrote none)
    assert counts["continual"] == 8 * 3 * 6
    # summary, per complete run: 3 tasks x (4 per-task metrics + 3 eigenvalues) + average_success, env_steps,
    # wall_time_s (+ 2 CW scalars and forward transfer paired from the RL twin, for CRL runs)
    per_run = long[long["source"] == "summary"].groupby("run", observed=True).size()
    assert per_run.min() == 3 * 7 + 3 and per_run.max() == 3 * 7 + 3 + 3  # RL 24, CRL 27
    assert long["value"].dtype == np.float64 and str(long["env_step"].dtype) == "Int64"
    run = "runs/sphere-crl-2"
    rows = res.select("summary", "final_success")
    assert rows[rows["run"] == run].sort_values("task_index")["value"].tolist() == success("sphere", "crl", 2)
    assert res.runs.set_index("run").loc[run, "average_success"] == pytest.approx(np.mean(success("sphere", "crl", 2)))
    assert len(load_results(sweep, complete_only=True).runs) == 16
    assert set(load_results(sweep, sources=["eval"]).long["source"]) == {"eval"}
    with pytest.raises(ValueError, match="unknown source"):
        load_results(sweep, sources=["nope"])
    with pytest.raises(FileNotFoundError):
        load_results(sweep / "nothing-here")


def test_forward_transfer_is_paired_with_the_rl_twin(sweep):
    from sphere_rl.protocols.continual_metrics import run_continual_metrics

    res = load_results(sweep)
    runs = res.runs.set_index("run")
    assert runs.loc["runs/sphere-crl-1", "cw.reference_run"] == "runs/sphere-rl-1"
    expected = run_continual_metrics(sweep / "runs/sphere-crl-1", sweep / "runs/sphere-rl-1").summary()
    assert runs.loc["runs/sphere-crl-1", "cw.forward_transfer"] == pytest.approx(expected["forward_transfer"])
    ft = res.select("continual", "forward_transfer")
    assert ft[ft["run"] == "runs/sphere-crl-1"]["value"].notna().all()
    assert np.isnan(runs.loc["runs/none-rl-0", "cw.forward_transfer"])  # RL runs have none
    unpaired = load_results(sweep, pair_references=False).runs.set_index("run")
    assert "cw.forward_transfer" not in unpaired.columns  # no run recorded one


def test_write_parquet_and_csv(sweep, tmp_path):
    import pyarrow.parquet as pq

    res = load_results(sweep)
    long_path, runs_path = res.write(tmp_path / "r.parquet")
    assert runs_path.name == "r.runs.parquet"
    back = pd.read_parquet(long_path)
    assert len(back) == len(res.long) and list(back.columns) == list(res.long.columns)
    meta = pq.read_schema(long_path).metadata[b"sphere_rl.constant_config"]
    assert json.loads(meta)["run.tasks"] == ",".join(TASKS)
    csv_path, _ = res.write(tmp_path / "r.csv", fmt="csv")
    assert len(pd.read_csv(csv_path)) == len(res.long)
    assert main(["results", str(sweep), "-o", str(tmp_path / "cli.csv")]) == 0
    assert (tmp_path / "cli.csv").is_file() and (tmp_path / "cli.runs.csv").is_file()


def test_compare_matches_direct_statistics(sweep, capsys):
    res = load_results(sweep, complete_only=True)
    values = per_run_values(res, "average_success")
    assert len(values) == 16 and set(values.columns) >= {"run", "reg.name", "run.protocol", "seed", "average_success"}
    groups = {g.label: g for g in compare_groups(res, by="reg.name", reps=300)}
    assert set(groups) == {"run.protocol=crl", "run.protocol=rl"}
    crl = groups["run.protocol=crl"].raw
    x = np.array([np.mean(success("sphere", "crl", s)) for s in range(4)])
    y = np.array([np.mean(success("none", "crl", s)) for s in range(4)])
    assert crl.loc["sphere", "difference"] == pytest.approx(x.mean() - y.mean())
    assert crl.loc["sphere", "welch_p"] == pytest.approx(sps.ttest_ind(x, y, equal_var=False).pvalue)
    assert crl.loc["sphere", "mwu_p"] == pytest.approx(sps.mannwhitneyu(x, y, alternative="two-sided").pvalue)
    assert crl.loc["none", "mean"] == pytest.approx(y.mean())
    matrices = score_matrices(res, "final_success", by=["reg.name", "run.protocol"])
    assert matrices["reg.name=sphere, run.protocol=rl"].shape == (4, 3)
    assert groups["run.protocol=crl"].continual is not None
    assert main(["compare", str(sweep), "--by", "reg.name", "--reps", "200"]) == 0
    out = capsys.readouterr().out
    assert "## run.protocol=crl" in out and "sphere" in out and "Welch p" in out
    assert main(["compare", str(sweep), "--by", "net.actor"]) == 2  # does not vary: a usage error


def test_compare_by_two_fields_compares_their_combinations(sweep):
    """`--by reg.name,run.protocol`: the four combinations are the levels, against the first (none/crl)."""
    res = load_results(sweep, complete_only=True)
    (group,) = compare_groups(res, by="reg.name,run.protocol", reps=200)
    raw = group.raw
    assert group.label == "all runs" and sorted(raw.index) == ["none/crl", "none/rl", "sphere/crl", "sphere/rl"]
    x = np.array([np.mean(success("sphere", "rl", s)) for s in range(4)])
    y = np.array([np.mean(success("none", "crl", s)) for s in range(4)])
    assert raw.loc["sphere/rl", "difference"] == pytest.approx(x.mean() - y.mean())
    assert raw.loc["sphere/rl", "welch_p"] == pytest.approx(sps.ttest_ind(x, y, equal_var=False).pvalue)
    combined, name = res.combine(["reg.name", "run.protocol"])
    assert name == "reg.name+run.protocol" and combined.cell_columns == [name]
    with pytest.raises(ValueError, match="net.nope is not a config field"):
        compare_groups(res, by="reg.name,net.nope")


def test_study_table_matches_direct_statistics(sweep, tmp_path, capsys):
    """`sphere study` on the synthetic sweep: every estimate recomputed from the known successes."""
    from sphere_rl.experiments.study import study_table, write_study

    res = load_results(sweep)
    table = study_table(res, reps=300).set_index("method")
    assert table.attrs["baseline"] == "none" and list(table.index) == ["none", "sphere"]
    avg = {(m, p): np.array([np.mean(success(m, p, s)) for s in range(4)]) for m in ("none", "sphere") for p in ("rl", "crl")}
    row = table.loc["sphere"]
    assert row["n_crl"] == row["n_rl"] == 4  # the incomplete CRL run is left out
    assert row["crl"] == pytest.approx(avg["sphere", "crl"].mean()) and row["rl"] == pytest.approx(avg["sphere", "rl"].mean())
    gap = avg["sphere", "rl"] - avg["sphere", "crl"]  # paired by seed
    assert row["gap"] == pytest.approx(gap.mean()) and row["gap_lo"] <= row["gap"] <= row["gap_hi"]
    assert row["first_task"] == pytest.approx(np.mean([success("sphere", "crl", s)[0] for s in range(4)]))
    assert row["ntk_rank"] == pytest.approx(np.mean([np.mean([15.0 + s - t for t in range(3)]) for s in range(4)]))
    assert row["d_crl"] == pytest.approx(avg["sphere", "crl"].mean() - avg["none", "crl"].mean())
    assert row["d_crl_p"] == pytest.approx(sps.ttest_ind(avg["sphere", "crl"], avg["none", "crl"], equal_var=False).pvalue)
    gap_none = avg["none", "rl"] - avg["none", "crl"]
    assert row["d_gap"] == pytest.approx(gap.mean() - gap_none.mean())
    assert np.isnan(table.loc["none"].get("d_crl", np.nan))
    text, files = write_study(res, tmp_path / "study", reps=300)
    assert "| none |" in text and "Against none" in text and all(f.is_file() for f in files)
    assert main(["study", str(sweep), "--reps", "200"]) == 0
    assert "RL − CRL gap" in capsys.readouterr().out
    assert main(["study", str(sweep), "--baseline", "nope"]) == 2


def test_per_run_values_average_a_diagnostics_column_over_task_ends(sweep):
    res = load_results(sweep, complete_only=True)
    values = per_run_values(res, "dormant_ratio").set_index("run")
    assert values.loc["runs/sphere-crl-1", "dormant_ratio"] == pytest.approx(0.2)  # task-end rows only (0.1 elsewhere)


def test_figures_show_the_numbers(sweep):
    res = load_results(sweep, complete_only=True)
    fig = F.success_bars(res)
    heights = sorted(round(p.get_height(), 6) for p in fig.axes[0].patches)
    expected = sorted(round(float(np.mean([np.mean(success(m, p, s)) for s in range(4)])), 6)
                      for m in ("none", "sphere") for p in ("rl", "crl"))
    assert heights == expected
    fig = F.ntk_rank_across_tasks(res)
    lines = {(ax.get_title()[:3], line.get_label()): line.get_ydata() for ax in fig.axes for line in ax.get_lines()}
    sphere_rl = lines[("RL:", "sphere")]
    assert sphere_rl[0] == pytest.approx(np.mean([8.0 + s for s in range(4)]))  # initialisation row
    assert list(sphere_rl[1:]) == pytest.approx([np.mean([15.0 + s - t for s in range(4)]) for t in range(3)])
    fig, corr = F.proxy_scatter(res)
    diag = res.select("diagnostics", ["ntk/effective_rank", "proxy/effective_rank"])
    wide = diag.pivot_table(index=["run", "env_step"], columns="metric", values="value", observed=True)
    assert corr["n"] == len(wide) == 16 * 7
    assert corr["spearman_rho"] == pytest.approx(sps.spearmanr(wide["ntk/effective_rank"], wide["proxy/effective_rank"])[0])
    profile = F.performance_profiles(res, reps=100)
    assert len(profile.axes) == 2
    overhead = F.overhead_table(res)
    row = overhead[(overhead["method"] == "sphere") & (overhead["protocol"] == "crl")].iloc[0]
    assert row["x baseline"] == pytest.approx(15.0 / 10.0)
    for name in ("a", "b"):
        paths = F.save_figure(F.success_bars(res), sweep / "figs", name)
        assert [p.suffix for p in paths] == [".png", ".pdf"] and paths[0].read_bytes()[:4] == b"\x89PNG"


def test_geometry_stages_and_means(sweep):
    res = load_results(sweep, complete_only=True)
    runs = geometry_runs(res, "crl")
    assert [r.label.split(" ")[0] for r in runs] == ["none", "sphere"]  # the baseline first
    assert runs[0].stages == ("Initialise", "reach", "permute", "reach-left")
    assert runs[0].eigenvalues[0] == (100.0, 50.0, 10.0) and runs[0].eigenvalues[2] == (80.0, 30.0, 7.0)
    assert runs[1].effective_rank[1] == pytest.approx(np.mean([15.0 + s for s in range(4)]))
    assert stage_names(["humanoidbench/h1-stand", "humanoidbench/h1-walk"]) == ["Initialise", "Stand", "Walk"]


def test_report_is_self_contained(sweep, tmp_path):
    out = build_sweep_report(sweep, tmp_path / "report.html", reps=200, figures_dir=tmp_path / "figs")
    html = out.read_text(encoding="utf-8")
    for needle in ("Statistics", "run.protocol=crl", "Per task", "Figures", "Update geometry", "Initialise",
                   "Cost", "17 runs", "(16 complete)", "RL vs CRL per architecture and method", "RL − CRL gap"):
        assert needle in html, needle
    from html.parser import HTMLParser

    class Sources(HTMLParser):  # script bodies are raw text to the parser: only real tags are seen
        found: list[str] = []

        def handle_starttag(self, tag, attrs):
            self.found += [value for name, value in attrs if name in ("src", "href") and value
                           and not value.startswith(("#", "data:"))]

    parser = Sources()
    parser.feed(html)
    assert parser.found == []  # nothing loaded from anywhere: one self-contained file
    assert html.count("data:image/png;base64,") >= 4
    assert {p.name for p in (tmp_path / "figs").iterdir()} >= {"success_bars.png", "success_bars.pdf",
                                                                "ntk_rank_across_tasks.pdf"}
    assert main(["report", str(sweep), "-o", str(tmp_path / "cli.html"), "--reps", "100"]) == 0
    assert main(["report", str(sweep), "-o", str(tmp_path / "by.html"), "--reps", "100", "--by", "reg.name,run.protocol"]) == 0
    assert "reg.name+run.protocol" in (tmp_path / "by.html").read_text(encoding="utf-8")


def test_study_method_labels_name_the_default_coefficient():
    from sphere_rl.experiments.study import _method_labels

    runs = pd.DataFrame([{"reg.name": "none", "reg.mode": "grad", "reg.coef": np.nan, "methods": "[]"},
                         {"reg.name": "sphere", "reg.mode": "grad", "reg.coef": np.nan, "methods": "[]"},
                         {"reg.name": "sphere", "reg.mode": "loss", "reg.coef": None, "methods": "[]"},
                         {"reg.name": "sphere", "reg.mode": "loss", "reg.coef": 0.2, "methods": "[]"},
                         {"reg.name": "none", "methods": '["reset"]', "reset.parts": '["log_std", "heads"]'},
                         {"reg.name": "none", "reg.mode": "loss", "methods": '["sphere", "reset"]', "reset.parts": '["all"]'}])
    assert _method_labels(runs, ["reg.name", "reg.mode", "reg.coef", "methods", "reset.parts"]).tolist() == [
        "none", "sphere/grad/0.001", "sphere/loss/0.05", "sphere/loss/0.2", "reset[log_std,heads]",
        "sphere/loss/0.05 + reset[all]"]
    scaled = pd.DataFrame([{"reg.name": "sphere", "reg.mode": "grad", "reg.coef": 1.0, "reg.scale": scale, "methods": "[]"}
                           for scale in ("raw", "trace")])
    assert _method_labels(scaled, ["reg.name", "reg.coef", "reg.scale"]).tolist() == ["sphere/1/raw", "sphere/1/trace"]


def test_next_task_deficit_pairs_a_task_end_with_the_next_tasks_shortfall_against_rl(sweep):
    from sphere_rl.results.plasticity import deficit_correlations, deficit_frame, within_groups

    res = load_results(sweep)
    frame = deficit_frame(res, against=["ntk/effective_rank", "dormant_ratio"])
    assert len(frame) == 8 * 2  # 8 complete CRL runs x tasks 1, 2
    row = frame[(frame["run"] == "runs/sphere-crl-2") & (frame["task_index"] == 2)].iloc[0]
    rl_mean = np.mean([success("sphere", "rl", s)[2] for s in range(4)])  # the RL runs of the same method
    assert row["deficit"] == pytest.approx(rl_mean - success("sphere", "crl", 2)[2])
    assert row["ntk/effective_rank"] == pytest.approx(10.0 + 2 + 5.0 - 1)  # r_e(K) at the end of task 1
    table = deficit_correlations(res, against=["ntk/effective_rank"], reps=200).iloc[0]
    assert table["spearman"] == pytest.approx(sps.spearmanr(frame["deficit"], frame["ntk/effective_rank"])[0])
    within = within_groups(frame, "task_index", ["deficit"])
    for _, group in within.groupby("task_index"):
        assert group["deficit"].mean() == pytest.approx(0.0)
    small = pd.DataFrame({"g": [0, 0, 1, 1, 1], "x": [5.0, 1.0, 2.0, 9.0, 4.0]})
    assert within_groups(small, "g", ["x"])["x"].tolist() == pytest.approx([0.25, -0.25, -1 / 3, 1 / 3, 0.0])


def test_study_by_visit_follows_repeated_tasks_against_numpy(sweep, tmp_path):
    """`arm2` three times over: the visits table averages each visit's tasks per run, then over seeds; the last
    visit minus the first is paired within runs; the r_e(K) slope is numpy's least-squares fit."""
    from sphere_rl.experiments.study import format_visits, visits_table, write_study

    tasks = ["arm/reach", "arm/permute"] * 3
    values = {}
    for method in ("none", "sphere"):
        for seed in range(3):
            rng = np.random.default_rng([seed, method == "sphere"])
            succ = np.round(rng.uniform(0, 1, 6), 3)
            ntk = np.round(12.0 - np.arange(6) * (0.2 if method == "sphere" else 1.0) + rng.normal(0, 0.3, 6), 3)
            fit = np.round(rng.uniform(0, 1, 6), 3)
            entropy = np.round(rng.normal(1.0, 0.5, 6), 3)
            values[method, seed] = succ, ntk, fit, entropy
            cfg = preset("demo-quick", {"reg.name": method, "run.protocol": "crl", "seed": seed,
                                        "run.tasks": "arm2,arm2,arm2", "run.steps_per_task": STEPS})
            run = tmp_path / "runs" / f"{method}-{seed}"
            run.mkdir(parents=True)
            (run / "config.json").write_text(cfg.to_json())
            (run / "manifest.json").write_text(json.dumps({"seed": seed}))
            rows = ["env_step,task_index,task,task_step,task_end,fit/auc,policy_entropy"]
            rows += [f"{(t + 1) * STEPS},{t},{task},{STEPS},1,{fit[t]},{entropy[t]}" for t, task in enumerate(tasks)]
            rows += [f"{t * STEPS + 8},{t},{task},8,0,99.0,99.0" for t, task in enumerate(tasks)]  # not a task end
            (run / "diagnostics.csv").write_text("\n".join(rows) + "\n")
            (run / "summary.json").write_text(json.dumps({
                "protocol": "crl", "tasks": tasks, "final_success": succ.tolist(), "ntk_rank": ntk.tolist(),
                "env_steps": 6 * STEPS, "average_success": float(succ.mean())}))
    res = load_results(tmp_path, complete_only=True)
    table = visits_table(res, reps=300).set_index(["method", "visit"])
    assert table.attrs["metrics"] == ["final_success", "ntk_rank", "fit/auc", "policy_entropy"]
    for method in ("none", "sphere"):
        per_seed = {k: np.array([values[method, s][i].reshape(3, 2).mean(axis=1) for s in range(3)])
                    for i, k in enumerate(("final_success", "ntk_rank", "fit/auc", "policy_entropy"))}  # (seeds, visits)
        for v in (1, 2, 3):
            for k, arr in per_seed.items():
                assert table.loc[(method, str(v)), k] == pytest.approx(arr[:, v - 1].mean())
        change = table.loc[(method, "3 − 1")]
        for k, arr in per_seed.items():
            assert change[k] == pytest.approx((arr[:, 2] - arr[:, 0]).mean())
        slopes = [np.polyfit(np.arange(6), values[method, s][1], 1)[0] for s in range(3)]
        assert change["ntk_slope"] == pytest.approx(np.mean(slopes))
        assert change["ntk_slope_lo"] <= change["ntk_slope"] <= change["ntk_slope_hi"]
    last = {m: np.array([values[m, s][0][4:].mean() for s in range(3)]) for m in ("none", "sphere")}
    against = table.loc[("sphere", "3: vs none")]
    assert against["final_success"] == pytest.approx(last["sphere"].mean() - last["none"].mean())
    assert against["final_success_p"] == pytest.approx(sps.ttest_ind(last["sphere"], last["none"], equal_var=False).pvalue)
    shown = format_visits(visits_table(res, reps=300))
    assert {"success", "r_e(K)", "fit/auc", "entropy", "r_e(K) slope per task", "p (success)"} <= set(shown.columns)
    text, files = write_study(res, tmp_path / "study", reps=300)
    assert "By visit" in text and (tmp_path / "study" / "visits.csv") in files
    # the figure draws the table's own numbers: one line per method in each metric's panel, visits 1..3
    from sphere_rl.report.figures import visits_curves
    fig = visits_curves(visits_table(res, reps=300))
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert len(panels) == 4
    for ax, k in zip(fig.axes, ("final_success", "ntk_rank", "fit/auc", "policy_entropy")):
        assert [line.get_label() for line in ax.lines] == ["none", "sphere"]
        for line in ax.lines:
            assert list(line.get_xdata()) == [1, 2, 3]
            want = [table.loc[(line.get_label(), str(v)), k] for v in (1, 2, 3)]
            assert np.asarray(line.get_ydata()) == pytest.approx(want)
    assert visits_curves(visits_table(load_results(sweep, complete_only=True))) is None
    # one run of the repeated sequence is still a table; the synthetic sweep's sequence repeats nothing
    assert set(visits_table(load_results(tmp_path / "runs" / "none-0"), reps=100)["visit"]) == {"1", "2", "3", "3 − 1"}
    assert visits_table(load_results(sweep, complete_only=True)).empty
    assert "By visit" not in write_study(load_results(sweep, complete_only=True), tmp_path / "plain", reps=100)[0]


def test_first_tasks_cuts_every_run_to_a_common_prefix(sweep, tmp_path, capsys):
    """`sphere study --first-tasks 2`: a 2-task run and the first two tasks of the 3-task runs form one cell;
    averages are recomputed over the prefix (numpy on the known successes), whole-sequence numbers dropped."""
    import shutil

    from sphere_rl.experiments.study import study_table

    root = tmp_path / "mixed"
    shutil.copytree(sweep, root)
    short = root / "runs" / "sphere-crl-7"  # seed 7 of SPHERE, CRL, trained on the first two tasks only
    shutil.copytree(root / "runs" / "sphere-crl-3", short)
    cfg = preset("demo-quick", {"reg.name": "sphere", "run.protocol": "crl", "seed": 7,
                                "run.tasks": ",".join(TASKS[:2]), "run.steps_per_task": STEPS})
    (short / "config.json").write_text(cfg.to_json())
    summary = json.loads((short / "summary.json").read_text())
    summary.update(tasks=TASKS[:2], final_success=[0.5, 0.25], final_return=[2.0] * 2, ntk_rank=[6.0, 4.0],
                   proxy_rank=[3.0, 2.0], ntk_top_eigenvalues=summary["ntk_top_eigenvalues"][:2])
    (short / "summary.json").write_text(json.dumps(summary))
    full = load_results(root, complete_only=True)
    assert "run.tasks" in full.cell_columns  # two task lists: two cells before the cut
    with pytest.raises(ValueError, match="no complete run has 3 tasks"):
        full.subset(["runs/sphere-crl-7"]).first_tasks(3)
    cut = full.first_tasks(2)
    assert cut.cell_columns == ["reg.name", "run.protocol"]
    assert cut.constant_config["run.tasks"] == ",".join(TASKS[:2]) and len(cut.runs) == 17
    runs = cut.runs.set_index("run")
    assert runs.loc["runs/none-crl-1", "average_success"] == pytest.approx(np.mean(success("none", "crl", 1)[:2]))
    assert runs.loc["runs/sphere-crl-7", "average_success"] == pytest.approx(0.375)
    assert runs["cw.forgetting"].isna().all() and runs["env_steps"].isna().all()
    long = cut.long
    assert "continual" not in set(long["source"]) and long["task_index"].dropna().max() == 1
    assert long["eval_task_index"].dropna().max() == 1
    averages = long[long["metric"] == "average_success"].set_index("run")["value"]
    assert averages.to_dict() == pytest.approx(runs["average_success"].to_dict())
    table = study_table(cut, reps=300).set_index("method")
    crl = [np.mean(success("sphere", "crl", s)[:2]) for s in range(4)] + [0.375]
    assert table.loc["sphere", "n_crl"] == 5 and table.loc["sphere", "crl"] == pytest.approx(np.mean(crl))
    ntk = [np.mean([15.0 + s - t for t in range(2)]) for s in range(4)] + [5.0]
    assert table.loc["sphere", "ntk_rank"] == pytest.approx(np.mean(ntk))
    assert np.isnan(table.loc["sphere", "forgetting"])
    with pytest.raises(ValueError, match="at least 1"):
        full.first_tasks(0)
    assert main(["study", str(root), "--first-tasks", "2", "--reps", "100"]) == 0
    assert "RL − CRL gap" in capsys.readouterr().out
    assert main(["study", str(root), "--first-tasks", "4", "--reps", "100"]) == 2
    assert capsys.readouterr().err.strip() == "sphere study: --first-tasks: no complete run has 4 tasks (the longest has 3)"


def test_keep_runs_copies_what_the_tables_read_and_nothing_else(sweep, tmp_path):
    import importlib.util
    import shutil

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "keep_runs.py"
    spec = importlib.util.spec_from_file_location("keep_runs", path)
    keep_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(keep_runs)
    src = tmp_path / "src"
    shutil.copytree(sweep, src)
    heavy = src / "runs" / "none-rl-0"
    (heavy / "checkpoints").mkdir(exist_ok=True)
    (heavy / "checkpoints" / "ckpt.msgpack").write_bytes(b"x" * 100)
    (heavy / "metrics.csv").write_text("env_step\n0\n")
    dest = tmp_path / "kept"
    assert keep_runs.main([str(src), str(dest)]) == 0
    kept = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert "runs/none-crl-9/config.json" not in kept  # unfinished: left behind
    assert not any("checkpoints" in p or p.endswith("metrics.csv") and "continual" not in p for p in kept)
    assert "runs/sphere-crl-1/continual_metrics.csv" in kept and len({p.split("/")[1] for p in kept}) == 16
    original = load_results(sweep, complete_only=True).long
    copied = load_results(dest).long
    pd.testing.assert_frame_equal(copied.reset_index(drop=True), original.reset_index(drop=True),
                                  check_categorical=False)
    assert keep_runs.main([str(tmp_path / "missing"), str(dest)]) == 2
