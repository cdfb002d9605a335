"""Empirical NTK: structured and generic paths against a brute-force float64 Jacobian, and the spectrum."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphere_rl import nets
from sphere_rl.config import NetConfig
from sphere_rl.diagnostics.ntk import (
    UnsupportedNetworkError,
    actor_ntk,
    empirical_ntk,
    generic_chunk_size,
    ntk_spectrum,
    structured_ntk,
)
from sphere_rl.nets.moe import with_dense_dispatch

ACTOR_KINDS = ["mlp", "topk_moe", "dense_moe", "ds_moe"]
N_STATES, OBS_DIM, ACTION_DIM = 7, 5, 3


def tiny_actor(kind: str, dtype=jnp.float64):
    cfg = NetConfig(actor=kind, n_experts=4, top_k=2, n_shared=1, hidden_sizes=(8, 6), gate_hidden_sizes=(8,))
    actor = nets.make_actor(cfg, ACTION_DIM)
    obs = jax.random.normal(jax.random.PRNGKey(1), (N_STATES, OBS_DIM), dtype)
    params = actor.init(jax.random.PRNGKey(0), obs)
    # Scale every leaf up so the tiny initial heads (gain 0.01) do not make K nearly zero.
    params = jax.tree_util.tree_map(lambda x: (x * 5.0 + 0.1).astype(dtype), params)
    return actor, params, obs


def brute_force_ntk(actor, params, obs) -> tuple[np.ndarray, np.ndarray]:
    """K_trace (N, N) and K_full (N·A, N·A) from the whole Jacobian of the batched mean."""
    jac = jax.jacrev(lambda p: actor.apply(p, obs).mean)(params)
    n = obs.shape[0]
    flat = np.concatenate([np.asarray(leaf, np.float64).reshape(n, ACTION_DIM, -1) for leaf in jax.tree_util.tree_leaves(jac)], -1)
    k_trace = np.einsum("iap,jap->ij", flat, flat)
    k_full = np.einsum("iap,jbp->iajb", flat, flat).reshape(n * ACTION_DIM, n * ACTION_DIM)
    return k_trace, k_full


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module", params=ACTOR_KINDS)
def x64_case(request):
    with jax.enable_x64(True):
        actor, params, obs = tiny_actor(request.param)
        k_trace, k_full = brute_force_ntk(actor, params, obs)
        # Chunked variants: generic over states (trace), structured over outputs (full, cross-chunk blocks).
        cases = [(m, r, None) for m in ("structured", "generic") for r in ("trace", "full")]
        cases += [("generic", "trace", 2), ("structured", "full", 2)]
        results = {
            (method, reduction, chunk): actor_ntk(actor, params, obs, reduction=reduction, method=method, chunk_size=chunk)
            for method, reduction, chunk in cases
        }
    return request.param, k_trace, k_full, results


def test_ntk_equals_brute_force_jacobian(x64_case):
    kind, k_trace, k_full, results = x64_case
    assert np.abs(k_trace).max() > 1e-3, "degenerate test network"
    for (method, reduction, chunk), kernel in results.items():
        reference = k_trace if reduction == "trace" else k_full
        assert kernel.dtype == np.float64 and kernel.shape == reference.shape
        assert relative_error(kernel, reference) < 1e-8, (kind, method, reduction, chunk)


def test_full_and_trace_agree(x64_case):
    _, _, _, results = x64_case
    for method in ("structured", "generic"):
        full = results[(method, "full", None)].reshape(N_STATES, ACTION_DIM, N_STATES, ACTION_DIM)
        block_traces = np.einsum("iaja->ij", full)
        np.testing.assert_allclose(block_traces, results[(method, "trace", None)], rtol=1e-10, atol=1e-12)


def test_ntk_is_symmetric_psd(x64_case):
    _, _, _, results = x64_case
    kernel = results[("structured", "trace", None)]
    np.testing.assert_allclose(kernel, kernel.T, rtol=0, atol=1e-12 * np.abs(kernel).max())
    assert np.linalg.eigvalsh(kernel).min() > -1e-10 * np.abs(kernel).max()


def test_top_k_experts_without_states_contribute_nothing():
    """Route every state to the same experts: the unused experts' parameters must not enter K."""
    with jax.enable_x64(True):
        actor, params, obs = tiny_actor("topk_moe")
        logits_bias = params["params"]["moe"]["gate"]["logits"]["bias"]
        params["params"]["moe"]["gate"]["logits"]["bias"] = logits_bias.at[:2].set(1e3)  # experts 0, 1 always win
        k_trace, _ = brute_force_ntk(actor, params, obs)
        np.testing.assert_allclose(structured_ntk(actor, params, obs), k_trace, rtol=1e-9, atol=1e-12)


def test_float32_network_close_to_float64_reference():
    actor, params, obs = tiny_actor("topk_moe", jnp.float32)
    with jax.enable_x64(True):
        params64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
        k_trace, _ = brute_force_ntk(actor, params64, jnp.asarray(obs, jnp.float64))
    assert relative_error(structured_ntk(actor, params, obs), k_trace) < 1e-5


