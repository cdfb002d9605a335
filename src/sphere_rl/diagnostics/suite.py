"""Every diagnostic of an actor on a probe set in one call: r_e(K), the proxy r_e(A), plasticity metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from sphere_rl.diagnostics.ntk import DEFAULT_MEMORY_BUDGET, actor_ntk, ntk_spectrum
from sphere_rl.diagnostics.plasticity import plasticity_metrics
from sphere_rl.diagnostics.spectral import effective_rank, proxy_eigenvalues, top_eigenvalues
from sphere_rl.nets.moe import with_dense_dispatch


MetricFn = Callable[..., dict[str, float]]
"""`fn(actor_out, actor_params, anchor_params, *, dormant_tau) -> {column: value}` on a probe set."""

METRICS: dict[str, MetricFn] = {}
"""Extra diagnostics computed in every `diagnose` call (and so in every diagnostics.csv row)."""


def register_metric(name: str, fn: MetricFn) -> None:
    """Add a metric family to every diagnostics row; its keys become diagnostics.csv columns."""
    METRICS[name] = fn


register_metric("plasticity", lambda out, params, anchor, *, dormant_tau: plasticity_metrics(out, params, anchor, tau=dormant_tau))


@dataclass(frozen=True)
class Diagnosis:
    """Flat scalar metrics (the diagnostics.csv columns) plus the spectra they summarise."""

    metrics: dict[str, float]
    ntk_eigenvalues: np.ndarray | None
    """Eigenvalues of K, descending (None when the eNTK was not computed)."""
    proxy_eigenvalues: np.ndarray
    """Eigenvalues of A at the last hidden layer, descending."""

    def to_dict(self, n_eigenvalues: int | None = None) -> dict[str, Any]:
        """JSON-ready: metrics and the leading `n_eigenvalues` of each spectrum (all when None)."""
        cut = slice(None) if n_eigenvalues is None else slice(0, n_eigenvalues)
        return {
            "metrics": dict(self.metrics),
            "ntk_eigenvalues": None if self.ntk_eigenvalues is None else self.ntk_eigenvalues[cut].tolist(),
            "proxy_eigenvalues": self.proxy_eigenvalues[cut].tolist(),
        }


def diagnose(
    actor: nn.Module,
    actor_params: Any,
    obs: jax.Array,
    *,
    anchor_params: Any = None,
    ntk: bool = True,
    ntk_method: str = "structured",
    ntk_reduction: str = "trace",
    n_top: int = 3,
    dormant_tau: float = 0.025,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    fit_steps: int = 0,
    fit_lr: float = 1e-3,
) -> Diagnosis:
    """Diagnostics of `actor` on the (already normalised) probe states `obs`.

    Keys: `ntk/effective_rank`, `ntk/eig_1..n_top`, `ntk/trace`, `ntk/eig_min` (smallest eigenvalue above
    the numerical-zero tolerance), `ntk/condition` (λ_max / eig_min), `ntk/numerical_rank`, `ntk/clipped_fraction`,
    `ntk/seconds`, `grad_norm` (RMS over states of the Frobenius norm of ∂f(x)/∂θ, = sqrt(Tr K / N))
    when `ntk`; `proxy/effective_rank`, `proxy/eig_1..n_top` (last hidden layer),
    `proxy/effective_rank/layer_l` (every hidden layer); `n_states`; and the keys of every registered
    metric family (`METRICS`; by default `plasticity_metrics`).
    `anchor_params` (the actor at the task's start) adds the weight-change metrics. `fit_steps` > 0 adds
    the target-fitting probe (`fit/auc`, `fit/final`, `fit/initial_loss`; `diagnostics.fitting`).
    MoE actors are measured with dense dispatch (same function; every expert's features on every state).
    """
    actor = with_dense_dispatch(actor)
    out = actor.apply(actor_params, obs)
    metrics: dict[str, float] = {"n_states": float(obs.shape[0])}
    ntk_eigenvalues = None
    if ntk:
        start = time.perf_counter()
        kernel = actor_ntk(actor, actor_params, obs, reduction=ntk_reduction, method=ntk_method,
                           memory_budget=memory_budget)
        spectrum = ntk_spectrum(kernel)
        ntk_eigenvalues = spectrum.eigenvalues
        metrics["ntk/effective_rank"] = spectrum.effective_rank
        metrics.update({f"ntk/eig_{i + 1}": v for i, v in enumerate(spectrum.top(n_top).tolist())})
        metrics["ntk/trace"] = spectrum.trace
        metrics["ntk/eig_min"] = spectrum.min_nonzero
        metrics["ntk/condition"] = spectrum.condition
        metrics["ntk/numerical_rank"] = float(spectrum.numerical_rank)
        metrics["ntk/clipped_fraction"] = spectrum.clipped_fraction
        metrics["grad_norm"] = float(np.sqrt(max(spectrum.trace, 0.0) / obs.shape[0]))
        metrics["ntk/seconds"] = time.perf_counter() - start

    features = jax.device_get(out.features)
    n_layers = len(features.hidden)
    layer_eigenvalues = [proxy_eigenvalues(features, layer) for layer in range(n_layers)]
    last = layer_eigenvalues[-1]
    metrics["proxy/effective_rank"] = effective_rank(last)
    metrics.update({f"proxy/eig_{i + 1}": v for i, v in enumerate(top_eigenvalues(last, n_top).tolist())})
    for layer, eigenvalues in enumerate(layer_eigenvalues):
        metrics[f"proxy/effective_rank/layer_{layer}"] = effective_rank(eigenvalues)
    for fn in METRICS.values():
        metrics.update(fn(out, actor_params, anchor_params, dormant_tau=dormant_tau))
    if fit_steps:
        from sphere_rl.diagnostics.fitting import fit_random_targets

        metrics.update(fit_random_targets(actor, actor_params, obs, jax.random.PRNGKey(0), steps=fit_steps, lr=fit_lr))
    return Diagnosis(metrics={k: float(v) for k, v in metrics.items()}, ntk_eigenvalues=ntk_eigenvalues,
                     proxy_eigenvalues=last)
