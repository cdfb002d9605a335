"""Dense MLP actor (Gaussian policy with state-independent log-std) and dense MLP critic."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sphere_rl.config import NetConfig
from sphere_rl.nets.layers import POLICY_HEAD_GAIN, VALUE_HEAD_GAIN, MLPTrunk, dense
from sphere_rl.nets.outputs import ActorOutput, CriticOutput, Features


def dense_features(hidden: tuple[jax.Array, ...]) -> Features:
    """Features of a dense network: one "expert" (E = 1) with gate weight 1."""
    batch = hidden[0].shape[0]
    return Features(hidden=tuple(h[None] for h in hidden), gates=jnp.ones((batch, 1), hidden[0].dtype))


class MLPActor(nn.Module):
    """Dense PPO actor: MLP -> linear action mean, plus a state-independent `log_std` parameter."""

    action_dim: int
    hidden_sizes: Sequence[int] = (256, 256, 256)
    activation: str = "relu"
    log_std_init: float = 0.0
    init_scheme: str = "orthogonal"
    layer_norm: bool = False
    diag_layer: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array) -> ActorOutput:
        hidden = MLPTrunk(self.hidden_sizes, self.activation, self.init_scheme, self.layer_norm, self.diag_layer,
                          name="trunk")(obs)
        mean = dense(self.action_dim, POLICY_HEAD_GAIN, name="mean_head", init=self.init_scheme)(hidden[-1])
        log_std = self.param("log_std", nn.initializers.constant(self.log_std_init), (self.action_dim,))
        return ActorOutput(mean=mean, log_std=log_std, features=dense_features(hidden), aux_loss=jnp.zeros(()))


class MLPCritic(nn.Module):
    """Dense PPO critic: MLP -> scalar value."""

    hidden_sizes: Sequence[int] = (256, 256, 256)
    activation: str = "relu"
    init_scheme: str = "orthogonal"
    layer_norm: bool = False
    diag_layer: bool = False

    @nn.compact
    def __call__(self, obs: jax.Array) -> CriticOutput:
        hidden = MLPTrunk(self.hidden_sizes, self.activation, self.init_scheme, self.layer_norm, self.diag_layer,
                          name="trunk")(obs)
        value = dense(1, VALUE_HEAD_GAIN, name="value_head", init=self.init_scheme)(hidden[-1])[:, 0]
        return CriticOutput(value=value, features=dense_features(hidden), aux_loss=jnp.zeros(()))


def build_actor(cfg: NetConfig, action_dim: int) -> MLPActor:
    return MLPActor(
        action_dim=action_dim,
        hidden_sizes=tuple(cfg.hidden_sizes),
        activation=cfg.activation,
        log_std_init=cfg.log_std_init,
        init_scheme=cfg.init,
        layer_norm=cfg.layer_norm,
        diag_layer=cfg.diag_layer,
    )


def build_critic(cfg: NetConfig) -> MLPCritic:
    return MLPCritic(hidden_sizes=tuple(cfg.critic_hidden_sizes), activation=cfg.activation, init_scheme=cfg.init,
                     layer_norm=cfg.layer_norm, diag_layer=cfg.diag_layer)
