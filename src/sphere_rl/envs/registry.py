"""The single env registry: ids -> vector envs (`make`) or pure JAX envs (`make_functional`), plus sequences."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import gymnasium
import jax.numpy as jnp
import numpy as np

from sphere_rl.envs.functional import EnvParams, FunctionalEnv, FunctionalTask
from sphere_rl.envs.gym_adapter import GymVectorAdapter
from sphere_rl.envs.jax_vector import JaxVectorEnv

GYM_PREFIX = "gym:"
"""`make("gym:<Gymnasium id>")` wraps any installed Gymnasium env without registering it."""


class UnknownEnvError(ValueError):
    """An env id or sequence name that is not registered."""


class NotJaxNativeError(ValueError):
    """A pure-JAX form was requested for an env that only exists as a Gymnasium env."""


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """A registered env id. JAX-native ids come from a `FunctionalTask` factory."""

    id: str
    description: str
    family: str | None
    jax_native: bool
    factory: Callable[..., Any] = dataclasses.field(repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class SequenceSpec:
    """A named sequence of env ids (the tasks of one continual-RL run, in order)."""

    name: str
    env_ids: tuple[str, ...]
    description: str


_ENVS: dict[str, EnvSpec] = {}
_SEQUENCES: dict[str, SequenceSpec] = {}
_FAMILY_ENVS: dict[str, FunctionalEnv] = {}


def register(
    env_id: str,
    factory: FunctionalTask | Callable[..., gymnasium.Env],
    *,
    description: str,
    family: str | None = None,
    overwrite: bool = False,
) -> EnvSpec:
    """Register an env id; this is the one place to add an env.

    `factory` is either a `FunctionalTask(env, make_params)` (JAX-native; `make` returns a
    `JaxVectorEnv`; all tasks of a family must share one `FunctionalEnv` instance) or a
    callable returning a single `gymnasium.Env` (called with `make`'s extra keyword
    arguments and wrapped by `GymVectorAdapter`).
    """
    if env_id.startswith(GYM_PREFIX):
        raise ValueError(f"ids starting with {GYM_PREFIX!r} are reserved for unregistered Gymnasium envs: {env_id!r}")
    if env_id in _ENVS and not overwrite:
        raise ValueError(f"env id {env_id!r} is already registered (pass overwrite=True to replace it)")
    jax_native = isinstance(factory, FunctionalTask)
    if jax_native:
        env_family = factory.env.family
        if family is not None and family != env_family:
            raise ValueError(f"{env_id!r}: family {family!r} differs from its FunctionalEnv's family {env_family!r}")
        family = env_family
        shared = _FAMILY_ENVS.setdefault(family, factory.env)
        if shared is not factory.env:
            raise ValueError(
                f"{env_id!r}: family {family!r} already has a FunctionalEnv instance; "
                "reuse it so all its tasks share one compile"
            )
    elif not callable(factory):
        raise TypeError(f"{env_id!r}: factory must be a FunctionalTask or a callable returning a gymnasium.Env")
    spec = EnvSpec(id=env_id, description=description, family=family, jax_native=jax_native, factory=factory)
    _ENVS[env_id] = spec
    return spec


def register_sequence(name: str, env_ids: Sequence[str], description: str, *, overwrite: bool = False) -> SequenceSpec:
    """Register a named sequence of already registered (or `gym:`) env ids."""
    if name in _SEQUENCES and not overwrite:
        raise ValueError(f"sequence {name!r} is already registered (pass overwrite=True to replace it)")
    if "," in name or name in _ENVS:
        raise ValueError(f"invalid sequence name {name!r}: must not contain ',' or equal an env id")
    env_ids = tuple(env_ids)
    if not env_ids:
        raise ValueError(f"sequence {name!r} is empty")
    for env_id in env_ids:
        if not env_id.startswith(GYM_PREFIX):
            env_spec(env_id)
    spec = SequenceSpec(name=name, env_ids=env_ids, description=description)
    _SEQUENCES[name] = spec
    return spec


def unregister(env_id: str) -> None:
    """Remove a registered env id (mainly for tests); sequences using it are left as they are."""
    env_spec(env_id)
    del _ENVS[env_id]


def _unknown(kind: str, name: str, candidates: Iterable[str]) -> UnknownEnvError:
    close = difflib.get_close_matches(name, list(candidates), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return UnknownEnvError(
        f"Unknown {kind} {name!r}.{hint} List all ids with sphere_rl.envs.list_envs() and sequences with "
        f"sphere_rl.envs.list_sequences(); any installed Gymnasium env works as 'gym:<id>'."
    )


def env_spec(env_id: str) -> EnvSpec:
    """The `EnvSpec` of a registered id; `UnknownEnvError` (with close matches) otherwise."""
    try:
        return _ENVS[env_id]
    except KeyError:
        raise _unknown("env id", env_id, _ENVS) from None


def _check_gym_id(env_id: str) -> str:
    gym_id = env_id[len(GYM_PREFIX) :]
    try:
        gymnasium.spec(gym_id)
    except gymnasium.error.Error as error:
        close = difflib.get_close_matches(gym_id, list(gymnasium.registry), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(GYM_PREFIX + c for c in close)}?" if close else ""
        raise UnknownEnvError(f"Unknown Gymnasium env id {gym_id!r} in {env_id!r} ({error}).{hint}") from None
    return gym_id


def validate_env_id(env_id: str) -> str:
    """Return `env_id` if it is registered or a known `gym:` id; raise `UnknownEnvError` otherwise."""
    if env_id.startswith(GYM_PREFIX):
        _check_gym_id(env_id)
    else:
        env_spec(env_id)
    return env_id


def is_jax_native(env_id: str) -> bool:
    """True if `env_id` has a pure JAX form (`make_functional` works)."""
    if env_id.startswith(GYM_PREFIX):
        _check_gym_id(env_id)
        return False
    return env_spec(env_id).jax_native


def make_functional(env_id: str) -> tuple[FunctionalEnv, EnvParams]:
    """`(FunctionalEnv, EnvParams)` of a JAX-native id; tasks of one family share the env instance."""
    spec = None if env_id.startswith(GYM_PREFIX) else env_spec(env_id)
    if spec is None or not spec.jax_native:
        if spec is None:
            _check_gym_id(env_id)
        raise NotJaxNativeError(
            f"{env_id!r} is not JAX-native, so it has no functional form; use sphere_rl.envs.make({env_id!r}) "
            "for its Gymnasium VectorEnv. JAX-native ids: "
            + ", ".join(s.id for s in list_envs() if s.jax_native)
        )
    return spec.factory()


def override_params(params: EnvParams, overrides: dict[str, Any]) -> EnvParams:
    """Replace fields of a params dataclass, keeping each field's dtype and shape."""
    if not overrides:
        return params
    field_names = {field.name for field in dataclasses.fields(params)}
    unknown = sorted(set(overrides) - field_names)
    if unknown:
        raise TypeError(f"unknown env parameter(s) {unknown}; valid: {sorted(field_names)}")
    replaced = {}
    for name, value in overrides.items():
        old = getattr(params, name)
        try:
            new = jnp.asarray(np.broadcast_to(np.asarray(value, old.dtype), old.shape))
        except ValueError:
            raise ValueError(f"parameter {name!r} needs shape {old.shape}, got {np.shape(value)}") from None
        replaced[name] = new
    return params.replace(**replaced)


