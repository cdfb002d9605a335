"""Plasticity metrics: ReDo dormancy, activity, srank, weight drift, policy entropy, routing statistics."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sphere_rl import nets
from sphere_rl.config import NetConfig
from sphere_rl.diagnostics import spectral
from sphere_rl.diagnostics.plasticity import (
    active_fraction,
    dormant_mask,
    dormant_ratio,
    dormant_scores,
    expert_dormant_ratios,
    expert_load,
    feature_effective_rank,
    gate_share,
    gaussian_entropy,
    load_entropy,
    plasticity_metrics,
    relative_weight_change,
    routing_entropy,
    stable_rank,
    weight_change,
    weight_norm,
)

OBS_DIM, ACTION_DIM, BATCH = 5, 3, 40
ACTOR_KINDS = ("mlp", "topk_moe", "dense_moe", "ds_moe")
SMALL = dict(hidden_sizes=(16, 12), gate_hidden_sizes=(8,), n_experts=4, top_k=2, n_shared=1)


# -- dormant units --------------------------------------------------------------------------------
def test_dead_and_tiny_units_are_dormant():
    # Unit 0 is always 0, unit 1 has mean |h| = 1e-3, unit 2 has mean |h| = 1: scores 0, ~0.003, ~3.
    hidden = np.array([[[0.0, 1e-3, 1.0], [0.0, -1e-3, -1.0], [0.0, 1e-3, 2.0], [0.0, 1e-3, 0.0]]])
    assert hidden.shape == (1, 4, 3)
    np.testing.assert_array_equal(dormant_mask(hidden), [[True, True, False]])
    assert dormant_ratio(hidden) == pytest.approx(2 / 3)
    np.testing.assert_allclose(dormant_scores(hidden), [[0.0, 3e-3 / 1.001, 3 / 1.001]], rtol=1e-12)
    # A (B, H) layer is one expert.
    assert dormant_ratio(hidden[0]) == pytest.approx(2 / 3)


def test_tau_boundary_is_inclusive():
    # Mean |h| per unit (0.25, 1.75, 1, 1): layer mean 1, so unit 0 scores exactly 0.25.
    hidden = np.array([[[0.25, 1.75, 1.0, 1.0]]])
    assert dormant_ratio(hidden, tau=0.25) == 0.25
    assert dormant_ratio(hidden, tau=0.2499) == 0.0
    assert dormant_ratio(hidden, tau=1.0) == 0.75  # units scoring exactly 1 count too


def test_whole_zero_layer_is_all_dormant():
    assert dormant_ratio(np.zeros((2, 5, 4))) == 1.0
    np.testing.assert_array_equal(dormant_scores(np.zeros((1, 3, 2))), np.zeros((1, 2)))


def test_weights_restrict_and_reweight_states():
    hidden = np.array([[[1.0, 0.0], [0.0, 1.0]]])  # state 0 uses unit 0, state 1 uses unit 1
    assert dormant_ratio(hidden) == 0.0
    assert dormant_ratio(hidden, weights=[[1.0, 0.0]]) == 0.5  # on state 0 alone unit 1 is dead

    hidden = np.array([[[2.0, 0.0, 1.0], [0.0, 4.0, 1.0]]])
    # Unweighted: mean |h| (1, 2, 1), layer mean 4/3 -> scores (3/4, 3/2, 3/4).
    np.testing.assert_allclose(dormant_scores(hidden), [[0.75, 1.5, 0.75]], rtol=1e-12)
    # Weights (3, 1): mean |h| (6/4, 4/4, 1), layer mean 7/6 -> scores (9/7, 6/7, 6/7).
    np.testing.assert_allclose(dormant_scores(hidden, weights=[[3.0, 1.0]]), [[9 / 7, 6 / 7, 6 / 7]], rtol=1e-12)
    np.testing.assert_array_equal(dormant_mask(hidden, tau=0.9), [[True, False, True]])
    np.testing.assert_array_equal(dormant_mask(hidden, tau=0.9, weights=[[3.0, 1.0]]), [[False, True, True]])


def test_expert_without_states_is_nan_and_excluded():
    hidden = np.array(
        [
            [[0.0, 1.0, 1.0], [0.0, 2.0, 1.0]],  # expert 0: unit 0 dead -> 1/3
            [[5.0, 5.0, 5.0], [0.0, 0.0, 0.0]],  # expert 1: never routed
        ]
    )
    weights = np.array([[1.0, 1.0], [0.0, 0.0]])
    ratios = expert_dormant_ratios(hidden, weights=weights)
    assert ratios[0] == pytest.approx(1 / 3)
    assert math.isnan(ratios[1])
    assert np.all(np.isnan(dormant_scores(hidden, weights=weights)[1]))
    np.testing.assert_array_equal(dormant_mask(hidden, weights=weights)[1], [False, False, False])
    assert dormant_ratio(hidden, weights=weights) == pytest.approx(1 / 3)
    assert math.isnan(dormant_ratio(hidden, weights=np.zeros((2, 2))))
    # Routing expert 1 onto state 1 only (where it is all zero) makes all its units dormant.
    assert dormant_ratio(hidden, weights=[[1.0, 1.0], [0.0, 1.0]]) == pytest.approx(4 / 6)


def test_bad_weights_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        dormant_ratio(np.ones((2, 3, 4)), weights=np.ones((3, 2)))
    with pytest.raises(ValueError, match="nonnegative"):
        dormant_ratio(np.ones((1, 2, 4)), weights=[[1.0, -1.0]])


def test_active_fraction_hand_computed():
    hidden = np.array(
        [
            [[1.0, 0.0], [1.0, 1.0]],  # per state 0.5, 1 -> 0.75
            [[0.0, -1.0], [2.0, 0.0]],  # per state 0, 0.5 -> 0.25 (negative counts as inactive)
        ]
    )
    assert active_fraction(hidden) == pytest.approx(0.5)
    assert active_fraction(hidden, weights=[[1.0, 1.0], [0.0, 1.0]]) == pytest.approx((0.75 + 0.5) / 2)
    assert active_fraction(hidden, weights=[[1.0, 1.0], [0.0, 0.0]]) == pytest.approx(0.75)
    assert active_fraction(hidden, weights=[[1.0, 3.0], [1.0, 1.0]]) == pytest.approx((0.875 + 0.25) / 2)


# -- feature rank ---------------------------------------------------------------------------------
def random_orthogonal(n: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return q


def with_singular_values(values, rows: int = 6, seed: int = 0) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    left = random_orthogonal(rows, seed)[:, : values.size]
    right = random_orthogonal(values.size, seed + 1)
    return left @ np.diag(values) @ right.T


def test_stable_rank_hand_cases():
    assert stable_rank(np.eye(4)) == 4
    assert stable_rank(with_singular_values([100.0, 1e-3, 1e-3, 1e-4])) == 1
    spread = with_singular_values([0.5, 0.3, 0.2])
    assert stable_rank(spread, threshold=0.49) == 1
    assert stable_rank(spread, threshold=0.79) == 2
    assert stable_rank(spread, threshold=0.81) == 3
    assert stable_rank(spread, threshold=1.0) == 3
    assert stable_rank(np.zeros((5, 3))) == 0
    with pytest.raises(ValueError):
        stable_rank(spread, threshold=0.0)


def test_feature_effective_rank():
    orthonormal = 3.0 * random_orthogonal(10, seed=4)[:, :4]
    assert feature_effective_rank(orthonormal) == pytest.approx(4.0, rel=1e-12)
    # Singular values (2, 1): Gram eigenvalues (4, 1) -> p = (0.8, 0.2).
    expected = math.exp(-(0.8 * math.log(0.8) + 0.2 * math.log(0.2)))
    assert feature_effective_rank(with_singular_values([2.0, 1.0])) == pytest.approx(expected, rel=1e-10)
    assert feature_effective_rank(np.zeros((4, 3))) == 0.0


# -- policy entropy -------------------------------------------------------------------------------
def test_gaussian_entropy_matches_scipy_and_hand_formula():
    log_std = np.array([-0.5, 0.0, 1.2])
    covariance = np.diag(np.exp(2 * log_std))
    by_scipy = stats.multivariate_normal(mean=np.zeros(3), cov=covariance).entropy()
    by_hand = 0.5 * math.log((2 * math.pi * math.e) ** 3 * np.linalg.det(covariance))
    assert gaussian_entropy(log_std) == pytest.approx(by_scipy, rel=1e-12)
    assert gaussian_entropy(jnp.asarray(log_std)) == pytest.approx(by_hand, rel=1e-6)
    assert gaussian_entropy(np.zeros(1)) == pytest.approx(0.5 * math.log(2 * math.pi * math.e))


# -- routing --------------------------------------------------------------------------------------
def test_expert_load_and_gate_share_hand_computed():
    # One shared expert (first column, weight 1) then three routed experts.
    gates = np.array([[1.0, 0.6, 0.4, 0.0], [1.0, 0.7, 0.0, 0.3], [1.0, 0.5, 0.5, 0.0]])
    np.testing.assert_allclose(expert_load(gates, n_shared=1), [3 / 6, 2 / 6, 1 / 6], rtol=1e-12)
    np.testing.assert_allclose(gate_share(gates, n_shared=1), [0.6, 0.3, 0.1], rtol=1e-12)
    # Without n_shared the always-on column takes the largest share of assignments.
    np.testing.assert_allclose(expert_load(gates), [3 / 9, 3 / 9, 2 / 9, 1 / 9], rtol=1e-12)
    # Dense routing assigns every expert every state: the hard load is uniform, the soft one is not.
    dense = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]])
    np.testing.assert_allclose(expert_load(dense), [1 / 3] * 3, rtol=1e-12)
    np.testing.assert_allclose(gate_share(dense), [0.6, 0.25, 0.15], rtol=1e-12)


def test_routing_and_load_entropy():
    assert routing_entropy(np.full((5, 4), 0.25)) == pytest.approx(math.log(4))
    assert routing_entropy(np.eye(3)) == 0.0
    assert routing_entropy(np.array([[0.5, 0.5], [1.0, 0.0]])) == pytest.approx(math.log(2) / 2)
    assert load_entropy(np.full(6, 1 / 6)) == pytest.approx(math.log(6))
    assert load_entropy(np.array([0.0, 1.0, 0.0])) == 0.0
    assert load_entropy(np.array([0.5, 0.25, 0.25])) == pytest.approx(1.5 * math.log(2))


# -- weights --------------------------------------------------------------------------------------
def test_weight_norm_and_change_on_a_hand_pytree():
    params = {"a": np.array([3.0, 0.0]), "b": {"c": np.array([[4.0]])}}
    anchor = {"a": np.array([0.0, 0.0]), "b": {"c": np.array([[1.0]])}}
    assert weight_norm(params) == pytest.approx(5.0)
    assert weight_change(params, anchor) == pytest.approx(math.sqrt(9 + 9))
    assert relative_weight_change(params, anchor) == pytest.approx(math.sqrt(18) / 1.0)
    assert weight_change(params, params) == 0.0
    zero = jax.tree_util.tree_map(np.zeros_like, params)
    assert math.isnan(relative_weight_change(params, zero))


def test_weight_change_rejects_mismatched_trees():
    with pytest.raises(ValueError, match="tree structure"):
        weight_change({"a": np.zeros(2)}, {"b": np.zeros(2)})
    with pytest.raises(ValueError, match="tree structure"):
        weight_change({"a": np.zeros(2)}, {"a": np.zeros(2), "b": np.zeros(1)})
    with pytest.raises(ValueError, match="shapes"):
        weight_change({"a": np.zeros(2)}, {"a": np.zeros(3)})


# -- the aggregator on real actors ----------------------------------------------------------------
def he_normal_params(actor, obs: jax.Array, seed: int = 0):
    """Params of the right tree and shapes, He-normal kernels and small random vectors.

    `actor.init` compiles an orthogonal initialiser (a QR) per kernel shape, which costs seconds;
    the metrics do not depend on how the weights were drawn.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(actor.init, jax.random.PRNGKey(0), obs)

    def draw(shape_dtype):
        shape = shape_dtype.shape
        scale = math.sqrt(2.0 / shape[-2]) if len(shape) >= 2 else 0.1
        return jnp.asarray(scale * rng.normal(size=shape), dtype=shape_dtype.dtype)

    return jax.tree_util.tree_map(draw, shapes)


