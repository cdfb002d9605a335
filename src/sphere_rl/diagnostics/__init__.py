"""Plasticity diagnostics; `spectral` holds the effective-rank and proxy-Gram core."""

from sphere_rl.diagnostics.spectral import (
    EffectiveRankReport,
    effective_rank,
    effective_rank_jnp,
    effective_rank_with_report,
    gram,
    phi_effective_rank_jnp,
    proxy_effective_rank,
    proxy_eigenvalues,
    proxy_gram,
    proxy_top_eigenvalues,
    routing_weighted_expert_features,
    routing_weighted_features,
)

__all__ = [
    "EffectiveRankReport",
    "effective_rank",
    "effective_rank_jnp",
    "effective_rank_with_report",
    "gram",
    "phi_effective_rank_jnp",
    "proxy_effective_rank",
    "proxy_eigenvalues",
    "proxy_gram",
    "proxy_top_eigenvalues",
    "routing_weighted_expert_features",
    "routing_weighted_features",
]
