"""Sparse expert dispatch equals the dense-masked reference: grouped products, outputs, log-probs, gradients, Phi."""

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
from sphere_rl.algo.losses import gaussian_log_prob
from sphere_rl.config import NetConfig
from sphere_rl.diagnostics.spectral import routing_weighted_features
from sphere_rl.nets.grouped import grouped_matmul, permute_rows
from sphere_rl.nets.moe import with_dense_dispatch
from sphere_rl.regularizers.sphere import assignment_gram, feature_loss, layer_loss

OBS_DIM, ACTION_DIM = 6, 3
NET = NetConfig(hidden_sizes=(16, 12), gate_hidden_sizes=(8,), critic_hidden_sizes=(8,), n_experts=6, top_k=2, n_shared=2)


# -- grouped_matmul against a per-row numpy loop ---------------------------------------------------
def _numpy_grouped(x: np.ndarray, w: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    out = np.zeros((x.shape[0], w.shape[2]))
    row = 0
    for group, size in enumerate(sizes):
        for r in range(row, row + size):
            out[r] = x[r] @ w[group]
        row += size
    return out


@functools.partial(jax.jit, static_argnums=(4,))
def _grouped_with_vjp(x, w, group_sizes, dy, block):
    y, vjp = jax.vjp(lambda a, b: grouped_matmul(a, b, group_sizes, block), x, w)
    return (y, *vjp(dy))


@settings(max_examples=20, deadline=None)
@given(sizes=st.lists(st.integers(0, 21), min_size=6, max_size=6), block=st.sampled_from([1, 4, 16]), seed=st.integers(0, 99))
def test_grouped_matmul_matches_per_row_loop(sizes, block, seed):
    rng = np.random.default_rng(seed)
    sizes = np.asarray(sizes)
    n_rows = 6 * 21 + 3  # fixed shapes (one compile per block size); rows beyond every group come out zero
    x = rng.normal(size=(n_rows, 5))
    w = rng.normal(size=(len(sizes), 5, 4))
    dy = rng.normal(size=(n_rows, 4))
    with jax.enable_x64(True):
        x64, w64, dy64 = jnp.asarray(x), jnp.asarray(w), jnp.asarray(dy)
        group_sizes = jnp.asarray(sizes)
        y, dx, dw = _grouped_with_vjp(x64, w64, group_sizes, dy64, block)
        # Reference gradients from the same loop written densely: y = sum_g mask_g * (x @ w_g).
        masks = np.zeros((len(sizes), n_rows))
        row = 0
        for group, size in enumerate(sizes):
            masks[group, row:row + size] = 1.0
            row += size
        ref_fn = lambda a, b: jnp.einsum("gr,ri,gio->ro", jnp.asarray(masks), a, b)
        ref_dx, ref_dw = jax.vjp(ref_fn, x64, w64)[1](dy64)
    np.testing.assert_allclose(np.asarray(y), _numpy_grouped(x, w, sizes), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(dx), np.asarray(ref_dx), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(dw), np.asarray(ref_dw), rtol=1e-10, atol=1e-12)


def test_grouped_matmul_rejects_bad_shapes():
    with pytest.raises(ValueError, match="group_sizes"):
        grouped_matmul(jnp.ones((4, 3)), jnp.ones((2, 3, 5)), jnp.ones((3,), jnp.int32))
    with pytest.raises(ValueError, match="x \\(R, in\\)"):
        grouped_matmul(jnp.ones((4, 2)), jnp.ones((2, 3, 5)), jnp.ones((2,), jnp.int32))


def test_permute_rows_gradient_is_the_inverse_permutation():
    order = jnp.asarray([2, 0, 3, 1])
    inverse = jnp.argsort(order)
    x = jnp.arange(8.0).reshape(4, 2)
    weights = jnp.arange(8.0).reshape(4, 2) + 1.0
    grad = jax.grad(lambda a: jnp.sum(permute_rows(a, order, inverse) * weights))(x)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(weights)[np.asarray(inverse)])


