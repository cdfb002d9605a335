"""Mixture-of-Experts actors and critics: stacked experts, a gating MLP, a router and a dispatch mode."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from sphere_rl.config import NetConfig
from sphere_rl.nets.grouped import permute_rows
from sphere_rl.nets.layers import GATE_HEAD_GAIN, POLICY_HEAD_GAIN, VALUE_HEAD_GAIN, MLPTrunk, StackedMLP, dense
from sphere_rl.nets.outputs import ActorOutput, Assignments, CriticOutput, Features
from sphere_rl.nets.routing import ROUTERS, Routing, load_balance_loss


@dataclass(frozen=True)
class MoESpec:
    """Everything that defines an MoE body except its head (shared by MoE actors and critics)."""

    router: str
    """A key of `routing.ROUTERS`: `topk` or `softmax`."""
    n_experts: int
    """Routed experts E."""
    top_k: int
    """Experts kept per state by the `topk` router."""
    n_shared: int
    """Always-on experts with gate weight 1 (DS-MoE); 0 otherwise."""
    hidden_sizes: tuple[int, ...]
    """Hidden widths of every expert."""
    gate_hidden_sizes: tuple[int, ...]
    """Hidden widths of the gating MLP."""
    temperature: float = 1.0
    activation: str = "relu"
    load_balance_coef: float = 0.0
    dispatch: str = "dense"
    init_scheme: str = "orthogonal"
    """Weight-initialisation scheme (`layers.INITS`)."""
    layer_norm: bool = False
    """A LayerNorm after every hidden Dense of the experts and of the gating MLP, before the activation."""
    diag_layer: bool = False
    """A diagonal layer (x * scale + bias) right after every hidden Dense of the experts and the gating MLP."""

    def __post_init__(self) -> None:
        if self.router not in ROUTERS:
            raise ValueError(f"unknown router {self.router!r}; choose one of {sorted(ROUTERS)}")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k must be in [1, n_experts={self.n_experts}], got {self.top_k}")
        if self.n_shared < 0:
            raise ValueError(f"n_shared must be >= 0, got {self.n_shared}")
        if self.dispatch not in DISPATCHERS:
            raise ValueError(f"unknown dispatch {self.dispatch!r}; choose one of {sorted(DISPATCHERS)}")


# -- dispatch: how the experts are evaluated for a batch ----------------------------------------------
class ExpertPass(NamedTuple):
    """What a dispatcher returns: every expert's features laid out (E, B, .), and the gated mixture."""

    hidden: tuple[jax.Array, ...]
    """Per hidden layer (E, B, H_l). Under sparse dispatch, zero where an expert did not see a state."""
    outputs: jax.Array
    """(E, B, out) expert head outputs (zero where an expert did not see a state, sparse dispatch)."""
    mixed: jax.Array
    """(B, out) sum_e gates[b, e] * outputs[e, b]."""
    assignments: Assignments | None = None
    """Sparse dispatch: the routed results per assignment (see `Features.assignments`)."""


Dispatcher = Callable[[StackedMLP, jax.Array, jax.Array, Routing, MoESpec], ExpertPass]


def dense_dispatch(experts: StackedMLP, obs: jax.Array, gates: jax.Array, routing: Routing, spec: MoESpec) -> ExpertPass:
    """Evaluate every expert on every state; unselected experts are masked by their zero gate (official)."""
    del routing, spec
    hidden, outputs = experts(obs)
    return ExpertPass(hidden, outputs, jnp.einsum("be,ebo->bo", gates, outputs))


