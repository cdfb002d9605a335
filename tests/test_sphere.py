"""SPHERE loss vs a float64 brute force, its invariances and gradients, and the regulariser on real actors."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sphere_rl import nets, regularizers
from sphere_rl.config import NetConfig, RegConfig
from sphere_rl.diagnostics.spectral import effective_rank
from sphere_rl.regularizers.base import Regularizer
from sphere_rl.regularizers.sphere import (
    SphereRegularizer,
    routing_loss,
    scaled_sphere_loss,
    sphere_loss,
    sphere_loss_batch_space,
    sphere_loss_feature_space,
)

LOSS_FNS = {"auto": sphere_loss, "feature": sphere_loss_feature_space, "batch": sphere_loss_batch_space}
SHAPES = {"D<T": (40, 12), "D>T": (10, 30), "D=T": (16, 16)}

NET = NetConfig(hidden_sizes=(8, 6), gate_hidden_sizes=(5,), n_experts=4, top_k=2, n_shared=1)
OBS_DIM, ACTION_DIM, BATCH = 5, 3, 9


def brute_sphere(phi: np.ndarray) -> float:
    """||A - (Tr A / D) I||_F^2 with A = Phi^T Phi / T, float64."""
    phi = np.asarray(phi, dtype=np.float64)
    n_rows, n_cols = phi.shape
    a = phi.T @ phi / n_rows
    centred = a - np.trace(a) / n_cols * np.eye(n_cols)
    return float(np.sum(centred**2))


def random_phi(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


def hand_phi(features, layer: int = -1) -> np.ndarray:
    """concat_e(g_e * h_e) built with a Python loop over experts."""
    gates = np.asarray(features.gates, np.float64)
    hidden = np.asarray(features.hidden[layer], np.float64)
    return np.concatenate([gates[:, e, None] * hidden[e] for e in range(hidden.shape[0])], axis=1)


def hand_expert_phis(features, layer: int = -1) -> list[np.ndarray]:
    gates = np.asarray(features.gates, np.float64)
    hidden = np.asarray(features.hidden[layer], np.float64)
    return [gates[:, e, None] * hidden[e] for e in range(hidden.shape[0])]


@functools.lru_cache(maxsize=None)
def actor_out(kind: str, seed: int = 0):
    actor = nets.make_actor(dataclasses.replace(NET, actor=kind), ACTION_DIM)
    obs = jax.random.normal(jax.random.PRNGKey(seed + 1), (BATCH, OBS_DIM))
    params = actor.init(jax.random.PRNGKey(seed), obs)
    return actor, params, obs, actor.apply(params, obs)


# -- the loss itself ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("space", LOSS_FNS)
def test_matches_brute_force_float32(space, shape):
    phi = random_phi(shape)
    value = float(LOSS_FNS[space](jnp.asarray(phi, jnp.float32)))
    np.testing.assert_allclose(value, brute_sphere(phi), rtol=2e-4)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("space", LOSS_FNS)
def test_matches_brute_force_float64(space, shape):
    phi = random_phi(shape, seed=3)
    with jax.enable_x64(True):
        value = float(LOSS_FNS[space](jnp.asarray(phi, jnp.float64)))
    np.testing.assert_allclose(value, brute_sphere(phi), rtol=1e-11)


def test_equals_textbook_difference_form():
    phi = random_phi((20, 7), seed=5)
    a = phi.T @ phi / 20
    textbook = np.sum(a * a) - np.trace(a) ** 2 / 7
    np.testing.assert_allclose(float(sphere_loss(jnp.asarray(phi, jnp.float32))), textbook, rtol=2e-4)


@pytest.mark.parametrize("space", LOSS_FNS)
def test_zero_for_isotropic_features(space):
    n_rows, n_cols, scale = 32, 12, 3.0
    q, _ = np.linalg.qr(random_phi((n_rows, n_rows), seed=1))
    phi = scale * q[:, :n_cols]  # A = scale^2 / T * I
    value = float(LOSS_FNS[space](jnp.asarray(phi, jnp.float32)))
    assert abs(value) < 1e-6 * np.sum((phi.T @ phi / n_rows) ** 2)


def test_float32_has_no_cancellation_near_isotropy():
    """Large scale and nearly isotropic: ||A||^2 and (Tr A)^2 / D nearly cancel; the result must not."""
    n_rows, n_cols, scale = 64, 16, 1e3
    q, _ = np.linalg.qr(random_phi((n_rows, n_rows), seed=2))
    phi = scale * (q[:, :n_cols] + 1e-3 * random_phi((n_rows, n_cols), seed=4))
    reference = brute_sphere(phi)
    # the naive float32 difference is ~6e-4 off here; forced batch space with D < T also subtracts
    for fn in (sphere_loss, sphere_loss_feature_space):
        np.testing.assert_allclose(float(fn(jnp.asarray(phi, jnp.float32))), reference, rtol=1e-4)
    # a wider-than-batch slice of the same features goes through the batch-space path
    wide = phi[:12]
    for fn in LOSS_FNS.values():
        np.testing.assert_allclose(float(fn(jnp.asarray(wide, jnp.float32))), brute_sphere(wide), rtol=1e-4)


@settings(max_examples=15, deadline=None)
@given(
    n_rows=st.integers(1, 12),
    n_cols=st.integers(1, 12),
    seed=st.integers(0, 10_000),
    scale=st.sampled_from([1e-3, 1.0, 1e2]),
)
def test_non_negative_and_scale_c4(n_rows, n_cols, seed, scale):
    phi = random_phi((n_rows, n_cols), seed)
    a = phi.T @ phi / n_rows
    round_off = 1e-5 * float(np.sum(a * a))  # float32 noise floor of L relative to ||A||_F^2
    for fn in LOSS_FNS.values():
        base = float(fn(jnp.asarray(phi, jnp.float32)))
        assert base >= 0.0
        np.testing.assert_allclose(base, brute_sphere(phi), rtol=1e-3, atol=round_off)
        scaled = float(fn(jnp.asarray(scale * phi, jnp.float32)))
        np.testing.assert_allclose(scaled, scale**4 * base, rtol=1e-3, atol=scale**4 * round_off)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_invariant_to_feature_rotation_and_row_permutation(shape):
    phi = random_phi(shape, seed=7)
    rng = np.random.default_rng(8)
    rotation, _ = np.linalg.qr(rng.normal(size=(shape[1], shape[1])))
    permutation = rng.permutation(shape[0])
    base = float(sphere_loss(jnp.asarray(phi, jnp.float32)))
    np.testing.assert_allclose(float(sphere_loss(jnp.asarray(phi @ rotation, jnp.float32))), base, rtol=1e-4)
    np.testing.assert_allclose(float(sphere_loss(jnp.asarray(phi[permutation], jnp.float32))), base, rtol=1e-4)


@pytest.mark.parametrize("shape", [(6, 4), (4, 7)], ids=["D<T", "D>T"])
@pytest.mark.parametrize("space", LOSS_FNS)
def test_gradient_matches_central_finite_differences_float64(space, shape):
    phi = random_phi(shape, seed=11)
    eps = 1e-6
    with jax.enable_x64(True):
        fn = LOSS_FNS[space]
        grad = np.asarray(jax.grad(fn)(jnp.asarray(phi, jnp.float64)))
        numeric = np.zeros_like(phi)
        for index in np.ndindex(*phi.shape):
            step = np.zeros_like(phi)
            step[index] = eps
            plus = float(fn(jnp.asarray(phi + step)))
            minus = float(fn(jnp.asarray(phi - step)))
            numeric[index] = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_routing_loss_is_sphere_on_probs_over_e():
    probs = np.random.default_rng(0).dirichlet(np.ones(5), size=11)
    value = float(routing_loss(jnp.asarray(probs, jnp.float32)))
    np.testing.assert_allclose(value, brute_sphere(probs) / 5, rtol=1e-4)


def brute_trace_scaled(phi: np.ndarray) -> float:
    """||A / Tr A - I / D||_F^2 in float64: the spectrum's shape alone (`reg.scale=trace`)."""
    phi = np.asarray(phi, dtype=np.float64)
    a = phi.T @ phi / phi.shape[0]
    return float(np.sum((a / np.trace(a) - np.eye(phi.shape[1]) / phi.shape[1]) ** 2))


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_trace_scale_matches_brute_force_and_ignores_the_features_size(shape):
    """`trace`: the raw loss over (Tr A)^2; the same for Phi and 10 Phi or Phi / 10 (the raw loss: x 1e4, 1e-4),
    and in [0, 1 - 1/D] (0 isotropic, 1 - 1/D rank one), so shrinking the features does not lower it."""
    phi = random_phi(shape, seed=7)
    value = float(scaled_sphere_loss(jnp.asarray(phi, jnp.float32), "trace"))
    np.testing.assert_allclose(value, brute_trace_scaled(phi), rtol=1e-4)
    for c in (0.1, 10.0):
        np.testing.assert_allclose(float(scaled_sphere_loss(jnp.asarray(c * phi, jnp.float32), "trace")), value,
                                   rtol=1e-4)
        np.testing.assert_allclose(float(scaled_sphere_loss(jnp.asarray(c * phi, jnp.float32), "raw")),
                                   c**4 * brute_sphere(phi), rtol=1e-3)
    rank_one = np.outer(np.arange(1.0, shape[0] + 1), np.ones(shape[1]))
    n_cols = shape[1]
    # a rank-one Gram of D columns: the normalised spectrum is (1, 0, ...): (1 - 1/D)^2 + (D - 1) / D^2 = 1 - 1/D
    np.testing.assert_allclose(float(scaled_sphere_loss(jnp.asarray(rank_one, jnp.float32), "trace")),
                               1.0 - 1.0 / n_cols, rtol=1e-4)


