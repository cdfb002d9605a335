"""MetaWorld v3 envs: registry ids, spaces, seeding, variations, success flags, vector adapter."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from sphere_rl import envs
from sphere_rl.envs.metaworld import CW10_TASKS, EPISODE_STEPS, METAWORLD_TASKS, MetaWorldEnv


def _rollout(env: MetaWorldEnv, seed: int, n_steps: int) -> np.ndarray:
    """Observations of `n_steps` steps under actions sampled from the env's seeded action space."""
    obs, _ = env.reset(seed=seed)
    trajectory = [obs]
    for _ in range(n_steps):
        obs, *_ = env.step(env.action_space.sample())
        trajectory.append(obs)
    return np.stack(trajectory)


def test_task_list_matches_metaworld():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    assert [f"{t}-v3" for t in METAWORLD_TASKS] == list(ALL_V3_ENVIRONMENTS)
    assert set(CW10_TASKS) <= set(METAWORLD_TASKS)
    registered = {spec.id for spec in envs.list_envs()}
    assert all(f"metaworld/{t}-v3" in registered and f"metaworld-mt1/{t}-v3" in registered for t in METAWORLD_TASKS)


def test_sequences_follow_continual_world_order():
    cw10 = envs.resolve_sequence("cw10")
    assert cw10 == tuple(f"metaworld/{t}-v3" for t in (
        "hammer", "push-wall", "faucet-close", "push-back", "stick-pull",
        "handle-press-side", "push", "shelf-place", "window-close", "peg-unplug-side"))
    assert envs.resolve_sequence("cw20") == cw10 + cw10
    assert envs.resolve_sequence("cw10-mt1") == tuple(t.replace("metaworld/", "metaworld-mt1/") for t in cw10)


@pytest.mark.parametrize("task", CW10_TASKS)
def test_cw10_env_spaces_step_and_success_flag(task):
    env = MetaWorldEnv(task)
    assert env.observation_space.shape == (39,) and env.observation_space.dtype == np.float32
    assert env.action_space.shape == (4,)
    np.testing.assert_array_equal(env.action_space.low, -1.0)
    np.testing.assert_array_equal(env.action_space.high, 1.0)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (39,) and obs.dtype == np.float32
    np.testing.assert_allclose(obs[-3:], env.goal, atol=1e-6)  # goal-observable: the goal is the last 3 entries
    obs, reward, terminated, truncated, info = env.step(np.zeros(4, np.float32))
    assert obs.shape == (39,) and np.isfinite(obs).all() and np.isfinite(reward)
    assert isinstance(info["success"], bool) and not terminated and not truncated
    env.close()


def test_episode_truncates_at_500_steps():
    env = MetaWorldEnv("reach")
    env.reset(seed=0)
    for step in range(1, EPISODE_STEPS + 1):
        *_, terminated, truncated, _ = env.step(np.zeros(4, np.float32))
        assert not terminated
        assert truncated == (step == EPISODE_STEPS)


def test_reset_seed_reproduces_a_trajectory():
    """metaworld ignores `reset(seed=...)`; ours honours it, also after other episodes in between."""
    env = MetaWorldEnv("push")
    first = _rollout(env, seed=7, n_steps=40)
    _rollout(env, seed=3, n_steps=25)
    again = _rollout(env, seed=7, n_steps=40)
    other = _rollout(env, seed=8, n_steps=40)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    np.testing.assert_array_equal(first[0], other[0])  # fixed variation: same start, only the actions differ


def test_fixed_variation_is_shared_and_set_by_variation_seed():
    a, b = MetaWorldEnv("push"), MetaWorldEnv("push")
    c = MetaWorldEnv("push", variation_seed=1)
    start_a, start_b, start_c = a.reset(seed=0)[0], b.reset(seed=123)[0], c.reset(seed=0)[0]
    np.testing.assert_array_equal(start_a, start_b)
    assert not np.allclose(start_a[4:7], start_c[4:7])  # object position moved
    assert a.reset()[0].tolist() == start_a.tolist()


