"""Tests of the env layer: functional arm suite, vector wrappers, Gymnasium adapter and registry."""

from __future__ import annotations

import math
from functools import partial

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphere_rl import envs
from sphere_rl.envs.arm import (
    ARM,
    ARM_TASKS,
    ArmState,
    fingertip_jacobian,
    fingertip_position,
    fingertip_velocity,
    reference_controller,
)
from sphere_rl.envs.functional import batch_reset, batch_step, jit_batch_step, stack_params

ARM_IDS = sorted(ARM_TASKS)


def arm_state(q, dq=(0.0, 0.0, 0.0), goal=(0.5, 0.0), step_count=0) -> ArmState:
    return ArmState(
        q=jnp.asarray(q, jnp.float32),
        dq=jnp.asarray(dq, jnp.float32),
        goal=jnp.asarray(goal, jnp.float32),
        step_count=jnp.asarray(step_count, jnp.int32),
        key=jax.random.PRNGKey(0),
    )


@partial(jax.jit, static_argnames=("policy", "num_envs"))
def last_step_success_rate(params, key, policy: str, num_envs: int = 512):
    """Mean of info['success'] at the last step of the first episode of `num_envs` arms."""
    reset_key, action_key = jax.random.split(key)
    states, _ = batch_reset(ARM, jax.random.split(reset_key, num_envs), params)

    def body(states, step_key):
        if policy == "random":
            actions = jax.random.uniform(step_key, (num_envs, ARM.action_dim), minval=-1.0, maxval=1.0)
        else:
            actions = jax.vmap(reference_controller, in_axes=(0, None))(states, params)
        states, _, _, terminated, truncated, info = batch_step(ARM, states, actions, params)
        return states, (info["success"], terminated | truncated)

    _, (success, done) = jax.lax.scan(body, states, jax.random.split(action_key, ARM.max_episode_steps))
    return success[-1].mean(), done[-1].all(), done[:-1].any()


# --------------------------------------------------------------------------- spaces and stepping


@pytest.mark.parametrize("env_id", ARM_IDS)
def test_arm_task_spaces_shapes_and_dtypes(env_id):
    num_envs = 3
    vec = envs.make(env_id, num_envs=num_envs, seed=0)
    assert isinstance(vec, gymnasium.vector.VectorEnv)
    assert isinstance(vec, envs.JaxVectorEnv)
    assert vec.functional is ARM and vec.env_family == "arm" and vec.num_envs == num_envs
    assert vec.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.SAME_STEP
    obs_dim = 3 * ARM.n_joints + 6
    assert vec.single_observation_space.shape == (obs_dim,) and vec.single_observation_space.dtype == np.float32
    assert vec.observation_space.shape == (num_envs, obs_dim)
    assert vec.single_action_space.shape == (3,) and vec.action_space.shape == (num_envs, 3)
    np.testing.assert_array_equal(vec.single_action_space.low, -1.0)
    np.testing.assert_array_equal(vec.single_action_space.high, 1.0)

    obs, _ = vec.reset()
    assert obs.shape == (num_envs, obs_dim) and obs.dtype == np.float32
    obs, reward, terminated, truncated, infos = vec.step(vec.action_space.sample())
    assert obs.shape == (num_envs, obs_dim) and obs.dtype == np.float32
    assert reward.shape == (num_envs,) and reward.dtype == np.float32
    assert terminated.dtype == np.bool_ and truncated.dtype == np.bool_ and terminated.shape == (num_envs,)
    assert infos["final_obs"].shape == obs.shape and infos["success"].dtype == np.bool_
    for component in ("reward_distance", "reward_action", "reward_success"):
        assert infos[component].shape == (num_envs,)
    components = infos["reward_distance"] + infos["reward_action"] + infos["reward_success"]
    np.testing.assert_allclose(reward, components, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(obs) < 5.0), "obs should stay roughly O(1)"


def test_auto_reset_at_max_episode_steps():
    vec = envs.make("arm/reach", num_envs=4, seed=0)
    obs, _ = vec.reset()
    actions = np.full((4, 3), 0.5, np.float32)
    for _ in range(ARM.max_episode_steps - 1):
        obs, _, terminated, truncated, infos = vec.step(actions)
        assert not terminated.any() and not truncated.any()
        np.testing.assert_array_equal(infos["final_obs"], obs)
    obs, _, terminated, truncated, infos = vec.step(actions)
    assert truncated.all() and not terminated.any() and infos["_final_obs"].all()
    assert not np.allclose(infos["final_obs"], obs)
    np.testing.assert_array_equal(np.asarray(vec.state.step_count), 0)
    np.testing.assert_array_equal(np.asarray(vec.state.dq), 0.0)
    # the new episode's goal (obs[9:11]) was freshly sampled
    assert not np.allclose(infos["final_obs"][:, 9:11], obs[:, 9:11])