def test_trace_scale_is_zero_with_zero_gradient_at_dead_features():
    """All-zero Phi (every unit dead): raw and trace-scaled losses are 0 with a finite, zero gradient."""
    zero = jnp.zeros((12, 8), jnp.float32)
    for scale in ("raw", "trace"):
        value, grad = jax.value_and_grad(lambda p: scaled_sphere_loss(p, scale))(zero)
        assert float(value) == 0.0 and np.all(np.asarray(grad) == 0.0)


def test_trace_scaled_gradient_is_orthogonal_to_phi():
    """Scale invariance in the gradient: <dL/dPhi, Phi> = d/dc L(c Phi) at c = 1 = 0 for `trace` (4 L for
    `raw`, the pull towards zero features that a strong raw penalty follows)."""
    phi = jnp.asarray(random_phi((20, 6), seed=3), jnp.float32)
    for scale, expected in (("trace", 0.0), ("raw", 4.0 * brute_sphere(np.asarray(phi)))):
        grad = jax.grad(lambda p: scaled_sphere_loss(p, scale))(phi)
        np.testing.assert_allclose(float(jnp.sum(grad * phi)), expected, atol=1e-5 * max(1.0, expected), rtol=1e-3)


# -- the regulariser on real actor outputs --------------------------------------------------------
@pytest.mark.parametrize("kind", ["mlp", "topk_moe", "dense_moe", "ds_moe"])
def test_penalty_equals_hand_built_phi(kind):
    *_, out = actor_out(kind)
    terms, info = SphereRegularizer(log_proxy_rank=True).penalty(out, None)
    assert set(terms) == {"feature"}  # the routing term is off by default (official sphere_gating_ratio 0)
    value = terms["feature"]
    expected = brute_sphere(hand_phi(out.features))
    np.testing.assert_allclose(float(value), expected, rtol=1e-4)
    np.testing.assert_allclose(float(info["sphere_feature"]), expected, rtol=1e-4)
    eigenvalues = np.linalg.eigvalsh(hand_phi(out.features).T @ hand_phi(out.features) / BATCH)
    np.testing.assert_allclose(float(info["proxy_erank"]), effective_rank(eigenvalues), rtol=1e-3)


