"""The Regularizer interface: unweighted penalty terms on one network, plus state kept across tasks."""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

import jax

from sphere_rl.nets.outputs import ActorOutput, CriticOutput

Info = dict[str, jax.Array]
Terms = dict[str, jax.Array]


class Regularizer(abc.ABC):
    """Penalty terms added to the PPO loss of the actor (and of the critic with `reg.critic`).

    `penalty` returns *unweighted* terms by name. PPO weights each term on its own, per network, with
    `reg.mode` and the term's coefficient from `coefs` (adaptive `loss` or `grad` scaling against that
    network's base loss, or a fixed lambda): SPHERE's feature term uses `reg.coef` and its routing
    term `reg.routing_coef`, as the official code weights its two penalties. `penalty` runs inside the
    jitted update, so it must be pure and free of Python branching on array values. Subclasses should
    be frozen dataclasses (hashable, usable as static arguments).

    State (e.g. L2-init keeps each task's initial weights): `init_state` builds a pytree from a
    network's parameters when the agent is created, `on_task_start` updates it at the start of every
    task (RL and CRL; also for a fresh agent), and PPO passes it back as `state`. It lives in
    `AgentState.reg_state` (one entry per penalised network), so it is checkpointed and restored on
    resume. The defaults are stateless no-ops.
    """

    name: str = "base"

    @property
    @abc.abstractmethod
    def coefs(self) -> dict[str, float]:
        """Coefficient (ratio, or lambda in `fixed` mode) of every term `penalty` returns; 0 disables a term."""

    @abc.abstractmethod
    def penalty(self, out: ActorOutput | CriticOutput, params: Any, state: Any = None) -> tuple[Terms, Info]:
        """(unweighted terms by name, info scalars for logging) for one minibatch's network output."""

    def init_state(self, params: Any) -> Any:
        """Regulariser state built from a network's initial parameters (default: none)."""
        del params
        return None

    def on_task_start(self, state: Any, params: Any) -> Any:
        """Update the state when a task starts, given the network's parameters then (default: unchanged)."""
        del params
        return state

    uses_reference_batch: bool = False
    """True: `penalty` gets, instead of the minibatch's output, a `ReferenceOutputs` of the network on a second,
    independently shuffled minibatch of the same rollout (C-CHAIN's reg batch), with the current parameters
    and with the parameters in the state."""

    def after_step(self, state: Any, params_before: Any, applied: Any) -> Any:
        """Update the state after a minibatch step, given the parameters the step started from and whether it
        was applied (a traced bool) (default: unchanged)."""
        del params_before, applied
        return state


class ReferenceOutputs(NamedTuple):
    """A network's outputs on the reference batch: with the current parameters (differentiated) and with
    the reference parameters kept in the regulariser's state (not differentiated)."""

    current: Any
    reference: Any

