"""Actor and critic registries: a name in `NetConfig` -> a Flax module returning ActorOutput / CriticOutput."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn

from sphere_rl.config import NetConfig
from sphere_rl.nets import mlp, moe
from sphere_rl.nets.layers import INITS
from sphere_rl.nets.moe import DISPATCH_MODES
from sphere_rl.nets.outputs import ActorOutput, CriticOutput, Features

ActorBuilder = Callable[[NetConfig, int], nn.Module]
CriticBuilder = Callable[[NetConfig], nn.Module]

ACTORS: dict[str, ActorBuilder] = {
    "mlp": mlp.build_actor,
    "topk_moe": moe.actor_builder("topk_moe"),
    "dense_moe": moe.actor_builder("dense_moe"),
    "ds_moe": moe.actor_builder("ds_moe"),
}
"""Actor kinds. A new architecture: one module with a builder `(NetConfig, action_dim) -> Module` + one line here."""

CRITICS: dict[str, CriticBuilder] = {
    "mlp": mlp.build_critic,
    "topk_moe": moe.critic_builder("topk_moe"),
    "dense_moe": moe.critic_builder("dense_moe"),
    "ds_moe": moe.critic_builder("ds_moe"),
}
"""Critic kinds (`mlp` is the official one; the MoE critics are optional)."""


def make_actor(net_cfg: NetConfig, action_dim: int) -> nn.Module:
    """The actor named by `net_cfg.actor`; `module.apply(params, obs (B, obs_dim))` -> ActorOutput."""
    if net_cfg.actor not in ACTORS:
        raise ValueError(f"unknown actor {net_cfg.actor!r}; choose one of {sorted(ACTORS)}")
    return ACTORS[net_cfg.actor](net_cfg, action_dim)


def make_critic(net_cfg: NetConfig) -> nn.Module:
    """The critic named by `net_cfg.critic`; `module.apply(params, obs)` -> CriticOutput, value (B,)."""
    if net_cfg.critic not in CRITICS:
        raise ValueError(f"unknown critic {net_cfg.critic!r}; choose one of {sorted(CRITICS)}")
    return CRITICS[net_cfg.critic](net_cfg)


__all__ = [
    "ACTORS",
    "CRITICS",
    "DISPATCH_MODES",
    "INITS",
    "ActorOutput",
    "CriticOutput",
    "Features",
    "make_actor",
    "make_critic",
]
