"""Standard plasticity metrics on a probe set of states: dormant units, activity, feature rank,
weight drift, policy entropy and expert routing statistics.

Every function accepts jax or numpy arrays, computes in numpy float64 on the host and returns
python floats or float64 arrays. `plasticity_metrics` gathers them into one flat dict for logging.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import numpy as np

from sphere_rl.diagnostics.spectral import effective_rank, routing_weighted_features
from sphere_rl.nets.outputs import ActorOutput

ArrayLike = Any
DEFAULT_TAU = 0.025
LOG_STD_NAME = "log_std"


# -- shared shape handling -----------------------------------------------------------------------------
def _expert_stack(hidden: ArrayLike) -> np.ndarray:
    """(E, B, H) float64; a (B, H) layer is one expert."""
    stack = np.asarray(hidden, dtype=np.float64)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"hidden must have shape (E, B, H) or (B, H), got {stack.shape}")
    return stack


def _state_weights(weights: Optional[ArrayLike], n_experts: int, batch: int) -> np.ndarray:
    """(E, B) nonnegative float64 state weights; None means every state counts once for every expert."""
    if weights is None:
        return np.ones((n_experts, batch), dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim == 1:
        weights = weights[None]
    if weights.shape != (n_experts, batch):
        raise ValueError(f"weights must have shape (E, B) = {(n_experts, batch)}, got {weights.shape}")
    if np.any(weights < 0):
        raise ValueError("weights must be nonnegative")
    return weights


def _weighted_state_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-expert weighted mean over states of (E, B, H) values -> (E, H); NaN rows where an expert has no weight."""
    total = weights.sum(axis=1)
    weighted_sum = np.einsum("eb,ebh->eh", weights, values)
    mean = np.full_like(weighted_sum, np.nan)
    defined = total > 0
    mean[defined] = weighted_sum[defined] / total[defined, None]
    return mean


