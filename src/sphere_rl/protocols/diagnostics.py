"""Diagnostics during a run: one fixed probe set and one weight anchor per task, measured on a schedule.

Files in the run directory (docs/run_directory.md):
- `probes/task_XX.npz`: the task's N raw probe states, drawn at the task's start from
  `diag.probe_steps` policy steps on freshly reset envs of the task (a random stream of its own).
- `probes/task_XX_actor.msgpack`: the actor's parameters at the task's start (weight change).
Both are written at the task's start. Every checkpoint also holds the current task's probe states
and anchor (covered by its checksum), so a resumed run measures on the same states even when
these files are lost or damaged; resume rewrites them from the checkpoint.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np

from sphere_rl.config import Config, ntk_method
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
        """The stored actor parameters at the task's start (shaped like `template`), or None if not recorded
        or unreadable (with a warning)."""
        path = self.path_for(task_index, "_actor.msgpack")
        if path is None or not path.is_file():
            return None
        try:
            anchor = flax.serialization.from_bytes(template, path.read_bytes())
            if jax.tree.structure(anchor) != jax.tree.structure(template) or any(
                    np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(anchor), jax.tree.leaves(template))):
                raise ValueError("structure differs from the actor's")
            return anchor
        except Exception as exc:  # truncated or damaged msgpack: flax raises various types
            warnings.warn(f"{path}: unreadable ({type(exc).__name__}: {exc}); not used", RuntimeWarning, stacklevel=2)
            return None

    def _read_probe(self, path: Path | None) -> ProbeSet | None:
        if path is None or not path.is_file():
            return None
        try:
            return ProbeSet.load(path)
        except Exception as exc:  # truncated or bit-flipped .npz: zipfile's CRC check raises BadZipFile
            warnings.warn(f"{path}: unreadable ({type(exc).__name__}: {exc}); not used", RuntimeWarning, stacklevel=2)
            return None

    def restore(self, task_index: int, task: str, states: np.ndarray, anchor: Any) -> None:
        """Take the task's probe states and anchor from a checkpoint (they win over the files)."""
        self.probes[task_index] = ProbeSet(np.asarray(states, np.float32), task, task_index)
        self.anchors[task_index] = jax.device_get(anchor)

    def start_task(self, task_index: int, task: str, agent: Any, loop: Any, env_params: Any) -> ProbeSet:
        """Settle the task's probe set and anchor (call at every task entry) and make the files match them.

        A copy restored from a checkpoint wins; otherwise the files are read; otherwise (new task, or a
        file lost before the task's first checkpoint) the probe is drawn and the anchor taken from `agent`,
        which is then the agent at the task's start, so the result is the same as the first time.
        """
        probe_path = self.path_for(task_index, ".npz")
        anchor_path = self.path_for(task_index, "_actor.msgpack")
        on_disk = self._read_probe(probe_path)
        probe = self.probes.get(task_index)
        if probe is None:
            probe = on_disk
        if probe is None:
            probe = self.draw_probe(task_index, task, agent, loop, env_params)
        self.probes[task_index] = probe
        anchor = self.anchors.get(task_index)
        if anchor is None:
            anchor = self.read_anchor(task_index, agent.params["actor"])
        if anchor is None:
            anchor = jax.device_get(agent.params["actor"])
        self.anchors[task_index] = anchor
        if self.run_dir is not None:
            if on_disk is None or not np.array_equal(on_disk.states, probe.states):
                probe.save(probe_path)
            anchor_bytes = flax.serialization.to_bytes(anchor)
            if not anchor_path.is_file() or anchor_path.read_bytes() != anchor_bytes:
                atomic_write_bytes(anchor_path, anchor_bytes)
        return probe

    def measure(self, agent: Any, task_index: int, *, full: bool = True, fit: bool = False) -> Diagnosis:
        """Diagnostics of the agent's actor on the task's probe set (normalised as the policy sees it).

        `full=False` skips the eNTK and follows `diag.ntk` otherwise; `fit` adds the target-fitting
        probe (`diag.fit_steps` Adam steps; none when 0).
        """
        d = self.cfg.diag
        obs = self.ppo.normalize_obs(agent, jax.numpy.asarray(self.probes[task_index].states))
        return diagnose(
            self.ppo.actor, agent.params["actor"], obs,
            anchor_params=self.anchors.get(task_index),
            ntk=full and d.ntk, ntk_method=ntk_method(self.cfg), ntk_reduction=d.ntk_reduction, n_top=d.n_top,
            dormant_tau=d.dormant_tau, memory_budget=d.memory_budget_mb * 1024**2,
            fit_steps=d.fit_steps if fit else 0, fit_lr=d.fit_lr,
        )
