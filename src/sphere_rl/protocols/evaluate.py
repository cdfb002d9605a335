"""Evaluate a saved run's checkpoint on every task of its sequence (`sphere eval`)."""

from __future__ import annotations

from typing import Any

from sphere_rl.config import Config
from sphere_rl.protocols.runner import Runner
from sphere_rl.runs import RunDir


def evaluate_run(path: str, step: int | None = None, episodes: int | None = None) -> dict[str, Any]:
    """Deterministic evaluation of a checkpoint (latest good one by default) on all tasks.

    Writes `eval_<step>.json` into the run directory and returns the same report.
    """
    run_dir = RunDir.open(path)
    cfg = Config.from_saved(run_dir.config)
    if episodes is not None:
        cfg = cfg.override({"run.eval_episodes": episodes})
    runner = Runner(cfg, run_dir, progress=False)
    tree, meta, step = runner.load_checkpoint(step)
    agent = tree["agent"]
    rows = [{"task": task, **runner.evaluate(agent, j)} for j, task in enumerate(runner.tasks)]
    report = {
        "env_step": int(meta["env_step"]),
        "checkpoint_step": int(step),
        "episodes": cfg.run.eval_episodes,
        "tasks": rows,
        "average_success": sum(r["success"] for r in rows) / len(rows),
    }
    report["path"] = str(run_dir.write_json(f"eval_{step}.json", report))
    return report
