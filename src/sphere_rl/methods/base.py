"""What a plasticity method is to the library: a registry entry of one of four kinds, and the interface
of the interventions (methods that change the agent between updates or at task switches).

Kinds (docs/methods.md):
- `loss`: a penalty term added to the PPO loss (a :class:`~sphere_rl.regularizers.base.Regularizer`);
- `intervention`: changes parameters and optimiser state at a task switch or between updates
  (:class:`Intervention`);
- `architecture`: changes the networks (applied when they are built);
- `optimizer`: changes the optimiser.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sphere_rl.methods import trac
from sphere_rl.nets.paths import leaf_mask, path_names  # noqa: F401  (re-exported for methods)

KINDS = ("loss", "intervention", "architecture", "optimizer")

Events = dict[str, float]
"""What an intervention did, as named numbers (e.g. `reset/params`: parameters re-initialised)."""


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A registry entry: what a method is, where its settings live and how it is switched on."""

    name: str
    kind: str
    summary: str
    reference: str
    section: str | None
    """The config section of its hyperparameters (None: it has none)."""
    settings: tuple[str, ...] = ()
    """Its dotted config fields; empty: every field of `section`."""
    enabled_by: str = ""
    """How it is switched on besides listing it in `methods` (e.g. `reg.name=sphere`); empty: only the list."""
    build: Callable[[Any], Any] | None = None
    """Config -> the object PPO uses (an Intervention for the `intervention` kind)."""
    net_overrides: tuple[tuple[str, Any], ...] | Callable[[Any], tuple[tuple[str, Any], ...]] = ()
    """The `net.*` fields it sets when listed (`(("layer_norm", True),)`), or config -> those fields (a method
    whose architecture change is one of its settings, e.g. Parseval's diagonal layer)."""


@dataclasses.dataclass(frozen=True)
class LossMethod:
    """A loss-kind method as PPO uses it: its penalty terms on `networks`, weighted in `mode` (`fixed`:
    lambda = coef; `loss`, `grad`: coef is the ratio to the base loss or its gradient, as SPHERE's modes)."""

    name: str
    regularizer: Any
    networks: tuple[str, ...]
    mode: str = "fixed"


def networks_of(which: str) -> tuple[str, ...]:
    """A method's `networks` setting as the networks it acts on: `both` -> ("actor", "critic")."""
    return ("actor", "critic") if which == "both" else (which,)


def settings_of(spec: MethodSpec, cfg: Any) -> dict[str, Any]:
    """{dotted field: value in `cfg`} of a method's settings."""
    names = spec.settings
    if not names and spec.section:
        names = tuple(f"{spec.section}.{f.name}" for f in dataclasses.fields(getattr(cfg, spec.section)))
    out = {}
    for name in names:
        section, field_name = name.split(".")
        out[name] = getattr(getattr(cfg, section), field_name)
    return out


class Intervention(abc.ABC):
    """A method that edits the agent outside the loss: at a CRL task switch (`on_task_switch`, once per
    switch) or after an update phase (`after_iteration`, between the run's jitted iterations; it is
    given the task's probe states). Both run in Python for each seed, also in a seed group.

    Both return the new agent state and :data:`Events`; they must leave the optimiser state consistent
    with the new parameters (the Adam moments of re-initialised parameters are zero) and be
    deterministic given their key, so a resumed run does the same. Subclasses are frozen dataclasses.
    """

    name: str = "intervention"

    @property
    def acts_after_iterations(self) -> bool:
        """Whether `after_iteration` can do something (the runner then calls it after every update phase
        with the task's probe states); default: whether a subclass overrides it."""
        return type(self).after_iteration is not Intervention.after_iteration

    @property
    def first_iteration(self) -> int | None:
        """The first update phase (0-based, within a task) after which `after_iteration` acts; None when it
        never does (default: 0 when it can act at all)."""
        return 0 if self.acts_after_iterations else None

    def on_task_switch(self, ppo: Any, state: Any, key: jax.Array, task_index: int) -> tuple[Any, Events]:
        """At the start of task `task_index` >= 1 of a CRL run, before the task-start hooks (default: nothing)."""
        del ppo, key, task_index
        return state, {}

    def after_iteration(self, ppo: Any, state: Any, obs: jax.Array, key: jax.Array, iteration: int) -> tuple[Any, Events]:
        """After update phase `iteration` (0-based, within the task) with the task's probe states `obs`
        (normalised as the policy sees them) (default: nothing)."""
        del ppo, obs, key, iteration
        return state, {}


