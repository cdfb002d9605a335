"""Mixture-of-Experts actors and critics: stacked experts, a gating MLP, a router and a dispatch mode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from sphere_rl.config import NetConfig
from sphere_rl.nets.layers import GATE_HEAD_GAIN, POLICY_HEAD_GAIN, VALUE_HEAD_GAIN, MLPTrunk, StackedMLP, dense
from sphere_rl.nets.outputs import ActorOutput, CriticOutput, Features
from sphere_rl.nets.routing import ROUTERS, load_balance_loss


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
ExpertEvaluator = Callable[[StackedMLP, jax.Array, jax.Array], tuple[tuple[jax.Array, ...], jax.Array]]


def dense_dispatch(experts: StackedMLP, obs: jax.Array, gates: jax.Array) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """Evaluate every expert on every state; unselected experts are masked by their zero gate later."""
    del gates
    return experts(obs)


DISPATCHERS: dict[str, ExpertEvaluator] = {"dense": dense_dispatch}
"""Dispatch modes. A new mode (e.g. exact sparse dispatch) is one function with this signature that
returns hidden (E, B, H_l) per layer and outputs (E, B, out) like `dense_dispatch`."""

DISPATCH_MODES: tuple[str, ...] = tuple(DISPATCHERS)


class GateNetwork(nn.Module):
    """Gating MLP: observation -> one logit per routed expert."""

    n_experts: int
    hidden_sizes: tuple[int, ...]
    activation: str = "relu"

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        hidden = MLPTrunk(self.hidden_sizes, self.activation, name="trunk")(obs)
        return dense(self.n_experts, GATE_HEAD_GAIN, name="logits")(hidden[-1])


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
        logits = GateNetwork(spec.n_experts, spec.gate_hidden_sizes, spec.activation, name="gate")(obs)
        routing = ROUTERS[spec.router](logits, spec.top_k, spec.temperature)
        shared_gates = jnp.ones((obs.shape[0], spec.n_shared), routing.gates.dtype)
        gates = jnp.concatenate([shared_gates, routing.gates], axis=-1)

        experts = StackedMLP(
            n_stack=spec.n_shared + spec.n_experts,
            hidden_sizes=spec.hidden_sizes,
            out_dim=self.out_dim,
            head_gain=self.head_gain,
            activation=spec.activation,
            name="experts",
        )
        hidden, expert_outputs = DISPATCHERS[spec.dispatch](experts, obs, gates)
        mixed = jnp.einsum("be,ebo->bo", gates, expert_outputs)

        if spec.load_balance_coef > 0:
            aux_loss = spec.load_balance_coef * load_balance_loss(routing.probs, routing.selected)
        else:
            aux_loss = jnp.zeros((), mixed.dtype)
        features = Features(
            hidden=hidden,
            gates=gates,
            logits=logits,
            probs=routing.probs,
            expert_outputs=expert_outputs,
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
