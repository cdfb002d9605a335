"""Effective rank (numpy and jnp) and the proxy Gram A = Phi^T Phi / T of routing-weighted features."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sphere_rl import diagnostics, nets
from sphere_rl.config import NetConfig
from sphere_rl.diagnostics.spectral import (
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
from sphere_rl.nets.outputs import Features


def hand_features(n_experts: int = 3, batch: int = 5, width: int = 4, seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    hidden = (rng.normal(size=(n_experts, batch, 6)), rng.normal(size=(n_experts, batch, width)))
    gates = rng.uniform(size=(batch, n_experts))
    return Features(hidden=tuple(jnp.asarray(h, jnp.float32) for h in hidden), gates=jnp.asarray(gates, jnp.float32))


# -- effective rank -------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_identity_has_effective_rank_n(n):
    np.testing.assert_allclose(effective_rank(np.linalg.eigvalsh(np.eye(n))), n, rtol=1e-12)
    np.testing.assert_allclose(float(effective_rank_jnp(jnp.ones(n))), n, rtol=1e-5)


def test_rank_one_has_effective_rank_one():
    v = np.random.default_rng(0).normal(size=(6, 1))
    eigenvalues = np.linalg.eigvalsh(v @ v.T)  # five round-off zeros (possibly slightly negative)
    np.testing.assert_allclose(effective_rank(eigenvalues), 1.0, atol=1e-9)
    np.testing.assert_allclose(float(effective_rank_jnp(jnp.array([0.0, 0.0, 4.0]))), 1.0, rtol=1e-6)


def test_scale_invariance():
    spectrum = np.array([5.0, 2.0, 1.0, 0.5, 0.0])
    for scale in (1e-6, 3.0, 1e8):
        np.testing.assert_allclose(effective_rank(scale * spectrum), effective_rank(spectrum), rtol=1e-12)


def test_zero_spectrum_has_effective_rank_zero():
    assert effective_rank(np.zeros(4)) == 0.0
    assert effective_rank(np.zeros(4), kind="singular_values") == 0.0
    assert float(effective_rank_jnp(jnp.zeros(4))) == 0.0


def test_negative_round_off_is_clipped_and_reported():
    spectrum = np.array([1.0, 1.0, -1e-12])
    report = effective_rank_with_report(spectrum)
    np.testing.assert_allclose(report.effective_rank, 2.0, rtol=1e-12)
    np.testing.assert_allclose(report.clipped_fraction, 1e-12 / (2.0 + 1e-12), rtol=1e-9)
    assert effective_rank_with_report(np.array([3.0, 1.0])).clipped_fraction == 0.0
    np.testing.assert_allclose(float(effective_rank_jnp(jnp.asarray(spectrum, jnp.float32))), 2.0, rtol=1e-6)


def test_known_value():
    p = np.array([0.5, 0.25, 0.25])
    np.testing.assert_allclose(effective_rank(np.array([2.0, 1.0, 1.0])), np.exp(-np.sum(p * np.log(p))), rtol=1e-12)


def test_singular_values_and_gram_eigenvalues_give_the_same_rank():
    m = np.random.default_rng(1).normal(size=(20, 6)) @ np.diag([3.0, 2.0, 1.0, 0.5, 0.1, 0.01])
    singular_values = np.linalg.svd(m, compute_uv=False)
    gram_eigenvalues = np.linalg.eigvalsh(m.T @ m)
    from_gram = effective_rank(gram_eigenvalues, kind="eigenvalues")
    np.testing.assert_allclose(effective_rank(singular_values, kind="singular_values"), from_gram, rtol=1e-9)
    np.testing.assert_allclose(effective_rank(singular_values**2, kind="eigenvalues"), from_gram, rtol=1e-9)
    # treating singular values as eigenvalues measures a different (flatter) spectrum
    assert effective_rank(singular_values, kind="eigenvalues") > from_gram
    np.testing.assert_allclose(
        float(effective_rank_jnp(jnp.asarray(singular_values, jnp.float32), kind="singular_values")), from_gram, rtol=1e-5
    )


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="kind"):
        effective_rank(np.ones(3), kind="eigs")
    with pytest.raises(ValueError, match="kind"):
        effective_rank_jnp(jnp.ones(3), kind="eigs")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.just(0.0), st.floats(1e-30, 1e3)), min_size=1, max_size=12))  # no float32 subnormals
def test_bounds_and_jnp_agreement(values):
    spectrum = np.asarray(values)
    rank = effective_rank(spectrum)
    n_positive = int(np.sum(spectrum > 0))
    if n_positive == 0:
        assert rank == 0.0
    else:
        assert 1.0 - 1e-9 <= rank <= n_positive + 1e-9
    single = spectrum.astype(np.float32)  # compare like with like: tiny values underflow in float32
    jitted = jax.jit(effective_rank_jnp)(jnp.asarray(single))
    np.testing.assert_allclose(float(jitted), effective_rank(single), rtol=1e-4, atol=1e-6)


def test_jnp_gradient_is_finite_with_zeros():
    grad = jax.grad(effective_rank_jnp)(jnp.array([3.0, 1.0, 0.0, 0.0]))
    assert np.all(np.isfinite(np.asarray(grad)))


# -- routing-weighted features and the proxy Gram -------------------------------------------------
def test_routing_weighted_features_by_hand():
    features = hand_features()
    gates = np.asarray(features.gates)
    for layer in (0, 1, -1):
        hidden = np.asarray(features.hidden[layer])
        expected = np.concatenate([gates[:, e, None] * hidden[e] for e in range(hidden.shape[0])], axis=1)
        np.testing.assert_allclose(routing_weighted_features(features, layer), expected, rtol=1e-6)
        per_expert = np.asarray(routing_weighted_expert_features(features, layer))
        np.testing.assert_allclose(per_expert, [gates[:, e, None] * hidden[e] for e in range(hidden.shape[0])], rtol=1e-6)


def test_proxy_gram_is_phi_t_phi_over_t():
    features = hand_features()
    phi = np.asarray(routing_weighted_features(features), np.float64)
    np.testing.assert_allclose(proxy_gram(features), phi.T @ phi / 5, rtol=1e-12)
    np.testing.assert_allclose(proxy_gram(features, space="batch"), phi @ phi.T / 5, rtol=1e-12)
    assert proxy_gram(features, space="auto").shape == (5, 5)  # D = 12 > T = 5: the smaller Gram
    assert proxy_gram(features).dtype == np.float64
    with pytest.raises(ValueError, match="space"):
        gram(phi, space="rows")


@pytest.mark.parametrize("batch", [5, 40], ids=["D>T", "D<T"])
def test_proxy_rank_and_top_eigenvalues_agree_across_spaces(batch):
    features = hand_features(batch=batch, seed=2)
    by_feature = proxy_effective_rank(features, space="feature")
    by_batch = proxy_effective_rank(features, space="batch")
    np.testing.assert_allclose(by_batch, by_feature, rtol=1e-9)
    np.testing.assert_allclose(proxy_effective_rank(features), by_feature, rtol=1e-9)
    top_feature = proxy_top_eigenvalues(features, k=3, space="feature")
    np.testing.assert_allclose(proxy_top_eigenvalues(features, k=3, space="batch"), top_feature, rtol=1e-9)
    assert np.all(np.diff(top_feature) <= 0)
    phi = np.asarray(routing_weighted_features(features), np.float64)
    expected = np.sort(np.linalg.eigvalsh(phi.T @ phi / batch))[::-1][:3]
    np.testing.assert_allclose(top_feature, expected, rtol=1e-9)


def test_top_eigenvalues_are_zero_padded():
    features = hand_features(n_experts=1, batch=2, width=2)  # A is 2x2 of rank <= 2
    top = proxy_top_eigenvalues(features, k=4)
    assert top.shape == (4,) and np.all(top[2:] == 0.0) and np.all(top[:2] > 0)
    assert proxy_eigenvalues(features, space="feature").shape == (2,)


@pytest.mark.parametrize("batch", [5, 40])
def test_phi_effective_rank_jnp_matches_numpy(batch):
    features = hand_features(batch=batch, seed=4)
    phi = routing_weighted_features(features)
    np.testing.assert_allclose(float(jax.jit(phi_effective_rank_jnp)(phi)), proxy_effective_rank(features), rtol=1e-4)


def test_proxy_on_a_real_moe_actor():
    cfg = NetConfig(actor="ds_moe", hidden_sizes=(8, 6), gate_hidden_sizes=(5,), n_experts=4, top_k=2, n_shared=1)
    actor = nets.make_actor(cfg, 2)
    obs = jax.random.normal(jax.random.PRNGKey(1), (30, 5))
    features = actor.apply(actor.init(jax.random.PRNGKey(0), obs), obs).features
    rank = diagnostics.proxy_effective_rank(features)
    assert 1.0 <= rank <= (cfg.n_experts + cfg.n_shared) * cfg.hidden_sizes[-1]
    np.testing.assert_allclose(rank, diagnostics.proxy_effective_rank(features, space="feature"), rtol=1e-9)
    np.testing.assert_allclose(
        diagnostics.proxy_effective_rank(features, layer=0, space="batch"),
        diagnostics.proxy_effective_rank(features, layer=0, space="feature"),
        rtol=1e-9,
    )
