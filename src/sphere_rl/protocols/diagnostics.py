"""Diagnostics during a run: one fixed probe set and one weight anchor per task, measured on a schedule.

Files in the run directory (docs/run_directory.md):
- `probes/task_XX.npz`: the task's N raw probe states, drawn at the task's start from
  `diag.probe_steps` policy steps on freshly reset envs of the task (a random stream of its own).
- `probes/task_XX_actor.msgpack`: the actor's parameters at the task's start (weight change).
Both are written once and read back on resume, so resumed runs measure on the same states.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np

from sphere_rl.config import Config
from sphere_rl.diagnostics.probe import ProbeSet, subsample
from sphere_rl.diagnostics.suite import Diagnosis, diagnose
from sphere_rl.runs import RunDir
from sphere_rl.runs.atomic import atomic_write_bytes


class RunDiagnostics:
    """Owns the probe sets and anchors of a run and turns an agent into a diagnostics row."""

    def __init__(self, cfg: Config, ppo: Any, run_dir: RunDir | None, key: jax.Array):
        self.cfg, self.ppo, self.run_dir, self.key = cfg, ppo, run_dir, key
        self.probes: dict[int, ProbeSet] = {}
        self.anchors: dict[int, Any] = {}

    @property
    def every(self) -> int:
        return self.cfg.diag.every or self.cfg.run.eval_every

    def path_for(self, task_index: int, suffix: str) -> Path | None:
        if self.run_dir is None:
            return None
        return self.run_dir.path("probes", f"task_{task_index:02d}{suffix}")

    def draw_probe(self, task_index: int, task: str, agent: Any, loop: Any, env_params: Any) -> ProbeSet:
        """The task's probe set drawn from `agent`'s policy on fresh envs (its own random stream; no files)."""
        d = self.cfg.diag
        collect_key, pick_key = jax.random.split(jax.random.fold_in(self.key, task_index))
        n_steps = max(d.probe_steps, -(-d.n_states // self.cfg.ppo.num_envs))
        states = np.asarray(loop.collect_states(agent, env_params, collect_key, n_steps=n_steps))
        return ProbeSet(subsample(states, d.n_states, pick_key).astype(np.float32), task, task_index)

    def read_anchor(self, task_index: int, template: Any) -> Any | None:
        """The stored actor parameters at the task's start (shaped like `template`), or None if not recorded."""
        path = self.path_for(task_index, "_actor.msgpack")
        if path is None or not path.is_file():
            return None
        return flax.serialization.from_bytes(template, path.read_bytes())

    def start_task(self, task_index: int, task: str, agent: Any, loop: Any, env_params: Any) -> ProbeSet:
        """Load or draw the task's probe set, and load or record its anchor (call at every task entry).

        On a fresh task `agent` is the agent at the task's start; on resume the stored anchor wins.
        """
        probe_path = self.path_for(task_index, ".npz")
        if probe_path is not None and probe_path.is_file():
            probe = ProbeSet.load(probe_path)
        else:
            probe = self.draw_probe(task_index, task, agent, loop, env_params)
            if probe_path is not None:
                probe.save(probe_path)
        self.probes[task_index] = probe

        anchor = self.read_anchor(task_index, agent.params["actor"])
        if anchor is None:
            anchor = jax.device_get(agent.params["actor"])
            if self.run_dir is not None:
                atomic_write_bytes(self.path_for(task_index, "_actor.msgpack"), flax.serialization.to_bytes(anchor))
        self.anchors[task_index] = anchor
        return probe

    def measure(self, agent: Any, task_index: int, *, full: bool = True) -> Diagnosis:
        """Diagnostics of the agent's actor on the task's probe set (normalised as the policy sees it).

        `full=False` skips the eNTK and follows `diag.ntk` otherwise.
        """
        d = self.cfg.diag
        obs = self.ppo.normalize_obs(agent, jax.numpy.asarray(self.probes[task_index].states))
        return diagnose(
            self.ppo.actor, agent.params["actor"], obs,
            anchor_params=self.anchors.get(task_index),
            ntk=full and d.ntk, ntk_method=d.ntk_method, ntk_reduction=d.ntk_reduction, n_top=d.n_top,
            dormant_tau=d.dormant_tau, memory_budget=d.memory_budget_mb * 1024**2,
        )
