"""Spectral core shared by diagnostics and SPHERE: effective rank, routing-weighted features, proxy Gram A.

Conventions:
- `effective_rank(values, kind="eigenvalues")`: `values` are the eigenvalues of a PSD matrix
  (K, A, a covariance); p_i = lambda_i / sum_j lambda_j.
- `kind="singular_values"`: `values` are the singular values of a factor M whose Gram M^T M is
  the matrix of interest; they are squared first, so r_e(svd(Phi), "singular_values") equals
  r_e(eig(Phi^T Phi), "eigenvalues") = r_e(A). (Roy & Vetterli's r_e of M itself normalises
  sigma, not sigma^2: pass sigma with kind="eigenvalues" for that.)
- Negative eigenvalues are round-off of a PSD matrix: clipped to 0 before normalising. Their
  total, relative to the total absolute spectrum, is reported by `effective_rank_with_report`.
- 0 log 0 = 0; an all-zero spectrum has r_e = 0.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sphere_rl.nets.outputs import Features

SPECTRUM_KINDS = ("eigenvalues", "singular_values")
GRAM_SPACES = ("feature", "batch", "auto")


def _check_kind(kind: str) -> None:
    if kind not in SPECTRUM_KINDS:
        raise ValueError(f"kind must be one of {SPECTRUM_KINDS}, got {kind!r}")


class EffectiveRankReport(NamedTuple):
    effective_rank: float
    clipped_fraction: float
    """Sum of the negative eigenvalues' magnitudes / sum of all magnitudes (0 for a clean spectrum)."""


def effective_rank_with_report(values: np.ndarray, *, kind: str = "eigenvalues") -> EffectiveRankReport:
    """Effective rank (numpy, float64) plus how much negative round-off was clipped."""
    _check_kind(kind)
    values = np.asarray(values, dtype=np.float64).ravel()
    if kind == "singular_values":
        values = np.abs(values) ** 2
    total_abs = float(np.abs(values).sum())
    clipped_fraction = float(np.clip(-values, 0.0, None).sum() / total_abs) if total_abs > 0 else 0.0
    spectrum = np.clip(values, 0.0, None)
    total = spectrum.sum()
    if total <= 0.0:
        return EffectiveRankReport(0.0, clipped_fraction)
    p = spectrum / total
    nonzero = p[p > 0]
    entropy = -float(np.sum(nonzero * np.log(nonzero)))
    return EffectiveRankReport(float(np.exp(entropy)), clipped_fraction)


def effective_rank(values: np.ndarray, *, kind: str = "eigenvalues") -> float:
    """Roy & Vetterli effective rank exp(-sum p log p) of a spectrum (numpy, float64)."""
    return effective_rank_with_report(values, kind=kind).effective_rank


def effective_rank_jnp(values: jax.Array, *, kind: str = "eigenvalues") -> jax.Array:
    """`effective_rank` in jax.numpy, usable under jit/grad (same clipping and conventions)."""
    _check_kind(kind)
    values = jnp.ravel(values)
    if kind == "singular_values":
        values = jnp.square(values)
    spectrum = jnp.clip(values, 0.0, None)
    total = spectrum.sum()
    safe_total = jnp.where(total > 0, total, 1.0)
    p = spectrum / safe_total
    safe_p = jnp.where(p > 0, p, 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(safe_p), 0.0))
    return jnp.where(total > 0, jnp.exp(entropy), 0.0)


# -- routing-weighted features (the SPHERE / proxy input) ---------------------------------------------
def routing_weighted_expert_features(features: Features, layer: int = -1) -> jax.Array:
    """g_e(x) * h_e^l(x) for every expert, shape (E, T, H): experts first, like `features.hidden`.

    Shared DS-MoE experts carry their gate weight 1; a dense MLP is one expert with weight 1.
    """
    hidden = features.hidden[layer]
    return hidden * jnp.transpose(features.gates)[:, :, None].astype(hidden.dtype)


def routing_weighted_features(features: Features, layer: int = -1) -> jax.Array:
    """Phi = concat_e(g_e(x) * h_e^l(x)), shape (T, D) with D = E * H, expert-major columns."""
    weighted = routing_weighted_expert_features(features, layer)
    n_experts, batch, width = weighted.shape
    return jnp.transpose(weighted, (1, 0, 2)).reshape(batch, n_experts * width)


# -- proxy Gram A = Phi^T Phi / T (float64, numpy) ------------------------------------------------------
def _resolve_space(space: str, n_rows: int, n_cols: int) -> str:
    if space not in GRAM_SPACES:
        raise ValueError(f"space must be one of {GRAM_SPACES}, got {space!r}")
    if space == "auto":
        return "feature" if n_cols <= n_rows else "batch"
    return space


def gram(phi: np.ndarray, space: str = "feature") -> np.ndarray:
    """Phi^T Phi / T (D x D, `feature`) or Phi Phi^T / T (T x T, `batch`), float64.

    Both have the same nonzero eigenvalues, so any spectral statistic that ignores zeros (r_e, top
    eigenvalues, trace, Frobenius norm) can use the smaller one: `auto` picks it.
    """
    phi = np.asarray(phi, dtype=np.float64)
    n_rows, n_cols = phi.shape
    space = _resolve_space(space, n_rows, n_cols)
    return (phi.T @ phi if space == "feature" else phi @ phi.T) / n_rows


def proxy_gram(features: Features, layer: int = -1, space: str = "feature") -> np.ndarray:
    """The proxy matrix A = Phi^T Phi / T (D x D) of `layer`; `space="batch"`/`"auto"` as in `gram`."""
    return gram(np.asarray(routing_weighted_features(features, layer)), space)


def proxy_eigenvalues(features: Features, layer: int = -1, space: str = "auto") -> np.ndarray:
    """Eigenvalues of A in descending order (float64), from the cheaper space by default.

    From the batch space this returns the T eigenvalues of Phi Phi^T / T; the other D - T
    eigenvalues of A are exactly zero.
    """
    return np.linalg.eigvalsh(proxy_gram(features, layer, space))[::-1]


def proxy_effective_rank(features: Features, layer: int = -1, space: str = "auto") -> float:
    """r_e(A) of the routing-weighted features of `layer`."""
    return effective_rank(proxy_eigenvalues(features, layer, space))


def top_eigenvalues(eigenvalues: np.ndarray, k: int = 3) -> np.ndarray:
    """The first k of a descending spectrum, clipped at 0 and zero-padded to length k (float64)."""
    top = np.zeros(k, dtype=np.float64)
    n = min(k, eigenvalues.size)
    top[:n] = np.clip(eigenvalues[:n], 0.0, None)
    return top


def proxy_top_eigenvalues(features: Features, k: int = 3, layer: int = -1, space: str = "auto") -> np.ndarray:
    """The k largest eigenvalues of A (descending; zero-padded if the Gram has fewer than k)."""
    return top_eigenvalues(proxy_eigenvalues(features, layer, space), k)


def phi_effective_rank_jnp(phi: jax.Array) -> jax.Array:
    """r_e(Phi^T Phi / T) inside jit, from the smaller of the two Grams (eigvalsh in Phi's dtype)."""
    n_rows, n_cols = phi.shape
    highest = jax.lax.Precision.HIGHEST
    small = jnp.matmul(phi.T, phi, precision=highest) if n_cols <= n_rows else jnp.matmul(phi, phi.T, precision=highest)
    return effective_rank_jnp(jnp.linalg.eigvalsh(small / n_rows))