def test_determinism_same_seed_same_trajectory_different_seed_differs():
    def trajectory(seed: int) -> np.ndarray:
        vec = envs.make("arm/reach", num_envs=2, seed=seed)
        rng = np.random.default_rng(123)
        observations = [vec.reset()[0]]
        for _ in range(ARM.max_episode_steps + 10):  # crosses an auto-reset
            observations.append(vec.step(rng.uniform(-1, 1, (2, 3)).astype(np.float32))[0])
        return np.stack(observations)

    np.testing.assert_array_equal(trajectory(0), trajectory(0))
    assert not np.allclose(trajectory(0), trajectory(1))
    vec = envs.make("arm/reach", num_envs=2, seed=0)
    np.testing.assert_array_equal(vec.reset(seed=7)[0], vec.reset(seed=7)[0])


# --------------------------------------------------------------------------- kinematics and dynamics


def test_forward_kinematics_hand_computed():
    lengths = jnp.asarray([0.4, 0.35, 0.25])
    np.testing.assert_allclose(fingertip_position(jnp.zeros(3), lengths), [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(fingertip_position(jnp.asarray([math.pi / 2, 0.0, 0.0]), lengths), [0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(fingertip_position(jnp.asarray([0.0, math.pi / 2, 0.0]), lengths), [0.4, 0.6], atol=1e-6)
    np.testing.assert_allclose(fingertip_position(jnp.asarray([0.0, math.pi, 0.0]), lengths), [-0.2, 0.0], atol=1e-6)
    heavy = envs.make_functional("arm/heavy")[1]
    tip = fingertip_position(jnp.asarray([math.pi, 0.0, 0.0]), heavy.link_lengths)
    np.testing.assert_allclose(tip, [-1.0, 0.0], atol=1e-6)


def test_fingertip_velocity_and_jacobian_match_finite_differences():
    lengths = jnp.asarray([0.4, 0.35, 0.25])
    q = jnp.asarray([0.3, -0.7, 1.1])
    dq = jnp.asarray([0.5, -1.0, 2.0])
    eps = 1e-3
    numeric = (fingertip_position(q + eps * dq, lengths) - fingertip_position(q - eps * dq, lengths)) / (2 * eps)
    np.testing.assert_allclose(fingertip_velocity(q, dq, lengths), numeric, atol=1e-3)
    np.testing.assert_allclose(fingertip_jacobian(q, lengths) @ dq, numeric, atol=1e-3)


def joint_response(env_id: str, action_index: int) -> np.ndarray:
    """Joint velocities after one step from rest with only action `action_index` = +1."""
    _, params = envs.make_functional(env_id)
    action = jnp.zeros(3).at[action_index].set(1.0)
    state, *_ = ARM.step(arm_state([0.3, 0.2, -0.1]), action, params)
    return np.asarray(state.dq)


def test_action_mapping_is_the_documented_signed_permutation():
    # arm/reach: identity; arm/permute: joint i driven by action (i + 1) mod 3, so action 0 drives joint 2
    assert np.sign(joint_response("arm/reach", 0)).tolist() == [1, 0, 0]
    assert np.sign(joint_response("arm/permute", 0)).tolist() == [0, 0, 1]
    assert np.sign(joint_response("arm/permute", 1)).tolist() == [1, 0, 0]
    assert np.sign(joint_response("arm/negate", 2)).tolist() == [0, 0, -1]
    # arm/permute-negate-left: joints driven by actions (2, 1, 0) with signs (-, +, -)
    assert np.sign(joint_response("arm/permute-negate-left", 0)).tolist() == [0, 0, -1]
    assert np.sign(joint_response("arm/permute-negate-left", 1)).tolist() == [0, 1, 0]
    for env_id in ("arm/permute", "arm/negate", "arm/permute-negate-left"):
        matrix = np.asarray(envs.make_functional(env_id)[1].action_matrix)
        assert sorted(np.abs(matrix).sum(axis=0).tolist()) == [1, 1, 1] and np.abs(matrix).sum() == 3
        for j in range(3):
            np.testing.assert_array_equal(np.sign(joint_response(env_id, j)), matrix[:, j])


def test_success_requires_tip_on_goal_and_slow():
    _, params = envs.make_functional("arm/reach")
    q = jnp.asarray([0.2, 0.5, -0.4])
    tip = fingertip_position(q, params.link_lengths)
    still = ARM.step(arm_state(q, goal=tip), jnp.zeros(3), params)[-1]
    assert bool(still["success"]) and float(still["distance"]) < 1e-4
    near = ARM.step(arm_state(q, goal=tip + jnp.asarray([0.07, 0.0])), jnp.zeros(3), params)[-1]
    assert bool(near["success"])
    far = ARM.step(arm_state(q, goal=tip + jnp.asarray([0.0, 0.15])), jnp.zeros(3), params)[-1]
    assert not bool(far["success"])
    moving = ARM.step(arm_state(q, dq=[2.0, 0.0, 0.0], goal=tip), jnp.zeros(3), params)[-1]
    assert not bool(moving["success"]) and float(moving["tip_speed"]) > float(params.success_max_speed)
    # success is reported for the state reached, before the auto-reset of a final step
    last = ARM.step(arm_state(q, goal=tip, step_count=ARM.max_episode_steps - 1), jnp.zeros(3), params)
    assert bool(last[4]) and bool(last[-1]["success"])
    assert float(last[2]) > 0.0  # success bonus outweighs the small distance penalty


def test_random_policy_almost_never_succeeds():
    _, params = envs.make_functional("arm/reach")
    rate, all_done_at_end, done_early = last_step_success_rate(params, jax.random.PRNGKey(0), "random")
    assert bool(all_done_at_end) and not bool(done_early)
    assert float(rate) < 0.02


@pytest.mark.parametrize("env_id", ARM_IDS)
def test_reference_controller_solves_every_task_within_episode(env_id):
    _, params = envs.make_functional(env_id)
    rate, *_ = last_step_success_rate(params, jax.random.PRNGKey(1), "controller")
    assert float(rate) > 0.8, f"{env_id}: oracle success {float(rate):.2f}"


# --------------------------------------------------------------------------- one compile, many tasks


def test_one_compile_serves_every_task_of_the_family():
    num_envs = 7  # a batch shape no other test uses
    vec = envs.make("arm/reach", num_envs=num_envs, seed=0)
    vec.reset()
    vec.step(np.zeros((num_envs, 3), np.float32))
    compiled = jit_batch_step._cache_size()
    for env_id in ARM_IDS:
        other = envs.make(env_id, num_envs=num_envs, seed=1)
        other.reset()
        other.step(np.zeros((num_envs, 3), np.float32))
        vec.set_params(envs.make_functional(env_id)[1])
        vec.step(np.zeros((num_envs, 3), np.float32))
    assert jit_batch_step._cache_size() == compiled

    functional, params_list = envs.functional_sequence("arm8")
    assert functional is ARM and len(params_list) == 8
    # a fresh function: jit wrappers of one Python function share their compile cache
    rollout = jax.jit(lambda params, key: last_step_success_rate.__wrapped__(params, key, "random", 8))
    for params in params_list:
        rollout(params, jax.random.PRNGKey(0))
    assert rollout._cache_size() == 1


def test_stack_params_vmaps_evaluation_over_tasks():
    _, params_list = envs.functional_sequence("arm6")
    stacked = stack_params(params_list)
    assert stacked.action_matrix.shape == (6, 3, 3)
    evaluate = partial(last_step_success_rate.__wrapped__, key=jax.random.PRNGKey(2), policy="controller", num_envs=64)
    rates, _, _ = jax.vmap(evaluate)(stacked)
    assert rates.shape == (6,) and float(rates.min()) > 0.7


def test_all_arm_tasks_share_one_functional_env():
    functionals = {id(envs.make_functional(env_id)[0]) for env_id in ARM_IDS}
    assert functionals == {id(ARM)}
    assert all(spec.jax_native and spec.family == "arm" for spec in envs.list_envs() if spec.id.startswith("arm/"))


# --------------------------------------------------------------------------- registry


def test_unknown_id_error_names_id_and_close_matches():
    with pytest.raises(envs.UnknownEnvError) as error:
        envs.make("arm/reahc")
    message = str(error.value)
    assert isinstance(error.value, ValueError)
    assert "'arm/reahc'" in message and "arm/reach" in message and "list_envs()" in message
    with pytest.raises(envs.UnknownEnvError, match="Pendulum-v1"):
        envs.make("gym:Pendulm-v1")


def test_make_functional_and_is_jax_native():
    assert envs.is_jax_native("arm/reach") and not envs.is_jax_native("gym:Pendulum-v1")
    with pytest.raises(envs.NotJaxNativeError, match="not JAX-native"):
        envs.make_functional("gym:Pendulum-v1")
    functional, params = envs.make_functional("arm/reach-left")
    state, obs = functional.reset(jax.random.PRNGKey(0), params)
    goal_angle = math.atan2(float(state.goal[1]), float(state.goal[0])) % (2 * math.pi)
    assert 2 * math.pi / 3 - 1e-5 <= goal_angle <= 4 * math.pi / 3 + 1e-5
    assert obs.shape == (functional.obs_dim,) and obs.dtype == jnp.float32


def test_make_overrides_params_by_keyword():
    vec = envs.make("arm/reach", num_envs=2, success_radius=0.05, gains=(4.0, 5.0, 6.0))
    assert float(vec.params.success_radius) == pytest.approx(0.05)
    np.testing.assert_allclose(vec.params.gains, [4.0, 5.0, 6.0])
    with pytest.raises(TypeError, match="unknown env parameter"):
        envs.make("arm/reach", not_a_field=1.0)


def test_resolve_sequence_by_name_and_comma_list():
    assert envs.resolve_sequence("arm2") == ("arm/reach", "arm/permute")
    assert len(envs.resolve_sequence("arm6")) == 6 and len(envs.resolve_sequence("arm8")) == 8
    resolved = envs.resolve_sequence(" arm/reach,arm/heavy , gym:Pendulum-v1")
    assert resolved == ("arm/reach", "arm/heavy", "gym:Pendulum-v1")
    # sequence names inside a list expand in place: arm2 twice, then a task
    assert envs.resolve_sequence("arm2, arm2,arm/heavy") == (
        "arm/reach", "arm/permute", "arm/reach", "arm/permute", "arm/heavy")
    assert envs.resolve_sequence("arm6,arm6,arm6,arm6,arm6") == envs.resolve_sequence("arm6") * 5
    with pytest.raises(envs.UnknownEnvError, match="arm66"):
        envs.resolve_sequence("arm6,arm66")
    with pytest.raises(envs.UnknownEnvError, match="arm/nope"):
        envs.resolve_sequence("arm/reach,arm/nope")
    with pytest.raises(envs.UnknownEnvError, match="arm6"):
        envs.resolve_sequence("arm66")
    sequences = envs.list_sequences()
    assert {"arm2", "arm6", "arm8"} <= set(sequences)
    assert all(set(spec.env_ids) <= set(ARM_IDS) for name, spec in sequences.items() if name.startswith("arm"))


def test_held_out_arm_task_is_registered_in_no_sequence_and_unlike_every_other_task(capsys):
    from sphere_rl.cli import main
    from sphere_rl.envs.arm import ARM_HELD_OUT

    assert ARM_HELD_OUT == ("arm/heldout",)
    spec = envs.env_spec("arm/heldout")
    assert spec.jax_native and spec.family == "arm" and "held out" in spec.description
    assert all("arm/heldout" not in seq.env_ids for seq in envs.list_sequences().values())
    # the sequences themselves are unchanged
    assert envs.resolve_sequence("arm2") == ("arm/reach", "arm/permute")
    assert envs.resolve_sequence("arm6") == (
        "arm/reach", "arm/permute", "arm/reach-left", "arm/heavy", "arm/negate", "arm/permute-negate-left")
    assert envs.resolve_sequence("arm8") == (
        "arm/reach", "arm/permute", "arm/reach-left", "arm/heavy", "arm/negate", "arm/reach-up-near", "arm/gravity",
        "arm/permute-negate-left")
    # its actuator map, link lengths and goal region each differ from every other arm task's
    _, held = envs.make_functional("arm/heldout")
    for env_id in ARM_IDS:
        if env_id == "arm/heldout":
            continue
        _, params = envs.make_functional(env_id)
        for field in ("action_matrix", "link_lengths", "goal_angle_range"):
            assert not np.array_equal(getattr(params, field), getattr(held, field)), (env_id, field)
    # joint 0 <- +action 2, joint 1 <- -action 0, joint 2 <- +action 1
    assert np.sign(joint_response("arm/heldout", 0)).tolist() == [0, -1, 0]
    assert np.sign(joint_response("arm/heldout", 1)).tolist() == [0, 0, 1]
    assert np.sign(joint_response("arm/heldout", 2)).tolist() == [1, 0, 0]
    # goals lie below the base, -120..-60 degrees, radius 0.3..0.8
    states, _ = batch_reset(ARM, jax.random.split(jax.random.PRNGKey(0), 256), held)
    angles = np.degrees(np.arctan2(states.goal[:, 1], states.goal[:, 0]))
    radii = np.linalg.norm(states.goal, axis=1)
    assert angles.min() >= -120 - 1e-3 and angles.max() <= -60 + 1e-3
    assert radii.min() >= 0.3 - 1e-5 and radii.max() <= 0.8 + 1e-5
    # `sphere envs` lists it, under no sequence
    assert main(["envs"]) == 0
    out = capsys.readouterr().out
    listed, sequences = out.split("Task sequences:")
    assert "arm/heldout" in listed and "arm/heldout" not in sequences


# --------------------------------------------------------------------------- Gymnasium adapter


def test_gym_pendulum_adapter_same_step_reset_and_infos():
    vec = envs.make("gym:Pendulum-v1", num_envs=4, seed=0)
    assert isinstance(vec, gymnasium.vector.VectorEnv) and isinstance(vec, envs.GymVectorAdapter)
    assert vec.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.SAME_STEP
    assert vec.single_observation_space.shape == (3,) and vec.observation_space.shape == (4, 3)
    obs, _ = vec.reset()
    np.testing.assert_array_equal(obs, envs.make("gym:Pendulum-v1", num_envs=4, seed=0).reset()[0])
    assert not np.allclose(obs, envs.make("gym:Pendulum-v1", num_envs=4, seed=1).reset()[0])
    assert not np.allclose(obs[0], obs[1])  # sub-envs get seeds seed + i
    actions = np.zeros((4, 1), np.float32)
    for _ in range(vec.max_episode_steps - 1):
        obs, _, terminated, truncated, infos = vec.step(actions)
        assert not (terminated | truncated).any()
        np.testing.assert_array_equal(infos["final_obs"], obs)
        assert infos["success"].dtype == np.bool_ and not infos["success"].any()
    obs, _, _, truncated, infos = vec.step(actions)
    assert truncated.all() and infos["final_obs"].shape == obs.shape
    assert not np.allclose(infos["final_obs"], obs)
    assert infos["success"].shape == (4,) and not infos["success"].any()
    vec.close()


class FlagEnv(gymnasium.Env):
    """Tiny env: 3-step episodes, reports is_success == (sum of actions > 0) on every step."""

    observation_space = gymnasium.spaces.Box(-10, 10, (1,), np.float32)
    action_space = gymnasium.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.total, self.t = 0.0, 0
        return np.zeros(1, np.float32), {"is_success": False}

    def step(self, action):
        self.total += float(action[0])
        self.t += 1
        obs = np.array([self.total], np.float32)
        return obs, 0.0, False, self.t >= 3, {"is_success": self.total > 0}


def test_registered_gym_factory_reports_success_from_final_info():
    envs.register("test/flag", FlagEnv, description="test env", family="test")
    try:
        assert not envs.is_jax_native("test/flag")
        vec = envs.make("test/flag", num_envs=2, seed=0)
        assert isinstance(vec, envs.GymVectorAdapter) and vec.env_family == "test"
        vec.reset()
        actions = np.array([[1.0], [-1.0]], np.float32)
        for _ in range(2):
            obs, _, _, truncated, infos = vec.step(actions)
        assert infos["success"].tolist() == [True, False] and not truncated.any()
        obs, _, _, truncated, infos = vec.step(actions)
        assert truncated.all()
        assert infos["success"].tolist() == [True, False]  # from final_info, not the reset info
        np.testing.assert_allclose(infos["final_obs"][:, 0], [3.0, -3.0])
        np.testing.assert_allclose(obs[:, 0], 0.0)
        with pytest.raises(ValueError, match="already registered"):
            envs.register("test/flag", FlagEnv, description="again")
    finally:
        envs.unregister("test/flag")
    with pytest.raises(envs.UnknownEnvError):
        envs.make("test/flag")
