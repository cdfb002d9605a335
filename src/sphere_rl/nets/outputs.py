"""The one structure every actor and critic returns, so regularisers and diagnostics never reach into internals.

Layout conventions (all arrays, batch size B, action dim A, hidden width H_l of layer l):

- `Features.hidden[l]` has shape (E, B, H_l): the post-activation output of hidden layer l of every
  expert, experts first (measured faster than batch-first on CPU). A dense MLP has E = 1.
  For DS-MoE the shared experts come first, then the routed ones.
- `Features.gates` (B, E): the weight each expert's output gets in the mixture, zero for experts
  not selected; same expert order as `hidden`. Shared DS-MoE experts have weight 1. A dense MLP
  reports ones (B, 1).
- `Features.logits` / `Features.probs` (B, E_routed): router logits and the full softmax over all
  routed experts (used by load balancing, routing entropy, the routing penalty). None for a dense MLP.
- `Features.expert_outputs` (E, B, A): every expert's head output before mixing (None for a dense MLP).
- `Features.n_shared`: how many leading experts in `hidden`/`gates` are shared (DS-MoE), else 0.
- `Features.assignments`: under sparse dispatch, the routed experts' results per (state, slot)
  assignment, the compact form of `hidden`/`gates` that SPHERE reads without materialising (E, B, H);
  None otherwise.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax


class Assignments(NamedTuple):
    """The B x k (state, routed expert) assignments of a Top-K router and what each expert computed."""

    index: jax.Array
    """(B, k) routed expert of each assignment (0-based among routed experts; distinct per state)."""
    gates: jax.Array
    """(B, k) gate weight of each assignment."""
    hidden: tuple[jax.Array, ...]
    """Per hidden layer (B, k, H_l): the assigned expert's post-activation features."""


class Features(NamedTuple):
    hidden: tuple[jax.Array, ...]
    gates: jax.Array
    logits: Optional[jax.Array] = None
    probs: Optional[jax.Array] = None
    expert_outputs: Optional[jax.Array] = None
    n_shared: int = 0
    assignments: Optional[Assignments] = None


class ActorOutput(NamedTuple):
    """Gaussian policy head: `mean` (B, A) pre-clipping, `log_std` (A,) state-independent."""

    mean: jax.Array
    log_std: jax.Array
    features: Features
    aux_loss: jax.Array
    """Auxiliary load-balancing loss (already multiplied by its coefficient; 0 when disabled)."""


class CriticOutput(NamedTuple):
    value: jax.Array
    """(B,) state values."""
    features: Features
    aux_loss: jax.Array
