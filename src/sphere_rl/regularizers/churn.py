"""C-CHAIN: reduce churn (Tang, Obando-Ceron, Castro, Courville, Berseth 2025, *Mitigating Plasticity Loss in
Continual Reinforcement Learning by Reducing Churn*, ICML; official code bluecontra/C-CHAIN,
`crl_dmc/crl_run_ppo_c_chain_dmc.py` for Gaussian PPO).

Churn is how much one update changes the network's outputs on states it was not updated on. The term,
on a *reference batch* (a second, independently shuffled minibatch of the same rollout, the official
"reg batch"), is the mean over states and action dimensions of (mu_theta(x) - mu_ref(x))^2, where
mu_ref is the action mean with the parameters one gradient step earlier (the official code keeps a
FIFO of agent copies and regularises towards the one before the current). The log standard deviation
is not regularised; the critic (value churn) is not regularised in the official PPO scripts either,
so `cchain.networks` defaults to the actor (on the critic the term is the squared value change).

The reference parameters live in the regulariser's state: after every applied minibatch step they
become the parameters that step started from; at a task start they are the current parameters (the
official DMC script restarts its copy list at each task), so the first step of a task has no churn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from sphere_rl.regularizers.base import Info, ReferenceOutputs, Regularizer


@dataclass(frozen=True)
class Churn(Regularizer):
    """Mean squared change of the action mean (actor) or value (critic) on the reference batch."""

    coef: float = 0.05
    name: str = "cchain"
    uses_reference_batch: bool = True

    @property
    def coefs(self) -> dict[str, float]:
        return {"penalty": self.coef}

    def init_state(self, params: Any) -> Any:
        return jax.tree.map(jnp.array, params)

    def on_task_start(self, state: Any, params: Any) -> Any:
        del state
        return jax.tree.map(jnp.array, params)

    def after_step(self, state: Any, params_before: Any, applied: Any) -> Any:
        return jax.tree.map(lambda old, new: jnp.where(applied, new, old), state, params_before)

    def penalty(self, out: ReferenceOutputs, params: Any, state: Any = None) -> tuple[dict[str, jax.Array], Info]:
        del params, state
        current, reference = out.current, out.reference
        if hasattr(current, "mean"):  # actor: the action mean; log_std is not regularised
            diff = current.mean - jax.lax.stop_gradient(reference.mean)
        else:
            diff = current.value - jax.lax.stop_gradient(reference.value)
        return {"penalty": jnp.mean(jnp.square(diff))}, {}
