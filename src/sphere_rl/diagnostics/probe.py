"""Probe sets: the fixed states a task's diagnostics are measured on, drawn once and stored with the run."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from sphere_rl.runs.atomic import atomic_write_bytes


@dataclass(frozen=True)
class ProbeSet:
    """N raw (unnormalised) observations of one task.

    Raw states are stored so that a probe means the same environment states at every checkpoint;
    diagnostics normalise them with the agent's normaliser of the moment, as the policy would.
    """

    states: np.ndarray
    """(N, obs_dim) float32."""
    task: str
    task_index: int

    def __post_init__(self) -> None:
        if self.states.ndim != 2 or self.states.shape[0] < 1:
            raise ValueError(f"probe states must be an (N, obs_dim) array with N >= 1, got shape {self.states.shape}")

    @property
    def n_states(self) -> int:
        return int(self.states.shape[0])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically as .npz (states, task, task_index)."""
        buffer = io.BytesIO()
        np.savez(buffer, states=self.states.astype(np.float32), task=np.asarray(self.task),
                 task_index=np.asarray(self.task_index))
        return atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "ProbeSet":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"probe file {str(path)!r} does not exist")
        with np.load(path, allow_pickle=False) as data:
            if "states" not in data:
                raise ValueError(f"{path}: not a probe file (no 'states' array)")
            task = str(data["task"]) if "task" in data else path.stem
            task_index = int(data["task_index"]) if "task_index" in data else -1
            return cls(np.asarray(data["states"], np.float32), task, task_index)

    @classmethod
    def from_array(cls, states: np.ndarray, task: str = "external", task_index: int = -1) -> "ProbeSet":
        return cls(np.asarray(states, np.float32).reshape(len(states), -1), task, task_index)


def subsample(states: np.ndarray, n_states: int, key: jax.Array) -> np.ndarray:
    """`n_states` distinct rows of `states` chosen uniformly with `key` (all rows, shuffled, if fewer)."""
    states = np.asarray(states)
    n = min(n_states, states.shape[0])
    index = np.asarray(jax.random.permutation(key, states.shape[0]))[:n]
    return states[np.sort(index)]
