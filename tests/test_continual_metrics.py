"""Continual World metrics: hand-worked examples, and the tables a CRL run writes (built-in and MetaWorld)."""

import csv
import json
import math

import numpy as np
import pytest

from sphere_rl.cli import main
from sphere_rl.config import Config, ConfigError
from sphere_rl.protocols.continual_metrics import (
    continual_metrics,
    curve_auc,
    forward_transfer,
    reference_curves,
    run_continual_metrics,
)
from sphere_rl.protocols.runner import CONTINUAL_METRICS_FILE, Runner
from sphere_rl.runs import RunDir
from sphere_rl.runs.logger import read_metrics


def test_curve_auc_by_hand():
    # 0 over (0, 100], 1 over (100, 200], 1 over (200, 300]  ->  200 / 300
    assert curve_auc([[100, 0.0], [200, 1.0], [300, 1.0]], 300) == pytest.approx(2 / 3)
    # a curve that stops early holds its last value: 0.5 over the whole task
    assert curve_auc([[100, 0.5]], 300) == pytest.approx(0.5)
    # uneven spacing: 0.2 * 50 + 0.8 * 250 = 210 over 300
    assert curve_auc([[50, 0.2], [300, 0.8]], 300) == pytest.approx(0.7)
    assert math.isnan(curve_auc([], 300))
    with pytest.raises(ValueError, match="increase"):
        curve_auc([[200, 0.0], [100, 1.0]], 300)


def test_forward_transfer_by_hand():
    assert forward_transfer(2 / 3, 1 / 3) == pytest.approx(0.5)
    assert forward_transfer(0.0, 0.5) == pytest.approx(-1.0)
    assert math.isnan(forward_transfer(0.9, 1.0))  # reference solved instantly: undefined


def test_continual_metrics_hand_worked_example():
    tasks = ["a", "b", "c"]
    matrix = [[0.8, None, None], [0.6, 0.9, None], [0.2, 0.7, 1.0]]
    curves = [[[100, 0.0], [200, 0.8]], [[100, 0.5], [200, 0.9]], [[100, 1.0], [200, 1.0]]]
    reference = {"a": [[100, 0.0], [200, 0.0]], "b": [[100, 0.0], [200, 1.0]], "c": [[100, 1.0], [200, 1.0]]}
    m = continual_metrics(tasks, matrix, curves, 200, reference)
    assert [r["forgetting"] for r in m.rows] == pytest.approx([0.6, 0.2, 0.0])
    assert m.forgetting == pytest.approx(0.8 / 3)
    assert m.average_performance == pytest.approx((0.2 + 0.7 + 1.0) / 3)
    # AUC a = 0.4 vs 0 -> 0.4; b = 0.7 vs 0.5 -> 0.4; c: reference area 1 -> undefined
    assert [r["auc"] for r in m.rows] == pytest.approx([0.4, 0.7, 1.0])
    assert m.rows[0]["forward_transfer"] == pytest.approx(0.4)
    assert m.rows[1]["forward_transfer"] == pytest.approx(0.4)
    assert math.isnan(m.rows[2]["forward_transfer"])
    assert m.forward_transfer == pytest.approx(0.4) and m.forward_transfer_tasks == 2
    text = m.to_csv().splitlines()
    assert text[0].startswith("task_index,task,success_end_of_task") and len(text) == 4
    assert "forward transfer 0.400 (over 2 tasks)" in m.markdown()


def test_without_reference_forward_transfer_is_missing():
    m = continual_metrics(["a", "b"], [[1.0, None], [0.5, 1.0]], [[[10, 1.0]], [[10, 1.0]]], 10)
    assert math.isnan(m.forward_transfer) and m.forward_transfer_tasks == 0
    assert m.forgetting == pytest.approx(0.25) and m.average_performance == pytest.approx(0.75)


TINY_ARM = [
    "net.actor=topk_moe", "net.n_experts=3", "net.top_k=2", "net.hidden_sizes=16,16", "net.gate_hidden_sizes=16",
    "net.critic_hidden_sizes=16,16", "ppo.num_envs=16", "ppo.n_steps=8", "ppo.minibatch_size=32", "ppo.n_epochs=2",
    "run.tasks=arm2", "run.steps_per_task=768", "run.eval_every=256", "run.log_every=256",
    "run.checkpoint_every=768", "run.eval_episodes=4", "run.progress=false", "run.tensorboard=false", "diag.enabled=false",
]


def _run(cfg: Config, root, name: str):
    run_dir = RunDir.create(root, name=name, config=cfg.to_dict(), seed=cfg.seed)
    return run_dir, Runner(cfg, run_dir).run()


