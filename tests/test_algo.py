"""PPO building blocks against hand-worked examples and independent numpy/scipy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sphere_rl.algo.gae import compute_gae
from sphere_rl.algo.losses import clipped_surrogate, gaussian_entropy, gaussian_log_prob, value_loss
from sphere_rl.algo.normalizer import RunningMeanStd


def test_gae_hand_worked_example():
    # T=3, one env; the episode ends after step 1, so step 1 does not bootstrap from step 2.
    rewards = jnp.array([[1.0], [2.0], [3.0]])
    values = jnp.array([[0.5], [1.0], [1.5]])
    dones = jnp.array([[0.0], [1.0], [0.0]])
    adv, ret = compute_gae(rewards, values, dones, jnp.array([2.0]), gamma=0.9, gae_lambda=0.8)
    # delta2 = 3 + .9*2 - 1.5 = 3.3 ; delta1 = 2 - 1 = 1.0 ; delta0 = 1 + .9*1 - .5 = 1.4
    # A2 = 3.3 ; A1 = 1.0 (cut by done) ; A0 = 1.4 + .72 * 1.0 = 2.12
    np.testing.assert_allclose(adv[:, 0], [2.12, 1.0, 3.3], rtol=1e-6)
    np.testing.assert_allclose(ret[:, 0], [2.62, 2.0, 4.8], rtol=1e-6)


def _gae_reference(rewards, values, dones, last_value, gamma, lam):
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for n in range(N):
        running = 0.0
        for t in reversed(range(T)):
            next_v = last_value[n] if t == T - 1 else values[t + 1, n]
            nonterminal = 1.0 - dones[t, n]
            delta = rewards[t, n] + gamma * next_v * nonterminal - values[t, n]
            running = delta + gamma * lam * nonterminal * running
            adv[t, n] = running
    return adv


def test_gae_matches_loop_reference():
    rng = np.random.default_rng(0)
    T, N = 17, 5
    rewards, values = rng.normal(size=(T, N)), rng.normal(size=(T, N))
    dones = (rng.random((T, N)) < 0.2).astype(np.float32)
    last = rng.normal(size=N)
    adv, ret = compute_gae(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32),
                           jnp.asarray(dones), jnp.asarray(last, jnp.float32), 0.99, 0.95)
    ref = _gae_reference(rewards, values, dones, last, 0.99, 0.95)
    np.testing.assert_allclose(adv, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ret, ref + values, rtol=1e-4, atol=1e-5)


def test_clipped_surrogate_known_values():
    ratios = np.array([1.5, 0.5, 0.5, 1.1])
    adv = jnp.array([1.0, 1.0, -1.0, -2.0])
    old = jnp.zeros(4)
    out = clipped_surrogate(jnp.log(jnp.asarray(ratios)), old, adv, clip_range=0.2)
    # per-sample min(rA, clip(r)A): 1.2, 0.5, -0.8, -2.2
    assert out["policy_loss"] == pytest.approx(-(1.2 + 0.5 - 0.8 - 2.2) / 4, rel=1e-6)
    assert out["clip_fraction"] == pytest.approx(0.75)
    assert out["approx_kl"] == pytest.approx(np.mean((ratios - 1) - np.log(ratios)), rel=1e-5)


def test_gaussian_log_prob_and_entropy_match_scipy():
    rng = np.random.default_rng(1)
    mean, actions = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    log_std = rng.normal(size=3) * 0.3
    lp = gaussian_log_prob(jnp.asarray(mean), jnp.asarray(log_std), jnp.asarray(actions))
    ref = stats.norm.logpdf(actions, mean, np.exp(log_std)).sum(-1)
    np.testing.assert_allclose(lp, ref, rtol=1e-5)
    ent = gaussian_entropy(jnp.asarray(log_std))
    assert float(ent) == pytest.approx(stats.norm.entropy(0, np.exp(log_std)).sum(), rel=1e-5)


def test_value_loss():
    assert float(value_loss(jnp.array([1.0, 2.0]), jnp.array([2.0, 4.0]))) == pytest.approx(2.5)


def test_running_mean_std_matches_numpy_over_batches():
    rng = np.random.default_rng(2)
    batches = [rng.normal(loc=3.0, scale=2.0, size=(n, 4)) for n in (5, 17, 64)]
    rms = RunningMeanStd.create(4)
    for b in batches:
        rms = rms.update(jnp.asarray(b, jnp.float32))
    data = np.concatenate(batches)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-4)
    np.testing.assert_allclose(rms.var, data.var(0), rtol=1e-3)
    assert float(rms.count) == pytest.approx(len(data), abs=1e-3)
    normed = rms.normalize(jnp.asarray(data, jnp.float32), clip=10.0)
    np.testing.assert_allclose(np.asarray(normed).mean(0), 0.0, atol=1e-3)
    assert float(jnp.abs(rms.normalize(jnp.full((1, 4), 1e6), clip=5.0)).max()) == pytest.approx(5.0)
