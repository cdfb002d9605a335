"""TRAC: a parameter-free wrapper around the base optimiser for lifelong RL (Muppidi, Zhang, Yang 2024,
*Fast TRAC: A Parameter-Free Optimizer for Lifelong Reinforcement Learning*, NeurIPS; official code
ComputationalRobotics/TRAC, `trac_optimizer/trac.py`).

TRAC keeps the base optimiser's (Adam's) trajectory un-scaled and decides online how far from the
reference point theta_ref (the parameters the optimiser started from) to go along it. Each step, with
g the (clipped) gradient, u the base optimiser's update and S = sum_i s_i the current scale:

    delta = (theta - theta_ref) / (S + eps)          the un-scaled displacement so far
    h     = <delta, g>                               summed over every parameter of the network
    delta = delta + u
    v_i   = beta_i^2 v_i + h^2,  sigma_i = beta_i sigma_i - h        (i = 1..n betas)
    s_i   = s_prev / erfi(1/sqrt 2) * erfi(sigma_i / (sqrt 2 sqrt v_i + eps))
    theta = theta_ref + max(sum_i s_i, 0) delta

State at the first step: s = 0, sigma = 1e-8, v = 0, theta_ref = the parameters. Defaults (official
PyTorch file): betas (0.9, 0.99, ..., 0.999999), s_prev 1e-8, eps 1e-8. The official JAX file differs (s
starts at s_prev, no clamp at 0); `trac.variant=torch` (default) follows the PyTorch one, which the paper's
experiments ran, `jax` the optax one. A trap of the PyTorch rule, seen on a small test run's actor: once
sum s turns negative (one step whose h > 0 early on, while sigma is still ~1e-8), theta = theta_ref, so the
next delta is 0, h = 0 and s never changes again: that network stays at theta_ref for the rest of the run.
The `jax` variant has no clamp and does not freeze. `trac/scale` (sum s, before the clamp) shows it.

erfi(x) = 2/sqrt(pi) e^{x^2} D(x), D Dawson's integral (`jax.scipy.special.dawsn`). In float32 e^{x^2}
overflows past x = 9.4, so x is clipped to [-9, 9] (erfi(9) = 9.4e33, still far beyond any useful scale);
the official code would return inf there. Each network (actor, critic) has its own optimiser, so its own
TRAC state: h sums over that network's parameters (the official Procgen agent has one optimiser for all).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

BETAS = (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999)
X_MAX = 9.0
"""|erfi argument| clip: erfi(9) = 9.4e33 is finite in float32, erfi(9.5) is not."""


def erfi(x: jax.Array) -> jax.Array:
    """The imaginary error function for real x, |x| <= 9.4 in float32 (larger |x| overflow to inf)."""
    return 2.0 / math.sqrt(math.pi) * jnp.exp(jnp.square(x)) * jax.scipy.special.dawsn(x)


class TracState(NamedTuple):
    base: Any
    """The base optimiser's state (Adam's moments and step count)."""
    ref: Any
    """theta_ref: the parameters the optimiser was initialised with."""
    s: jax.Array
    """(n,) the scales; their sum is how far along the base trajectory theta is."""
    sigma: jax.Array
    v: jax.Array


def trac(base: optax.GradientTransformation, betas: tuple[float, ...] = BETAS, s_prev: float = 1e-8,
         eps: float = 1e-8, variant: str = "torch") -> optax.GradientTransformation:
    """`base` wrapped in TRAC; its updates are theta_new - theta as the formula above gives them.
    `variant="jax"`: the official optax file's two differences (s starts at s_prev, no clamp at 0)."""
    if variant not in ("torch", "jax"):
        raise ValueError(f"trac variant must be 'torch' or 'jax', got {variant!r}")
    b = jnp.asarray(betas, jnp.float32)
    norm = s_prev / float(2.0 / math.sqrt(math.pi) * math.exp(0.5) * _dawson(1.0 / math.sqrt(2.0)))

    def init(params: Any) -> TracState:
        n = len(betas)
        return TracState(base=base.init(params), ref=jax.tree.map(jnp.asarray, params),
                         s=jnp.full(n, s_prev if variant == "jax" else 0.0, jnp.float32), sigma=jnp.full(n, 1e-8, jnp.float32), v=jnp.zeros(n, jnp.float32))

    def update(grads: Any, state: TracState, params: Any = None) -> tuple[Any, TracState]:
        if params is None:
            raise ValueError("trac needs the parameters in update()")
        base_updates, base_state = base.update(grads, state.base, params)
        total = jnp.sum(state.s)
        delta = jax.tree.map(lambda p, r: (p - r) / (total + eps), params, state.ref)
        h = sum(jnp.vdot(d, g) for d, g in zip(jax.tree.leaves(delta), jax.tree.leaves(grads)))
        delta = jax.tree.map(jnp.add, delta, base_updates)
        v = jnp.square(b) * state.v + jnp.square(h)
        sigma = b * state.sigma - h
        x = jnp.clip(sigma / (math.sqrt(2.0) * jnp.sqrt(v) + eps), -X_MAX, X_MAX)
        s = norm * erfi(x)
        scale = jnp.maximum(jnp.sum(s), 0.0) if variant == "torch" else jnp.sum(s)
        updates = jax.tree.map(lambda r, d, p: (r + scale * d - p).astype(p.dtype), state.ref, delta, params)
        return updates, TracState(base=base_state, ref=state.ref, s=s, sigma=sigma, v=v)

    return optax.GradientTransformation(init, update)


def _dawson(x: float) -> float:
    """Dawson's integral D(x) = e^{-x^2} int_0^x e^{t^2} dt for the constant erfi(1/sqrt 2), by its series
    sum_k (-1)^k 2^k x^{2k+1} / (1 3 5 ... (2k+1)) (converges for every x; used at x = 0.707 only)."""
    term, total, k = x, x, 0
    while abs(term) > 1e-17:
        k += 1
        term *= -2.0 * x * x / (2 * k + 1)
        total += term
    return total


def scale_of(opt_state: Any) -> jax.Array:
    """The current TRAC scale sum s (before the `torch` variant's clamp at 0) inside one network's optimiser
    state (NaN without TRAC)."""
    found = [node for node in jax.tree.leaves(opt_state, is_leaf=lambda n: isinstance(n, TracState))
             if isinstance(node, TracState)]
    return jnp.sum(found[0].s) if found else jnp.asarray(jnp.nan)
