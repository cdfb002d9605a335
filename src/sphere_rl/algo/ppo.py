"""PPO agent: the agent-state pytree, the policy step and the fused, jitted update phase.

The whole update phase (epochs x minibatches, shuffling included) is one `jax.lax.scan` inside one
jitted call. Target-KL handling is SB3/SBX early stopping: the phase stops at the first minibatch
whose approximate KL exceeds 1.5 * target_kl; that minibatch's step and all later ones are skipped.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from sphere_rl.algo.losses import (
    clipped_surrogate,
    gaussian_entropy,
    gaussian_log_prob,
    normalize_advantages,
    value_loss,
)
from sphere_rl.algo.normalizer import RunningMeanStd
from sphere_rl.config import Config
from sphere_rl.nets import make_actor, make_critic
from sphere_rl.regularizers import make_regularizer

Params = dict[str, Any]


class AgentState(flax.struct.PyTreeNode):
    """Everything that learns: network parameters, optimiser state and the observation normaliser."""

    params: Params  # {"actor": ..., "critic": ...}
    opt_state: dict[str, Any]  # {"actor": ..., "critic": ...}: separate Adam states, as in SBX
    obs_rms: RunningMeanStd


class Batch(NamedTuple):
    """A flat rollout batch: normalised observations, raw (unclipped) actions and targets."""

    obs: jax.Array
    actions: jax.Array
    log_probs: jax.Array
    advantages: jax.Array
    returns: jax.Array


def _make_optimizer(learning_rate: float, max_grad_norm: float, eps: float) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(learning_rate, eps=eps))


def _global_norm(tree: Any) -> jax.Array:
    return optax.tree.norm(tree)


class PPO:
    """Static description of a PPO learner (networks, optimiser, regulariser) plus jitted functions.

    Instances hold no mutable training state: that is the `AgentState` pytree passed in and out.
    """

    def __init__(self, cfg: Config, obs_dim: int, action_dim: int):
        self.cfg = cfg
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.actor = make_actor(cfg.net, action_dim)
        self.critic = make_critic(cfg.net)
        self.regularizer = make_regularizer(cfg.reg)
        p = cfg.ppo
        self.tx = optax.inject_hyperparams(_make_optimizer, static_args=("max_grad_norm", "eps"))(
            learning_rate=p.lr, max_grad_norm=p.max_grad_norm, eps=p.adam_eps
        )
        self.update_phase = jax.jit(self._update_phase)
        self.policy_step = jax.jit(self._policy_step, static_argnames=("deterministic",))

    # ------------------------------------------------------------------ state
    def init(self, key: jax.Array) -> AgentState:
        k_actor, k_critic = jax.random.split(key)
        dummy = jnp.zeros((1, self.obs_dim), jnp.float32)
        params = {"actor": self.actor.init(k_actor, dummy), "critic": self.critic.init(k_critic, dummy)}
        return AgentState(params=params, opt_state=self.init_optimizer(params), obs_rms=RunningMeanStd.create(self.obs_dim))

    def init_optimizer(self, params: Params) -> dict[str, Any]:
        return {name: self.tx.init(params[name]) for name in ("actor", "critic")}

    def reset_optimizer(self, state: AgentState) -> AgentState:
        return state.replace(opt_state=self.init_optimizer(state.params))

    def learning_rate(self, progress: float) -> float:
        """Linear schedule from lr to lr_final as task progress goes from 0 to 1."""
        p = self.cfg.ppo
        return p.lr + (p.lr_final - p.lr) * min(max(progress, 0.0), 1.0)

    # ------------------------------------------------------------------ acting
    def normalize_obs(self, state: AgentState, raw_obs: jax.Array) -> jax.Array:
        if not self.cfg.ppo.normalize_obs:
            return raw_obs.astype(jnp.float32)
        return state.obs_rms.normalize(raw_obs, self.cfg.ppo.obs_clip)

    def _policy_step(self, state: AgentState, obs: jax.Array, key: jax.Array, deterministic: bool = False):
        """From normalised `obs` (B, obs_dim): (action (unclipped), log_prob, value)."""
        out = self.actor.apply(state.params["actor"], obs)
        if deterministic:
            action = out.mean
        else:
            action = out.mean + jnp.exp(out.log_std) * jax.random.normal(key, out.mean.shape)
        log_prob = gaussian_log_prob(out.mean, out.log_std, action)
        value = self.critic.apply(state.params["critic"], obs).value
        return action, log_prob, value

    def value(self, state: AgentState, obs: jax.Array) -> jax.Array:
        return self.critic.apply(state.params["critic"], obs).value

    # ------------------------------------------------------------------ losses
    def _losses(self, params: Params, mb: Batch) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
        """Return (base loss, unweighted regulariser penalty, metrics)."""
        p = self.cfg.ppo
        actor_out = self.actor.apply(params["actor"], mb.obs)
        critic_out = self.critic.apply(params["critic"], mb.obs)
        log_prob = gaussian_log_prob(actor_out.mean, actor_out.log_std, mb.actions)
        advantages = normalize_advantages(mb.advantages) if p.normalize_advantage else mb.advantages
        surrogate = clipped_surrogate(log_prob, mb.log_probs, advantages, p.clip_range)
        entropy = gaussian_entropy(actor_out.log_std)
        v_loss = value_loss(critic_out.value, mb.returns)
        policy_objective = surrogate["policy_loss"] - p.ent_coef * entropy
        base = policy_objective + p.vf_coef * v_loss + actor_out.aux_loss + critic_out.aux_loss
        metrics = {
            **surrogate,
            "value_loss": v_loss,
            "entropy": entropy,
            "aux_loss": actor_out.aux_loss + critic_out.aux_loss,
            "policy_objective": policy_objective,
        }
        if self.regularizer is None:
            return base, jnp.zeros(()), metrics
        penalty, info = self.regularizer.penalty(actor_out, params["actor"])
        metrics.update({f"reg/{k}": v for k, v in info.items()})
        return base, penalty, metrics

    def _gradients(self, params: Params, mb: Batch) -> tuple[Params, dict[str, jax.Array]]:
        reg = self.cfg.reg
        if self.regularizer is None or reg.mode != "grad":

            def total_loss(params: Params):
                base, penalty, metrics = self._losses(params, mb)
                if self.regularizer is None:
                    lam = jnp.zeros(())
                elif reg.mode == "fixed":
                    lam = jnp.asarray(reg.coef, jnp.float32)
                else:  # "loss": lambda = ratio * |L_pi + c_ent L_ent| / (L_reg + 1e-8), no gradient through it
                    lam = jax.lax.stop_gradient(reg.coef * jnp.abs(metrics["policy_objective"]) / (penalty + 1e-8))
                metrics.update({"reg/penalty": penalty, "reg/lambda": lam})
                return base + lam * penalty, metrics

            (loss, metrics), grads = jax.value_and_grad(total_loss, has_aux=True)(params)
        else:
            # "grad": g = g_base + s * g_reg with s = ratio * |g_base| / |g_reg| over the actor parameters.
            def both(params: Params):
                base, penalty, metrics = self._losses(params, mb)
                return jnp.stack([base, penalty]), metrics

            (values, vjp_fn, metrics) = jax.vjp(both, params, has_aux=True)
            (g_base,) = vjp_fn(jnp.array([1.0, 0.0], values.dtype))
            (g_reg,) = vjp_fn(jnp.array([0.0, 1.0], values.dtype))
            scale = jax.lax.stop_gradient(
                reg.coef * _global_norm(g_base["actor"]) / (_global_norm(g_reg["actor"]) + 1e-12)
            )
            grads = jax.tree.map(lambda a, b: a + scale * b, g_base, g_reg)
            loss = values[0] + scale * values[1]
            metrics.update({"reg/penalty": values[1], "reg/lambda": scale})
        metrics["loss"] = loss
        metrics["grad_norm/actor"] = _global_norm(grads["actor"])
        metrics["grad_norm/critic"] = _global_norm(grads["critic"])
        return grads, metrics

    def apply_gradients(self, state: AgentState, grads: Params) -> AgentState:
        """One optimiser step (global-norm clip + Adam) on actor and critic separately."""
        new_params, new_opt = {}, {}
        for name in ("actor", "critic"):
            updates, new_opt[name] = self.tx.update(grads[name], state.opt_state[name], state.params[name])
            new_params[name] = optax.apply_updates(state.params[name], updates)
        return state.replace(params=new_params, opt_state=new_opt)

    # ------------------------------------------------------------------ update phase
    def _minibatch_step(self, carry: tuple[AgentState, jax.Array], mb: Batch):
        state, stopped = carry
        target_kl = self.cfg.ppo.target_kl

        def run(state: AgentState):
            grads, metrics = self._gradients(state.params, mb)
            if target_kl is None:
                kl_ok = jnp.asarray(True)
                state = self.apply_gradients(state, grads)
            else:
                # A branch, not a select: a select would read and write every parameter and moment twice.
                kl_ok = metrics["approx_kl"] <= 1.5 * target_kl
                state = jax.lax.cond(kl_ok, self.apply_gradients, lambda s, g: s, state, grads)
            metrics = {**metrics, "computed": jnp.ones(()), "applied": kl_ok.astype(jnp.float32)}
            return state, jnp.logical_not(kl_ok), metrics

        metric_shapes = jax.eval_shape(lambda s: run(s)[2], state)

        def skip(state: AgentState):
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)
            return state, jnp.asarray(True), zeros

        state, stop_now, metrics = jax.lax.cond(stopped, skip, run, state)
        return (state, jnp.logical_or(stopped, stop_now)), metrics

    def _update_phase(self, state: AgentState, batch: Batch, key: jax.Array, learning_rate: jax.Array):
        """Epochs x minibatches of PPO updates on a flat batch, as one scan. Returns (state, metrics)."""
        cfg = self.cfg
        n_mb, mb_size = cfg.n_minibatches, cfg.ppo.minibatch_size
        opt_state = {
            name: s._replace(hyperparams={**s.hyperparams, "learning_rate": jnp.asarray(learning_rate, jnp.float32)})
            for name, s in state.opt_state.items()
        }
        state = state.replace(opt_state=opt_state)

        def epoch(carry, epoch_key):
            perm = jax.random.permutation(epoch_key, cfg.batch_size)
            shuffled = jax.tree.map(lambda x: x[perm].reshape((n_mb, mb_size) + x.shape[1:]), batch)
            return jax.lax.scan(self._minibatch_step, carry, shuffled)

        epoch_keys = jax.random.split(key, cfg.ppo.n_epochs)
        (state, stopped), metrics = jax.lax.scan(epoch, (state, jnp.asarray(False)), epoch_keys)
        computed = metrics.pop("computed")
        applied = metrics.pop("applied")
        denom = jnp.maximum(computed.sum(), 1.0)
        summary = {k: jnp.sum(v * computed) / denom for k, v in metrics.items()}
        summary["n_updates"] = applied.sum()
        summary["early_stopped"] = stopped.astype(jnp.float32)
        summary["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
        summary["log_std"] = jnp.mean(state.params["actor"]["params"]["log_std"])
        return state, summary
