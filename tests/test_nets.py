"""Actor/critic registries: shapes, routing, mixing, initialisation, load balancing, jit."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sphere_rl import nets
from sphere_rl.config import NetConfig
from sphere_rl.nets.moe import MoESpec
from sphere_rl.nets.routing import load_balance_loss, softmax_routing, topk_routing

OBS_DIM, ACTION_DIM, BATCH = 5, 3, 7
MOE_KINDS = ("topk_moe", "dense_moe", "ds_moe")

SMALL = NetConfig(
    hidden_sizes=(8, 6),
    gate_hidden_sizes=(5, 5),
    critic_hidden_sizes=(9, 4),
    n_experts=4,
    top_k=2,
    n_shared=2,
    gate_temperature=0.7,
    log_std_init=-0.5,
)


def small_cfg(**changes) -> NetConfig:
    return dataclasses.replace(SMALL, **changes)


def observations(seed: int = 1, batch: int = BATCH) -> jax.Array:
    return jax.random.normal(jax.random.PRNGKey(seed), (batch, OBS_DIM))


@functools.lru_cache(maxsize=None)
def _cached_actor(kind: str, changes: tuple):
    actor = nets.make_actor(small_cfg(actor=kind, **dict(changes)), ACTION_DIM)
    obs = observations()
    params = actor.init(jax.random.PRNGKey(0), obs)
    return actor, params, obs, actor.apply(params, obs)


def init_actor(kind: str, **changes):
    """(actor, params, obs) for the small config; cached because initialisation compiles slowly."""
    return _cached_actor(kind, tuple(sorted(changes.items())))[:3]


def actor_output(kind: str, **changes):
    return _cached_actor(kind, tuple(sorted(changes.items())))[3]


def np_softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def hand_topk_gates(logits: np.ndarray, k: int, temperature: float) -> np.ndarray:
    """Top-k softmax gates in numpy; a stable sort of -logits puts the lower index first on ties."""
    logits = np.asarray(logits, dtype=np.float64)
    order = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    kept = np.take_along_axis(logits, order, axis=-1)
    gates = np.zeros_like(logits)
    np.put_along_axis(gates, order, np_softmax(kept / temperature), axis=-1)
    return gates


def n_total_experts(kind: str, cfg: NetConfig = SMALL) -> int:
    return cfg.n_experts + (cfg.n_shared if kind == "ds_moe" else 0)


# -- registries -----------------------------------------------------------------------------------
def test_registries_have_the_documented_kinds():
    assert set(nets.ACTORS) == {"mlp", "topk_moe", "dense_moe", "ds_moe"}
    assert set(nets.CRITICS) >= {"mlp", "topk_moe", "dense_moe", "ds_moe"}
    assert nets.DISPATCH_MODES == ("dense", "sparse")


def test_unknown_kinds_and_bad_specs_raise():
    with pytest.raises(ValueError, match="unknown actor"):
        nets.make_actor(small_cfg(actor="nope"), ACTION_DIM)
    with pytest.raises(ValueError, match="unknown critic"):
        nets.make_critic(small_cfg(critic="nope"))
    with pytest.raises(ValueError, match="top_k"):
        nets.make_actor(small_cfg(actor="topk_moe", top_k=5), ACTION_DIM)
    with pytest.raises(ValueError, match="dispatch"):
        nets.make_actor(small_cfg(actor="topk_moe", dispatch="gather"), ACTION_DIM)
    with pytest.raises(ValueError, match="router"):
        MoESpec(router="nope", n_experts=2, top_k=1, n_shared=0, hidden_sizes=(4,), gate_hidden_sizes=(4,))


# -- shapes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mlp", *MOE_KINDS])
def test_actor_output_shapes(kind):
    out = actor_output(kind)
    n_total = 1 if kind == "mlp" else n_total_experts(kind)
    assert out.mean.shape == (BATCH, ACTION_DIM)
    assert out.log_std.shape == (ACTION_DIM,)
    assert out.aux_loss.shape == ()
    features = out.features
    assert len(features.hidden) == len(SMALL.hidden_sizes)
    for hidden, width in zip(features.hidden, SMALL.hidden_sizes):
        assert hidden.shape == (n_total, BATCH, width)
    assert features.gates.shape == (BATCH, n_total)
    if kind == "mlp":
        np.testing.assert_array_equal(features.gates, np.ones((BATCH, 1)))
        assert features.logits is None and features.probs is None and features.expert_outputs is None
        assert features.n_shared == 0
    else:
        assert features.logits.shape == (BATCH, SMALL.n_experts)
        assert features.probs.shape == (BATCH, SMALL.n_experts)
        assert features.expert_outputs.shape == (n_total, BATCH, ACTION_DIM)
        assert features.n_shared == (SMALL.n_shared if kind == "ds_moe" else 0)


@pytest.mark.parametrize("kind", ["mlp", *MOE_KINDS])
def test_critic_output_shapes(kind):
    critic = nets.make_critic(small_cfg(critic=kind))
    obs = observations()
    out = critic.apply(critic.init(jax.random.PRNGKey(0), obs), obs)
    n_total = 1 if kind == "mlp" else n_total_experts(kind)
    assert out.value.shape == (BATCH,)
    assert out.aux_loss.shape == ()
    for hidden, width in zip(out.features.hidden, SMALL.critic_hidden_sizes):
        assert hidden.shape == (n_total, BATCH, width)
    if kind != "mlp":
        assert out.features.expert_outputs.shape == (n_total, BATCH, 1)
        expected = np.einsum("be,eb->b", np.asarray(out.features.gates), np.asarray(out.features.expert_outputs[..., 0]))
        np.testing.assert_allclose(out.value, expected, rtol=1e-5, atol=1e-6)


# -- routing --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["topk_moe", "ds_moe"])
def test_topk_gates_equal_hand_softmax_over_selected_logits(kind):
    features = actor_output(kind).features
    routed = np.asarray(features.gates)[:, features.n_shared:]
    assert np.all((routed > 0).sum(axis=1) == SMALL.top_k)
    np.testing.assert_allclose(routed.sum(axis=1), 1.0, rtol=1e-6)
    expected = hand_topk_gates(np.asarray(features.logits), SMALL.top_k, SMALL.gate_temperature)
    np.testing.assert_allclose(routed, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", MOE_KINDS)
def test_probs_are_the_full_softmax_of_logits(kind):
    features = actor_output(kind).features
    expected = np_softmax(np.asarray(features.logits, np.float64) / SMALL.gate_temperature)
    np.testing.assert_allclose(features.probs, expected, rtol=1e-5, atol=1e-7)


def test_topk_ties_go_to_the_lower_index():
    logits = jnp.array([[1.0, 3.0, 3.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    routing = topk_routing(logits, 2, 1.0)
    np.testing.assert_allclose(routing.gates, [[0, 0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0, 0]])
    np.testing.assert_array_equal(routing.selected, [[0, 1, 1, 0, 0], [1, 1, 0, 0, 0]])


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.lists(st.integers(-3, 3), min_size=6, max_size=6), min_size=1, max_size=5),
    k=st.integers(1, 6),
    temperature=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_topk_routing_matches_numpy_even_with_ties(rows, k, temperature):
    logits = np.asarray(rows, dtype=np.float32)
    routing = topk_routing(jnp.asarray(logits), k, temperature)
    np.testing.assert_allclose(routing.gates, hand_topk_gates(logits, k, temperature), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(routing.selected).sum(axis=1), k)
    np.testing.assert_array_equal(np.asarray(routing.gates) > 0, np.asarray(routing.selected) > 0)


def test_dense_moe_gates_are_the_full_softmax():
    features = actor_output("dense_moe").features
    expected = np_softmax(np.asarray(features.logits, np.float64) / SMALL.gate_temperature)
    np.testing.assert_allclose(features.gates, expected, rtol=1e-5, atol=1e-7)
    routing = softmax_routing(features.logits, 1, SMALL.gate_temperature)
    np.testing.assert_allclose(routing.gates, features.gates, rtol=1e-6)


@pytest.mark.parametrize("kind", MOE_KINDS)
def test_mixture_mean_is_gate_weighted_sum_of_expert_outputs(kind):
    out = actor_output(kind)
    gates = np.asarray(out.features.gates, np.float64)
    expert_outputs = np.asarray(out.features.expert_outputs, np.float64)
    expected = sum(gates[:, e, None] * expert_outputs[e] for e in range(gates.shape[1]))
    np.testing.assert_allclose(out.mean, expected, rtol=1e-5, atol=1e-7)


def test_ds_moe_shared_experts_always_on():
    out = actor_output("ds_moe")
    features = out.features
    n_shared = SMALL.n_shared
    gates = np.asarray(features.gates, np.float64)
    np.testing.assert_array_equal(gates[:, :n_shared], 1.0)
    np.testing.assert_allclose(gates[:, n_shared:].sum(axis=1), 1.0, rtol=1e-6)
    expert_outputs = np.asarray(features.expert_outputs, np.float64)
    shared_sum = expert_outputs[:n_shared].sum(axis=0)
    routed_sum = np.einsum("be,eba->ba", gates[:, n_shared:], expert_outputs[n_shared:])
    np.testing.assert_allclose(out.mean, shared_sum + routed_sum, rtol=1e-5, atol=1e-7)


def test_topk_with_k_equal_to_e_equals_dense_moe_with_same_params():
    topk_actor, params, obs = init_actor("topk_moe", top_k=SMALL.n_experts)
    dense_actor = nets.make_actor(small_cfg(actor="dense_moe"), ACTION_DIM)
    a, b = topk_actor.apply(params, obs), dense_actor.apply(params, obs)
    np.testing.assert_allclose(a.features.gates, b.features.gates, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-5, atol=1e-7)


def test_gate_network_receives_gradient_through_topk_gates():
    actor, params, obs = init_actor("topk_moe")
    grads = jax.grad(lambda p: jnp.sum(actor.apply(p, obs).mean ** 2))(params)
    gate_grad = grads["params"]["moe"]["gate"]["logits"]["kernel"]
    assert float(jnp.abs(gate_grad).sum()) > 0


# -- initialisation -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", MOE_KINDS)
def test_experts_are_initialised_independently_and_orthogonally(kind):
    _, params, _ = init_actor(kind, init="orthogonal")  # the `orthogonal` scheme; `official` is in test_fidelity
    experts = params["params"]["moe"]["experts"]
    n_total = n_total_experts(kind)
    for name, gain in [("layer_0", np.sqrt(2)), ("layer_1", np.sqrt(2)), ("head", 0.01)]:
        kernel = np.asarray(experts[name]["kernel"], np.float64)
        assert kernel.shape[0] == n_total
        np.testing.assert_array_equal(experts[name]["bias"], 0.0)
        for e in range(n_total):
            for f in range(e + 1, n_total):
                assert not np.allclose(kernel[e], kernel[f]), f"{name}: experts {e} and {f} are identical"
            w = kernel[e]
            small_side = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
            np.testing.assert_allclose(small_side, gain**2 * np.eye(small_side.shape[0]), atol=1e-5 * max(gain**2, 1))


def test_dense_and_gate_init_gains():
    _, params, _ = init_actor("topk_moe", init="orthogonal")
    gate = params["params"]["moe"]["gate"]
    logits_kernel = np.asarray(gate["logits"]["kernel"], np.float64)  # (5, 4): orthogonal columns
    np.testing.assert_allclose(logits_kernel.T @ logits_kernel, 1e-4 * np.eye(4), atol=1e-9)
    _, mlp_params, _ = init_actor("mlp", init="orthogonal")
    head = np.asarray(mlp_params["params"]["mean_head"]["kernel"], np.float64)
    np.testing.assert_allclose(head.T @ head, 1e-4 * np.eye(ACTION_DIM), atol=1e-9)
    critic = nets.make_critic(small_cfg(init="orthogonal"))
    critic_params = critic.init(jax.random.PRNGKey(0), observations())
    value_head = np.asarray(critic_params["params"]["value_head"]["kernel"], np.float64)
    np.testing.assert_allclose(value_head.T @ value_head, [[1.0]], rtol=1e-5)


def test_initial_routing_is_near_uniform_under_orthogonal_init():
    """The 0.01-gain router head of the `orthogonal` scheme; the official LeCun head starts far from uniform."""
    probs = np.asarray(actor_output("topk_moe", init="orthogonal").features.probs)
    np.testing.assert_allclose(probs, 1.0 / SMALL.n_experts, atol=0.05)


@pytest.mark.parametrize("kind", ["mlp", *MOE_KINDS])
def test_log_std_initial_value(kind):
    _, params, _ = init_actor(kind)
    np.testing.assert_array_equal(params["params"]["log_std"], np.full(ACTION_DIM, SMALL.log_std_init))
    np.testing.assert_array_equal(actor_output(kind).log_std, np.full(ACTION_DIM, SMALL.log_std_init))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_activation_choice(activation):
    for hidden in actor_output("topk_moe", activation=activation).features.hidden:
        hidden = np.asarray(hidden)
        if activation == "relu":
            assert hidden.min() >= 0.0
        else:
            assert hidden.min() < 0.0 and np.abs(hidden).max() <= 1.0


# -- load balancing -------------------------------------------------------------------------------
def test_load_balance_loss_on_a_crafted_routing():
    probs = jnp.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.5, 0.25, 0.25]])
    selected = jnp.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 0]], dtype=jnp.float32)
    fraction = np.array([3, 3, 2]) / 8.0
    mean_prob = np.array([1.9, 0.85, 1.25]) / 4.0
    np.testing.assert_allclose(load_balance_loss(probs, selected), 3 * np.sum(fraction * mean_prob), rtol=1e-6)
    uniform = jnp.full((4, 3), 1.0 / 3.0)
    np.testing.assert_allclose(load_balance_loss(uniform, jnp.ones((4, 3))), 1.0, rtol=1e-6)


@pytest.mark.parametrize("kind", MOE_KINDS)
def test_actor_aux_loss_matches_hand_computation(kind):
    coef = 0.3
    features = actor_output(kind, load_balance_coef=coef).features
    routed_gates = np.asarray(features.gates)[:, features.n_shared:]
    selected = (routed_gates > 0).astype(np.float64)
    fraction = selected.sum(axis=0) / selected.sum()
    mean_prob = np.asarray(features.probs, np.float64).mean(axis=0)
    expected = coef * SMALL.n_experts * np.sum(fraction * mean_prob)
    out = actor_output(kind, load_balance_coef=coef)
    np.testing.assert_allclose(out.aux_loss, expected, rtol=1e-5)
    if kind == "dense_moe":
        np.testing.assert_allclose(out.aux_loss, coef, rtol=1e-5)
    assert float(actor_output(kind, load_balance_coef=0.0).aux_loss) == 0.0


# -- jit ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["mlp", *MOE_KINDS])
def test_jit_matches_eager(kind):
    actor, params, obs = init_actor(kind, load_balance_coef=0.1)
    eager = actor.apply(params, obs)
    jitted = jax.jit(actor.apply)(params, obs)
    np.testing.assert_allclose(jitted.mean, eager.mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jitted.aux_loss, eager.aux_loss, rtol=1e-5)
    for a, b in zip(jitted.features.hidden, eager.features.hidden):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