@functools.lru_cache(maxsize=None)
def small_actor(kind: str):
    actor = nets.make_actor(NetConfig(actor=kind, **SMALL), ACTION_DIM)
    obs = jnp.asarray(np.random.default_rng(3).normal(size=(BATCH, OBS_DIM)), dtype=jnp.float32)
    return actor, he_normal_params(actor, obs), obs


def stack_size(kind: str) -> int:
    return SMALL["n_experts"] + (SMALL["n_shared"] if kind == "ds_moe" else 0)


def expected_keys(kind: str, with_anchor: bool) -> set[str]:
    keys = {"dormant_ratio", "active_fraction", "feature_stable_rank", "feature_effective_rank", "policy_entropy"}
    keys |= {f"dormant_ratio/layer_{layer}" for layer in range(len(SMALL["hidden_sizes"]))}
    keys.add("weight_norm")
    if with_anchor:
        keys |= {"weight_change", "relative_weight_change"}
    if kind != "mlp":
        keys |= {f"expert_load/{e}" for e in range(SMALL["n_experts"])}
        keys |= {f"dormant_ratio/expert_{e}" for e in range(stack_size(kind))}
        keys |= {"load_entropy", "routing_entropy", "expert_max_load", "unused_experts"}
    return keys


@pytest.mark.parametrize("kind", ACTOR_KINDS)
def test_metrics_on_real_actors(kind):
    actor, params, obs = small_actor(kind)
    out = actor.apply(params, obs)
    metrics = plasticity_metrics(out, params, params)
    assert set(metrics) == expected_keys(kind, with_anchor=True)
    assert set(plasticity_metrics(out, params)) == expected_keys(kind, with_anchor=False)
    assert set(plasticity_metrics(out)) == expected_keys(kind, with_anchor=False) - {"weight_norm"}
    assert all(type(value) is float for value in metrics.values())  # python floats, not numpy scalars
    # Only the per-expert dormant ratio of an expert that got no state is undefined.
    nan_keys = {key for key, value in metrics.items() if math.isnan(value)}
    unrouted_keys = {
        f"dormant_ratio/expert_{e + stack_size(kind) - SMALL['n_experts']}"
        for e in range(SMALL["n_experts"])
        if kind != "mlp" and metrics[f"expert_load/{e}"] == 0.0
    }
    assert nan_keys == unrouted_keys
    assert all(math.isfinite(value) for key, value in metrics.items() if key not in nan_keys)

    assert 0.0 <= metrics["dormant_ratio"] <= 1.0
    assert 0.0 < metrics["active_fraction"] < 1.0
    assert metrics["weight_change"] == 0.0 and metrics["relative_weight_change"] == 0.0
    assert metrics["weight_norm"] > 0.0
    assert metrics["policy_entropy"] == pytest.approx(gaussian_entropy(out.log_std))

    phi = np.asarray(spectral.routing_weighted_features(out.features), dtype=np.float64)
    if kind == "mlp":
        np.testing.assert_array_equal(phi, np.asarray(out.features.hidden[-1][0], dtype=np.float64))
    assert metrics["feature_stable_rank"] == stable_rank(phi)
    assert 1 <= metrics["feature_stable_rank"] <= min(phi.shape)
    gram_eigenvalues = np.linalg.eigvalsh(phi.T @ phi)
    assert metrics["feature_effective_rank"] == pytest.approx(spectral.effective_rank(gram_eigenvalues), rel=1e-8)

    # Every layer pools the same experts (those with routed states), so the pooled ratio is unit-weighted.
    widths = np.array(SMALL["hidden_sizes"], dtype=np.float64)
    per_layer = np.array([metrics[f"dormant_ratio/layer_{layer}"] for layer in range(len(widths))])
    assert metrics["dormant_ratio"] == pytest.approx(float(per_layer @ widths / widths.sum()))
    gates = np.asarray(out.features.gates)
    for layer, hidden in enumerate(out.features.hidden):
        assert metrics[f"dormant_ratio/layer_{layer}"] == pytest.approx(dormant_ratio(hidden, weights=(gates > 0).T))

    if kind == "mlp":
        return
    loads = np.array([metrics[f"expert_load/{e}"] for e in range(SMALL["n_experts"])])
    assert loads.sum() == pytest.approx(1.0)
    assert metrics["expert_max_load"] == loads.max()
    assert metrics["unused_experts"] == float(np.sum(loads == 0))
    assert 0.0 <= metrics["load_entropy"] <= math.log(SMALL["n_experts"]) + 1e-12
    assert 0.0 < metrics["routing_entropy"] <= math.log(SMALL["n_experts"]) + 1e-12
    if kind == "dense_moe":
        np.testing.assert_allclose(loads, 1 / SMALL["n_experts"])
    else:
        # Top-k: every state makes exactly k assignments, so loads are multiples of 1 / (B k).
        assignments = loads * BATCH * SMALL["top_k"]
        np.testing.assert_allclose(assignments, np.round(assignments), atol=1e-9)
    if kind == "ds_moe":
        assert metrics["dormant_ratio/expert_0"] == pytest.approx(
            float(np.mean(np.concatenate([np.asarray(dormant_mask(h[:1])[0]) for h in out.features.hidden])))
        )