# ------------------------------------------------------------------------------------ parameter surgery


class Edit(NamedTuple):
    """A change to one parameter array: elements where `take` get `fresh`'s values, else where `zero` get 0."""

    zero: np.ndarray
    take: np.ndarray
    fresh: Any


def edit_elements(state: Any, network: str, plan: dict[tuple[str, ...], Edit]) -> Any:
    """The agent with `plan` ({parameter path: Edit}) applied to one network's parameters and the Adam first
    and second moments of every edited element zeroed (step count and other moments kept). Under method
    `trac`, the reference point theta_ref of every edited element moves to its new value, so TRAC's
    displacement theta - theta_ref restarts at 0 there (else the next step would read the edit as distance
    travelled, and a network whose scale is 0 would be put back at its old reference)."""
    if not plan:
        return state

    def new_param(path: tuple, old: Any) -> Any:
        edit = plan.get(path_names(path))
        if edit is None:
            return old
        return jnp.where(edit.take, edit.fresh, jnp.where(edit.zero, jnp.zeros_like(old), old))

    def new_moment(path: tuple, old: Any) -> Any:
        edit = plan.get(path_names(path))
        return old if edit is None else jnp.where(edit.take | edit.zero, jnp.zeros_like(old), old)

    params = dict(state.params)
    params[network] = jax.tree_util.tree_map_with_path(new_param, state.params[network])
    new_values = {path_names(p): x for p, x in jax.tree_util.tree_flatten_with_path(params[network])[0]}

    def new_ref(path: tuple, old: Any) -> Any:
        edit = plan.get(path_names(path))
        return old if edit is None else jnp.where(edit.take | edit.zero, new_values[path_names(path)], old)

    def fix(node: Any) -> Any:
        if isinstance(node, optax.ScaleByAdamState):
            return node._replace(mu=jax.tree_util.tree_map_with_path(new_moment, node.mu),
                                 nu=jax.tree_util.tree_map_with_path(new_moment, node.nu))
        if isinstance(node, trac.TracState):
            return node._replace(base=jax.tree.map(fix, node.base, is_leaf=is_state),
                                 ref=jax.tree_util.tree_map_with_path(new_ref, node.ref))
        return node

    def is_state(x: Any) -> bool:
        return isinstance(x, (optax.ScaleByAdamState, trac.TracState))

    opt_state = dict(state.opt_state)
    opt_state[network] = jax.tree.map(fix, state.opt_state[network], is_leaf=is_state)
    return state.replace(params=params, opt_state=opt_state)


def replace_where(state: Any, masks: dict[str, Any], fresh: dict[str, Any]) -> tuple[Any, int]:
    """The agent with the whole parameter arrays selected by `masks` ({network: bool per leaf}) taken from
    `fresh` ({network: params}) and their Adam moments zeroed (`edit_elements` with whole-array edits);
    also the number of scalars replaced."""
    count = 0
    for name, mask in masks.items():
        plan = {}
        for (path, chosen), new in zip(jax.tree_util.tree_flatten_with_path(mask)[0], jax.tree.leaves(fresh[name])):
            if chosen:
                shape = np.shape(new)
                plan[path_names(path)] = Edit(np.zeros(shape, bool), np.ones(shape, bool), new)
                count += int(np.prod(shape))
        state = edit_elements(state, name, plan)
    return state, count