# -- whole actors: sparse == dense-masked ---------------------------------------------------------
def _actors(kind: str, cfg: NetConfig):
    from sphere_rl.nets import ACTORS

    sparse = ACTORS[kind](dataclasses.replace(cfg, dispatch="sparse"), ACTION_DIM)
    dense = ACTORS[kind](dataclasses.replace(cfg, dispatch="dense"), ACTION_DIM)
    return sparse, dense


@functools.lru_cache(maxsize=None)
def _init_params(kind: str, cfg: NetConfig):
    """Parameters (they do not depend on the batch size), initialised once per network."""
    return jax.jit(_actors(kind, cfg)[1].init)(jax.random.PRNGKey(0), jnp.zeros((1, OBS_DIM)))


def test_sparse_and_dense_dispatch_initialise_identical_parameters():
    sparse, dense = _actors("ds_moe", NET)
    obs = jnp.zeros((3, OBS_DIM))
    same = jax.tree.map(jnp.array_equal, dense.init(jax.random.PRNGKey(0), obs), sparse.init(jax.random.PRNGKey(0), obs))
    assert all(bool(x) for x in jax.tree.leaves(same))


@functools.lru_cache(maxsize=None)
def _objective(kind: str, cfg: NetConfig, dispatch: str):
    """Jitted value and gradient of mean log-prob + SPHERE on every layer (all outputs returned)."""
    module = _actors(kind, cfg)[0 if dispatch == "sparse" else 1]

    def value(p, obs, actions):
        out = module.apply(p, obs)
        log_prob = gaussian_log_prob(out.mean, out.log_std, actions)
        return jnp.mean(log_prob) + feature_loss(out.features, placement="all"), (out, log_prob)

    return jax.jit(jax.value_and_grad(value, has_aux=True))


def _compare(kind: str, cfg: NetConfig, obs: jax.Array, params=None, rtol: float = 1e-5):
    sparse, dense = _actors(kind, cfg)
    if params is None:
        params = _init_params(kind, cfg)
    actions = jax.random.normal(jax.random.PRNGKey(7), (obs.shape[0], ACTION_DIM))

    (value_s, (out_s, logp_s)), grad_s = _objective(kind, cfg, "sparse")(params, obs, actions)
    (value_d, (out_d, logp_d)), grad_d = _objective(kind, cfg, "dense")(params, obs, actions)
    np.testing.assert_allclose(out_s.mean, out_d.mean, rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(logp_s, logp_d, rtol=rtol, atol=1e-5)
    np.testing.assert_allclose(value_s, value_d, rtol=rtol, atol=1e-6)
    for layer in range(len(cfg.hidden_sizes)):
        np.testing.assert_allclose(routing_weighted_features(out_s.features, layer),
                                   routing_weighted_features(out_d.features, layer), rtol=rtol, atol=1e-6)
    np.testing.assert_array_equal(out_s.features.gates, out_d.features.gates)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad_d))
    for (path, g_s), g_d in zip(jax.tree_util.tree_leaves_with_path(grad_s), jax.tree.leaves(grad_d)):
        np.testing.assert_allclose(g_s, g_d, rtol=1e-4, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))
    return out_s, out_d


@pytest.mark.parametrize("kind", ["topk_moe", "ds_moe", "dense_moe"])
def test_sparse_equals_dense_on_random_inputs(kind):
    for seed in range(2):
        obs = jax.random.normal(jax.random.PRNGKey(seed + 10), (37, OBS_DIM)) * 2.0
        _compare(kind, NET, obs)


@pytest.mark.parametrize("top_k", [1, 3, 6])
def test_sparse_equals_dense_for_every_k(top_k):
    obs = jax.random.normal(jax.random.PRNGKey(3), (20, OBS_DIM))
    _compare("topk_moe", dataclasses.replace(NET, top_k=top_k), obs)