def test_generic_path_on_a_hand_worked_linear_function():
    """f(x) = x W: J_a wrt W is x ⊗ e_a, so K_trace = A · X Xᵀ and K_full = X Xᵀ ⊗ I_A."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    gram_x = x.astype(np.float64) @ x.astype(np.float64).T
    k_trace = empirical_ntk(lambda p, o: o @ p, jnp.asarray(w), jnp.asarray(x))
    np.testing.assert_allclose(k_trace, 3 * gram_x, rtol=1e-5)
    k_full = empirical_ntk(lambda p, o: o @ p, jnp.asarray(w), jnp.asarray(x), reduction="full", chunk_size=4)
    np.testing.assert_allclose(k_full, np.kron(gram_x, np.eye(3)), rtol=1e-5, atol=1e-5)


def test_generic_chunk_size_respects_the_memory_budget():
    # 3 outputs x 1000 params x 4 bytes = 12 kB per state; two chunks must fit.
    assert generic_chunk_size(100, 3, 1000, 4, memory_budget=10 * 24_000) == 10
    assert generic_chunk_size(100, 3, 1000, 4, memory_budget=1) == 1
    assert generic_chunk_size(5, 3, 1000, 4, memory_budget=10**9) == 5
    actor, params, obs = tiny_actor("mlp", jnp.float32)
    small_budget = empirical_ntk(lambda p, o: actor.apply(p, o).mean, params, obs, memory_budget=1)
    whole = empirical_ntk(lambda p, o: actor.apply(p, o).mean, params, obs)
    np.testing.assert_allclose(small_budget, whole, rtol=1e-5, atol=1e-8)


class _WithLayerNorm(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(nn.LayerNorm()(nn.Dense(4)(x)))


class _SharedWeights(nn.Module):
    @nn.compact
    def __call__(self, x):
        layer = nn.Dense(3)
        return layer(nn.relu(layer(x)))


@pytest.mark.parametrize("module", [_WithLayerNorm(), _SharedWeights()])
def test_structured_path_refuses_networks_it_cannot_account_for(module):
    obs = jnp.ones((4, 3))
    params = module.init(jax.random.PRNGKey(0), obs)
    with pytest.raises(UnsupportedNetworkError):
        structured_ntk(module, params, obs, output_fn=lambda y: y)
    kernel = empirical_ntk(lambda p, o: module.apply(p, o), params, obs)  # the generic path still works
    assert kernel.shape == (4, 4)


def test_bad_arguments_raise_clear_errors():
    actor, params, obs = tiny_actor("mlp", jnp.float32)
    with pytest.raises(ValueError, match="reduction"):
        actor_ntk(actor, params, obs, reduction="diag")
    with pytest.raises(ValueError, match="method"):
        actor_ntk(actor, params, obs, method="fast")


# -- spectrum -------------------------------------------------------------------------------------
def test_spectrum_of_known_kernels():
    n = 16
    assert ntk_spectrum(np.eye(n)).effective_rank == pytest.approx(n, rel=1e-12)
    v = np.arange(1.0, n + 1)
    rank_one = np.outer(v, v)
    assert ntk_spectrum(rank_one).effective_rank == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(0)
    m = rng.normal(size=(n, 5))
    kernel = m @ m.T
    spectrum = ntk_spectrum(kernel)
    assert ntk_spectrum(1e6 * kernel).effective_rank == pytest.approx(spectrum.effective_rank, rel=1e-9)
    assert 1.0 < spectrum.effective_rank < 5.0 + 1e-9
    np.testing.assert_allclose(spectrum.top(3), np.sort(np.linalg.eigvalsh(kernel))[::-1][:3], rtol=1e-10)
    assert spectrum.trace == pytest.approx(np.trace(kernel), rel=1e-12)
    assert np.all(np.diff(spectrum.eigenvalues) <= 0)
    assert ntk_spectrum(np.zeros((3, 3))).effective_rank == 0.0
    np.testing.assert_array_equal(ntk_spectrum(np.eye(2)).top(4), [1.0, 1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="square"):
        ntk_spectrum(np.ones((2, 3)))


def test_structured_path_compiles_once_per_actor_and_probe_shape():
    from sphere_rl.diagnostics import ntk

    actor, params, obs = tiny_actor("topk_moe", jnp.float32)
    ntk._cached_gradients_fn.cache_clear()
    first = structured_ntk(actor, params, obs)
    moved = jax.tree_util.tree_map(lambda x: x * 1.1, params)
    second = structured_ntk(actor, moved, obs + 0.5)
    assert not np.allclose(first, second)
    dense = with_dense_dispatch(actor)  # the form the structured path evaluates
    (compiled,) = [ntk._cached_gradients_fn(dense, ntk._default_output, tuple(ntk._trace_layers(dense, params, obs)),
                                            tuple(range(ACTION_DIM)))]
    assert ntk._cached_gradients_fn.cache_info().currsize == 1
    assert compiled._cache_size() == 1  # new parameter values and states reuse the compiled program


def test_lambda_min_condition_and_numerical_rank_against_numpy():
    """A PSD kernel of rank 5 in 12 dimensions with known eigenvalues: λ_min over the numerical range,
    the condition number and the rank agree with numpy (matrix_rank with the same tolerance)."""
    from sphere_rl.diagnostics.ntk import ntk_spectrum

    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    eigenvalues = np.array([9.0, 4.0, 2.5, 0.5, 0.03] + [0.0] * 7)
    kernel = (q * eigenvalues) @ q.T
    spectrum = ntk_spectrum(kernel)
    tol = 9.0 * 12 * np.finfo(np.float32).eps
    assert spectrum.zero_tolerance == pytest.approx(tol, rel=1e-9)
    assert spectrum.numerical_rank == 5 == np.linalg.matrix_rank(kernel, tol=tol)
    assert spectrum.min_nonzero == pytest.approx(0.03, rel=1e-9)
    assert spectrum.condition == pytest.approx(9.0 / 0.03, rel=1e-9)
    zero = ntk_spectrum(np.zeros((4, 4)))
    assert zero.numerical_rank == 0 and np.isnan(zero.min_nonzero) and np.isnan(zero.condition)