def make(env_id: str, num_envs: int = 1, seed: int = 0, **kwargs: Any) -> gymnasium.vector.VectorEnv:
    """Build `num_envs` copies of `env_id` as a same-step auto-reset Gymnasium `VectorEnv`.

    JAX-native ids return a `JaxVectorEnv` (extra kwargs override fields of its params,
    e.g. `success_radius=0.05`); `gym:<id>` and registered Gymnasium factories return a
    `GymVectorAdapter` (kwargs: `asynchronous=True` for subprocesses, rest go to the env).
    """
    if env_id.startswith(GYM_PREFIX):
        adapter = GymVectorAdapter(_check_gym_id(env_id), num_envs, seed, **kwargs)
        adapter.env_id = env_id
        for kind, space in (("observation", adapter.single_observation_space), ("action", adapter.single_action_space)):
            if not isinstance(space, gymnasium.spaces.Box):  # e.g. CartPole's Discrete actions
                adapter.close()
                raise ValueError(f"{env_id!r} has a {type(space).__name__} {kind} space; sphere-rl needs Box "
                                 "(continuous) observations and actions")
        return adapter
    spec = env_spec(env_id)
    if spec.jax_native:
        functional, params = spec.factory()
        return JaxVectorEnv(functional, override_params(params, kwargs), num_envs, seed, env_id=env_id)
    asynchronous = bool(kwargs.pop("asynchronous", False))
    factory = spec.factory
    adapter = GymVectorAdapter(lambda: factory(**kwargs), num_envs, seed, asynchronous=asynchronous)
    adapter.env_family = spec.family
    adapter.env_id = env_id
    return adapter


