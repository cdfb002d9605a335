"""ReDo: recycle dormant units (Sokar, Agarwal, Castro, Evci 2023, *The Dormant Neuron Phenomenon in Deep
Reinforcement Learning*, ICML; official code google/dopamine, `dopamine/labs/redo/weight_recyclers.py`).

Every `redo.every` update phases, each hidden unit gets the score s_i = E_x|h_i(x)| / ((1/H) sum_k
E_x|h_k(x)|) on the current task's probe states (h the post-activation output; for an MoE expert, the
states routed to it, as the `dormant_ratio` diagnostic); a unit with s_i <= tau is dormant and is
recycled as the official code does:
- its incoming weights get the values of a fresh initialisation (the network's own init), its bias 0;
- its outgoing weights (the next layer's row, or the head's) are set to 0, so the network's outputs
  do not change at the moment of recycling;
- the Adam moments of all these weights (and of the bias) are zeroed, the step count is kept.
Hidden layers of the actor's experts or trunk and of the critic's trunk are recycled; output layers are
not (the official code skips the last layer), and neither is an MoE's gating MLP. With CReLU a unit feeds
two features ([ReLU(x), ReLU(-x)]): it is dormant when both are, and both outgoing rows are zeroed. The event
`redo/units` counts the units recycled (per network: `redo/actor_units`, `redo/critic_units`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sphere_rl.diagnostics.plasticity import dormant_mask
from sphere_rl.methods.base import Edit, Events, Intervention, edit_elements, networks_of
from sphere_rl.nets.moe import with_dense_dispatch


def layer_paths(params: Any, layer: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(path of hidden layer `layer`'s Dense, path of the Dense that reads it) in a network's params:
    `params/moe/experts/layer_<l>` (MoE experts, leading expert axis) or `params/trunk/dense_<l>` (MLP)."""
    p = params["params"]
    if "moe" in p:
        base = ("params", "moe", "experts")
        nxt = f"layer_{layer + 1}"
        return (*base, f"layer_{layer}"), (*base, nxt if nxt in p["moe"]["experts"] else "head")
    if "trunk" in p:
        nxt = f"dense_{layer + 1}"
        if nxt in p["trunk"]:
            return ("params", "trunk", f"dense_{layer}"), ("params", "trunk", nxt)
        head = "mean_head" if "mean_head" in p else "value_head"
        return ("params", "trunk", f"dense_{layer}"), ("params", head)
    raise ValueError("redo: a network without an MLP trunk or MoE experts")


def _hidden_widths(params: Any) -> list[int]:
    """The number of units of every hidden layer (the output width of its Dense)."""
    widths, layer = [], 0
    while True:
        try:
            inc, _ = layer_paths(params, layer)
            widths.append(int(_get(params, (*inc, "kernel")).shape[-1]))
        except KeyError:
            return widths
        layer += 1


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def recycle_plan(params: Any, fresh: Any, dormant: list[np.ndarray]) -> dict[tuple[str, ...], Edit]:
    """{parameter path: Edit} that recycles `dormant[l]` ((E, H), or (1, H) for an MLP) units of every hidden
    layer l: incoming kernel columns from `fresh`, biases 0, outgoing rows 0. Where a weight is both (a
    recycled unit's outgoing weight into a recycled unit of the next layer) the fresh value wins, as in the
    official code, which recycles layer by layer."""
    plan: dict[tuple[str, ...], Edit] = {}

    def add(path: tuple[str, ...], zero: np.ndarray | None = None, take: np.ndarray | None = None) -> None:
        shape = np.shape(_get(params, path))
        edit = plan.get(path, Edit(np.zeros(shape, bool), np.zeros(shape, bool), _get(fresh, path)))
        plan[path] = Edit(edit.zero | (np.broadcast_to(zero, shape) if zero is not None else False),
                          edit.take | (np.broadcast_to(take, shape) if take is not None else False), edit.fresh)

    for layer, mask in enumerate(dormant):
        if not mask.any():
            continue
        inc, out = layer_paths(params, layer)
        kernel = _get(params, (*inc, "kernel"))
        units = mask if kernel.ndim == 3 else mask[0]  # (E, H) or (H,)
        add((*inc, "kernel"), take=units[..., None, :])  # incoming: the unit's column
        add((*inc, "bias"), zero=units)
        rows = units
        if _get(params, (*out, "kernel")).shape[-2] == 2 * kernel.shape[-1]:  # CReLU: unit j feeds rows j and H + j
            rows = np.concatenate([units, units], axis=-1)
        add((*out, "kernel"), zero=rows[..., :, None])  # outgoing: the unit's row(s)
    return plan


@dataclasses.dataclass(frozen=True)
class ReDo(Intervention):
    """Recycle tau-dormant hidden units every `every` update phases."""

    tau: float = 0.025
    every: int = 10
    networks: tuple[str, ...] = ("actor", "critic")
    name: str = "redo"

    @property
    def first_iteration(self) -> int | None:
        return self.every - 1

    def due(self, iteration: int) -> bool:
        return (iteration + 1) % self.every == 0

    def dormant_units(self, ppo: Any, state: Any, obs: jax.Array) -> dict[str, list[np.ndarray]]:
        """{network: [(E, H) bool per hidden layer]} on `obs` (normalised observations)."""
        out = {}
        for name in self.networks:
            module = with_dense_dispatch(ppo.actor if name == "actor" else ppo.critic)
            features = module.apply(state.params[name], obs).features
            hidden, gates = jax.device_get((features.hidden, features.gates))
            weights = (np.asarray(gates) > 0).T.astype(np.float64)  # (E, B): the states each expert serves
            masks = []
            for h, width in zip(hidden, _hidden_widths(state.params[name])):
                mask = dormant_mask(np.asarray(h), self.tau, weights)
                if mask.shape[-1] == 2 * width:  # CReLU: a unit is dormant when both of its halves are
                    mask = mask[..., :width] & mask[..., width:]
                masks.append(mask)
            out[name] = masks
        return out

    def after_iteration(self, ppo: Any, state: Any, obs: jax.Array, key: jax.Array, iteration: int) -> tuple[Any, Events]:
        if not self.due(iteration):
            return state, {}
        events: Events = {}
        fresh = ppo.init(key).params
        total = 0
        for name, dormant in self.dormant_units(ppo, state, obs).items():
            plan = recycle_plan(state.params[name], fresh[name], dormant)
            state = edit_elements(state, name, plan)
            count = int(sum(int(m.sum()) for m in dormant))
            events[f"redo/{name}_units"] = float(count)
            total += count
        events["redo/units"] = float(total)
        return state, events


def build(cfg: Any) -> ReDo:
    r = cfg.redo
    return ReDo(tau=r.tau, every=r.every, networks=networks_of(r.networks))