@pytest.mark.parametrize("kind", ACTOR_KINDS)
def test_weight_change_after_perturbing(kind):
    actor, params, obs = small_actor(kind)
    out = actor.apply(params, obs)
    leaves, _ = jax.tree_util.tree_flatten_with_path(params)
    # Shift one network leaf by a constant: the change is shift * sqrt(leaf size).
    path, leaf = next((path, leaf) for path, leaf in leaves if "log_std" not in jax.tree_util.keystr(path))
    shift = 0.1
    perturbed = jax.tree_util.tree_map_with_path(lambda p, x: x + shift if p == path else x, params)
    metrics = plasticity_metrics(out, perturbed, params)
    assert metrics["weight_change"] == pytest.approx(shift * math.sqrt(leaf.size), rel=1e-5)
    anchor_norm = plasticity_metrics(out, params)["weight_norm"]
    assert metrics["relative_weight_change"] == pytest.approx(metrics["weight_change"] / anchor_norm, rel=1e-12)
    # log_std is excluded from the weight metrics.
    noisier = jax.tree_util.tree_map_with_path(
        lambda p, x: x + 1.0 if "log_std" in jax.tree_util.keystr(p) else x, params
    )
    assert plasticity_metrics(out, noisier, params)["weight_change"] == 0.0
    assert plasticity_metrics(out, noisier)["weight_norm"] == plasticity_metrics(out, params)["weight_norm"]


