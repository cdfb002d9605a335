"""Shrink & Perturb (Ash & Adams 2020, *On Warm-Starting Neural Network Training*, NeurIPS;
code JordanAsh/warm_start).

theta <- shrink * theta + perturb * theta_fresh, theta_fresh a new sample of the network's own
initialisation (so the noise has each layer's init scale: kernels, biases, the log standard deviation).
`shrink=0, perturb=1` is a fresh network, `shrink=1, perturb=0` keeps the agent as it is.

When: at every CRL task switch (`shrink_perturb.at_switch`, the paper's moment: each time new data
arrive) and/or every `shrink_perturb.every` update phases (the per-update variant of Kumar et al. 2023
and Plasticine, with shrink close to 1). Defaults are the warm_start README's example (shrink 0.4,
perturb 0.1) at task switches. Every parameter of the chosen networks changes, so their Adam moments are
zeroed (`shrink_perturb.moments=zero`, as `reset`); `keep` leaves them as the per-step implementations do.
The event `shrink_perturb/params` counts the scalars changed. The observation normaliser is untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from sphere_rl.methods.base import Events, Intervention, networks_of, replace_where


@dataclasses.dataclass(frozen=True)
class ShrinkPerturb(Intervention):
    shrink: float = 0.4
    perturb: float = 0.1
    at_switch: bool = True
    every: int = 0
    networks: tuple[str, ...] = ("actor", "critic")
    zero_moments: bool = True
    name: str = "shrink_perturb"

    @property
    def acts_after_iterations(self) -> bool:
        return self.every > 0

    @property
    def first_iteration(self) -> int | None:
        return self.every - 1 if self.every > 0 else None

    def apply(self, ppo: Any, state: Any, key: jax.Array) -> tuple[Any, Events]:
        """The agent with every parameter of `networks` shrunk and perturbed by a fresh init drawn from `key`."""
        fresh = ppo.init(key).params
        mixed = {n: jax.tree.map(lambda old, new: self.shrink * old + self.perturb * new, state.params[n], fresh[n])
                 for n in self.networks}
        masks = {n: jax.tree.map(lambda _: True, state.params[n]) for n in self.networks}
        if self.zero_moments:
            state, count = replace_where(state, masks, mixed)
        else:
            state = state.replace(params={**state.params, **mixed})
            count = sum(int(x.size) for n in self.networks for x in jax.tree.leaves(state.params[n]))
        return state, {"shrink_perturb/params": float(count)}

    def on_task_switch(self, ppo: Any, state: Any, key: jax.Array, task_index: int) -> tuple[Any, Events]:
        del task_index
        return self.apply(ppo, state, key) if self.at_switch else (state, {})

    def after_iteration(self, ppo: Any, state: Any, obs: jax.Array, key: jax.Array, iteration: int) -> tuple[Any, Events]:
        del obs
        if self.every <= 0 or (iteration + 1) % self.every:
            return state, {}
        return self.apply(ppo, state, key)


def build(cfg: Any) -> ShrinkPerturb:
    s = cfg.shrink_perturb
    return ShrinkPerturb(shrink=s.shrink, perturb=s.perturb, at_switch=s.at_switch, every=s.every,
                         networks=networks_of(s.networks),
                         zero_moments=s.moments == "zero")
