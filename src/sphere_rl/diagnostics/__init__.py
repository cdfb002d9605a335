"""Plasticity diagnostics.

- `spectral`: effective rank, routing-weighted features and the proxy Gram A (shared with SPHERE).
- `ntk`: the exact empirical NTK K of the action mean (generic and structured paths) and its spectrum.
- `plasticity`: dormant units, active units, feature ranks, weight change, entropy, expert load.
- `probe`: the fixed probe sets diagnostics are measured on.
- `suite`: `diagnose`, all of the above on one probe set as one flat metrics dict.
"""

from sphere_rl.diagnostics.ntk import (
    NTKSpectrum,
    UnsupportedNetworkError,
    actor_ntk,
    empirical_ntk,
    ntk_spectrum,
    structured_ntk,
)
from sphere_rl.diagnostics.probe import ProbeSet
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
from sphere_rl.diagnostics.suite import Diagnosis, diagnose

__all__ = [
    "Diagnosis",
    "EffectiveRankReport",
    "NTKSpectrum",
    "ProbeSet",
    "UnsupportedNetworkError",
    "actor_ntk",
    "diagnose",
    "effective_rank",
    "effective_rank_jnp",
    "effective_rank_with_report",
    "empirical_ntk",
    "gram",
    "ntk_spectrum",
    "phi_effective_rank_jnp",
    "proxy_effective_rank",
    "proxy_eigenvalues",
    "proxy_gram",
    "proxy_top_eigenvalues",
    "routing_weighted_expert_features",
    "routing_weighted_features",
    "structured_ntk",
]