def test_a_dead_layer_is_fully_dormant_with_rank_zero():
    actor, params, obs = small_actor("mlp")
    dead = jax.tree_util.tree_map_with_path(
        lambda p, x: x - 1e3 if jax.tree_util.keystr(p).endswith("['dense_1']['bias']") else x, params
    )
    metrics = plasticity_metrics(actor.apply(dead, obs), dead)
    assert metrics["dormant_ratio/layer_1"] == 1.0
    widths = SMALL["hidden_sizes"]
    expected = (metrics["dormant_ratio/layer_0"] * widths[0] + widths[1]) / sum(widths)
    assert metrics["dormant_ratio"] == pytest.approx(expected)
    assert metrics["feature_stable_rank"] == 0.0
    assert metrics["feature_effective_rank"] == 0.0


def test_an_unrouted_expert_is_unused_nan_and_excluded():
    actor, params, obs = small_actor("topk_moe")
    never_routed = 3
    blocked = jax.tree_util.tree_map_with_path(
        lambda p, x: x.at[never_routed].add(-1e3) if jax.tree_util.keystr(p).endswith("['logits']['bias']") else x,
        params,
    )
    out = actor.apply(blocked, obs)
    metrics = plasticity_metrics(out, blocked)
    assert metrics[f"expert_load/{never_routed}"] == 0.0
    assert metrics["unused_experts"] >= 1.0
    assert math.isnan(metrics[f"dormant_ratio/expert_{never_routed}"])
    assert math.isfinite(metrics["dormant_ratio"])
    assert math.isfinite(metrics["active_fraction"])
    # The pooled ratio is the unit-weighted mean over the routed experts only.
    used = [e for e in range(SMALL["n_experts"]) if not math.isnan(metrics[f"dormant_ratio/expert_{e}"])]
    assert never_routed not in used
    pooled = np.mean([metrics[f"dormant_ratio/expert_{e}"] for e in used])
    assert metrics["dormant_ratio"] == pytest.approx(float(pooled))
