"""PPO loss terms for a diagonal Gaussian policy: pure functions of arrays."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(mean: jax.Array, log_std: jax.Array, actions: jax.Array) -> jax.Array:
    """Log-density of `actions` (B, A) under N(mean, exp(log_std)^2), summed over action dims -> (B,)."""
    z = (actions - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * jnp.square(z) - log_std - 0.5 * LOG_2PI, axis=-1)


def gaussian_entropy(log_std: jax.Array) -> jax.Array:
    """Entropy of a diagonal Gaussian, summed over action dims (state-independent std -> a scalar)."""
    return jnp.sum(log_std + 0.5 * (LOG_2PI + 1.0), axis=-1)


def normalize_advantages(advantages: jax.Array) -> jax.Array:
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def clipped_surrogate(log_prob: jax.Array, old_log_prob: jax.Array, advantages: jax.Array, clip_range: float) -> dict[str, jax.Array]:
    """PPO-clip policy loss (to minimise) with its diagnostics.

    Returns `policy_loss` = -mean(min(r A, clip(r, 1-eps, 1+eps) A)), `clip_fraction` and
    `approx_kl` = mean((r - 1) - log r) (the low-variance estimator used by SB3/SBX).
    """
    log_ratio = log_prob - old_log_prob
    ratio = jnp.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1.0 - clip_range, 1.0 + clip_range) * advantages
    return {
        "policy_loss": -jnp.mean(jnp.minimum(unclipped, clipped)),
        "clip_fraction": jnp.mean((jnp.abs(ratio - 1.0) > clip_range).astype(jnp.float32)),
        "approx_kl": jnp.mean((ratio - 1.0) - log_ratio),
    }


def approx_kl(log_ratio: jax.Array, eps: float = 0.0) -> jax.Array:
    """Approximate KL `mean((r - 1 + eps) - log(r + eps))`, r = exp(log_ratio). eps = 0: SB3's estimator
    (`clipped_surrogate`'s `approx_kl`); eps = 1e-7: the official SPHERE code's, which drives its
    adaptive learning rate."""
    ratio = jnp.exp(log_ratio)
    return jnp.mean((ratio - 1.0 + eps) - jnp.log(ratio + eps))


def value_loss(values: jax.Array, returns: jax.Array) -> jax.Array:
    """Unclipped mean squared error (SB3 default, clip_range_vf=None)."""
    return jnp.mean(jnp.square(returns - values))
