"""Plasticity methods (sphere_rl.methods): the registry, and every intervention against its definition:
what it re-initialises, what it leaves alone, the optimiser state it leaves, resume after it fired."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphere_rl.algo.ppo import PPO, Batch
from sphere_rl.config import Config, ConfigError
from sphere_rl.experiments.kill_resume import SMALL_CRL, compare_runs
from sphere_rl.methods import METHODS, enabled_methods
from sphere_rl.nets.paths import path_names
from sphere_rl.methods.reset import PARTS, Reset
from sphere_rl.protocols.runner import _SWITCH, Runner
from sphere_rl.runs import RunDir
from sphere_rl.runs.logger import read_metrics

SMALL_NET = ["net.n_experts=3", "net.hidden_sizes=16,16", "net.gate_hidden_sizes=16", "net.critic_hidden_sizes=16",
             "ppo.num_envs=8", "ppo.n_steps=8", "ppo.minibatch_size=32", "run.tasks=arm/reach"]


def _trained_agent(actor="topk_moe"):
    """An agent after one update phase on random data: non-zero Adam moments everywhere."""
    cfg = Config().override([*SMALL_NET, f"net.actor={actor}"]).validate()
    ppo = PPO(cfg, obs_dim=15, action_dim=3)
    state = ppo.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = Batch(*(jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(64, 15), (64, 3), (64,), (64,), (64,)]))
    state, _ = ppo.update_phase(state, batch, jax.random.PRNGKey(1), jnp.asarray(3e-4, jnp.float32))
    return ppo, state


def _leaves(tree):
    return {path_names(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _adam(opt_state):
    (adam,) = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "mu") and hasattr(x, "nu"))
               if hasattr(s, "mu")]
    return adam


def _expected_paths(part, network, params):
    """Independent of `PARTS`: the parameter paths each part names, spelled out per network layout."""
    paths = set(_leaves(params[network]))
    if part == "all" or part == network:
        return paths
    if part == "heads":
        return {p for p in paths if p[1] in ("mean_head", "value_head") or p[1:4] == ("moe", "experts", "head")}
    if part == "gate":
        return {p for p in paths if network == "actor" and p[1:3] == ("moe", "gate")}
    if part == "log_std":
        return {p for p in paths if network == "actor" and p == ("params", "log_std")}
    return set()


@pytest.mark.parametrize("actor", ["mlp", "topk_moe", "ds_moe"])
@pytest.mark.parametrize("part", sorted(PARTS))
def test_reset_reinitialises_exactly_its_part_and_zeroes_only_its_moments(actor, part):
    ppo, state = _trained_agent(actor)
    key = jax.random.PRNGKey(7)
    new, events = Reset(parts=(part,)).on_task_switch(ppo, state, key, 1)
    fresh = ppo.init(key).params
    n_reset = 0
    for network in ("actor", "critic"):
        want = _expected_paths(part, network, state.params)
        before, after, init = _leaves(state.params[network]), _leaves(new.params[network]), _leaves(fresh[network])
        mu_before, mu_after = _leaves(_adam(state.opt_state[network]).mu), _leaves(_adam(new.opt_state[network]).mu)
        nu_after = _leaves(_adam(new.opt_state[network]).nu)
        for path in before:
            if path in want:
                np.testing.assert_array_equal(after[path], init[path], err_msg=str(path))
                assert not mu_after[path].any() and not nu_after[path].any(), path
                n_reset += after[path].size
            else:
                np.testing.assert_array_equal(after[path], before[path], err_msg=str(path))
                np.testing.assert_array_equal(mu_after[path], mu_before[path], err_msg=str(path))
        assert int(_adam(new.opt_state[network]).count) == int(_adam(state.opt_state[network]).count)
    assert events == {"reset/params": float(n_reset)}
    assert (n_reset > 0) == (part != "gate" or actor != "mlp")  # a dense actor has no router
    if part == "log_std":
        np.testing.assert_array_equal(np.asarray(new.params["actor"]["params"]["log_std"]), 0.0)  # net.log_std_init


def test_registry_lists_every_kind_and_older_switches_count_as_listing():
    assert {m.kind for m in METHODS.values()} <= {"loss", "intervention", "architecture", "optimizer"}
    for spec in METHODS.values():
        assert spec.summary and spec.reference
    cfg = Config().override(["reg.name=sphere", "net.load_balance_coef=0.01", "methods=[reset]"]).validate()
    assert enabled_methods(cfg) == ("reset", "sphere", "load_balance")
    listed = Config().override(["methods=[sphere]"]).validate()
    assert PPO(listed, 15, 3).regularizer is not None  # listing it is enough
    with pytest.raises(ConfigError, match="methods must list registered methods"):
        Config().override(["methods=[nope]"]).validate()
    with pytest.raises(ConfigError, match="reset.parts"):
        Config().override(["methods=[reset]", "reset.parts=[everything]"]).validate()


def _cfg(*extra):
    return Config().override([*SMALL_CRL, "run.keep_checkpoints=10", *extra]).validate()


def test_a_crl_run_resets_at_every_task_switch_and_records_it(tmp_path):
    cfg = _cfg("methods=[reset]", "reset.parts=[all]")
    run_dir = RunDir.create(tmp_path, name="r", config=cfg.to_dict(), seed=0)
    runner = Runner(cfg, run_dir)
    runner.run()
    events = read_metrics(run_dir.path("events.csv"))
    assert [(e["env_step"], e["task_index"], e["event"]) for e in events] == [(768, 1, "reset/params")]
    # the agent that entered task 1: the end of task 0 with every parameter from the switch's fresh init
    end_of_task_0, _, _ = runner.load_checkpoint(768)
    agent, _, _ = runner._enter_task(end_of_task_0["agent"], 1)
    key = jax.random.fold_in(jax.random.fold_in(runner.base_key, _SWITCH), 1)
    fresh = runner.ppo.init(jax.random.fold_in(key, 0)).params
    for a, b in zip(jax.tree.leaves(agent.params), jax.tree.leaves(fresh)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert events[0]["value"] == sum(x.size for x in jax.tree.leaves(fresh))
    # an RL run never switches
    rl = _cfg("methods=[reset]", "run.protocol=rl")
    rl_dir = RunDir.create(tmp_path, name="rl", config=rl.to_dict(), seed=0)
    Runner(rl, rl_dir).run()
    assert not rl_dir.path("events.csv").exists()


class _Crash(Exception):
    pass


def _crashing_after(runner, n_iterations):
    """`runner`, made to raise `_Crash` when it asks for iteration `n_iterations + 1`."""
    loop, _ = runner.loop_for(runner.tasks[0])
    real, calls = loop.run_call, {"n": 0}

    def run_call(kind, own, shared):
        if kind == "iteration":
            calls["n"] += 1
            if calls["n"] > n_iterations:
                raise _Crash()
        return real(kind, own, shared)

    loop.run_call = run_call
    return runner


def test_a_run_killed_before_a_reset_resumes_exactly(tmp_path):
    """The crash is in task 0, after its second checkpoint; the reset fires after the resume point."""
    cfg = _cfg("methods=[reset]", "reset.parts=[heads,log_std]")
    ref = RunDir.create(tmp_path, name="ref", config=cfg.to_dict(), seed=0)
    Runner(cfg, ref).run()
    crashed = RunDir.create(tmp_path, name="crashed", config=cfg.to_dict(), seed=0)
    runner = _crashing_after(Runner(cfg, crashed), 5)
    with pytest.raises(_Crash):
        runner.run()
    assert crashed.checkpoints.latest_step() == 512
    Runner(cfg, RunDir.open(crashed.root)).run(resume=True)
    assert compare_runs(ref.root, crashed.root) == []
    assert read_metrics(crashed.path("events.csv")) == read_metrics(ref.path("events.csv"))


# ------------------------------------------------------------------------------------ loss-kind methods


def _ppo(*extra, actor="topk_moe"):
    cfg = Config().override([*SMALL_NET, f"net.actor={actor}", *extra]).validate()
    ppo = PPO(cfg, obs_dim=15, action_dim=3)
    state = ppo.init(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    mb = Batch(*(jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(64, 15), (64, 3), (64,), (64,), (64,)]))
    return ppo, state, mb


def _np_half_sq(tree, anchor=None):
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
    refs = [np.asarray(x, np.float64) for x in jax.tree.leaves(anchor)] if anchor is not None else [0.0] * len(leaves)
    return 0.5 * sum(float(np.sum((x - r) ** 2)) for x, r in zip(leaves, refs))


def _base_gradient(ppo, params, mb):
    terms = lambda p: ppo._losses(p, mb)[0]  # noqa: E731
    return jax.grad(lambda p: terms(p)["actor/base"] + terms(p)["critic/base"])(params)


def _close(a, b, rtol=1e-4, atol=1e-6):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_l2_is_half_the_squared_norm_and_adds_lambda_theta_to_the_gradient():
    ppo, state, mb = _ppo("methods=[l2]", "l2.coef=0.01")
    terms, _ = ppo._losses(state.params, mb, state.reg_state)
    for network in ("actor", "critic"):
        assert float(terms[f"{network}/l2/penalty"]) == pytest.approx(_np_half_sq(state.params[network]), rel=1e-5)
    grads, metrics = ppo._gradients(state.params, mb, state.reg_state)
    expected = jax.tree.map(lambda g, p: g + 0.01 * p, _base_gradient(ppo, state.params, mb), state.params)
    _close(grads, expected)
    assert float(metrics["l2/penalty/lambda"]) == pytest.approx(0.01)
    assert float(metrics["l2/critic/penalty"]) == pytest.approx(_np_half_sq(state.params["critic"]), rel=1e-5)


def test_l2_init_pulls_towards_the_first_parameters_and_keeps_them_across_tasks():
    ppo, state, mb = _ppo("methods=[l2_init]", "l2_init.coef=0.1", "l2_init.networks=actor")
    first = state.params
    state, _ = ppo.update_phase(state, mb, jax.random.PRNGKey(1), jnp.asarray(3e-4, jnp.float32))
    state = ppo.start_task(state)  # a new task: the anchor stays the very first parameters
    _close(state.reg_state["l2_init"]["actor"], first["actor"], rtol=0, atol=0)
    terms, _ = ppo._losses(state.params, mb, state.reg_state)
    assert float(terms["actor/l2_init/penalty"]) == pytest.approx(_np_half_sq(state.params["actor"], first["actor"]),
                                                                  rel=1e-4)
    assert "critic/l2_init/penalty" not in terms
    grads, _ = ppo._gradients(state.params, mb, state.reg_state)
    base = _base_gradient(ppo, state.params, mb)
    _close(grads["actor"], jax.tree.map(lambda g, p, a: g + 0.1 * (p - a), base["actor"], state.params["actor"],
                                        first["actor"]))
    _close(grads["critic"], base["critic"])
    # anchor=task: the parameters at the task's start
    ppo_t, state_t, _ = _ppo("methods=[l2_init]", "l2_init.anchor=task")
    moved = state_t.replace(params=jax.tree.map(lambda x: x + 1.0, state_t.params))
    _close(ppo_t.start_task(moved).reg_state["l2_init"], moved.params, rtol=0, atol=0)


@pytest.mark.parametrize("sphere_mode", ["loss", "grad"])
def test_loss_methods_compose_with_sphere_each_weighted_by_its_own_mode(sphere_mode):
    """SPHERE (loss or grad mode) + L2-init (fixed) + L2 (loss mode): the gradient is the base gradient plus
    each term's own weighted gradient; SPHERE's grad-mode scale uses the base gradient alone."""
    ppo, state, mb = _ppo("reg.name=sphere", f"reg.mode={sphere_mode}", "methods=[l2_init,l2]", "l2_init.coef=0.1",
                          "l2.mode=loss", "l2.coef=0.02")
    grads, metrics = ppo._gradients(state.params, mb, state.reg_state)
    terms, m = ppo._losses(state.params, mb, state.reg_state)
    base = _base_gradient(ppo, state.params, mb)
    g_sphere = jax.grad(lambda p: ppo._losses(p, mb, state.reg_state)[0]["actor/feature"])(state.params)
    norm = lambda t: float(np.sqrt(sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in jax.tree.leaves(t)) + 1e-8))  # noqa: E731
    if sphere_mode == "grad":
        s = ppo.cfg.reg.resolved_coef * norm(base["actor"]) / (norm(g_sphere["actor"]) + 1e-8)
    else:
        s = ppo.cfg.reg.resolved_coef * abs(float(m["policy_objective"])) / (float(terms["actor/feature"]) + 1e-8)
    assert float(metrics["reg/lambda"]) == pytest.approx(s, rel=1e-3)
    lam_l2 = {n: 0.02 * float(ppo._base_loss_for_scale(n, m)) / (float(terms[f"{n}/l2/penalty"]) + 1e-8)
              for n in ("actor", "critic")}
    assert float(metrics["l2/penalty/lambda"]) == pytest.approx(lam_l2["actor"], rel=1e-4)
    assert float(metrics["l2/critic/penalty/lambda"]) == pytest.approx(lam_l2["critic"], rel=1e-4)
    expected = {n: jax.tree.map(lambda g, gs, p, a: g + s * gs + 0.1 * (p - a) + lam_l2[n] * p, base[n], g_sphere[n],
                                state.params[n], state.reg_state["l2_init"][n]) for n in ("actor", "critic")}
    _close(grads, expected, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("actor", ["mlp", "topk_moe", "dense_moe", "ds_moe"])
@pytest.mark.parametrize("method", sorted(set(METHODS) - {"load_balance"}))
def test_every_method_on_every_actor_builds_and_takes_one_update(method, actor):
    extra = ["reg.name=sphere"] if method == "sphere" else [f"methods=[{method}]"]
    ppo, state, mb = _ppo(*extra, actor=actor)
    assert method in ppo.methods
    new, metrics = ppo.update_phase(state, mb, jax.random.PRNGKey(1), jnp.asarray(3e-4, jnp.float32))
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(new.params))
    assert float(metrics["n_updates"]) > 0
    switched, _ = ppo.task_switch(new, jax.random.PRNGKey(2), 1)
    assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(ppo.start_task(switched).params))


def _np_parseval(params, scale):
    """Σ over hidden kernels of (64/width)^2 ||K^T K - s I||_F^2, experts one by one, in float64."""
    total = 0.0
    for names, kernel in ((path_names(p), np.asarray(x, np.float64))
                          for p, x in jax.tree_util.tree_flatten_with_path(params)[0]):
        if names[-1] != "kernel" or not any(n.startswith(("dense_", "layer_")) for n in names):
            continue
        for k in kernel.reshape((-1,) + kernel.shape[-2:]):
            total += (64 / k.shape[1]) ** 2 * float(np.sum((k.T @ k - scale * np.eye(k.shape[1])) ** 2))
    return total


@pytest.mark.parametrize("actor", ["mlp", "topk_moe", "ds_moe"])
def test_parseval_term_and_gradient_match_numpy(actor):
    ppo, state, mb = _ppo("methods=[parseval]", "parseval.coef=0.001", actor=actor)
    assert ppo.losses[0].regularizer.scale == 1.0  # the default init's squared gain
    terms, _ = ppo._losses(state.params, mb, state.reg_state)
    for network in ("actor", "critic"):
        assert float(terms[f"{network}/parseval/penalty"]) == pytest.approx(_np_parseval(state.params[network], 1.0),
                                                                            rel=1e-4)
    # d/dK ||K^T K - s I||^2 = 4 K (K^T K - s I) on hidden kernels; nothing on heads, biases, log_std
    grads, _ = ppo._gradients(state.params, mb, state.reg_state)
    base = _base_gradient(ppo, state.params, mb)

    def expected(path, g, k):
        names = path_names(path)
        if names[-1] != "kernel" or not any(n.startswith(("dense_", "layer_")) for n in names):
            return np.asarray(g)
        k = np.asarray(k, np.float64)
        gram = np.einsum("...io,...ip->...op", k, k) - np.eye(k.shape[-1])
        return np.asarray(g) + 0.001 * (64 / k.shape[-1]) ** 2 * 4 * np.einsum("...io,...op->...ip", k, gram)

    want = jax.tree_util.tree_map_with_path(expected, base, state.params)
    _close(grads, want, rtol=1e-3, atol=1e-6)


def test_parseval_is_zero_on_scaled_orthogonal_square_layers_and_follows_the_init():
    from sphere_rl.regularizers.parseval import parseval_layer

    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(32, 32)))
    assert float(parseval_layer(jnp.asarray(np.sqrt(2.0) * q, jnp.float32), 2.0)) == pytest.approx(0.0, abs=1e-8)
    assert float(parseval_layer(jnp.asarray(q, jnp.float32), 2.0)) == pytest.approx(32.0, rel=1e-5)  # (1-2)^2 x 32
    ortho, _, _ = _ppo("methods=[parseval]", "net.init=orthogonal")
    assert ortho.losses[0].regularizer.scale == 2.0  # the official code's target with gain sqrt(2)
    assert _ppo("methods=[parseval]", "parseval.scale=3")[0].losses[0].regularizer.scale == 3.0


# ------------------------------------------------------------------------------------ ReDo


def _relu_mlp(params, obs):
    """Post-activation outputs of every trunk layer of a dense network, in numpy (float64)."""
    h, out = np.asarray(obs, np.float64), []
    trunk = params["params"]["trunk"]
    for i in range(len(trunk)):
        layer = trunk[f"dense_{i}"]
        h = np.maximum(h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64), 0.0)
        out.append(h)
    return out


def test_redo_recycles_exactly_the_dormant_units_of_a_dense_network_as_numpy_scores_them():
    ppo, state, mb = _ppo("methods=[redo]", "redo.tau=0.4", "redo.every=1", actor="mlp")
    state, _ = ppo.update_phase(state, mb, jax.random.PRNGKey(1), jnp.asarray(3e-4, jnp.float32))  # non-zero moments
    obs = mb.obs
    new, events = ppo.after_iteration(state, obs, jax.random.PRNGKey(5), 0)
    (redo,) = ppo.interventions
    fresh = ppo.init(jax.random.fold_in(jax.random.PRNGKey(5), 0)).params
    total = 0
    for network in ("actor", "critic"):
        params = state.params[network]["params"]
        acts = _relu_mlp(state.params[network], obs)
        head = "mean_head" if network == "actor" else "value_head"
        adam_old, adam_new = _adam(state.opt_state[network]), _adam(new.opt_state[network])
        for i, h in enumerate(acts):
            score = np.abs(h).mean(axis=0)
            dormant = score / (score.mean() + 0.0) <= 0.4
            total += int(dormant.sum())
            nxt = ("trunk", f"dense_{i + 1}") if i + 1 < len(acts) else (head,)
            k_new = np.asarray(new.params[network]["params"]["trunk"][f"dense_{i}"]["kernel"])
            k_old = np.asarray(params["trunk"][f"dense_{i}"]["kernel"])
            k_fresh = np.asarray(fresh[network]["params"]["trunk"][f"dense_{i}"]["kernel"])
            np.testing.assert_array_equal(k_new[:, dormant], k_fresh[:, dormant])
            if i == 0:  # the first layer's live columns are untouched (later ones may lose rows of dormant inputs)
                np.testing.assert_array_equal(k_new[:, ~dormant], k_old[:, ~dormant])
            b_new = np.asarray(new.params[network]["params"]["trunk"][f"dense_{i}"]["bias"])
            np.testing.assert_array_equal(b_new[dormant], 0.0)
            out_new = new.params[network]["params"]
            for key in nxt:
                out_new = out_new[key]
            np.testing.assert_array_equal(np.asarray(out_new["kernel"])[dormant], 0.0)
            mu_new = adam_new.mu["params"]["trunk"][f"dense_{i}"]["kernel"]
            mu_old = adam_old.mu["params"]["trunk"][f"dense_{i}"]["kernel"]
            assert not np.asarray(mu_new)[:, dormant].any()
            if i == 0:
                np.testing.assert_array_equal(np.asarray(mu_new)[:, ~dormant], np.asarray(mu_old)[:, ~dormant])
        np.testing.assert_array_equal(np.asarray(new.params[network]["params"][head]["bias"]),
                                      np.asarray(params[head]["bias"]))
    assert events["redo/units"] == float(total) and total > 0
    ten = dataclasses.replace(redo, every=10)
    assert [i for i in range(30) if ten.due(i)] == [9, 19, 29] and ten.first_iteration == 9


def test_redo_on_an_moe_recycles_a_dead_expert_unit_without_changing_the_policy():
    ppo, state, mb = _ppo("methods=[redo]", "redo.every=1", "redo.networks=actor", "redo.tau=1e-6", "net.dispatch=dense")
    experts = state.params["actor"]["params"]["moe"]["experts"]
    dead = experts["layer_1"]["bias"].at[1, 3].set(-1e3)  # unit 3 of expert 1, layer 1: ReLU output 0 everywhere
    params = {**state.params, "actor": {"params": {**state.params["actor"]["params"], "moe": {
        **state.params["actor"]["params"]["moe"], "experts": {**experts, "layer_1": {**experts["layer_1"], "bias": dead}}}}}}
    state = state.replace(params=params)
    before = ppo.actor.apply(state.params["actor"], mb.obs).mean
    new, events = ppo.after_iteration(state, mb.obs, jax.random.PRNGKey(3), 0)
    after = ppo.actor.apply(new.params["actor"], mb.obs).mean
    np.testing.assert_allclose(np.asarray(after), np.asarray(before), rtol=1e-5, atol=1e-6)  # outgoing weights zeroed
    head = np.asarray(new.params["actor"]["params"]["moe"]["experts"]["head"]["kernel"])
    assert not head[1, 3].any()
    assert float(new.params["actor"]["params"]["moe"]["experts"]["layer_1"]["bias"][1, 3]) == 0.0
    assert events["redo/actor_units"] >= 1 and "redo/critic_units" not in events  # dead units only (score 0)


def test_a_run_with_redo_logs_every_recycling_and_resumes_exactly(tmp_path):
    cfg = _cfg("methods=[redo]", "redo.every=2", "redo.tau=0.3")
    ref = RunDir.create(tmp_path, name="ref", config=cfg.to_dict(), seed=0)
    Runner(cfg, ref).run()
    events = [e for e in read_metrics(ref.path("events.csv")) if e["event"] == "redo/units"]
    assert [e["env_step"] for e in events] == [256, 512, 768, 1024, 1280, 1536]  # every 2nd of 6 iterations per task
    crashed = RunDir.create(tmp_path, name="crashed", config=cfg.to_dict(), seed=0)
    runner = _crashing_after(Runner(cfg, crashed), 9)  # inside task 1, after its first checkpoint
    with pytest.raises(_Crash):
        runner.run()
    Runner(cfg, RunDir.open(crashed.root)).run(resume=True)
    assert compare_runs(ref.root, crashed.root) == []


# ------------------------------------------------------------------------------------ C-CHAIN


def test_cchain_is_the_mean_squared_change_of_the_action_mean_on_the_reference_batch():
    ppo, state, mb = _ppo("methods=[cchain]", "cchain.mode=fixed", "cchain.coef=2.0")
    rng = np.random.default_rng(1)
    reg_obs = jnp.asarray(rng.normal(size=(64, 15)), jnp.float32)
    ref = jax.tree.map(lambda x: x + 0.05 * jnp.asarray(rng.normal(size=x.shape), x.dtype), state.params["actor"])
    reg_state = {**state.reg_state, "cchain": {"actor": ref}}
    terms, _ = ppo._losses(state.params, mb, reg_state, reg_obs)
    now = np.asarray(ppo.actor.apply(state.params["actor"], reg_obs).mean, np.float64)
    before = np.asarray(ppo.actor.apply(ref, reg_obs).mean, np.float64)
    assert float(terms["actor/cchain/penalty"]) == pytest.approx(float(np.mean((now - before) ** 2)), rel=1e-4)
    assert "critic/cchain/penalty" not in terms  # the official scripts leave the critic alone
    # gradient: only through the current parameters; nothing on log_std
    grads, _ = ppo._gradients(state.params, mb, reg_state, reg_obs)
    target = ppo.actor.apply(ref, reg_obs).mean
    churn = jax.grad(lambda p: jnp.mean(jnp.square(ppo.actor.apply(p, reg_obs).mean - target)))(state.params["actor"])
    base = _base_gradient(ppo, state.params, mb)
    _close(grads["actor"], jax.tree.map(lambda g, c: g + 2.0 * c, base["actor"], churn), rtol=1e-3, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(churn["params"]["log_std"]), 0.0)


def test_cchain_reference_is_the_parameters_one_step_earlier_and_restarts_at_a_task():
    ppo, state, mb = _ppo("methods=[cchain]")
    rng = np.random.default_rng(2)
    reg = jnp.asarray(rng.normal(size=(32, 15)), jnp.float32)
    half = jax.tree.map(lambda x: x[:32], mb)
    (s1, _), m1 = ppo._minibatch_step((state, jnp.asarray(False)), (half, reg))
    _close(s1.reg_state["cchain"]["actor"], state.params["actor"], rtol=0, atol=0)
    assert float(m1["cchain/penalty"]) == 0.0  # the first step of a task: the reference is the current agent
    (s2, _), m2 = ppo._minibatch_step((s1, jnp.asarray(False)), (half, reg))
    _close(s2.reg_state["cchain"]["actor"], s1.params["actor"], rtol=0, atol=0)
    assert float(m2["cchain/penalty"]) > 0.0
    _close(ppo.start_task(s2).reg_state["cchain"]["actor"], s2.params["actor"], rtol=0, atol=0)


def test_the_papers_ablations_are_presets_on_top_of_the_official_sphere_run():
    from sphere_rl.config import PRESETS, preset

    base = preset("h1-paper-sphere")
    for name, field, value in (("all-layers", "placement", "all"), ("per-expert", "form", "per_expert"),
                               ("critic", "critic", True), ("gradient-factor", "factor", "gradient")):
        cfg = preset(f"h1-ablation-{name}").validate()
        assert getattr(cfg.reg, field) == value and cfg.reg.mode == "grad" and cfg.reg.resolved_coef == 0.001
        assert cfg.replace(reg=base.reg) == base  # nothing else differs from the official SPHERE run
        demo = preset(f"demo-ablation-{name}").validate()
        assert demo.reg.name == "sphere" and getattr(demo.reg, field) == value
        assert "paper" in PRESETS[f"h1-ablation-{name}"]["description"] or name == "critic"


# ------------------------------------------------------------------------------------ architecture methods


def _np_layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def test_layernorm_sits_after_each_hidden_dense_before_the_activation():
    ppo, state, mb = _ppo("methods=[layernorm]", "diag.ntk_method=generic", actor="mlp")
    obs = np.asarray(mb.obs, np.float64)
    for network, head in (("actor", "mean_head"), ("critic", "value_head")):
        p = jax.tree.map(lambda x: np.asarray(x, np.float64), state.params[network]["params"])
        h = obs
        for i in range(sum(k.startswith("dense_") for k in p["trunk"])):
            pre = h @ p["trunk"][f"dense_{i}"]["kernel"] + p["trunk"][f"dense_{i}"]["bias"]
            h = np.maximum(_np_layer_norm(pre, p["trunk"][f"ln_{i}"]["scale"], p["trunk"][f"ln_{i}"]["bias"]), 0.0)
        out = h @ p[head]["kernel"] + p[head]["bias"]
        got = ppo.actor.apply(state.params["actor"], mb.obs).mean if network == "actor" else \
            ppo.critic.apply(state.params["critic"], mb.obs).value[:, None]
        np.testing.assert_allclose(np.asarray(got), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("actor", ["topk_moe", "ds_moe"])
def test_layernorm_in_experts_and_gate_gives_the_same_numbers_under_sparse_and_dense_dispatch(actor):
    sparse, state, mb = _ppo("net.layer_norm=true", "diag.ntk_method=generic", "net.dispatch=sparse", actor=actor)
    dense, _, _ = _ppo("net.layer_norm=true", "diag.ntk_method=generic", "net.dispatch=dense", actor=actor)
    params = state.params["actor"]["params"]["moe"]
    assert "ln_0" in params["experts"] and params["experts"]["ln_0"]["scale"].shape[0] == params["experts"]["layer_0"]["kernel"].shape[0]
    assert "ln_0" in params["gate"]["trunk"]  # the gate gets LayerNorm too (official)
    a = sparse.actor.apply(state.params["actor"], mb.obs)
    b = dense.actor.apply(state.params["actor"], mb.obs)
    np.testing.assert_allclose(np.asarray(a.mean), np.asarray(b.mean), rtol=1e-5, atol=1e-6)
    ga = jax.grad(lambda p: jnp.sum(sparse.actor.apply(p, mb.obs).mean ** 2))(state.params["actor"])
    gb = jax.grad(lambda p: jnp.sum(dense.actor.apply(p, mb.obs).mean ** 2))(state.params["actor"])
    _close(ga, gb, rtol=1e-4, atol=1e-6)


def test_crelu_concatenates_both_signs_and_the_structured_entk_still_matches_the_generic_one():
    from sphere_rl.diagnostics.ntk import actor_ntk

    ppo, state, mb = _ppo("methods=[crelu]", actor="topk_moe")
    out = ppo.actor.apply(state.params["actor"], mb.obs)
    assert out.features.hidden[0].shape[-1] == 2 * 16
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), state.params["critic"]["params"])
    pre = np.asarray(mb.obs, np.float64) @ p["trunk"]["dense_0"]["kernel"] + p["trunk"]["dense_0"]["bias"]
    h = np.concatenate([np.maximum(pre, 0), np.maximum(-pre, 0)], axis=-1)
    value = h @ p["value_head"]["kernel"] + p["value_head"]["bias"]
    np.testing.assert_allclose(np.asarray(ppo.critic.apply(state.params["critic"], mb.obs).value), value[:, 0],
                               rtol=1e-4, atol=1e-5)
    obs = mb.obs[:16]
    structured = actor_ntk(ppo.actor, state.params["actor"], obs, method="structured")
    generic = actor_ntk(ppo.actor, state.params["actor"], obs, method="generic")
    np.testing.assert_allclose(np.asarray(structured), np.asarray(generic), rtol=1e-3, atol=1e-4)


def test_the_structured_entk_refuses_layernorm_by_name_and_auto_picks_the_generic_one():
    from sphere_rl.config import ntk_method

    with pytest.raises(ConfigError, match="diag.ntk_method: the structured eNTK"):
        Config().override(["methods=[layernorm]", "diag.ntk_method=structured"]).validate()
    Config().override(["methods=[layernorm]", "diag.ntk=false", "diag.ntk_method=structured"]).validate()
    assert ntk_method(Config().override(["methods=[layernorm]"]).validate()) == "generic"  # auto, the default
    assert ntk_method(Config().override(["net.layer_norm=true"]).validate()) == "generic"
    assert ntk_method(Config().override(["methods=[crelu]"]).validate()) == "structured"
    assert ntk_method(Config().override(["methods=[layernorm]", "diag.ntk_method=generic"]).validate()) == "generic"


def test_redo_with_crelu_recycles_a_unit_only_when_both_halves_are_dormant():
    ppo, state, mb = _ppo("methods=[crelu,redo]", "redo.every=1", "redo.tau=1e-6", "redo.networks=critic", actor="mlp")
    trunk = state.params["critic"]["params"]["trunk"]
    zeroed = {**trunk["dense_0"], "kernel": trunk["dense_0"]["kernel"].at[:, 5].set(0.0),
              "bias": trunk["dense_0"]["bias"].at[5].set(0.0)}  # pre-activation 0: both halves 0
    negative = {**zeroed, "bias": zeroed["bias"].at[6].set(-1e3)}  # ReLU(x) = 0 but ReLU(-x) large: alive
    params = {**state.params, "critic": {"params": {**state.params["critic"]["params"],
                                                    "trunk": {**trunk, "dense_0": negative}}}}
    state = state.replace(params=params)
    new, events = ppo.after_iteration(state, mb.obs, jax.random.PRNGKey(4), 0)
    assert events["redo/critic_units"] == 1.0
    rows = np.asarray(new.params["critic"]["params"]["value_head"]["kernel"])  # the critic has one hidden layer here
    assert not rows[5].any() and not rows[16 + 5].any() and rows[6].any() and rows[16 + 6].any()



# ------------------------------------------------------------------------------------ Shrink & Perturb


@pytest.mark.parametrize("actor", ["mlp", "ds_moe"])
def test_shrink_perturb_is_shrink_times_theta_plus_perturb_times_a_fresh_init(actor):
    ppo, state = _trained_agent(actor)
    cfg = Config().override([*SMALL_NET, f"net.actor={actor}", "methods=[shrink_perturb]", "shrink_perturb.shrink=0.7",
                             "shrink_perturb.perturb=0.2", "shrink_perturb.networks=actor"]).validate()
    ppo = PPO(cfg, obs_dim=15, action_dim=3)
    (sp,) = ppo.interventions
    key = jax.random.PRNGKey(5)
    new, events = ppo.task_switch(state, key, 1)
    fresh = _leaves(ppo.init(jax.random.fold_in(key, 0)).params["actor"])  # the intervention's key: its index 0
    before, after = _leaves(state.params["actor"]), _leaves(new.params["actor"])
    for path, old in before.items():
        np.testing.assert_allclose(after[path], 0.7 * old.astype(np.float64) + 0.2 * fresh[path], rtol=1e-6, atol=1e-7)
    assert not any(m.any() for m in _leaves(_adam(new.opt_state["actor"]).mu).values())
    assert not any(m.any() for m in _leaves(_adam(new.opt_state["actor"]).nu).values())
    assert int(_adam(new.opt_state["actor"]).count) == int(_adam(state.opt_state["actor"]).count)
    for a, b in zip(jax.tree.leaves((state.params["critic"], state.opt_state["critic"])),
                    jax.tree.leaves((new.params["critic"], new.opt_state["critic"]))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the critic is not touched
    assert events == {"shrink_perturb/params": float(sum(x.size for x in before.values()))}
    assert not ppo.acts_after_iterations  # every=0: only at switches
    # the limits: shrink 0, perturb 1 is the fresh init; moments=keep leaves Adam alone
    cfg = cfg.override(["shrink_perturb.shrink=0", "shrink_perturb.perturb=1", "shrink_perturb.moments=keep"]).validate()
    ppo = PPO(cfg, obs_dim=15, action_dim=3)
    new, _ = ppo.task_switch(state, key, 1)
    for path, x in _leaves(new.params["actor"]).items():
        np.testing.assert_array_equal(x, fresh[path])
    for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(new.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_shrink_perturb_every_n_update_phases_fires_on_the_nth_and_validates():
    ppo, state = _trained_agent()
    cfg = Config().override([*SMALL_NET, "methods=[shrink_perturb]", "shrink_perturb.at_switch=false",
                             "shrink_perturb.every=3", "shrink_perturb.shrink=0.99", "shrink_perturb.perturb=0.01"]
                            ).validate()
    ppo = PPO(cfg, obs_dim=15, action_dim=3)
    assert ppo.acts_after_iterations
    obs = jnp.zeros((4, 15))
    fired = [i for i in range(9) if ppo.after_iteration(state, obs, jax.random.PRNGKey(i), i)[1]]
    assert fired == [2, 5, 8] and ppo.interventions[0].first_iteration == 2
    same, events = ppo.task_switch(state, jax.random.PRNGKey(0), 1)
    assert events == {} and same is state  # at_switch=false
    at_switch = Config().override([*SMALL_NET, "methods=[shrink_perturb]"]).validate()
    assert PPO(at_switch, obs_dim=15, action_dim=3).interventions[0].first_iteration is None
    with pytest.raises(ConfigError, match="shrink_perturb.every"):
        Config().override(["methods=[shrink_perturb]", "shrink_perturb.at_switch=false"]).validate()
    with pytest.raises(ConfigError, match="shrink_perturb.moments"):
        Config().override(["shrink_perturb.moments=maybe"]).validate()


def test_a_run_killed_before_shrink_perturb_fires_resumes_exactly(tmp_path):
    cfg = _cfg("methods=[shrink_perturb]", "shrink_perturb.every=4", "shrink_perturb.shrink=0.9",
               "shrink_perturb.perturb=0.05")
    ref = RunDir.create(tmp_path, name="ref", config=cfg.to_dict(), seed=0)
    Runner(cfg, ref).run()
    events = [(e["env_step"], e["event"]) for e in read_metrics(ref.path("events.csv"))]
    # every 4th of 6 iterations per task (iteration 3: env step 512 in task 0), and the switch at 768
    assert events == [(512, "shrink_perturb/params"), (768, "shrink_perturb/params"), (1280, "shrink_perturb/params")]
    crashed = RunDir.create(tmp_path, name="crashed", config=cfg.to_dict(), seed=0)
    runner = _crashing_after(Runner(cfg, crashed), 3)  # before the first firing, after no checkpoint yet
    with pytest.raises(_Crash):
        runner.run()
    Runner(cfg, RunDir.open(crashed.root)).run(resume=True)
    assert compare_runs(ref.root, crashed.root) == []


# ------------------------------------------------------------------------------------ TRAC


def test_erfi_matches_scipy_over_the_range_trac_uses():
    from scipy.special import erfi as scipy_erfi

    from sphere_rl.methods.trac import X_MAX, erfi

    x = np.concatenate([np.linspace(-X_MAX, X_MAX, 721), [1 / np.sqrt(2), -1e-3, 1e-3]])
    np.testing.assert_allclose(np.asarray(erfi(jnp.asarray(x, jnp.float32)), np.float64), scipy_erfi(x), rtol=3e-5,
                               atol=1e-30)


def _np_trac(theta0, grads, base_updates, betas, s_prev=1e-8, eps=1e-8, variant="torch"):
    """TRAC's step in float64 numpy, from the official PyTorch description (docs/methods-sources.md §8; the
    optax file's s0 = s_prev and no clamp for `jax`), with the base optimiser's updates given: the
    parameters after every step."""
    from scipy.special import erfi as scipy_erfi

    betas = np.asarray(betas, np.float64)
    ref, theta = theta0.copy(), theta0.copy()
    s, sigma, v = np.full(len(betas), s_prev if variant == "jax" else 0.0), np.full(len(betas), 1e-8), np.zeros(len(betas))
    out = []
    for g, u in zip(grads, base_updates):
        delta = (theta - ref) / (s.sum() + eps)
        h = float(delta @ g)
        delta = delta + u
        v = betas ** 2 * v + h * h
        sigma = betas * sigma - h
        s = s_prev / scipy_erfi(1 / np.sqrt(2)) * scipy_erfi(sigma / (np.sqrt(2) * np.sqrt(v) + eps))
        theta = ref + (max(s.sum(), 0.0) if variant == "torch" else s.sum()) * delta
        out.append(theta.copy())
    return out


@pytest.mark.parametrize("variant", ["torch", "jax"])
def test_trac_follows_its_defining_recursion_against_numpy(variant):
    import optax

    from sphere_rl.methods.trac import trac

    rng = np.random.default_rng(0)
    theta0 = rng.normal(size=7)
    # gradients of a quadratic around a far-away optimum, so TRAC's scale grows over the steps
    target = theta0 + 50.0
    tx = trac(optax.sgd(0.1), betas=(0.9, 0.99, 0.999), s_prev=1e-3, variant=variant)
    params = jnp.asarray(theta0, jnp.float32)
    state = tx.init(params)
    grads, ours = [], []
    for _ in range(25):
        g = np.asarray(params, np.float64) - target + 0.1 * rng.normal(size=7)
        grads.append(g)
        updates, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
        params = optax.apply_updates(params, updates)
        ours.append(np.asarray(params, np.float64))
    expected = _np_trac(theta0, grads, [-0.1 * g for g in grads], (0.9, 0.99, 0.999), s_prev=1e-3, variant=variant)
    for step, (a, b) in enumerate(zip(ours, expected)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4, err_msg=f"step {step}")
    assert float(jnp.sum(state.s)) > 1e-3 * 2 and np.linalg.norm(ours[-1] - theta0) > np.linalg.norm(ours[2] - theta0)


def test_trac_wraps_each_networks_adam_and_logs_its_scale():
    ppo, state, mb = _ppo("methods=[trac]")
    assert ppo.trac and not ppo.interventions
    new, metrics = ppo.update_phase(state, mb, jax.random.PRNGKey(1), jnp.asarray(3e-4, jnp.float32))
    # 20 steps from s = 0: the scale has grown from 0 but is still far below 1 (s_prev = 1e-8)
    assert 0 < float(metrics["trac/scale"]) < 1e-2 and 0 < float(metrics["trac/critic/scale"]) < 1e-2
    # TRAC starts with tiny steps: the parameters barely move compared with plain Adam
    plain, plain_state, _ = _ppo()  # same initial parameters, plain Adam state
    moved_plain = plain.update_phase(plain_state, mb, jax.random.PRNGKey(1), jnp.asarray(3e-4, jnp.float32))[0]
    dist = lambda a: float(sum(jnp.sum(jnp.square(x - y)) for x, y in zip(jax.tree.leaves(a.params),  # noqa: E731
                                                                            jax.tree.leaves(state.params))))
    assert 0 < dist(new) < 1e-6 * dist(moved_plain)
    # reference point: the parameters the optimiser started from
    from sphere_rl.methods.trac import TracState

    (ts,) = [n for n in jax.tree.leaves(new.opt_state["actor"], is_leaf=lambda n: isinstance(n, TracState))
             if isinstance(n, TracState)]
    for a, b in zip(jax.tree.leaves(ts.ref), jax.tree.leaves(state.params["actor"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ConfigError, match="trac.betas"):
        Config().override(["trac.betas=[0.9,1.0]"]).validate()


def test_a_run_with_trac_logs_its_scale_and_resumes_exactly(tmp_path):
    cfg = _cfg("methods=[trac]")
    ref = RunDir.create(tmp_path, name="ref", config=cfg.to_dict(), seed=0)
    Runner(cfg, ref).run()
    rows = read_metrics(ref.path("metrics.csv"))
    assert len(rows) == 12 and all(r["trac/critic/scale"] > 0 for r in rows)
    # this tiny run's actor shows the PyTorch rule's trap: sum s < 0 from the start, so it never moves
    assert all(r["trac/scale"] < 0 for r in rows)
    crashed = RunDir.create(tmp_path, name="crashed", config=cfg.to_dict(), seed=0)
    runner = _crashing_after(Runner(cfg, crashed), 9)  # inside task 1, after its first checkpoint
    with pytest.raises(_Crash):
        runner.run()
    Runner(cfg, RunDir.open(crashed.root)).run(resume=True)
    assert compare_runs(ref.root, crashed.root) == []


def test_trac_torch_rule_freezes_a_network_whose_scale_turns_negative_and_the_jax_rule_does_not():
    import optax

    from sphere_rl.methods.trac import trac

    theta0 = jnp.zeros(3)
    g1, g2 = jnp.asarray([1.0, 0.0, 0.0]), jnp.asarray([-1.0, 0.0, 0.0])  # the second step goes uphill: h > 0
    for variant, frozen in (("torch", True), ("jax", False)):
        tx = trac(optax.sgd(0.1), variant=variant)
        params, state = theta0, tx.init(theta0)
        trajectory = []
        for g in (g1, g2, g1, g1, g1):
            updates, state = tx.update(g, state, params)
            params = optax.apply_updates(params, updates)
            trajectory.append(np.asarray(params))
        if frozen:
            assert float(jnp.sum(state.s)) < 0 and all((t == 0).all() for t in trajectory[1:])
        else:
            assert not (trajectory[-1] == trajectory[-2]).all()


# ------------------------------------------------------------------------------------ SPHERE gradient-factor ablation


def _np_sphere(m):
    a = m.T @ m / m.shape[0]
    return float(np.sum(np.square(a - np.trace(a) / a.shape[0] * np.eye(a.shape[0]))))


@pytest.mark.parametrize("actor,activation", [("mlp", "tanh"), ("topk_moe", "relu"), ("ds_moe", "tanh"),
                                              ("dense_moe", "crelu")])
def test_the_gradient_factor_is_the_jacobian_of_the_action_mean_in_the_last_pre_activation(actor, activation):
    """Against central finite differences of f(z) = sum_e g_e act(z_e) W_e in float64 numpy, z rebuilt from
    the forward pass's features, and the SPHERE loss of the rows (state, output) in numpy."""
    from sphere_rl.regularizers.sphere import gradient_factor, head_kernel

    ppo, state, mb = _ppo("reg.name=sphere", "reg.factor=gradient", f"net.activation={activation}",
                          "net.dispatch=dense", actor=actor)
    assert ppo.regularizer.factor == "gradient" and ppo.regularizer.activation == activation
    obs = mb.obs[:6]
    out = ppo.actor.apply(state.params["actor"], obs)
    h = np.asarray(out.features.hidden[-1], np.float64)  # (E, T, H_out)
    g = np.asarray(out.features.gates, np.float64).T  # (E, T)
    w = np.asarray(head_kernel(state.params["actor"]), np.float64)  # (E, H_in, A)
    if activation == "crelu":
        width = h.shape[-1] // 2
        z = h[..., :width] - h[..., width:]
        act = lambda x: np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=-1)  # noqa: E731
    elif activation == "tanh":
        z, act = np.arctanh(np.clip(h, -1 + 1e-12, 1 - 1e-12)), np.tanh
    else:
        z, act = np.where(h > 0, h, -1.0), lambda x: np.maximum(x, 0)
    n_e, n_t, width = z.shape
    n_a = w.shape[-1]
    f = lambda zz: np.einsum("et,eth,eha->ta", g, act(zz), w)  # noqa: E731  the mixture, head biases drop out
    jac = np.zeros((n_e, n_t, n_a, width))
    step = 1e-6
    for e in range(n_e):
        for i in range(width):
            dz = np.zeros_like(z)
            dz[e, :, i] = step
            jac[e, :, :, i] = (f(z + dz) - f(z - dz)) / (2 * step)
    ours = np.asarray(gradient_factor(out.features, head_kernel(state.params["actor"]), activation), np.float64)
    np.testing.assert_allclose(ours, jac, rtol=1e-4, atol=1e-6)
    # the penalty: SPHERE's loss of Psi (T A, E H) on the minibatch
    terms, _ = ppo._losses(state.params, mb, state.reg_state, None)
    full = ppo.actor.apply(state.params["actor"], mb.obs)
    psi = np.asarray(gradient_factor(full.features, head_kernel(state.params["actor"]), activation), np.float64)
    rows = np.transpose(psi, (1, 2, 0, 3)).reshape(psi.shape[1] * psi.shape[2], -1)
    assert float(terms["actor/feature"]) == pytest.approx(_np_sphere(rows), rel=2e-3)


