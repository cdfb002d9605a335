"""Resets at a CRL task switch: re-initialise all or part of the agent before it trains the next task.

Nikishin et al. 2022 (*The Primacy Bias in Deep Reinforcement Learning*, ICML) reset the last layers
(or everything) periodically; in continual RL the natural moment is the task switch. The parts
(`reset.parts`, any combination):

- `all`: actor and critic (what RL from scratch does, but the observation normaliser carries over);
- `actor`, `critic`: one network;
- `heads`: the output layers: the action-mean head of the dense actor or of every expert, and the
  critic's value head;
- `gate`: the router of an MoE actor (its MLP and logits layer); nothing on a dense actor;
- `log_std`: the state-independent log standard deviation, back to `net.log_std_init`: the
  exploration noise a fresh agent starts with.

Re-initialised parameters come from a fresh initialisation (`PPO.init`) with a key of the run and the
task, so a resumed run draws the same ones; their Adam moments are zeroed, all other parameters and
moments (and Adam's step count) are kept. The event `reset/params` counts the scalars reset.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from sphere_rl.methods.base import Events, Intervention, leaf_mask, replace_where

PARTS: dict[str, tuple[str, Callable[[tuple[str, ...]], bool]]] = {
    "all": ("both", lambda path: True),
    "actor": ("actor", lambda path: True),
    "critic": ("critic", lambda path: True),
    "heads": ("both", lambda path: "mean_head" in path or "value_head" in path
              or ("experts" in path and "head" in path)),
    "gate": ("actor", lambda path: "gate" in path),
    "log_std": ("actor", lambda path: path[-1] == "log_std"),
}
"""Part -> (the network(s) it is in, which parameter paths it selects)."""


def masks_for(parts: tuple[str, ...], params: dict[str, Any]) -> dict[str, Any]:
    """{network: bool tree} of the parameters that `parts` select."""
    out: dict[str, Any] = {}
    for name in ("actor", "critic"):
        selectors = [select for part in parts for where, select in [PARTS[part]] if where in (name, "both")]
        if selectors:
            mask = leaf_mask(params[name], lambda path, s=selectors: any(f(path) for f in s))
            out[name] = mask if name not in out else jax.tree.map(lambda a, b: a or b, out[name], mask)
    return out


@dataclasses.dataclass(frozen=True)
class Reset(Intervention):
    """Re-initialise `parts` of the agent at every CRL task switch."""

    parts: tuple[str, ...] = ("all",)
    name: str = "reset"

    def on_task_switch(self, ppo: Any, state: Any, key: jax.Array, task_index: int) -> tuple[Any, Events]:
        del task_index
        fresh = ppo.init(key).params
        state, count = replace_where(state, masks_for(self.parts, state.params), fresh)
        return state, {"reset/params": float(count)}


def build(cfg: Any) -> Reset:
    return Reset(parts=tuple(cfg.reset.parts))