def test_ds_moe_phi_includes_shared_experts_with_weight_one():
    *_, out = actor_out("ds_moe")
    phi = hand_phi(out.features)
    width = NET.hidden_sizes[-1]
    assert phi.shape == (BATCH, (NET.n_shared + NET.n_experts) * width)
    np.testing.assert_allclose(phi[:, :width], np.asarray(out.features.hidden[-1][0]), rtol=1e-6)


@pytest.mark.parametrize("kind", ["mlp", "topk_moe", "dense_moe", "ds_moe"])
def test_trace_scale_on_actor_outputs(kind):
    """`scale=trace` on real actors: the concatenated form against the hand-built Phi, the per-expert form as
    the sum of each expert's own trace-scaled loss; `RegConfig(scale=...)` reaches the regulariser."""
    *_, out = actor_out(kind)
    reg = regularizers.make_regularizer(RegConfig(name="sphere", scale="trace"))
    assert reg.scale == "trace"
    value = reg.penalty(out, None)[0]["feature"]
    np.testing.assert_allclose(float(value), brute_trace_scaled(hand_phi(out.features)), rtol=1e-4)
    per_expert = SphereRegularizer(form="per_expert", scale="trace").penalty(out, None)[0]["feature"]
    expected = sum(brute_trace_scaled(phi) for phi in hand_expert_phis(out.features) if np.any(phi))
    np.testing.assert_allclose(float(per_expert), expected, rtol=1e-4)
    with pytest.raises(ValueError, match="scale"):
        SphereRegularizer(scale="unit")


