"""Plasticity injection (Nikishin, Oh, Ostrovski, Lyle, Pascanu, Dabney, Barreto 2023, *Deep Reinforcement
Learning with Plasticity Injection*, NeurIPS; arXiv 2305.15555).

At the injection the agent keeps its function and gets new trainable parameters: each chosen network
becomes

    f(x) = f_theta'(x) + stop_gradient(f_theta(x) - f_theta'_0(x)),

theta the parameters at the injection (frozen from then on), theta'_0 a fresh sample of the network's
initialisation (frozen) and theta' the trainable parameters, starting at theta'_0. At the injection the
offset cancels the new network exactly, so the policy and the values do not jump; from then on every
gradient step trains a network as plastic as a new one, without the cost of relearning what theta knew.

The paper injects into the head of a convolutional Q-network (the layers after the encoder, which keeps
training). Our actors and critics are MLPs (or MoE layers) without a separate encoder, and injecting into
their last linear layer alone would change nothing that zeroing that layer's Adam moments does not
(theta + theta' - theta'_0 is one linear map whose gradient is theta''s), so the whole network is
injected. The paper injects once; so does this method: at the start of CRL task `injection.at_task` and/or
after update phase `injection.after_iterations` of a task (the single-task protocol of the paper), whichever
comes first. The frozen pairs live in `AgentState.injection` from the start (equal to the live parameters,
offset exactly 0, until the injection), so the jitted functions and checkpoints keep one shape. The live
parameters' Adam moments are zeroed. Diagnostics measure the live network theta', whose Jacobian is the
injected function's (its eNTK is exact; features and dormant units are the new network's).
The event `injection/params` counts the scalars of the new trainable parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from sphere_rl.methods.base import Events, Intervention, networks_of, replace_where


def initial_state(params: dict[str, Any], networks: tuple[str, ...]) -> dict[str, Any]:
    """`AgentState.injection` before any injection: not active, each frozen pair equal to the live
    parameters (so the offset is exactly 0)."""
    return {"active": jnp.asarray(False), **{n: {"old": params[n], "init": params[n]} for n in networks}}


def is_active(injection: Any) -> bool:
    return injection is not None and bool(jax.device_get(injection["active"]))


@dataclasses.dataclass(frozen=True)
class Injection(Intervention):
    at_task: int = 1
    after_iterations: int = 0
    networks: tuple[str, ...] = ("actor", "critic")
    name: str = "injection"

    @property
    def acts_after_iterations(self) -> bool:
        return self.after_iterations > 0

    @property
    def first_iteration(self) -> int | None:
        return self.after_iterations - 1 if self.after_iterations > 0 else None

    def apply(self, ppo: Any, state: Any, key: jax.Array) -> tuple[Any, Events]:
        """The agent after the injection: frozen pairs (current parameters, a fresh init drawn from `key`),
        live parameters = that fresh init with zeroed Adam moments. Does nothing when already injected."""
        if is_active(state.injection):
            return state, {}
        fresh = ppo.init(key).params
        injection = {"active": jnp.asarray(True),
                     **{n: {"old": state.params[n], "init": fresh[n]} for n in self.networks}}
        masks = {n: jax.tree.map(lambda _: True, state.params[n]) for n in self.networks}
        state, count = replace_where(state, masks, {n: fresh[n] for n in self.networks})
        return state.replace(injection=injection), {"injection/params": float(count)}

    def on_task_switch(self, ppo: Any, state: Any, key: jax.Array, task_index: int) -> tuple[Any, Events]:
        return self.apply(ppo, state, key) if task_index == self.at_task else (state, {})

    def after_iteration(self, ppo: Any, state: Any, obs: jax.Array, key: jax.Array, iteration: int) -> tuple[Any, Events]:
        del obs
        if self.after_iterations <= 0 or iteration + 1 != self.after_iterations:
            return state, {}
        return self.apply(ppo, state, key)


def build(cfg: Any) -> Injection:
    s = cfg.injection
    return Injection(at_task=s.at_task, after_iterations=s.after_iterations,
                     networks=networks_of(s.networks))