def _tied_params(kind: str, cfg: NetConfig, obs: jax.Array):
    """Parameters whose router gives every state the same logits: top-k ties everywhere."""
    params = jax.tree.map(jnp.array, _init_params(kind, cfg))
    logits = params["params"]["moe"]["gate"]["logits"]
    logits["kernel"] = jnp.zeros_like(logits["kernel"])
    logits["bias"] = jnp.asarray([0.5, 0.5, 0.5, -1.0, 0.5, -2.0])[: logits["bias"].shape[0]]
    return params


@pytest.mark.parametrize("kind", ["topk_moe", "ds_moe"])
def test_ties_and_experts_without_states(kind):
    """Equal logits: top-k keeps the lowest indices (0 and 1), so experts 2..5 receive no state."""
    obs = jax.random.normal(jax.random.PRNGKey(4), (16, OBS_DIM))
    params = _tied_params(kind, NET, obs)
    out_s, _ = _compare(kind, NET, obs, params=params)
    n_shared = out_s.features.n_shared
    routed_gates = np.asarray(out_s.features.gates)[:, n_shared:]
    np.testing.assert_array_equal(routed_gates[:, :2] > 0, True)
    np.testing.assert_array_equal(routed_gates[:, 2:], 0.0)
    # Experts that saw no state report zero features (they were never computed).
    np.testing.assert_array_equal(np.asarray(out_s.features.hidden[-1])[n_shared + 2:], 0.0)


def test_all_states_on_one_expert():
    """k = 1 with a router that always picks expert 0: one full group, five empty ones."""
    cfg = dataclasses.replace(NET, top_k=1)
    obs = jax.random.normal(jax.random.PRNGKey(5), (33, OBS_DIM))
    params = _tied_params("topk_moe", cfg, obs)
    _compare("topk_moe", cfg, obs, params=params)


def test_with_dense_dispatch_keeps_parameters_and_changes_only_dispatch():
    sparse, dense = _actors("topk_moe", NET)
    assert with_dense_dispatch(sparse) == dense
    assert with_dense_dispatch(dense) is dense
    mlp = nets.make_actor(dataclasses.replace(NET, actor="mlp"), ACTION_DIM)
    assert with_dense_dispatch(mlp) is mlp


def test_sparse_dispatch_compiles_once_for_any_routing():
    """Routing patterns change every call; shapes do not, so the jitted actor compiles once."""
    sparse, _ = _actors("topk_moe", NET)
    obs = jax.random.normal(jax.random.PRNGKey(0), (24, OBS_DIM))
    params = _init_params("topk_moe", NET)
    traces = []

    @jax.jit
    def apply(p, o):
        traces.append(1)
        return sparse.apply(p, o).mean

    for seed in range(4):
        apply(params, jax.random.normal(jax.random.PRNGKey(seed), (24, OBS_DIM)) * (seed + 1))
    assert len(traces) == 1


@pytest.mark.parametrize("kind", ["topk_moe", "ds_moe"])
def test_assignment_gram_equals_phi_phi_transpose(kind):
    """SPHERE's sparse path: the Gram from assignments equals Phi Phi^T built from the dense layout."""
    sparse, _ = _actors(kind, NET)
    obs = jax.random.normal(jax.random.PRNGKey(8), (29, OBS_DIM)) * 3.0
    features = jax.jit(sparse.apply)(_init_params(kind, NET), obs).features
    assert features.assignments is not None
    for layer in range(len(NET.hidden_sizes)):
        phi = np.asarray(routing_weighted_features(features, layer), np.float64)
        np.testing.assert_allclose(assignment_gram(features, layer), phi @ phi.T, rtol=1e-5, atol=1e-6)
        # the trace-scaled loss from the assignments' Gram equals the dense Phi's (D > T here: batch space)
        a = phi.T @ phi / phi.shape[0]
        expected = float(np.sum((a / np.trace(a) - np.eye(phi.shape[1]) / phi.shape[1]) ** 2))
        np.testing.assert_allclose(float(layer_loss(features, layer, "concat", "trace")), expected, rtol=1e-4)