def test_mt1_variation_resamples_per_episode_from_the_seed():
    env = MetaWorldEnv("push", variation="mt1")
    starts = [env.reset(seed=s)[0] for s in range(6)]
    objects = {tuple(np.round(s[4:7], 5)) for s in starts}
    assert len(objects) > 1
    indices = []
    env.reset(seed=11)
    for _ in range(5):
        indices.append(env.reset()[1]["variation"])
    env.reset(seed=11)
    assert [env.reset()[1]["variation"] for _ in range(5)] == indices
    assert all(0 <= i < 50 for i in indices)


def test_scripted_policy_success_path_matches_the_distance_rule():
    """faucet-close: success <=> handle within 7 cm of the goal; MetaWorld's scripted policy closes it."""
    from metaworld.policies import SawyerFaucetCloseV3Policy

    env, policy = MetaWorldEnv("faucet-close"), SawyerFaucetCloseV3Policy()
    obs, _ = env.reset(seed=0)
    flags, distances = [], []
    for _ in range(200):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the scripted policy warns about its own gains
            action = np.clip(policy.get_action(obs), -1, 1).astype(np.float32)
        obs, _, _, _, info = env.step(action)
        flags.append(info["success"])
        distances.append(info["obj_to_target"])
    flags = np.array(flags)
    np.testing.assert_array_equal(flags, np.array(distances) <= 0.07)
    assert not flags[0] and flags.sum() >= 10  # starts open, then is held closed for a while

    env.reset(seed=0)  # doing nothing never closes the faucet
    assert not any(env.step(np.zeros(4, np.float32))[4]["success"] for _ in range(100))


def test_vector_adapter_reports_episode_success_and_steps():
    vec = envs.make("metaworld/reach-v3", num_envs=2, seed=5)
    try:
        assert vec.max_episode_steps == EPISODE_STEPS
        obs, _ = vec.reset()
        assert obs.shape == (2, 39)
        for _ in range(EPISODE_STEPS):
            obs, reward, terminated, truncated, info = vec.step(np.zeros((2, 4), np.float32))
        assert truncated.all() and info["_final_obs"].all()
        assert info["success"].dtype == bool and info["success"].shape == (2,)
    finally:
        vec.close()


def test_deterministic_evaluation_repeats_one_episode():
    """Why the CW10 presets evaluate 1 episode: with the fixed variation, the deterministic policy's
    episodes in different sub-envs (different seeds) are copies of one another."""
    import jax
    import jax.numpy as jnp

    from sphere_rl.config import Config
    from sphere_rl.protocols.runner import Runner

    runner = Runner(Config().override([
        "net.actor=topk_moe", "net.n_experts=2", "net.hidden_sizes=8", "net.gate_hidden_sizes=8",
        "net.critic_hidden_sizes=8", "ppo.num_envs=2", "ppo.n_steps=8", "ppo.minibatch_size=8",
        "run.tasks=metaworld/push-v3", "run.steps_per_task=16", "run.progress=false"]).validate())
    loop, _ = runner.loop_for(runner.tasks[0])
    agent = runner.ppo.init(jax.random.PRNGKey(0)).replace(opt_state=None)
    vec = loop.make_env(3, 11)
    obs, _ = vec.reset(seed=11)
    returns = np.zeros(3)
    for _ in range(120):
        _, action, _, _ = loop._act(agent, jnp.asarray(obs), jax.random.PRNGKey(0), deterministic=True)
        obs, reward, *_ = vec.step(np.clip(np.asarray(action), -1, 1))
        returns += reward
        assert (obs == obs[0]).all()
    vec.close()
    assert returns[0] > 0 and (returns == returns[0]).all()


@pytest.mark.parametrize("name", ["cw10-paper", "cw10-quick"])
def test_cw10_presets(name):
    from sphere_rl.config import preset

    cfg = preset(name)
    assert envs.resolve_sequence(cfg.run.tasks) == envs.resolve_sequence("cw10")
    assert cfg.net.actor == "topk_moe" and cfg.net.n_experts == 10 and cfg.net.top_k == 2
    assert cfg.run.protocol == "crl" and cfg.run.eval_episodes == 1
    assert cfg.run.steps_per_task == (1_000_000 if name == "cw10-paper" else 122_880)
