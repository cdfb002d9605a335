"""How PPO weights a regulariser: `loss` (adaptive ratio), `grad` (gradient-norm ratio) and `fixed`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sphere_rl.algo.ppo import PPO, Batch
from sphere_rl.config import Config

BASE = ["net.n_experts=3", "net.hidden_sizes=16,16", "net.gate_hidden_sizes=16", "net.critic_hidden_sizes=16",
        "ppo.num_envs=8", "ppo.n_steps=8", "ppo.minibatch_size=64", "run.tasks=arm/reach", "reg.name=sphere"]


def _setup(*extra):
    cfg = Config().override([*BASE, *extra]).validate()
    ppo = PPO(cfg, obs_dim=6, action_dim=2)
    state = ppo.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    mb = Batch(*(jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(64, 6), (64, 2), (64,), (64,), (64,)]))
    return cfg, ppo, state, mb


def _separate_gradients(ppo, params, mb):
    g_base = jax.grad(lambda p: ppo._losses(p, mb)[0])(params)
    g_reg = jax.grad(lambda p: ppo._losses(p, mb)[1])(params)
    base, penalty, metrics = ppo._losses(params, mb)
    return g_base, g_reg, penalty, metrics


def _assert_tree_close(a, b, rtol=1e-4, atol=1e-7):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_grad_mode_scales_regulariser_gradient_to_ratio_of_base_norm():
    cfg, ppo, state, mb = _setup("reg.mode=grad", "reg.coef=0.001")
    grads, metrics = ppo._gradients(state.params, mb)
    g_base, g_reg, _, _ = _separate_gradients(ppo, state.params, mb)
    s = 0.001 * optax.tree.norm(g_base["actor"]) / optax.tree.norm(g_reg["actor"])
    assert float(metrics["reg/lambda"]) == pytest.approx(float(s), rel=1e-4)
    _assert_tree_close(grads, jax.tree.map(lambda a, b: a + s * b, g_base, g_reg))
    # the added part has exactly coef times the norm of the base actor gradient
    added = jax.tree.map(lambda g, b: g - b, grads["actor"], g_base["actor"])
    assert float(optax.tree.norm(added)) == pytest.approx(0.001 * float(optax.tree.norm(g_base["actor"])), rel=1e-3)


def test_loss_mode_lambda_is_ratio_of_policy_objective_and_not_differentiated():
    cfg, ppo, state, mb = _setup("reg.mode=loss", "reg.coef=0.05")
    grads, metrics = ppo._gradients(state.params, mb)
    g_base, g_reg, penalty, m = _separate_gradients(ppo, state.params, mb)
    lam = 0.05 * abs(float(m["policy_objective"])) / (float(penalty) + 1e-8)
    assert float(metrics["reg/lambda"]) == pytest.approx(lam, rel=1e-4)
    _assert_tree_close(grads, jax.tree.map(lambda a, b: a + lam * b, g_base, g_reg), rtol=1e-3, atol=1e-6)


def test_fixed_mode_and_no_regulariser():
    cfg, ppo, state, mb = _setup("reg.mode=fixed", "reg.coef=0.3")
    grads, metrics = ppo._gradients(state.params, mb)
    g_base, g_reg, _, _ = _separate_gradients(ppo, state.params, mb)
    assert float(metrics["reg/lambda"]) == pytest.approx(0.3)
    _assert_tree_close(grads, jax.tree.map(lambda a, b: a + 0.3 * b, g_base, g_reg))
    _, ppo_none, state_none, mb = _setup("reg.name=none")
    grads_none, metrics_none = ppo_none._gradients(state_none.params, mb)
    _assert_tree_close(grads_none, g_base)  # same init and batch: the base gradient alone
    assert float(metrics_none["reg/lambda"]) == 0.0