def list_envs() -> list[EnvSpec]:
    """All registered envs, sorted by id (`gym:` ids are not listed)."""
    return [_ENVS[env_id] for env_id in sorted(_ENVS)]


def list_sequences() -> dict[str, SequenceSpec]:
    """All registered sequences by name."""
    return dict(_SEQUENCES)


def resolve_sequence(name_or_ids: str | Sequence[str]) -> tuple[str, ...]:
    """Env ids of a registered sequence name, or of a comma-separated list whose parts are env ids or
    sequence names (`"arm6,arm6"`: arm6 twice; `"arm2,arm/heavy"`), each id validated."""
    if isinstance(name_or_ids, str):
        parts = tuple(part.strip() for part in name_or_ids.split(",") if part.strip())
        if len(parts) == 1 and parts[0] not in _SEQUENCES and parts[0] not in _ENVS \
                and not parts[0].startswith(GYM_PREFIX):
            raise _unknown("sequence or env id", parts[0], [*_SEQUENCES, *_ENVS])
        env_ids = tuple(env_id for part in parts
                        for env_id in (_SEQUENCES[part].env_ids if part in _SEQUENCES else (part,)))
    else:
        env_ids = tuple(name_or_ids)
    if not env_ids:
        raise ValueError(f"empty sequence: {name_or_ids!r}")
    return tuple(validate_env_id(env_id) for env_id in env_ids)


def functional_sequence(name_or_ids: str | Sequence[str]) -> tuple[FunctionalEnv, tuple[EnvParams, ...]]:
    """The shared `FunctionalEnv` and per-task params of a sequence whose tasks form one JAX family."""
    env_ids = resolve_sequence(name_or_ids)
    pairs = [make_functional(env_id) for env_id in env_ids]
    functional = pairs[0][0]
    mixed = [env_id for env_id, (env, _) in zip(env_ids, pairs) if env is not functional]
    if mixed:
        raise ValueError(f"sequence {env_ids} mixes env families; {mixed} differ from {env_ids[0]!r}")
    return functional, tuple(params for _, params in pairs)


HELDOUT_BY_FAMILY: dict[str, str] = {"arm/": "arm/heldout", "humanoidbench/h1-": "humanoidbench/h1-stair"}
"""Training-task prefix -> the held-out task of that family (in no sequence): the paper's held-out
feature analysis (HumanoidBench's *stair*) and the RL plasticity probe (`diag.rl_probe_task`) use it."""


def heldout_task(tasks: Sequence[str]) -> str | None:
    """The held-out task of the family of ``tasks`` (None when the family has none, or it is in ``tasks``)."""
    for prefix, heldout in HELDOUT_BY_FAMILY.items():
        if tasks and all(t.startswith(prefix) for t in tasks) and heldout not in tasks:
            return heldout
    return None

