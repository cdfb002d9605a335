"""Features of a trained actor on held-out states: states of a task outside the training sequence.

The paper looks at the last hidden layer's features on states of HumanoidBench's *stair* task, which
no run trains on. :func:`heldout_states` draws such states with a uniformly random policy and a
fixed seed, so every run (every method, every seed) is measured on the *same* states;
:func:`heldout_features` returns the routing-weighted features Phi = concat_e(g_e h_e) of a run's
latest good checkpoint on them (the matrix whose Gram SPHERE regularises).
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from sphere_rl import envs

__all__ = ["heldout_states", "heldout_features", "default_heldout", "HELDOUT_BY_FAMILY"]

HELDOUT_BY_FAMILY = envs.HELDOUT_BY_FAMILY


def default_heldout(tasks: list[str]) -> str | None:
    """The held-out task of the family of ``tasks`` (None when the family has none): `envs.heldout_task`."""
    return envs.heldout_task(tasks)


@functools.lru_cache(maxsize=8)
def heldout_states(env_id: str, n_states: int = 512, seed: int = 0, n_envs: int = 16) -> np.ndarray:
    """(n_states, obs_dim) raw observations of ``env_id`` under uniformly random actions (fixed seed).

    Episodes run from fresh resets, every ``n_envs``-th state is kept in time order, so the set covers
    early and later parts of episodes; the same call returns the same array (cached).
    """
    if n_states < 1:
        raise ValueError(f"n_states must be >= 1, got {n_states}")
    vec = envs.make(env_id, num_envs=n_envs, seed=seed)
    try:
        rng = np.random.default_rng(seed)
        obs, _ = vec.reset(seed=seed)
        low, high = vec.single_action_space.low, vec.single_action_space.high
        states = [np.asarray(obs, dtype=np.float32)]
        while sum(len(s) for s in states) < 4 * n_states:
            actions = rng.uniform(low, high, size=(n_envs, *low.shape)).astype(np.float32)
            obs, *_ = vec.step(actions)
            states.append(np.asarray(obs, dtype=np.float32))
    finally:
        vec.close()
    pool = np.concatenate(states)
    pick = np.sort(rng.choice(len(pool), size=n_states, replace=False))
    return pool[pick]


def heldout_features(run_path: str, env_id: str, *, n_states: int = 512, seed: int = 0) -> np.ndarray:
    """Phi (n_states, E*H) of the run's latest good checkpoint on :func:`heldout_states` of ``env_id``."""
    from sphere_rl.config import Config
    from sphere_rl.diagnostics.spectral import routing_weighted_features
    from sphere_rl.nets.moe import with_dense_dispatch
    from sphere_rl.protocols.runner import Runner
    from sphere_rl.runs import RunDir

    run_dir = RunDir.open(run_path)
    if run_dir.checkpoints.latest_step() is None:  # before building (and compiling) anything
        raise FileNotFoundError(f"{run_dir.root} has no checkpoint")
    runner = Runner(Config.from_saved(run_dir.config).validate(), run_dir, progress=False)
    tree, _, _ = runner.load_checkpoint()
    agent = tree["agent"]
    states = heldout_states(env_id, n_states, seed)
    if states.shape[1] != runner.obs_dim:
        raise ValueError(f"{env_id} has {states.shape[1]} observation features, the run's tasks have {runner.obs_dim}")
    obs = runner.ppo.normalize_obs(agent, jax.numpy.asarray(states))
    out = with_dense_dispatch(runner.ppo.actor).apply(agent.params["actor"], obs)
    return np.asarray(jax.device_get(routing_weighted_features(out.features)), dtype=np.float64)
