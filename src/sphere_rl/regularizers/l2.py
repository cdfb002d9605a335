"""L2 regularisation towards zero and L2-init (regenerative regularisation) as penalty terms.

- `l2`: 0.5 * sum over every parameter of the network of theta^2 (coupled L2: the term is in the loss
  Adam sees, as torch's Adam `weight_decay` and Plasticine's L2 baseline; not AdamW).
- `l2_init` (Kumar, Marklund, Van Roy 2023, *Maintaining Plasticity in Continual Learning via
  Regenerative Regularization*): 0.5 * sum of (theta - theta_0)^2, theta_0 the parameters at the very
  start of training (the paper's "time step 0"; `l2_init.anchor=task`: at each task's start instead).
  The paper writes lambda ||theta - theta_0||^2; the official code (skumar9876/L2_Init, agents.py) adds
  0.5 lambda sum (theta - theta_0)^2, which we follow, so the paper's lambda is twice ours.

Both cover every parameter, biases and the actor's log_std included, as the official code covers
every trainable parameter. The term is `penalty`; PPO weights it (`<method>.mode`, `<method>.coef`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from sphere_rl.regularizers.base import Info, Regularizer


def half_squared_norm(tree: Any) -> jax.Array:
    """0.5 * sum of squares of every leaf of a pytree."""
    return 0.5 * sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def half_squared_distance(tree: Any, anchor: Any) -> jax.Array:
    """0.5 * sum of squared differences between two pytrees of the same structure."""
    return 0.5 * sum(jnp.sum(jnp.square(x - a)) for x, a in zip(jax.tree.leaves(tree), jax.tree.leaves(anchor)))


@dataclass(frozen=True)
class L2(Regularizer):
    """0.5 ||theta||^2 over a network's parameters."""

    coef: float = 1e-3
    name: str = "l2"

    @property
    def coefs(self) -> dict[str, float]:
        return {"penalty": self.coef}

    def penalty(self, out: Any, params: Any, state: Any = None) -> tuple[dict[str, jax.Array], Info]:
        del out, state
        return {"penalty": half_squared_norm(params)}, {}


@dataclass(frozen=True)
class L2Init(Regularizer):
    """0.5 ||theta - theta_0||^2, theta_0 kept in the regulariser's state (checkpointed)."""

    coef: float = 1e-2
    anchor: str = "init"
    name: str = "l2_init"

    @property
    def coefs(self) -> dict[str, float]:
        return {"penalty": self.coef}

    def init_state(self, params: Any) -> Any:
        return jax.tree.map(jnp.array, params)  # a copy: the parameters at the very start

    def on_task_start(self, state: Any, params: Any) -> Any:
        return jax.tree.map(jnp.array, params) if self.anchor == "task" else state

    def penalty(self, out: Any, params: Any, state: Any = None) -> tuple[dict[str, jax.Array], Info]:
        del out
        return {"penalty": half_squared_distance(params, jax.lax.stop_gradient(state))}, {}
