"""Parseval regularisation (Chung, Cherif, Meger, Precup 2024, *Parseval Regularization for Continual
Reinforcement Learning*, NeurIPS; official code wechu/parseval_reg, `parseval_reg/agent.py`).

For every hidden layer's weight matrix W (out x in, each row a neuron's incoming weights) the term is
||W W^T - s I||_F^2: the neurons' incoming weight vectors are pushed to be orthogonal with squared norm
s. Flax stores the kernel as K = W^T (in x out), so the term is ||K^T K - s I||_F^2. As in the official
code:
- every hidden Dense layer, the first (observations -> hidden) included; output layers (action-mean,
  value and router-logits heads) and biases excluded; an MoE's experts each count as their own layers,
  its gating MLP's hidden layers too;
- s is fixed: the squared gain of the initialisation (the official orthogonal init with gain sqrt(2)
  gives 2; this library's default LeCun-normal init gives incoming-weight vectors of squared norm 1,
  so `parseval.scale` defaults to the init's: 1 for `net.init=official`, 2 for `orthogonal`);
- the coefficient is scaled by (64 / width)^2 (the official value was tuned at width 64), here per
  layer with its output width.
The official code's optional diagonal layer (a learnable per-unit scale after each hidden layer) is not
part of this term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from sphere_rl.nets.paths import path_names
from sphere_rl.regularizers.base import Info, Regularizer

_HIGHEST = jax.lax.Precision.HIGHEST


def hidden_kernels(params: Any) -> list[tuple[tuple[str, ...], jax.Array]]:
    """(path, kernel) of every hidden Dense layer of a network: `dense_<i>` (MLP trunks, the gate's MLP)
    and `layer_<i>` (MoE experts, kernel (E, in, out)); heads are not hidden layers."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = path_names(path)
        if names[-1] == "kernel" and any(n.startswith(("dense_", "layer_")) for n in names[:-1]):
            out.append((names, leaf))
    return out


def parseval_layer(kernel: jax.Array, scale: float) -> jax.Array:
    """||K^T K - s I||_F^2 of one (in, out) kernel, summed over the leading expert axis of (E, in, out)."""
    gram = jnp.einsum("...io,...ip->...op", kernel, kernel, precision=_HIGHEST)
    eye = jnp.eye(kernel.shape[-1], dtype=kernel.dtype)
    return jnp.sum(jnp.square(gram - scale * eye))


@dataclass(frozen=True)
class Parseval(Regularizer):
    """Sum over hidden layers of (64 / width)^2 ||W W^T - s I||_F^2 (the width factor folded into the term)."""

    coef: float = 1e-3
    scale: float = 1.0
    reference_width: int = 64
    name: str = "parseval"

    @property
    def coefs(self) -> dict[str, float]:
        return {"penalty": self.coef}

    def penalty(self, out: Any, params: Any, state: Any = None) -> tuple[dict[str, jax.Array], Info]:
        del out, state
        total = jnp.zeros((), jnp.float32)
        for _, kernel in hidden_kernels(params):
            width = kernel.shape[-1]
            total = total + (self.reference_width / width) ** 2 * parseval_layer(kernel, self.scale)
        return {"penalty": total}, {}