@pytest.mark.parametrize("kind", ["mlp", "topk_moe", "ds_moe"])
def test_per_expert_form_is_the_sum_of_expert_losses(kind):
    *_, out = actor_out(kind)
    value = SphereRegularizer(form="per_expert").penalty(out, None)[0]["feature"]
    expected = sum(brute_sphere(phi) for phi in hand_expert_phis(out.features))
    np.testing.assert_allclose(float(value), expected, rtol=1e-4)
    if kind != "mlp":  # the concatenated form also penalises cross-expert correlations
        concat = SphereRegularizer(form="concat").penalty(out, None)[0]["feature"]
        assert not np.isclose(float(concat), float(value), rtol=1e-3)


@pytest.mark.parametrize("form", ["concat", "per_expert"])
def test_placement_all_is_the_sum_over_layers(form):
    *_, out = actor_out("topk_moe")
    value = SphereRegularizer(placement="all", form=form).penalty(out, None)[0]["feature"]
    per_layer = []
    for layer in range(len(NET.hidden_sizes)):
        if form == "concat":
            per_layer.append(brute_sphere(hand_phi(out.features, layer)))
        else:
            per_layer.append(sum(brute_sphere(phi) for phi in hand_expert_phis(out.features, layer)))
    np.testing.assert_allclose(float(value), sum(per_layer), rtol=1e-4)