def _own_curves(run_dir, n_tasks):
    """Task i's curve rebuilt independently from eval.csv: its evaluations while training it."""
    rows = read_metrics(run_dir.path("eval.csv"))
    return [[[r["task_step"], r["success"]] for r in rows if r["task_index"] == i and r["eval_task_index"] == i]
            for i in range(n_tasks)]


def test_crl_run_writes_the_table_and_uses_a_reference_rl_run(tmp_path, capsys):
    rl_dir, rl = _run(Config().override([*TINY_ARM, "run.protocol=rl"]).validate(), tmp_path, "rl")
    assert rl.continual is None and len(rl.task_curves) == 2
    assert not rl_dir.path(CONTINUAL_METRICS_FILE).exists()

    cfg = Config().override([*TINY_ARM, f"run.reference_run={rl_dir.root}", "run.eval_future_tasks=true"]).validate()
    crl_dir, crl = _run(cfg, tmp_path, "crl")
    curves = _own_curves(crl_dir, 2)
    assert crl.task_curves == curves and [c[0] for c in curves[0]] == [256, 512, 768]
    # future tasks were evaluated too: the matrix is full
    assert all(v is not None for row in crl.success_matrix for v in row)

    with open(crl_dir.path(CONTINUAL_METRICS_FILE)) as fh:
        table = list(csv.DictReader(fh))
    assert [row["task"] for row in table] == ["arm/reach", "arm/permute"]
    reference = _own_curves(rl_dir, 2)
    for i, row in enumerate(table):
        auc, ref_auc = np.mean([v for _, v in curves[i]]), np.mean([v for _, v in reference[i]])  # equal spacing
        assert float(row["auc"]) == pytest.approx(auc)
        assert float(row["reference_auc"]) == pytest.approx(ref_auc)
        expected_ft = (auc - ref_auc) / (1 - ref_auc) if ref_auc < 1 else math.nan
        assert (row["forward_transfer"] == "") if math.isnan(expected_ft) else float(row["forward_transfer"]) == pytest.approx(expected_ft)
        end, final = crl.success_matrix[i][i], crl.success_matrix[-1][i]
        assert float(row["forgetting"]) == pytest.approx(end - final)
    assert crl.continual["average_performance"] == pytest.approx(np.mean(crl.success_matrix[-1]))
    assert crl_dir.summary["continual"] == crl.continual

    # recomputed later from the run directories alone: the same numbers
    again = run_continual_metrics(crl_dir.root, rl_dir.root)
    assert again.to_csv() == crl_dir.path(CONTINUAL_METRICS_FILE).read_text()

    # the command line: without a reference, forward transfer is missing; refuses an rl run
    assert main(["metrics", str(crl_dir.root)]) == 0
    assert "(over 0 tasks)" in capsys.readouterr().out
    assert main(["metrics", str(rl_dir.root)]) == 2
    assert "need a CRL run" in capsys.readouterr().err
    # --write updates the table and the summary together
    summary_before = crl_dir.summary
    assert main(["metrics", str(crl_dir.root), "--reference", str(rl_dir.root), "--write"]) == 0
    assert json.dumps(crl_dir.summary, sort_keys=True) == json.dumps({**summary_before, "continual": again.summary()}, sort_keys=True)
    assert crl_dir.path(CONTINUAL_METRICS_FILE).read_text() == again.to_csv()


def test_reference_must_match_the_budget_and_exist(tmp_path):
    rl_dir, _ = _run(Config().override([*TINY_ARM, "run.protocol=rl"]).validate(), tmp_path, "rl")
    with pytest.raises(ValueError, match="same budget"):
        reference_curves(rl_dir.root, 2 * 768)
    with pytest.raises(ConfigError, match="run.reference_run"):
        Config().override([*TINY_ARM, f"run.reference_run={tmp_path / 'missing'}"]).validate()


def test_metaworld_two_task_crl_run_writes_the_metrics_table(tiny_host_crl):
    """A tiny CRL run on two CW10 tasks: the whole pipeline (envs, evaluation, table), not learning."""
    run_dir, result = tiny_host_crl(["metaworld/hammer-v3", "metaworld/push-wall-v3"], 32,
                                    "ppo.num_envs=2", "ppo.n_steps=8", "ppo.minibatch_size=8")
    assert result.tasks == ["metaworld/hammer-v3", "metaworld/push-wall-v3"]
    table = run_dir.path(CONTINUAL_METRICS_FILE).read_text().splitlines()
    assert len(table) == 3 and table[1].startswith("0,metaworld/hammer-v3,")
    evals = read_metrics(run_dir.path("eval.csv"))
    assert [(e["task_index"], e["eval_task_index"]) for e in evals] == [(0, 0), (1, 0), (1, 1)]
    assert all(e["success"] in (0.0, 1.0) for e in evals)