def sparse_dispatch(experts: StackedMLP, obs: jax.Array, gates: jax.Array, routing: Routing, spec: MoESpec) -> ExpertPass:
    """Evaluate each routed expert only on the states routed to it; the dense-masked result exactly.

    The B * k (state, expert) assignments are sorted by expert and pushed through the experts with
    grouped matrix products (`grouped_matmul`), so the work follows the assignments, however
    unbalanced the routing, and no state is dropped. Results come back per assignment, (B, k, .),
    and are laid out (E, B, .) with zeros where an expert did not see a state (only materialised
    when something reads them, e.g. SPHERE). Shared experts (DS-MoE) see every state. With every
    expert selected (softmax router, or k = E) this is `dense_dispatch`.
    """
    if routing.index is None or spec.top_k >= spec.n_experts:
        return dense_dispatch(experts, obs, gates, routing, spec)
    n_states, n_shared, n_routed = obs.shape[0], spec.n_shared, spec.n_experts
    index = jax.lax.stop_gradient(routing.index)
    top_k = index.shape[1]
    expert = index.reshape(-1)
    order = jnp.argsort(expert, stable=True)
    inverse = jnp.argsort(order)
    group_sizes = jnp.bincount(expert, length=n_routed)
    rows = obs[order // top_k]
    hidden_rows, output_rows = experts(rows, members=(n_shared, n_shared + n_routed), groups=(group_sizes, expert[order]))
    per_assignment = lambda h: permute_rows(h, inverse, order).reshape(n_states, top_k, -1)
    outputs_bk = per_assignment(output_rows)
    kept_gates = jnp.take_along_axis(gates[:, n_shared:], index, axis=1)  # (B, k)
    mixed = jnp.einsum("bk,bko->bo", kept_gates, outputs_bk)
    states = jnp.arange(n_states)[:, None]
    to_experts = lambda h: jnp.zeros((n_routed, n_states, h.shape[-1]), h.dtype).at[index, states].set(h, unique_indices=True)
    hidden_bk = tuple(per_assignment(h) for h in hidden_rows)
    assignments = Assignments(index=index, gates=kept_gates, hidden=hidden_bk)
    hidden = tuple(to_experts(h) for h in hidden_bk)
    outputs = to_experts(outputs_bk)
    if n_shared:
        shared_hidden, shared_outputs = experts(obs, members=(0, n_shared))
        hidden = tuple(jnp.concatenate([s, r]) for s, r in zip(shared_hidden, hidden))
        outputs = jnp.concatenate([shared_outputs, outputs])
        mixed = mixed + shared_outputs.sum(axis=0)
    return ExpertPass(hidden, outputs, mixed, assignments)


DISPATCHERS: dict[str, Dispatcher] = {"dense": dense_dispatch, "sparse": sparse_dispatch}
"""Dispatch modes: `dense` evaluates every expert on every state and masks (the official code, the
reference); `sparse` evaluates only the selected experts and gives the same numbers."""

DISPATCH_MODES: tuple[str, ...] = tuple(DISPATCHERS)


class GateNetwork(nn.Module):
    """Gating MLP: observation -> one logit per routed expert."""

    n_experts: int
    hidden_sizes: tuple[int, ...]
    activation: str = "relu"
    init_scheme: str = "orthogonal"
    layer_norm: bool = False
    diag_layer: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        hidden = MLPTrunk(self.hidden_sizes, self.activation, self.init_scheme, self.layer_norm, self.diag_layer,
                          name="trunk")(obs)
        return dense(self.n_experts, GATE_HEAD_GAIN, name="logits", init=self.init_scheme)(hidden[-1])


class MoEBody(nn.Module):
    """Router + stacked experts + mixing. Returns (mixed head output (B, out), Features, aux loss).

    The expert stack holds `n_shared + n_experts` experts, shared ones first. The gate vector
    (B, n_shared + n_experts) is ones for shared experts followed by the router's gates.
    """

    spec: MoESpec
    out_dim: int
    head_gain: float

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, Features, jax.Array]:
        spec = self.spec
        logits = GateNetwork(spec.n_experts, spec.gate_hidden_sizes, spec.activation, spec.init_scheme, spec.layer_norm,
                             spec.diag_layer, name="gate")(obs)
        routing = ROUTERS[spec.router](logits, spec.top_k, spec.temperature)
        shared_gates = jnp.ones((obs.shape[0], spec.n_shared), routing.gates.dtype)
        gates = jnp.concatenate([shared_gates, routing.gates], axis=-1)

        experts = StackedMLP(
            n_stack=spec.n_shared + spec.n_experts,
            hidden_sizes=spec.hidden_sizes,
            out_dim=self.out_dim,
            head_gain=self.head_gain,
            activation=spec.activation,
            init_scheme=spec.init_scheme,
            layer_norm=spec.layer_norm,
            diag_layer=spec.diag_layer,
            name="experts",
        )
        # Initialise through the dense path: the same parameters (and random draws) whatever the dispatch.
        dispatch = "dense" if self.is_initializing() else spec.dispatch
        expert_pass = DISPATCHERS[dispatch](experts, obs, gates, routing, spec)
        mixed = expert_pass.mixed

        if spec.load_balance_coef > 0:
            aux_loss = spec.load_balance_coef * load_balance_loss(routing.probs, routing.selected)
        else:
            aux_loss = jnp.zeros((), mixed.dtype)
        features = Features(
            hidden=expert_pass.hidden,
            gates=gates,
            logits=logits,
            probs=routing.probs,
            expert_outputs=expert_pass.outputs,
            assignments=expert_pass.assignments,
            n_shared=spec.n_shared,
        )
        return mixed, features, aux_loss