@pytest.mark.parametrize("kind", ["topk_moe", "ds_moe", "dense_moe"])
def test_routing_term_is_on_the_routed_gates(kind):
    """Official `sphere_output_loss(probs)` with `probs` the top-k-masked gates: zero outside each state's top-k
    (DS-MoE: routed experts only, the shared ones have no router; Dense-MoE: the full softmax)."""
    *_, out = actor_out(kind)
    terms, info = SphereRegularizer(routing_coef=0.7).penalty(out, None)
    logits = np.asarray(out.features.logits, np.float64)
    n_routed = logits.shape[1]
    soft = np.exp(logits - logits.max(axis=1, keepdims=True))
    if kind == "dense_moe":
        gates = soft / soft.sum(axis=1, keepdims=True)
    else:
        gates = np.zeros_like(logits)
        for b, row in enumerate(logits):
            top = np.argsort(-row, kind="stable")[: NET.top_k]
            gates[b, top] = soft[b, top] / soft[b, top].sum()
    expected_routing = brute_sphere(gates) / n_routed
    np.testing.assert_allclose(float(terms["routing"]), expected_routing, rtol=1e-3, atol=1e-12)
    np.testing.assert_allclose(float(info["sphere_routing"]), expected_routing, rtol=1e-3, atol=1e-12)
    np.testing.assert_allclose(float(terms["feature"]), brute_sphere(hand_phi(out.features)), rtol=1e-4)
    if kind != "dense_moe":  # not the full softmax of the router
        full = soft / soft.sum(axis=1, keepdims=True)
        assert not np.isclose(float(terms["routing"]), brute_sphere(full) / n_routed, rtol=1e-3)


def test_routing_term_absent_without_router_or_coefficient():
    *_, mlp_out = actor_out("mlp")
    terms, info = SphereRegularizer(routing_coef=0.7).penalty(mlp_out, None)
    assert set(terms) == {"feature"} and float(info["sphere_routing"]) == 0.0
    *_, out = actor_out("topk_moe")
    assert set(SphereRegularizer(routing_coef=0.0).penalty(out, None)[0]) == {"feature"}
    assert SphereRegularizer(coef=0.01, routing_coef=0.2).coefs == {"feature": 0.01, "routing": 0.2}


def test_penalty_is_jittable_and_differentiable():
    actor, params, obs, _ = actor_out("topk_moe")
    reg = SphereRegularizer(routing_coef=0.1, log_proxy_rank=True)

    def penalty(p):
        return reg.penalty(actor.apply(p, obs), p)

    terms, info = jax.jit(penalty)(params)
    assert all(np.isfinite(float(v)) for v in terms.values()) and set(terms) == {"feature", "routing"}
    assert set(info) == {"sphere_feature", "sphere_routing", "proxy_erank"}
    grads = jax.jit(jax.grad(lambda p: sum(penalty(p)[0].values())))(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
    expert_grad = grads["params"]["moe"]["experts"]["layer_1"]["kernel"]
    assert float(jnp.abs(expert_grad).sum()) > 0
    assert float(jnp.abs(grads["params"]["moe"]["gate"]["logits"]["kernel"]).sum()) > 0


# -- registry and interface -----------------------------------------------------------------------
def test_registry():
    assert set(regularizers.REGULARIZERS) >= {"none", "sphere"}
    assert regularizers.make_regularizer(RegConfig(name="none")) is None
    reg = regularizers.make_regularizer(RegConfig(name="sphere", placement="all", form="per_expert", routing_coef=0.2))
    assert isinstance(reg, SphereRegularizer) and isinstance(reg, Regularizer)
    assert (reg.name, reg.placement, reg.form, reg.coef, reg.routing_coef) == ("sphere", "all", "per_expert", 0.05, 0.2)
    assert regularizers.make_regularizer(RegConfig(name="sphere", mode="grad")).coef == 0.001
    hash(reg)  # usable as a static argument
    with pytest.raises(ValueError, match="unknown regularizer"):
        regularizers.make_regularizer(RegConfig(name="nope"))
    with pytest.raises(ValueError, match="placement"):
        SphereRegularizer(placement="first")
    with pytest.raises(ValueError, match="form"):
        SphereRegularizer(form="sum")


def test_default_hooks_are_no_ops():
    reg = SphereRegularizer()
    assert reg.init_state({"w": 1}) is None
    state = {"anything": 3}
    assert reg.on_task_start(state, {"w": 1}) is state
