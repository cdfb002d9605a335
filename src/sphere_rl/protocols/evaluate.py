"""Evaluate a saved run's checkpoint on every task of its sequence (`sphere eval`)."""

from __future__ import annotations

from typing import Any

from sphere_rl.config import Config, ConfigError
from sphere_rl.protocols.runner import Runner
from sphere_rl.runs import RunDir
from sphere_rl.runs.checkpoint import CheckpointManager


def saved_config(run_dir: RunDir) -> Config:
    """The run's config; ConfigError when its config.json is not JSON or not a config."""
    try:
        data = run_dir.config
    except ValueError as err:  # json.JSONDecodeError, UnicodeDecodeError
        raise ConfigError(f"{run_dir.path('config.json')} is not valid JSON ({err})") from None
    return Config.from_saved(data)


def require_checkpoint(run_dir: RunDir, step: int | None) -> None:
    """FileNotFoundError, before any agent is built, when the run has no checkpoint file (at env step `step`)."""
    steps = CheckpointManager(run_dir.path("checkpoints")).all_steps()
    if not steps:
        raise FileNotFoundError(f"{run_dir.root} has no checkpoint (the run stopped before its first one)")
    if step is not None and step not in steps:
        raise FileNotFoundError(f"{run_dir.root} has no checkpoint at env step {step}; its checkpoints are at "
                                f"env steps {', '.join(map(str, steps))}")


def evaluate_run(path: str, step: int | None = None, episodes: int | None = None) -> dict[str, Any]:
    """Deterministic evaluation of a checkpoint (latest good one by default) on all tasks.

    Writes `eval_<step>.json` into the run directory and returns the same report.
    """
    run_dir = RunDir.open(path)
    cfg = saved_config(run_dir)
    if episodes is not None:
        cfg = cfg.override({"run.eval_episodes": episodes})
    cfg.validate()
    require_checkpoint(run_dir, step)
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
