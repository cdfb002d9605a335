"""The target-fitting probe (diagnostics.fitting): its loss curve equals a plain optax loop, it
separates a network that can still learn from one whose units are all dead, and runs end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sphere_rl import nets
from sphere_rl.config import Config, NetConfig
from sphere_rl.diagnostics.fitting import _fit, fit_random_targets, random_targets


@pytest.fixture(scope="module")
def mlp():
    actor = nets.make_actor(NetConfig(actor="mlp", hidden_sizes=(16, 16)), action_dim=2)
    obs = jax.random.normal(jax.random.PRNGKey(1), (64, 5))
    return actor, actor.init(jax.random.PRNGKey(2), obs[:1]), obs


def test_loss_curve_equals_a_plain_optax_loop(mlp):
    actor, params, obs = mlp
    targets = random_targets(actor, obs, jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(targets).mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(targets).std(axis=0), 1.0, atol=1e-4)
    losses = np.asarray(_fit(actor, params, obs, targets, 25, 1e-2))
    tx, p = optax.adam(1e-2), params
    opt, expected = tx.init(p), []
    loss_fn = lambda q: jnp.mean(jnp.square(actor.apply(q, obs).mean - targets))  # noqa: E731
    for _ in range(25):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        expected.append(float(loss))
        updates, opt = tx.update(grads, opt, p)
        p = optax.apply_updates(p, updates)
    expected.append(float(loss_fn(p)))
    np.testing.assert_allclose(losses, expected, rtol=2e-5)
    out = fit_random_targets(actor, params, obs, jax.random.PRNGKey(0), steps=25, lr=1e-2)
    assert out["fit/auc"] == pytest.approx(np.mean(np.asarray(expected[1:]) / expected[0]), rel=1e-4)
    assert out["fit/final"] == pytest.approx(expected[-1] / expected[0], rel=1e-4)


def test_a_network_with_dead_units_fits_worse(mlp):
    """Every hidden ReLU off (biases -100): only the output layer's bias still learns, so the probe cannot
    get below the targets' variance; a healthy network fits them far better."""
    actor, params, obs = mlp
    dead = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, -100.0) if "bias" in jax.tree_util.keystr(path)
        and "trunk" in jax.tree_util.keystr(path) else x, params)
    healthy = fit_random_targets(actor, params, obs, jax.random.PRNGKey(0), steps=200)
    stuck = fit_random_targets(actor, dead, obs, jax.random.PRNGKey(0), steps=200)
    assert healthy["fit/final"] < 0.5 * stuck["fit/final"]
    assert healthy["fit/auc"] < stuck["fit/auc"]


def test_the_probe_is_logged_at_initialisation_and_task_ends(tmp_path):
    from sphere_rl.experiments.kill_resume import SMALL_CRL
    from sphere_rl.protocols.runner import Runner
    from sphere_rl.runs import RunDir
    from sphere_rl.runs.logger import read_metrics

    cfg = Config().override([*SMALL_CRL, "diag.fit_steps=20"]).validate()
    run_dir = RunDir.create(tmp_path, name="fit", config=cfg.to_dict(), seed=0)
    result = Runner(cfg, run_dir).run()
    rows = read_metrics(run_dir.path("diagnostics.csv"))
    with_fit = [(r["env_step"], r["task_end"]) for r in rows if r.get("fit/auc") is not None]
    assert with_fit == [(0, 0), (768, 1), (1536, 1)]
    assert all(0.0 < r["fit/auc"] < 1.5 for r in rows if r.get("fit/auc") is not None)
    assert "fit/auc" in result.task_end_diagnostics[0]