class MoEActor(nn.Module):
    """MoE Gaussian actor: mean = sum_e g_e * mean_e, state-independent `log_std` parameter."""

    spec: MoESpec
    action_dim: int
    log_std_init: float = 0.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> ActorOutput:
        mean, features, aux_loss = MoEBody(self.spec, self.action_dim, POLICY_HEAD_GAIN, name="moe")(obs)
        log_std = self.param("log_std", nn.initializers.constant(self.log_std_init), (self.action_dim,))
        return ActorOutput(mean=mean, log_std=log_std, features=features, aux_loss=aux_loss)


class MoECritic(nn.Module):
    """MoE critic: value = sum_e g_e * value_e (optional; the official critic is a dense MLP)."""

    spec: MoESpec

    @nn.compact
    def __call__(self, obs: jax.Array) -> CriticOutput:
        value, features, aux_loss = MoEBody(self.spec, 1, VALUE_HEAD_GAIN, name="moe")(obs)
        return CriticOutput(value=value[:, 0], features=features, aux_loss=aux_loss)


# -- builders for the registries -----------------------------------------------------------------------
MOE_KINDS: dict[str, tuple[str, bool]] = {
    "topk_moe": ("topk", False),
    "dense_moe": ("softmax", False),
    "ds_moe": ("topk", True),
}
"""Registry kind -> (router, has shared experts)."""


def moe_spec(cfg: NetConfig, kind: str, hidden_sizes: tuple[int, ...]) -> MoESpec:
    router, has_shared = MOE_KINDS[kind]
    return MoESpec(
        router=router,
        n_experts=cfg.n_experts,
        top_k=cfg.top_k if router == "topk" else cfg.n_experts,
        n_shared=cfg.n_shared if has_shared else 0,
        hidden_sizes=tuple(hidden_sizes),
        gate_hidden_sizes=tuple(cfg.gate_hidden_sizes),
        temperature=cfg.gate_temperature,
        activation=cfg.activation,
        load_balance_coef=cfg.load_balance_coef,
        dispatch=cfg.dispatch,
        init_scheme=cfg.init,
        layer_norm=cfg.layer_norm,
        diag_layer=cfg.diag_layer,
    )


def actor_builder(kind: str) -> Callable[[NetConfig, int], MoEActor]:
    """Registry entry for the MoE actor `kind` (a key of MOE_KINDS)."""

    def build(cfg: NetConfig, action_dim: int) -> MoEActor:
        return MoEActor(moe_spec(cfg, kind, cfg.hidden_sizes), action_dim, cfg.log_std_init)

    return build


def critic_builder(kind: str) -> Callable[[NetConfig], MoECritic]:
    """Registry entry for the MoE critic `kind`; experts use `critic_hidden_sizes`."""

    def build(cfg: NetConfig) -> MoECritic:
        return MoECritic(moe_spec(cfg, kind, cfg.critic_hidden_sizes))

    return build


def with_dense_dispatch(module: nn.Module) -> nn.Module:
    """The same network (same parameters) evaluated with dense dispatch: the form diagnostics use."""
    spec = getattr(module, "spec", None)
    if isinstance(spec, MoESpec) and spec.dispatch != "dense":
        return module.clone(spec=replace(spec, dispatch="dense"))
    return module
