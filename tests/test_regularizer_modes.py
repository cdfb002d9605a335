"""How PPO weights regulariser terms: `loss` (adaptive ratio), `grad` (gradient-norm ratio) and `fixed`, each
term on its own and per network (the official code's feature and routing penalties, actor and critic)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphere_rl.algo.ppo import PPO, Batch
from sphere_rl.config import Config
from sphere_rl.regularizers.sphere import routing_loss

BASE = ["net.n_experts=3", "net.hidden_sizes=16,16", "net.gate_hidden_sizes=16", "net.critic_hidden_sizes=16",
        "ppo.num_envs=8", "ppo.n_steps=8", "ppo.minibatch_size=64", "run.tasks=arm/reach", "reg.name=sphere"]


def _setup(*extra):
    cfg = Config().override([*BASE, *extra]).validate()
    ppo = PPO(cfg, obs_dim=6, action_dim=2)
    state = ppo.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    mb = Batch(*(jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(64, 6), (64, 2), (64,), (64,), (64,)]))
    return cfg, ppo, state, mb


def _term_gradients(ppo, params, mb):
    """{term name: gradient of that unweighted term alone} and the term values, one jax.grad per term."""
    terms, metrics = ppo._losses(params, mb)
    grads = {name: jax.grad(lambda p, n=name: ppo._losses(p, mb)[0][n])(params) for name in terms}
    base = jax.tree.map(lambda a, c: a + c, grads["actor/base"], grads["critic/base"])
    return base, grads, {k: float(v) for k, v in terms.items()}, metrics


def _norm(tree, eps=1e-8):
    """The official code's tree_l2_norm: sqrt(sum of squares + 1e-8), in float64 (eps=0: the plain norm)."""
    return float(np.sqrt(sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in jax.tree.leaves(tree)) + eps))


def _assert_tree_close(a, b, rtol=1e-4, atol=1e-7):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_grad_mode_scales_regulariser_gradient_to_ratio_of_base_norm():
    cfg, ppo, state, mb = _setup("reg.mode=grad", "reg.coef=0.001")
    grads, metrics = ppo._gradients(state.params, mb)
    g_base, g, _, _ = _term_gradients(ppo, state.params, mb)
    s = 0.001 * _norm(g_base["actor"]) / (_norm(g["actor/feature"]["actor"]) + 1e-8)
    assert float(metrics["reg/lambda"]) == pytest.approx(s, rel=1e-4)
    _assert_tree_close(grads, jax.tree.map(lambda a, b: a + s * b, g_base, g["actor/feature"]))
    # the added part has coef times the norm of the base actor gradient: the logged gradient share
    added = jax.tree.map(lambda x, b: x - b, grads["actor"], g_base["actor"])
    assert _norm(added, 0.0) == pytest.approx(0.001 * _norm(g_base["actor"]), rel=1e-3)
    assert float(metrics["reg/grad_share"]) == pytest.approx(0.001, rel=1e-3)
    # the critic is untouched by an actor penalty
    _assert_tree_close(grads["critic"], g_base["critic"])


def test_loss_mode_lambda_is_ratio_of_policy_objective_and_not_differentiated():
    cfg, ppo, state, mb = _setup("reg.mode=loss", "reg.coef=0.05")
    grads, metrics = ppo._gradients(state.params, mb)
    g_base, g, values, m = _term_gradients(ppo, state.params, mb)
    lam = 0.05 * abs(float(m["policy_objective"])) / (values["actor/feature"] + 1e-8)
    assert float(metrics["reg/lambda"]) == pytest.approx(lam, rel=1e-4)
    _assert_tree_close(grads, jax.tree.map(lambda a, b: a + lam * b, g_base, g["actor/feature"]), rtol=1e-3, atol=1e-6)
    # the loss share lambda * L_reg / |L_pi| is the ratio by construction
    assert float(metrics["reg/loss_share"]) == pytest.approx(0.05, rel=1e-4)


def test_fixed_mode_and_no_regulariser():
    cfg, ppo, state, mb = _setup("reg.mode=fixed", "reg.coef=0.3")
    grads, metrics = ppo._gradients(state.params, mb)
    g_base, g, _, _ = _term_gradients(ppo, state.params, mb)
    assert float(metrics["reg/lambda"]) == pytest.approx(0.3)
    _assert_tree_close(grads, jax.tree.map(lambda a, b: a + 0.3 * b, g_base, g["actor/feature"]))
    _, ppo_none, state_none, mb = _setup("reg.name=none")
    grads_none, metrics_none = ppo_none._gradients(state_none.params, mb)
    _assert_tree_close(grads_none, g_base)  # same init and batch: the base gradient alone
    assert float(metrics_none["reg/lambda"]) == 0.0


def test_mode_defaults_are_the_official_ratios():
    for mode, coef in (("loss", 0.05), ("grad", 0.001), ("fixed", 0.05)):
        _, ppo, *_ = _setup(f"reg.mode={mode}")
        assert ppo.regularizer.coef == coef


