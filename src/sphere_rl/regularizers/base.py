"""The Regularizer interface: an unweighted penalty on the actor plus optional task-boundary hooks."""

from __future__ import annotations

import abc
from typing import Any

import jax

from sphere_rl.nets.outputs import ActorOutput

Info = dict[str, jax.Array]


class Regularizer(abc.ABC):
    """A penalty added to the PPO actor loss.

    `penalty` returns the *unweighted* value; the PPO loss applies `reg.mode` / `reg.coef`
    (adaptive `loss` or `grad` scaling, or a fixed lambda). It runs inside the jitted update, so
    it must be pure and free of Python branching on array values. Subclasses should be frozen
    dataclasses (hashable, usable as static arguments).

    Extension points for regularisers that keep state (e.g. L2-init keeps the initial weights,
    resets happen at task boundaries): `init_state` builds a pytree once from the initial actor
    parameters, `on_task_start` updates it at each task boundary, and the PPO loss passes it back
    as `state`. The defaults are stateless no-ops.
    """

    name: str = "base"

    @abc.abstractmethod
    def penalty(self, actor_out: ActorOutput, actor_params: Any, state: Any = None) -> tuple[jax.Array, Info]:
        """(scalar penalty, info scalars for logging) for one minibatch's actor output."""

    def init_state(self, actor_params: Any) -> Any:
        """Regulariser state built from the initial actor parameters (default: none)."""
        del actor_params
        return None

    def on_task_start(self, state: Any, actor_params: Any) -> Any:
        """Update the state when a new task starts (default: unchanged)."""
        del actor_params
        return state