def _entropy(distribution: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy (nats) along `axis`, with 0 log 0 = 0."""
    safe = np.where(distribution > 0, distribution, 1.0)
    return -np.sum(np.where(distribution > 0, distribution * np.log(safe), 0.0), axis=axis)


# -- dormant units (ReDo) and activity -----------------------------------------------------------------
def dormant_scores(hidden: ArrayLike, weights: Optional[ArrayLike] = None) -> np.ndarray:
    """ReDo scores s_i = E_x|h_i(x)| / ((1/H) sum_k E_x|h_k(x)|), per expert: shape (E, H).

    Expectations are (weighted) means over the states of each expert. An expert with zero total
    weight has NaN scores; an expert whose whole layer is zero on its states scores 0 everywhere.
    """
    stack = _expert_stack(hidden)
    n_experts, batch, _ = stack.shape
    mean_abs = _weighted_state_mean(np.abs(stack), _state_weights(weights, n_experts, batch))
    layer_mean = mean_abs.mean(axis=1, keepdims=True)
    scores = np.zeros_like(mean_abs)
    np.divide(mean_abs, layer_mean, out=scores, where=layer_mean > 0)
    scores[np.isnan(layer_mean[:, 0])] = np.nan
    return scores


def dormant_mask(hidden: ArrayLike, tau: float = DEFAULT_TAU, weights: Optional[ArrayLike] = None) -> np.ndarray:
    """(E, H) bool: unit i of expert e is dormant when its ReDo score s_i <= tau.

    Units of experts without states (NaN scores) are False; `expert_dormant_ratios` reports them as NaN.
    """
    with np.errstate(invalid="ignore"):
        return dormant_scores(hidden, weights) <= tau


def expert_dormant_ratios(
    hidden: ArrayLike, tau: float = DEFAULT_TAU, weights: Optional[ArrayLike] = None
) -> np.ndarray:
    """(E,) fraction of each expert's units that are dormant; NaN for an expert with no states."""
    scores = dormant_scores(hidden, weights)
    with np.errstate(invalid="ignore"):
        ratios = (scores <= tau).mean(axis=1)
    ratios[np.isnan(scores[:, 0])] = np.nan
    return ratios


def dormant_ratio(hidden: ArrayLike, tau: float = DEFAULT_TAU, weights: Optional[ArrayLike] = None) -> float:
    """Fraction of dormant units over all experts that have states (NaN if none has)."""
    # Every expert has H units, so pooling over units is the mean over defined experts.
    ratios = expert_dormant_ratios(hidden, tau, weights)
    defined = ~np.isnan(ratios)
    return float(ratios[defined].mean()) if defined.any() else math.nan


def _expert_active_fractions(hidden: ArrayLike, weights: Optional[ArrayLike]) -> np.ndarray:
    """(E,) mean over each expert's (weighted) states and units of 1[h > 0]; NaN without states."""
    stack = _expert_stack(hidden)
    n_experts, batch, _ = stack.shape
    active_per_state = (stack > 0).mean(axis=2, keepdims=True)
    return _weighted_state_mean(active_per_state, _state_weights(weights, n_experts, batch))[:, 0]


def active_fraction(hidden: ArrayLike, weights: Optional[ArrayLike] = None) -> float:
    """Mean of 1[h > 0] over units and each expert's (weighted) states, pooled over experts with states."""
    fractions = _expert_active_fractions(hidden, weights)
    defined = ~np.isnan(fractions)
    return float(fractions[defined].mean()) if defined.any() else math.nan


# -- feature rank --------------------------------------------------------------------------------------
def _singular_values(matrix: ArrayLike) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {matrix.shape}")
    return np.linalg.svd(matrix, compute_uv=False)


def stable_rank(matrix: ArrayLike, threshold: float = 0.99) -> int:
    """Kumar et al. (2020) srank: smallest k whose top-k singular values reach `threshold` of their sum.

    An all-zero (or empty) matrix has srank 0.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    singular_values = np.sort(_singular_values(matrix))[::-1]
    cumulative = np.cumsum(singular_values)
    if cumulative.size == 0 or cumulative[-1] <= 0.0:
        return 0
    # Compare with the cumulative total itself, so threshold = 1 reaches exactly the last index.
    k = int(np.searchsorted(cumulative, threshold * cumulative[-1], side="left")) + 1
    return min(k, cumulative.size)


def feature_effective_rank(matrix: ArrayLike) -> float:
    """Effective rank of the Gram M^T M of a (B, D) feature matrix M (0 for a zero matrix)."""
    return effective_rank(_singular_values(matrix), kind="singular_values")


# -- weights -------------------------------------------------------------------------------------------
def _host_leaves(params: Any) -> list[np.ndarray]:
    return [np.asarray(leaf, dtype=np.float64) for leaf in jax.tree_util.tree_leaves(jax.device_get(params))]


def weight_norm(params: Any) -> float:
    """Global L2 norm of every array in a pytree."""
    return float(math.sqrt(sum(float(np.sum(leaf * leaf)) for leaf in _host_leaves(params))))


def weight_change(params: Any, anchor: Any) -> float:
    """Global L2 norm of params - anchor; both pytrees must have the same structure and leaf shapes."""
    params_structure = jax.tree_util.tree_structure(params)
    anchor_structure = jax.tree_util.tree_structure(anchor)
    if params_structure != anchor_structure:
        raise ValueError(
            "params and anchor have different tree structures:\n"
            f"  params: {params_structure}\n  anchor: {anchor_structure}"
        )
    squared = 0.0
    for current, reference in zip(_host_leaves(params), _host_leaves(anchor)):
        if current.shape != reference.shape:
            raise ValueError(f"params and anchor leaves have different shapes: {current.shape} vs {reference.shape}")
        difference = current - reference
        squared += float(np.sum(difference * difference))
    return float(math.sqrt(squared))


def relative_weight_change(params: Any, anchor: Any) -> float:
    """weight_change(params, anchor) / weight_norm(anchor); NaN when the anchor norm is 0."""
    change = weight_change(params, anchor)
    anchor_norm = weight_norm(anchor)
    return change / anchor_norm if anchor_norm > 0 else math.nan


def _is_log_std_path(path: tuple) -> bool:
    return any(getattr(entry, "key", getattr(entry, "name", None)) == LOG_STD_NAME for entry in path)


def _without_log_std(params: Any) -> dict[str, Any]:
    """The leaves of `params` keyed by their path, minus any leaf under a `log_std` key."""
    leaves_with_paths, _ = jax.tree_util.tree_flatten_with_path(params)
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves_with_paths if not _is_log_std_path(path)}


# -- policy --------------------------------------------------------------------------------------------
def gaussian_entropy(log_std: ArrayLike) -> float:
    """Differential entropy (nats) of a diagonal Gaussian: sum_a (log_std_a + 0.5 log(2 pi e)).

    The sum runs over the last axis; any leading (batch) axes are averaged.
    """
    log_std = np.asarray(log_std, dtype=np.float64)
    per_distribution = np.sum(log_std + 0.5 * math.log(2.0 * math.pi * math.e), axis=-1)
    return float(np.mean(per_distribution))


# -- routing -------------------------------------------------------------------------------------------
def _routed_gates(gates: ArrayLike, n_shared: int) -> np.ndarray:
    gates = np.asarray(gates, dtype=np.float64)
    if gates.ndim != 2:
        raise ValueError(f"gates must have shape (B, E), got {gates.shape}")
    return gates[:, int(n_shared):]


def expert_load(gates: ArrayLike, n_shared: int = 0) -> np.ndarray:
    """(E_routed,) share of all (state, expert) assignments (gate > 0) that went to each routed expert.

    Sums to 1; NaN everywhere if no state was assigned to any routed expert.
    """
    counts = (_routed_gates(gates, n_shared) > 0).sum(axis=0).astype(np.float64)
    total = counts.sum()
    return counts / total if total > 0 else np.full_like(counts, np.nan)


def gate_share(gates: ArrayLike, n_shared: int = 0) -> np.ndarray:
    """(E_routed,) mean gate weight of each routed expert, normalised to sum to 1 (soft load)."""
    mean_gate = _routed_gates(gates, n_shared).mean(axis=0)
    total = mean_gate.sum()
    return mean_gate / total if total > 0 else np.full_like(mean_gate, np.nan)


def routing_entropy(probs: ArrayLike) -> float:
    """Mean over states of the entropy (nats) of each row of the router softmax (B, E_routed)."""
    probs = np.asarray(probs, dtype=np.float64)
    return float(np.mean(_entropy(probs, axis=-1)))


def load_entropy(load: ArrayLike) -> float:
    """Entropy (nats) of a load vector, normalised to sum to 1 first (NaN for an all-zero load)."""
    load = np.asarray(load, dtype=np.float64).ravel()
    total = load.sum()
    return float(_entropy(load / total)) if total > 0 else math.nan


# -- aggregator ----------------------------------------------------------------------------------------
def plasticity_metrics(
    actor_out: ActorOutput,
    actor_params: Any = None,
    anchor_params: Any = None,
    *,
    tau: float = DEFAULT_TAU,
    stable_rank_threshold: float = 0.99,
) -> dict[str, float]:
    """Plasticity metrics of an actor on a probe batch, as a flat dict of python floats.

    Each expert's units are scored on the states routed to it (gate > 0; shared DS-MoE experts and
    a dense MLP see every state). Experts with no routed state are left out of the pooled ratios.

    Keys, for every actor:
      - `dormant_ratio`: fraction of ReDo-dormant units (score <= tau) over all hidden layers and experts.
      - `dormant_ratio/layer_{l}`: the same for hidden layer l alone.
      - `active_fraction`: mean over units and routed states of 1[h > 0], pooled over layers and
        experts by unit count.
      - `feature_stable_rank`: srank (Kumar et al. 2020, `stable_rank_threshold`) of the last hidden
        layer's routing-weighted features Phi = concat_e(g_e h_e), shape (B, E * H).
      - `feature_effective_rank`: effective rank of Phi^T Phi.
      - `policy_entropy`: differential entropy (nats) of the Gaussian policy, from `log_std`.
    With `actor_params` (norms over every actor parameter except the `log_std` leaf, so that weight
    drift measures the network, not the exploration-noise scale):
      - `weight_norm`: global L2 norm of the parameters.
      - `weight_change`, `relative_weight_change` (only with `anchor_params` too): L2 norm of
        params - anchor, and that divided by the anchor's norm.
    For MoE actors (`features.probs` is not None):
      - `expert_load/{e}`: share of (state, expert) assignments going to routed expert e (0-based).
      - `expert_max_load`: the largest of these; `unused_experts`: how many routed experts got none.
      - `load_entropy`: entropy (nats) of the load vector.
      - `routing_entropy`: mean entropy (nats) of the router's full softmax per state.
      - `dormant_ratio/expert_{e}`: dormant fraction of expert e's units over all layers, indexed in
        the expert stack (shared DS-MoE experts first); NaN if the expert got no state.
    """
    features = actor_out.features
    is_moe = features.probs is not None
    phi = routing_weighted_features(features)
    hidden, gates, probs, phi, log_std = jax.device_get(
        (features.hidden, features.gates, features.probs, phi, actor_out.log_std)
    )
    gates = np.asarray(gates, dtype=np.float64)
    state_weights = (gates > 0).T.astype(np.float64)
    has_states = state_weights.sum(axis=1) > 0

    metrics: dict[str, float] = {}
    n_experts = gates.shape[1]
    dormant_per_expert = np.zeros(n_experts)
    units_per_expert = np.zeros(n_experts)
    active_weighted_sum = 0.0
    active_units = 0.0
    for layer, layer_hidden in enumerate(hidden):
        width = np.shape(layer_hidden)[-1]
        layer_dormant = dormant_mask(layer_hidden, tau, state_weights).sum(axis=1)
        dormant_per_expert += layer_dormant
        units_per_expert += width
        defined_units = width * int(has_states.sum())
        layer_ratio = float(layer_dormant.sum() / defined_units) if defined_units else math.nan
        metrics[f"dormant_ratio/layer_{layer}"] = layer_ratio
        fractions = _expert_active_fractions(layer_hidden, state_weights)
        active_weighted_sum += width * float(fractions[has_states].sum())
        active_units += defined_units
    total_defined_units = float(units_per_expert[has_states].sum())
    metrics["dormant_ratio"] = (
        float(dormant_per_expert[has_states].sum() / total_defined_units) if total_defined_units else math.nan
    )
    metrics["active_fraction"] = float(active_weighted_sum / active_units) if active_units else math.nan

    phi = np.asarray(phi, dtype=np.float64)
    metrics["feature_stable_rank"] = float(stable_rank(phi, stable_rank_threshold))
    metrics["feature_effective_rank"] = feature_effective_rank(phi)

    if actor_params is not None:
        network_params = _without_log_std(actor_params)
        metrics["weight_norm"] = weight_norm(network_params)
        if anchor_params is not None:
            anchor_network_params = _without_log_std(anchor_params)
            metrics["weight_change"] = weight_change(network_params, anchor_network_params)
            anchor_norm = weight_norm(anchor_network_params)
            metrics["relative_weight_change"] = metrics["weight_change"] / anchor_norm if anchor_norm > 0 else math.nan

    metrics["policy_entropy"] = gaussian_entropy(log_std)

    if is_moe:
        load = expert_load(gates, int(features.n_shared))
        for expert, share in enumerate(load):
            metrics[f"expert_load/{expert}"] = float(share)
        metrics["expert_max_load"] = float(np.max(load))
        metrics["unused_experts"] = float(np.sum(load == 0))
        metrics["load_entropy"] = load_entropy(load)
        metrics["routing_entropy"] = routing_entropy(probs)
        for expert in range(n_experts):
            ratio = dormant_per_expert[expert] / units_per_expert[expert] if has_states[expert] else math.nan
            metrics[f"dormant_ratio/expert_{expert}"] = float(ratio)
    return metrics
