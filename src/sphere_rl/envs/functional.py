"""Pure, jittable, vmappable environment protocol (`FunctionalEnv`) and batching helpers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Generic, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

EnvParams = Any
"""A pytree (usually a `flax.struct.dataclass`) of arrays holding one task's parameters."""

EnvState = Any
"""A pytree of arrays holding one env's state, including its own PRNG key and step counter."""

StepResult = tuple[Any, jax.Array, jax.Array, jax.Array, jax.Array, dict[str, jax.Array]]
"""`(state, obs, reward, terminated, truncated, info)` as returned by `FunctionalEnv.step`."""

ParamsT = TypeVar("ParamsT")


class FunctionalEnv:
    """Base class of a pure JAX environment *family*; task variation lives in `params`.

    Contract (single env, unbatched; batch with `batch_reset` / `batch_step`):

    * `reset(key, params) -> (state, obs)`.
    * `step(state, action, params) -> (state, obs, reward, terminated, truncated, info)`
      is pure and needs no key: the state carries its own PRNG key and step counter.
    * Auto-reset happens inside the same `step`: when the episode ends (terminated, or
      truncated once `max_episode_steps` steps were taken) the returned `obs` is the first
      obs of the next episode and the returned state is that episode's reset state.
    * `info` is a dict of arrays holding at least `final_obs` (the obs reached by this
      step before any reset; equal to `obs` when not done), `success` (bool: the success
      flag of the state reached by this step, before any reset) and the reward components.
    * The *episode success* used for evaluation is `info["success"]` at the episode's
      last step (the step whose `terminated | truncated` is true).
    * Obs and reward are float32; `terminated` / `truncated` are bool scalars.
    * Everything that differs between tasks of the family is array data in `params`, so
      one compiled function serves every task (no recompilation when switching tasks).

    Subclasses should be hashable by their static configuration (e.g. frozen dataclasses)
    so they can be passed as static arguments to `jax.jit`.
    """

    family: str = "functional"
    obs_dim: int
    action_dim: int
    max_episode_steps: int
    action_low: np.ndarray
    action_high: np.ndarray

    def default_params(self) -> EnvParams:
        """Parameters of the family's default task."""
        raise NotImplementedError

    def reset(self, key: jax.Array, params: EnvParams) -> tuple[EnvState, jax.Array]:
        """Start a new episode; returns `(state, obs)`."""
        raise NotImplementedError

    def step(self, state: EnvState, action: jax.Array, params: EnvParams) -> StepResult:
        """Advance one step with same-step auto-reset; see the class docstring."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class FunctionalTask(Generic[ParamsT]):
    """A registry factory for a JAX-native task: a shared family env plus its params builder."""

    env: FunctionalEnv
    make_params: Callable[[], ParamsT]

    def __call__(self) -> tuple[FunctionalEnv, ParamsT]:
        return self.env, self.make_params()


def batch_reset(env: FunctionalEnv, keys: jax.Array, params: EnvParams) -> tuple[EnvState, jax.Array]:
    """Reset a batch of envs, one key per env; `params` is shared (broadcast, not batched)."""
    return jax.vmap(env.reset, in_axes=(0, None))(keys, params)


def batch_step(env: FunctionalEnv, states: EnvState, actions: jax.Array, params: EnvParams) -> StepResult:
    """Step a batch of envs; `params` is shared (broadcast, not batched)."""
    return jax.vmap(env.step, in_axes=(0, 0, None))(states, actions, params)


@partial(jax.jit, static_argnums=0)
def jit_batch_reset(env: FunctionalEnv, keys: jax.Array, params: EnvParams) -> tuple[EnvState, jax.Array]:
    """Jitted `batch_reset`; compiled once per (env, batch shape), shared by all tasks."""
    return batch_reset(env, keys, params)


@partial(jax.jit, static_argnums=0)
def jit_batch_step(env: FunctionalEnv, states: EnvState, actions: jax.Array, params: EnvParams) -> StepResult:
    """Jitted `batch_step`; compiled once per (env, batch shape), shared by all tasks."""
    return batch_step(env, states, actions, params)


def stack_params(params_list: Sequence[EnvParams]) -> EnvParams:
    """Stack several tasks' params of one family along a new leading axis (to vmap over tasks)."""
    if not params_list:
        raise ValueError("stack_params needs at least one EnvParams")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *params_list)


def unstack_params(stacked: EnvParams) -> list[EnvParams]:
    """Inverse of `stack_params`."""
    leaves = jax.tree.leaves(stacked)
    n_tasks = leaves[0].shape[0]
    return [jax.tree.map(lambda leaf, i=i: leaf[i], stacked) for i in range(n_tasks)]
