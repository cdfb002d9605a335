"""Routers (logits -> gate weights) and the Switch-Transformer load-balancing loss, as pure functions."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Routing(NamedTuple):
    """What a router decides for a batch of B states over E routed experts."""

    gates: jax.Array
    """(B, E) mixture weights, zero for experts that were not selected."""
    selected: jax.Array
    """(B, E) 1.0 where the expert was selected (an assignment), else 0.0. No gradient."""
    probs: jax.Array
    """(B, E) full softmax of logits / temperature over all routed experts."""
    index: jax.Array | None = None
    """(B, k) indices of the selected experts (distinct per row); None when every expert is used."""


def topk_routing(logits: jax.Array, top_k: int, temperature: float) -> Routing:
    """Keep the top-k logits per row, softmax over them at `temperature`, zero the rest.

    `jax.lax.top_k` breaks ties in favour of the lower expert index, so routing is deterministic.
    """
    n_experts = logits.shape[-1]
    kept_logits, kept_index = jax.lax.top_k(logits, top_k)
    kept_gates = jax.nn.softmax(kept_logits / temperature, axis=-1)
    one_hot = jax.nn.one_hot(kept_index, n_experts, dtype=logits.dtype)  # (B, k, E)
    gates = jnp.einsum("bk,bke->be", kept_gates, one_hot)
    selected = jax.lax.stop_gradient(one_hot.sum(axis=-2))
    probs = jax.nn.softmax(logits / temperature, axis=-1)
    return Routing(gates=gates, selected=selected, probs=probs, index=kept_index)


def softmax_routing(logits: jax.Array, top_k: int, temperature: float) -> Routing:
    """Dense (soft) routing: every expert weighted by the full softmax; `top_k` is ignored."""
    del top_k
    probs = jax.nn.softmax(logits / temperature, axis=-1)
    selected = jnp.ones_like(logits)
    return Routing(gates=probs, selected=selected, probs=probs)


Router = Callable[[jax.Array, int, float], Routing]

ROUTERS: dict[str, Router] = {"topk": topk_routing, "softmax": softmax_routing}


def load_balance_loss(probs: jax.Array, selected: jax.Array) -> jax.Array:
    """Switch-Transformer auxiliary loss `E * sum_e f_e * P_e` (unweighted).

    f_e: fraction of all (state, slot) assignments that went to expert e (no gradient);
    P_e: mean router probability of expert e over the batch. It equals 1 for perfectly balanced
    routing; with dense (softmax) routing every expert gets every state, f_e = 1/E and the loss is
    the constant 1 (no gradient).
    """
    n_experts = probs.shape[-1]
    selected = jax.lax.stop_gradient(selected)
    fraction = selected.sum(axis=0) / jnp.maximum(selected.sum(), 1.0)
    mean_prob = probs.mean(axis=0)
    return n_experts * jnp.sum(fraction * mean_prob)