def test_the_gradient_factor_under_sparse_dispatch_equals_dense_and_is_refused_off_the_last_layer():
    sparse, state, mb = _ppo("reg.name=sphere", "reg.factor=gradient", "net.dispatch=sparse")
    dense, _, _ = _ppo("reg.name=sphere", "reg.factor=gradient", "net.dispatch=dense")
    gs, ms = sparse._gradients(state.params, mb, state.reg_state, None)
    gd, md = dense._gradients(state.params, mb, state.reg_state, None)
    assert float(ms["reg/penalty"]) == pytest.approx(float(md["reg/penalty"]), rel=1e-4)
    _close(gs, gd, rtol=1e-3, atol=1e-6)
    assert float(ms["reg/penalty"]) > 0
    with pytest.raises(ConfigError, match="reg.factor"):
        Config().override(["reg.name=sphere", "reg.factor=gradient", "reg.placement=all"]).validate()


# ------------------------------------------------------------------------------------ Parseval's diagonal layer


def _perturbed(params, seed=3):
    """Parameters with every leaf moved a little, so a diagonal layer's scale 1 / bias 0 are no longer trivial."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + 0.3 * jnp.asarray(rng.normal(size=x.shape), x.dtype), params)


def test_parseval_adds_a_diagonal_layer_after_every_hidden_dense_and_numpy_agrees():
    ppo, state, mb = _ppo("methods=[parseval]", actor="mlp")
    assert ppo.cfg.parseval.diag_layer and "diag_0" in state.params["actor"]["params"]["trunk"]
    diag = state.params["critic"]["params"]["trunk"]["diag_0"]
    np.testing.assert_array_equal(np.asarray(diag["scale"]), 1.0)  # the official DiagLinear's init
    np.testing.assert_array_equal(np.asarray(diag["bias"]), 0.0)
    params = _perturbed(state.params["actor"])
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"])
    h = np.asarray(mb.obs, np.float64)
    for i in range(2):
        pre = h @ p["trunk"][f"dense_{i}"]["kernel"] + p["trunk"][f"dense_{i}"]["bias"]
        h = np.maximum(pre * p["trunk"][f"diag_{i}"]["scale"][0] + p["trunk"][f"diag_{i}"]["bias"][0], 0.0)
    mean = h @ p["mean_head"]["kernel"] + p["mean_head"]["bias"]
    np.testing.assert_allclose(np.asarray(ppo.actor.apply(params, mb.obs).mean), mean, rtol=1e-4, atol=1e-5)
    # the penalty ignores the diagonal layers (official: only `orthog` weights), and the eNTK goes generic
    from sphere_rl.config import ntk_method
    from sphere_rl.regularizers.parseval import hidden_kernels

    assert all("diag_0" not in path and "diag_1" not in path for path, _ in hidden_kernels(params))
    assert ntk_method(ppo.cfg) == "generic"
    off, off_state, _ = _ppo("methods=[parseval]", "parseval.diag_layer=false", actor="mlp")
    assert "diag_0" not in off_state.params["actor"]["params"]["trunk"] and ntk_method(off.cfg) == "structured"
    with pytest.raises(ConfigError, match="diag.ntk_method"):
        Config().override(["methods=[parseval]", "diag.ntk_method=structured"]).validate()


@pytest.mark.parametrize("actor", ["topk_moe", "ds_moe"])
def test_diagonal_layers_in_experts_and_gate_give_the_same_numbers_under_sparse_and_dense_dispatch(actor):
    sparse, state, mb = _ppo("net.diag_layer=true", "net.dispatch=sparse", actor=actor)
    dense, _, _ = _ppo("net.diag_layer=true", "net.dispatch=dense", actor=actor)
    moe = state.params["actor"]["params"]["moe"]
    assert moe["experts"]["diag_0"]["scale"].shape == moe["experts"]["layer_0"]["bias"].shape
    assert "diag_0" in moe["gate"]["trunk"]
    params = _perturbed(state.params["actor"])
    a, b = sparse.actor.apply(params, mb.obs), dense.actor.apply(params, mb.obs)
    np.testing.assert_allclose(np.asarray(a.mean), np.asarray(b.mean), rtol=1e-5, atol=1e-5)
    ga = jax.grad(lambda p: jnp.sum(sparse.actor.apply(p, mb.obs).mean ** 2))(params)
    gb = jax.grad(lambda p: jnp.sum(dense.actor.apply(p, mb.obs).mean ** 2))(params)
    _close(ga, gb, rtol=1e-4, atol=1e-5)
    # expert e's first hidden layer in numpy: (x K_e + b_e) * c_e + d_e, then ReLU
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"]["moe"]["experts"])
    x = np.asarray(mb.obs, np.float64)
    pre = np.einsum("bi,eio->ebo", x, p["layer_0"]["kernel"]) + p["layer_0"]["bias"][:, None]
    want = np.maximum(pre * p["diag_0"]["scale"][:, None] + p["diag_0"]["bias"][:, None], 0.0)
    got = np.asarray(dense.actor.apply(params, mb.obs).features.hidden[0], np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------ plasticity injection


def _outputs(ppo, params, obs):
    """(action mean, log std, value) of plain networks with `params`, applied one by one."""
    a, c = ppo.actor.apply(params["actor"], obs), ppo.critic.apply(params["critic"], obs)
    return np.asarray(a.mean, np.float64), np.asarray(a.log_std, np.float64), np.asarray(c.value, np.float64)


@pytest.mark.parametrize("actor", ["mlp", "ds_moe"])
def test_injection_keeps_the_function_freezes_the_old_network_and_trains_a_fresh_one(actor):
    _, state = _trained_agent(actor)
    ppo, _, mb = _ppo("methods=[injection]", actor=actor)
    state = state.replace(injection=ppo.init(jax.random.PRNGKey(0)).injection)  # the trained agent, not injected
    key = jax.random.PRNGKey(5)
    new, events = ppo.task_switch(state, key, 1)
    fresh = ppo.init(jax.random.fold_in(key, 0)).params  # the intervention's key: its index 0
    for name in ("actor", "critic"):
        for path, x in _leaves(new.params[name]).items():
            np.testing.assert_array_equal(x, _leaves(fresh[name])[path])
            np.testing.assert_array_equal(_leaves(new.injection[name]["old"])[path], _leaves(state.params[name])[path])
            np.testing.assert_array_equal(_leaves(new.injection[name]["init"])[path], _leaves(fresh[name])[path])
        assert not any(m.any() for m in _leaves(_adam(new.opt_state[name]).mu).values())
        assert not any(m.any() for m in _leaves(_adam(new.opt_state[name]).nu).values())
    n_scalars = sum(x.size for x in jax.tree.leaves(state.params))
    assert events == {"injection/params": float(n_scalars)} and bool(new.injection["active"])
    # the policy and the values are those of the old network (f_new + f_old - f_new = f_old, to rounding)
    obs = mb.obs
    old_mean, old_log_std, old_value = _outputs(ppo, state.params, obs)
    action, log_prob, value = ppo.policy_step(new, obs, jax.random.PRNGKey(3), deterministic=True)
    np.testing.assert_allclose(action, old_mean, atol=2e-6)
    np.testing.assert_allclose(value, old_value, atol=2e-5)
    np.testing.assert_allclose(log_prob, -np.sum(old_log_std + 0.5 * np.log(2 * np.pi)) * np.ones(len(obs)), atol=1e-4)
    # training moves the live network only; the outputs stay f_live + f_old - f_init, each applied on its own
    trained, metrics = ppo.update_phase(new, mb, jax.random.PRNGKey(1), jnp.asarray(1e-3, jnp.float32))
    for a, b in zip(jax.tree.leaves(new.injection), jax.tree.leaves(trained.injection)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(trained.params)))
    live, old, init = (_outputs(ppo, p, obs) for p in (trained.params, state.params, fresh))
    mean, log_std, value = (lv + o - i for lv, o, i in zip(live, old, init))
    action, log_prob, got_value = ppo.policy_step(trained, obs, jax.random.PRNGKey(3), deterministic=True)
    np.testing.assert_allclose(action, mean, atol=2e-5)
    np.testing.assert_allclose(got_value, value, atol=2e-4)
    np.testing.assert_allclose(ppo.value(trained, obs), value, atol=2e-4)
    np.testing.assert_allclose(log_prob, -np.sum(log_std + 0.5 * np.log(2 * np.pi)) * np.ones(len(obs)), atol=1e-4)
    np.testing.assert_allclose(float(metrics["log_std"]), np.mean(log_std), atol=1e-5)  # the policy's, not the live net's
    # once per run: a later switch does nothing
    again, events = ppo.task_switch(trained, jax.random.PRNGKey(6), 1)
    assert events == {} and again is trained


def test_injected_gradients_are_those_of_the_live_network_shifted_by_the_frozen_offset():
    """With frozen networks that differ only in their output biases and log std, the offset is a constant c,
    and f_live + c is a plain network whose output biases are shifted by c: its gradients must be the same."""
    ppo, state, mb = _ppo("methods=[injection]", actor="mlp")
    plain, _, _ = _ppo(actor="mlp")
    c_mean, c_value, c_log_std = np.float32([0.3, -0.2, 0.1]), np.float32(0.7), np.float32([-0.1, 0.05, 0.2])

    def shifted(params):
        p = jax.tree.map(lambda x: x, params)  # a copy of the containers
        p["actor"]["params"]["mean_head"]["bias"] = p["actor"]["params"]["mean_head"]["bias"] + c_mean
        p["actor"]["params"]["log_std"] = p["actor"]["params"]["log_std"] + c_log_std
        p["critic"]["params"]["value_head"]["bias"] = p["critic"]["params"]["value_head"]["bias"] + c_value
        return p

    other = plain.init(jax.random.PRNGKey(9)).params
    old = shifted(other)
    injection = {"active": jnp.asarray(True), **{n: {"old": old[n], "init": other[n]} for n in ("actor", "critic")}}
    state = state.replace(injection=injection)
    offsets = ppo.offsets(state, mb.obs)
    np.testing.assert_allclose(offsets["mean"], np.broadcast_to(c_mean, offsets["mean"].shape), atol=1e-5)
    np.testing.assert_allclose(offsets["value"], np.full(len(mb.obs), c_value), atol=1e-5)
    np.testing.assert_allclose(offsets["log_std"], c_log_std, atol=1e-6)
    assert set(ppo.offsets(state, mb.obs, ("critic",))) == {"value"}  # PPO.value evaluates the critic's pair only
    np.testing.assert_allclose(ppo.value(state, mb.obs),
                               plain.critic.apply(shifted(state.params)["critic"], mb.obs).value, rtol=1e-5, atol=1e-5)
    got, got_metrics = ppo._gradients(state.params, mb, offsets=offsets)
    want, want_metrics = plain._gradients(shifted(state.params), mb)
    for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-6, err_msg=str(path_names(path)))
    np.testing.assert_allclose(got_metrics["loss"], want_metrics["loss"], rtol=1e-5)


def test_injection_after_n_update_phases_fires_once_and_validates():
    ppo, _, _ = _ppo("methods=[injection]", "injection.at_task=0", "injection.after_iterations=3",
                     "injection.networks=actor")
    state = ppo.init(jax.random.PRNGKey(0))
    assert ppo.acts_after_iterations and set(state.injection) == {"active", "actor"}
    obs = jnp.zeros((4, 15))
    fired = []
    for i in range(7):
        state, events = ppo.after_iteration(state, obs, jax.random.PRNGKey(i), i)
        fired += [i] if events else []
    assert fired == [2] == [ppo.interventions[0].first_iteration]  # after the third update phase, then never
    assert set(ppo.offsets(state, obs)) == {"mean", "log_std"}  # the critic is not injected
    assert ppo.offsets(state, obs, ("critic",)) is None
    same, events = ppo.task_switch(state, jax.random.PRNGKey(0), 1)
    assert events == {} and same is state
    with pytest.raises(ConfigError, match="injection.at_task"):
        Config().override(["methods=[injection]", "injection.at_task=0"]).validate()
    with pytest.raises(ConfigError, match="injection.networks"):
        Config().override(["injection.networks=gate"]).validate()


def test_a_crl_run_injects_at_its_task_and_a_run_killed_before_resumes_exactly(tmp_path):
    cfg = _cfg("methods=[injection]", "injection.at_task=1")
    ref = RunDir.create(tmp_path, name="ref", config=cfg.to_dict(), seed=0)
    Runner(cfg, ref).run()
    events = [(e["env_step"], e["task_index"], e["event"]) for e in read_metrics(ref.path("events.csv"))]
    assert events == [(768, 1, "injection/params")]  # the first switch, once
    crashed = RunDir.create(tmp_path, name="crashed", config=cfg.to_dict(), seed=0)
    runner = _crashing_after(Runner(cfg, crashed), 4)  # in task 0, before the injection at the switch
    with pytest.raises(_Crash):
        runner.run()
    Runner(cfg, RunDir.open(crashed.root)).run(resume=True)
    assert compare_runs(ref.root, crashed.root) == []


def test_an_intervention_under_trac_moves_the_reference_point_of_what_it_edits():
    """TRAC's theta = theta_ref + S * delta: a reset must restart the displacement of what it re-initialised
    (theta_ref = the new values there), zero its Adam moments inside TRAC, and leave the rest alone."""
    from sphere_rl.methods.trac import TracState

    ppo, state, mb = _ppo("methods=[trac,reset]", "reset.parts=[heads]", actor="mlp")
    state, _ = ppo.update_phase(state, mb, jax.random.PRNGKey(1), jnp.asarray(3e-4, jnp.float32))
    new, events = ppo.task_switch(state, jax.random.PRNGKey(2), 1)
    assert events["reset/params"] > 0

    def trac_state(s, name):
        (ts,) = [n for n in jax.tree.leaves(s.opt_state[name], is_leaf=lambda n: isinstance(n, TracState))
                 if isinstance(n, TracState)]
        return ts

    for name, head in (("actor", "mean_head"), ("critic", "value_head")):
        before, after = trac_state(state, name), trac_state(new, name)
        refs_before, refs_after = _leaves(before.ref), _leaves(after.ref)
        params_after = _leaves(new.params[name])
        mu_after = _leaves(_adam(after.base).mu)
        for path in refs_before:
            if head in path:
                np.testing.assert_array_equal(refs_after[path], params_after[path])  # displacement restarts
                assert not mu_after[path].any()
            else:
                np.testing.assert_array_equal(refs_after[path], refs_before[path])
        np.testing.assert_array_equal(np.asarray(after.s), np.asarray(before.s))  # the scales are the network's