def test_routing_term_is_on_topk_masked_gates_with_its_own_weight():
    """Official: sphere_output_loss on the top-k-masked probs, with its own ratio (sphere_gating_ratio)."""
    cfg, ppo, state, mb = _setup("reg.mode=loss", "reg.coef=0.05", "reg.routing_coef=0.02")
    grads, metrics = ppo._gradients(state.params, mb)
    g_base, g, values, m = _term_gradients(ppo, state.params, mb)
    # the routing term against numpy on the masked gates of this minibatch
    out = ppo.actor.apply(state.params["actor"], mb.obs)
    logits = np.asarray(out.features.logits, np.float64)
    top = np.argsort(-logits, axis=1)[:, :2]
    masked = np.zeros_like(logits)
    for b, idx in enumerate(top):
        e = np.exp(logits[b, idx] - logits[b, idx].max())
        masked[b, idx] = e / e.sum()
    gram = masked.T @ masked / masked.shape[0]
    expected = (np.sum(gram ** 2) - np.trace(gram) ** 2 / 3) / 3
    assert values["actor/routing"] == pytest.approx(expected, rel=1e-4)
    assert float(routing_loss(jnp.asarray(masked, jnp.float32))) == pytest.approx(expected, rel=1e-4)
    # not the full softmax any more
    soft = np.exp(logits - logits.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    gram_soft = soft.T @ soft / soft.shape[0]
    assert not np.isclose(expected, (np.sum(gram_soft ** 2) - np.trace(gram_soft) ** 2 / 3) / 3, rtol=1e-3)
    # each term weighted on its own against |L_pi|
    objective = abs(float(m["policy_objective"]))
    lam_f = 0.05 * objective / (values["actor/feature"] + 1e-8)
    lam_r = 0.02 * objective / (values["actor/routing"] + 1e-8)
    assert float(metrics["reg/actor/routing/lambda"]) == pytest.approx(lam_r, rel=1e-4)
    expected_grads = jax.tree.map(lambda a, f, r: a + lam_f * f + lam_r * r, g_base, g["actor/feature"], g["actor/routing"])
    _assert_tree_close(grads, expected_grads, rtol=1e-3, atol=1e-6)


def test_grad_mode_weights_routing_term_by_its_own_gradient_norm():
    cfg, ppo, state, mb = _setup("reg.mode=grad", "reg.coef=0.001", "reg.routing_coef=0.01")
    grads, metrics = ppo._gradients(state.params, mb)
    g_base, g, _, _ = _term_gradients(ppo, state.params, mb)
    base = _norm(g_base["actor"])
    s_f = 0.001 * base / (_norm(g["actor/feature"]["actor"]) + 1e-8)
    s_r = 0.01 * base / (_norm(g["actor/routing"]["actor"]) + 1e-8)
    assert float(metrics["reg/actor/routing/lambda"]) == pytest.approx(s_r, rel=1e-4)
    expected = jax.tree.map(lambda a, f, r: a + s_f * f + s_r * r, g_base, g["actor/feature"], g["actor/routing"])
    _assert_tree_close(grads, expected)


@pytest.mark.parametrize("mode", ["loss", "grad"])
def test_critic_option_penalises_an_moe_critic_against_its_own_base(mode):
    """Official `apply_to.critic`: the critic's SPHERE term is scaled against vf_coef * L_V (loss mode) or the
    critic's base gradient norm (grad mode); the actor's weighting is unchanged."""
    cfg, ppo, state, mb = _setup(f"reg.mode={mode}", "net.critic=topk_moe", "reg.critic=true", "ppo.vf_coef=0.7")
    grads, metrics = ppo._gradients(state.params, mb)
    g_base, g, values, m = _term_gradients(ppo, state.params, mb)
    assert "critic/feature" in values and "critic/routing" not in values
    coef = cfg.reg.resolved_coef
    if mode == "loss":
        s_c = coef * abs(0.7 * float(m["value_loss"])) / (values["critic/feature"] + 1e-8)
        s_a = coef * abs(float(m["policy_objective"])) / (values["actor/feature"] + 1e-8)
    else:
        s_c = coef * _norm(g_base["critic"]) / (_norm(g["critic/feature"]["critic"]) + 1e-8)
        s_a = coef * _norm(g_base["actor"]) / (_norm(g["actor/feature"]["actor"]) + 1e-8)
    assert float(metrics["reg/critic/feature/lambda"]) == pytest.approx(s_c, rel=1e-4)
    expected = {"actor": jax.tree.map(lambda a, f: a + s_a * f, g_base["actor"], g["actor/feature"]["actor"]),
                "critic": jax.tree.map(lambda a, f: a + s_c * f, g_base["critic"], g["critic/feature"]["critic"])}
    _assert_tree_close(grads, expected, rtol=1e-3, atol=1e-6)
    # without reg.critic the MoE critic is not penalised
    _, ppo_off, state_off, mb = _setup(f"reg.mode={mode}", "net.critic=topk_moe", "ppo.vf_coef=0.7")
    grads_off, _ = ppo_off._gradients(state_off.params, mb)
    _assert_tree_close(grads_off["critic"], g_base["critic"])


@pytest.mark.parametrize("mode", ["loss", "grad", "fixed"])
def test_routing_coefficient_on_a_network_without_router_adds_nothing(mode):
    """A dense MLP actor (and the default dense critic with reg.critic) has no router: the routing term is 0,
    the gradients are those of the feature term alone, in every mode."""
    _, ppo, state, mb = _setup(f"reg.mode={mode}", "net.actor=mlp", "reg.critic=true", "reg.routing_coef=0.1")
    grads, metrics = ppo._gradients(state.params, mb)
    _, ppo_f, state_f, _ = _setup(f"reg.mode={mode}", "net.actor=mlp", "reg.critic=true")
    grads_f, _ = ppo_f._gradients(state_f.params, mb)
    _assert_tree_close(grads, grads_f)
    assert float(metrics["reg/actor/routing"]) == 0.0 and float(metrics["reg/critic/routing"]) == 0.0
    assert all(np.isfinite(float(v)) for v in metrics.values())
