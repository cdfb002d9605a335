"""A direct measure of plasticity: how fast a copy of the network can still fit something new.

The target-fitting probe of Lyle et al. (2022, "Understanding and preventing capacity loss in
reinforcement learning"): a copy of the actor's current parameters is trained, full batch, with
Adam, to regress fresh random targets on the probe states; the network itself is left untouched.
The targets are the action-mean outputs of a freshly initialised network of the same architecture
on the same states (a smooth function of the states, as in Lyle et al.), standardised per output
dimension, drawn from a fixed key so every checkpoint of a run fits the same targets.

Reported: `fit/auc`, the area under the normalised loss curve, mean over steps t = 1..T of
L_t / L_0 (lower: learns faster; 1 would be no progress at all), and `fit/final`, L_T / L_0.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

__all__ = ["fit_random_targets", "random_targets"]


def random_targets(actor: nn.Module, obs: jax.Array, key: jax.Array) -> jax.Array:
    """(N, A) targets: a fresh initialisation of `actor` evaluated on `obs`, standardised per column."""
    params = actor.init(key, obs[:1])
    y = actor.apply(params, obs).mean
    return (y - y.mean(axis=0)) / (y.std(axis=0) + 1e-6)


@partial(jax.jit, static_argnames=("actor", "steps"))
def _fit(actor: nn.Module, params: Any, obs: jax.Array, targets: jax.Array, steps: int, lr: float) -> jax.Array:
    tx = optax.adam(lr)

    def loss_fn(p: Any) -> jax.Array:
        return jnp.mean(jnp.square(actor.apply(p, obs).mean - targets))

    def step(carry: tuple[Any, Any], _: None) -> tuple[tuple[Any, Any], jax.Array]:
        p, opt = carry
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt), loss

    (last, _), losses = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return jnp.concatenate([losses, loss_fn(last)[None]])


def fit_random_targets(actor: nn.Module, params: Any, obs: jax.Array, key: jax.Array, *, steps: int = 200,
                       lr: float = 1e-3) -> dict[str, float]:
    """Train a copy of `params` for `steps` Adam steps (learning rate `lr`, full batch) to regress
    :func:`random_targets` on `obs`; returns `fit/auc`, `fit/final` and `fit/initial_loss`
    (see the module docstring). `params` are not changed (JAX arrays are immutable)."""
    targets = random_targets(actor, obs, key)
    losses = _fit(actor, params, obs, targets, steps, lr)  # L_0 .. L_T
    ratio = losses / losses[0]
    return {"fit/auc": float(jnp.mean(ratio[1:])), "fit/final": float(ratio[-1]), "fit/initial_loss": float(losses[0])}
