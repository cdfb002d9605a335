"""`sphere bench --suite methods` (the cost of every plasticity method) on a small network: its rows, its
table, and `sphere methods` reading the newest measurement."""

import json

from sphere_rl.experiments.bench_methods import bench_methods, latest_method_costs, methods_markdown

SMALL = ("net.n_experts=3", "net.hidden_sizes=16,16", "net.gate_hidden_sizes=16", "net.critic_hidden_sizes=16")


def test_methods_suite_times_every_method_against_none_and_sphere_methods_reads_it(tmp_path, monkeypatch, capsys):
    rows = bench_methods(repeats=1, n_epochs=1, names=("none", "l2", "redo", "reset", "layernorm"), extra=SMALL)
    by = {r["method"]: r for r in rows}
    assert set(by) == {"none", "l2", "redo", "reset", "layernorm"} and by["none"]["overhead_pct"] == 0.0
    for name in ("l2", "redo", "reset"):
        r = by[name]
        assert r["seconds"] > 0 and r["overhead_pct"] == 100.0 * (r["seconds"] - by["none"]["seconds"]) / by["none"]["seconds"]
    assert by["redo"]["firing_seconds"] > 0 and by["reset"]["firing_seconds"] > 0 and "firing_seconds" not in by["l2"]
    table = "\n".join(methods_markdown(rows))
    assert "| redo | intervention |" in table
    folder = tmp_path / "benchmarks" / "results"
    folder.mkdir(parents=True)
    (folder / "bench-20260101-000000.json").write_text(json.dumps({"methods": rows}))
    (folder / "bench-20260102-000000.json").write_text(json.dumps({"update_phase": []}))  # newer, no methods suite
    costs, source = latest_method_costs(folder)
    assert source == "bench-20260101-000000.json" and costs["l2"]["seconds"] == by["l2"]["seconds"]
    monkeypatch.chdir(tmp_path)
    from sphere_rl.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "cost: update phase" in out and "bench-20260101-000000.json" in out
