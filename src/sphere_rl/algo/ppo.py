"""PPO agent: the agent-state pytree, the policy step and the fused, jitted update phase.

The whole update phase (epochs x minibatches, shuffling included) is one `jax.lax.scan` inside one
jitted call. What `target_kl` does is `ppo.kl_mode`:
- `adaptive_lr` (the official runs): every minibatch step is applied; after each one the learning
  rate follows SBX's `KLAdaptiveLR` (the rsl_rl rule) on that minibatch's approximate KL
  `mean((r - 1 + 1e-7) - log(r + 1e-7))`, and the new rate is written into the actor's and the
  critic's Adam states before the next minibatch. The rate is `AgentState.kl_lr`.
- `early_stop` (SB3): the phase stops at the first minibatch whose approximate KL exceeds
  1.5 * target_kl; that minibatch's step and all later ones are skipped.
- `none`: every step is applied.
Outside `adaptive_lr` the learning rate comes from the schedule (`PPO.learning_rate`).

A minibatch step whose loss or gradients are not finite (NaN/Inf) is never applied, whatever the
mode: parameters, Adam moments and the adaptive rate stay as they were, the step is counted in the
phase's `nonfinite_updates` metric and left out of the other metrics' averages. The runner decides
what a run does about it (`run.max_nonfinite_updates`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from sphere_rl.algo.losses import (
    approx_kl,
    clipped_surrogate,
    gaussian_entropy,
    gaussian_log_prob,
    normalize_advantages,
    value_loss,
)
from sphere_rl.algo.normalizer import RunningMeanStd
from sphere_rl.config import Config
from sphere_rl.nets import make_actor, make_critic
from sphere_rl.methods import Events, LossMethod, build_interventions, build_losses, enabled_methods, resolved_net, trac
from sphere_rl.methods import injection as injection_method
from sphere_rl.regularizers import make_regularizer
from sphere_rl.regularizers.base import ReferenceOutputs, Regularizer

Params = dict[str, Any]
NETWORKS = ("actor", "critic")
ADAPTIVE_KL_EPS = 1e-7
"""The eps of the official code's approximate KL, `mean((r - 1 + eps) - log(r + eps))`."""
NORM_EPS = 1e-8
"""The official grad mode's norms: sqrt(sum of squares + 1e-8), and 1e-8 added to the divisor."""


class AgentState(flax.struct.PyTreeNode):
    """Everything that learns and is checkpointed: parameters, optimiser states, the observation
    normaliser, the KL-adaptive learning rate and the regulariser's state."""

    params: Params  # {"actor": ..., "critic": ...}
    opt_state: dict[str, Any]  # {"actor": ..., "critic": ...}: separate Adam states, as in SBX
    obs_rms: RunningMeanStd
    kl_lr: jax.Array
    """() float32: SBX's `KLAdaptiveLR.current_adaptive_lr` (`kl_mode=adaptive_lr`; else unused)."""
    reg_state: Any = None
    """{network: state} of the regulariser for each penalised network (None without a regulariser)."""
    injection: Any = None
    """Method `injection`: {"active": () bool, network: {"old": params, "init": params}} (None without it);
    the network's output is its live output plus that of "old" minus that of "init" (`PPO.offsets`)."""


class Batch(NamedTuple):
    """A flat rollout batch: normalised observations, raw (unclipped) actions and targets."""

    obs: jax.Array
    actions: jax.Array
    log_probs: jax.Array
    advantages: jax.Array
    returns: jax.Array


def _make_optimizer(learning_rate: float, max_grad_norm: float, eps: float,
                    trac_settings: tuple | None = None) -> optax.GradientTransformation:
    """Clip each network's gradient by its global norm, then Adam (wrapped in TRAC when `trac_settings` =
    (betas, s_prev, eps, variant), method `trac`)."""
    adam = optax.adam(learning_rate, eps=eps)
    if trac_settings is not None:
        adam = trac.trac(adam, *trac_settings)
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), adam)


def all_finite(tree: Any) -> jax.Array:
    """() bool: every inexact (floating) leaf of `tree` is free of NaN and Inf; integer leaves are ignored."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _global_norm(tree: Any) -> jax.Array:
    return optax.tree.norm(tree)


def _official_norm(tree: Any) -> jax.Array:
    return jnp.sqrt(jnp.square(_global_norm(tree)) + NORM_EPS)


def adaptive_lr_update(lr: jax.Array, kl: jax.Array, target_kl: float, factor: float = 1.5,
                       lr_min: float = 1e-5, lr_max: float = 1e-2, margin: float = 2.0) -> jax.Array:
    """SBX's `KLAdaptiveLR.update` (rsl_rl): divide by `factor` above margin * target, multiply below
    target / margin, then clip to [lr_min, lr_max]."""
    lr = jnp.where(kl > target_kl * margin, lr / factor, jnp.where(kl < target_kl / margin, lr * factor, lr))
    return jnp.clip(lr, lr_min, lr_max)


def opt_learning_rate(opt_state: Any) -> jax.Array:
    """The learning rate inside one network's optimiser state (optax `inject_hyperparams`)."""
    return opt_state.hyperparams["learning_rate"]


def with_learning_rate(opt_states: dict[str, Any], learning_rate: jax.Array) -> dict[str, Any]:
    """Every network's optimiser state with `learning_rate` written in (SBX's `_update_learning_rate`)."""
    lr = jnp.asarray(learning_rate, jnp.float32)
    return {name: s._replace(hyperparams={**s.hyperparams, "learning_rate": lr}) for name, s in opt_states.items()}


class Penalty(NamedTuple):
    """One enabled penalty term as `_gradients` weights it."""

    key: str
    """Its name among `_losses`' terms: `<network>/<term>` (SPHERE), `<network>/<method>/<term>`."""
    network: str
    mode: str
    """`loss`, `grad` or `fixed` (see `_gradients`)."""
    coef: float
    metric: str
    """Its value's metric name; `metric_of(what)` names its lambda, loss share and gradient share."""

    def metric_of(self, what: str) -> str:
        return f"{self.metric}/{what}" if self.metric != "reg/penalty" else f"reg/{what}"


def _method_metric(method: str, network: str, what: str) -> str:
    """Metric name of a (non-SPHERE) loss method's term or info: `<method>/<what>`, `<method>/critic/<what>`."""
    return f"{method}/{what}" if network == "actor" else f"{method}/{network}/{what}"


class PPO:
    """Static description of a PPO learner (networks, optimiser, regulariser) plus jitted functions.

    Instances hold no mutable training state: that is the `AgentState` pytree passed in and out.
    """

    def __init__(self, cfg: Config, obs_dim: int, action_dim: int):
        self.cfg = cfg
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        net = resolved_net(cfg)  # with the architecture methods listed in `methods` (LayerNorm, CReLU)
        self.actor = make_actor(net, action_dim)
        self.critic = make_critic(net)
        self.methods = enabled_methods(cfg)
        """Every plasticity method the config switches on (`sphere_rl.methods`)."""
        self.regularizer = make_regularizer(cfg.reg if "sphere" not in self.methods or cfg.reg.name == "sphere"
                                            else dataclasses.replace(cfg.reg, name="sphere"))
        """SPHERE (None when off); its state is `reg_state[network]` and its terms `<network>/<term>`."""
        if self.regularizer is not None and getattr(self.regularizer, "factor", "forward") == "gradient":
            self.regularizer = dataclasses.replace(self.regularizer, activation=net.activation)
        self.interventions = build_interventions(cfg)
        self.injected: tuple[str, ...] = next(
            (m.networks for m in self.interventions if isinstance(m, injection_method.Injection)), ())
        """The networks that method `injection` injects into (their outputs get `offsets`)."""
        self.reg_networks: tuple[str, ...] = ()
        if self.regularizer is not None:
            self.reg_networks = ("actor", "critic") if cfg.reg.critic else ("actor",)
        self.losses: tuple[LossMethod, ...] = build_losses(cfg)
        """The other loss-kind methods (L2, L2-init, ...): state `reg_state[method][network]`, terms
        `<network>/<method>/<term>`, each weighted by its own mode and coefficient."""
        p = cfg.ppo
        self.trac = "trac" in self.methods
        trac_settings = ((tuple(cfg.trac.betas), cfg.trac.s_prev, cfg.trac.eps, cfg.trac.variant) if self.trac
                         else None)
        self.tx = optax.inject_hyperparams(_make_optimizer, static_args=("max_grad_norm", "eps", "trac_settings"))(
            learning_rate=p.lr, max_grad_norm=p.max_grad_norm, eps=p.adam_eps, trac_settings=trac_settings
        )
        self.update_phase = jax.jit(self._update_phase)
        self.policy_step = jax.jit(self._policy_step, static_argnames=("deterministic",))

    # ------------------------------------------------------------------ state
    def init(self, key: jax.Array) -> AgentState:
        k_actor, k_critic = jax.random.split(key)
        dummy = jnp.zeros((1, self.obs_dim), jnp.float32)
        params = {"actor": self.actor.init(k_actor, dummy), "critic": self.critic.init(k_critic, dummy)}
        reg_state = None
        if self.regularizer is not None:
            reg_state = {name: self.regularizer.init_state(params[name]) for name in self.reg_networks}
        if self.losses:
            reg_state = dict(reg_state or {})
            for method in self.losses:
                reg_state[method.name] = {n: method.regularizer.init_state(params[n]) for n in method.networks}
        injection = injection_method.initial_state(params, self.injected) if self.injected else None
        return AgentState(params=params, opt_state=self.init_optimizer(params),
                          obs_rms=RunningMeanStd.create(self.obs_dim),
                          kl_lr=jnp.asarray(self.cfg.ppo.lr, jnp.float32), reg_state=reg_state, injection=injection)

    def init_optimizer(self, params: Params) -> dict[str, Any]:
        return {name: self.tx.init(params[name]) for name in NETWORKS}

    def reset_optimizer(self, state: AgentState) -> AgentState:
        """Fresh Adam states (moments, step count, learning rate `ppo.lr`) and adaptive rate `ppo.lr`."""
        return state.replace(opt_state=self.init_optimizer(state.params),
                             kl_lr=jnp.asarray(self.cfg.ppo.lr, jnp.float32))

    def start_task(self, state: AgentState) -> AgentState:
        """What happens to the agent at the start of every task, after the protocol chose it.

        `adaptive_lr` with `kl_lr_at_task_start=reset` restarts the adaptive rate at `ppo.lr`, as SB3's
        `load` (which rebuilds SBX's KLAdaptiveLR) does in the official CRL loop; the Adam states keep
        their last learning rate until the first minibatch of the task writes the next one. Then the
        regulariser's `on_task_start` hook runs for each penalised network.
        """
        p = self.cfg.ppo
        if p.kl_mode == "adaptive_lr" and p.kl_lr_at_task_start == "reset":
            state = state.replace(kl_lr=jnp.asarray(p.lr, jnp.float32))
        if self.regularizer is not None or self.losses:
            reg_state = dict(state.reg_state)
            for name in self.reg_networks:
                reg_state[name] = self.regularizer.on_task_start(state.reg_state[name], state.params[name])
            for method in self.losses:
                reg_state[method.name] = {n: method.regularizer.on_task_start(state.reg_state[method.name][n],
                                                                              state.params[n])
                                          for n in method.networks}
            state = state.replace(reg_state=reg_state)
        return state

    def task_switch(self, state: AgentState, key: jax.Array, task_index: int) -> tuple[AgentState, Events]:
        """What the interventions do at the start of task `task_index` >= 1 of a CRL run (before
        `start_task`): the new agent and their events (`{"reset/params": ...}`)."""
        events: Events = {}
        for i, intervention in enumerate(self.interventions):
            state, done = intervention.on_task_switch(self, state, jax.random.fold_in(key, i), task_index)
            events.update(done)
        return state, events

    @property
    def acts_after_iterations(self) -> bool:
        """Whether some intervention edits the agent after update phases (the runner then calls
        `after_iteration` with the task's probe states)."""
        return any(i.acts_after_iterations for i in self.interventions)

    def after_iteration(self, state: AgentState, obs: jax.Array, key: jax.Array, iteration: int) -> tuple[AgentState, Events]:
        """What the interventions do after update phase `iteration` of a task (`obs`: the task's probe
        states, normalised): the new agent and their events."""
        events: Events = {}
        for i, intervention in enumerate(self.interventions):
            state, done = intervention.after_iteration(self, state, obs, jax.random.fold_in(key, i), iteration)
            events.update(done)
        return state, events

    def learning_rate(self, progress: float) -> float:
        """The schedule at task progress in [0, 1]: linear from lr to lr_final over the first
        `lr_end_fraction` of the task, then lr_final (SB3's `get_linear_fn`, as the official
        `lin_3e-4_1e-4_0.5`). Not used with `kl_mode=adaptive_lr`."""
        p = self.cfg.ppo
        progress = min(max(progress, 0.0), 1.0)
        if progress >= p.lr_end_fraction:
            return p.lr_final
        return p.lr + (p.lr_final - p.lr) * progress / p.lr_end_fraction

    def iteration_learning_rate(self, iteration: int) -> float:
        """The schedule's rate for the update phase of iteration `iteration` (0-based) of a task.

        As in SB3, progress is counted after the iteration's rollout, (iteration + 1) * batch over the
        task's step budget, so the last update phase of a task runs at `lr_final`."""
        return self.learning_rate((iteration + 1) * self.cfg.batch_size / self.cfg.run.steps_per_task)

    # ------------------------------------------------------------------ acting
    def normalize_obs(self, state: AgentState, raw_obs: jax.Array) -> jax.Array:
        if not self.cfg.ppo.normalize_obs:
            return raw_obs.astype(jnp.float32)
        return state.obs_rms.normalize(raw_obs, self.cfg.ppo.obs_clip)

    def offsets(self, state: AgentState, obs: jax.Array,
                networks: tuple[str, ...] = ("actor", "critic")) -> dict[str, jax.Array] | None:
        """Method `injection`'s frozen part of the outputs on `obs`, f_old(x) - f_init(x), not differentiated:
        {"mean": (B, A), "log_std": (A,)} for an injected actor, {"value": (B,)} for an injected critic
        (only those of `networks`); zeros before the injection (not computed then, outside a vmap); None
        without the method or when none of `networks` is injected."""
        which = tuple(n for n in self.injected if n in networks)
        if not which:
            return None
        inj = jax.lax.stop_gradient(state.injection)

        def frozen(_):
            out = {}
            if "actor" in which:
                old, new = self.actor.apply(inj["actor"]["old"], obs), self.actor.apply(inj["actor"]["init"], obs)
                out["mean"], out["log_std"] = old.mean - new.mean, old.log_std - new.log_std
            if "critic" in which:
                out["value"] = (self.critic.apply(inj["critic"]["old"], obs).value
                                - self.critic.apply(inj["critic"]["init"], obs).value)
            return out

        shapes = jax.eval_shape(frozen, None)
        return jax.lax.cond(inj["active"], frozen,
                            lambda _: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes), None)

    @staticmethod
    def _with_offsets(actor_out: Any, critic_out: Any, offsets: dict[str, jax.Array] | None) -> tuple[Any, Any]:
        """The outputs the policy and the value use: the networks' own plus `offsets` (method `injection`)."""
        if offsets is None:
            return actor_out, critic_out
        if "mean" in offsets:
            actor_out = actor_out._replace(mean=actor_out.mean + offsets["mean"],
                                           log_std=actor_out.log_std + offsets["log_std"])
        if "value" in offsets:
            critic_out = critic_out._replace(value=critic_out.value + offsets["value"])
        return actor_out, critic_out

    def _policy_step(self, state: AgentState, obs: jax.Array, key: jax.Array, deterministic: bool = False):
        """From normalised `obs` (B, obs_dim): (action (unclipped), log_prob, value)."""
        out, critic_out = self._with_offsets(self.actor.apply(state.params["actor"], obs),
                                             self.critic.apply(state.params["critic"], obs), self.offsets(state, obs))
        if deterministic:
            action = out.mean
        else:
            action = out.mean + jnp.exp(out.log_std) * jax.random.normal(key, out.mean.shape)
        log_prob = gaussian_log_prob(out.mean, out.log_std, action)
        return action, log_prob, critic_out.value

    def value(self, state: AgentState, obs: jax.Array) -> jax.Array:
        value = self.critic.apply(state.params["critic"], obs).value
        if "critic" in self.injected:  # the critic's frozen pair only: the actor's is not needed here
            value = value + self.offsets(state, obs, ("critic",))["value"]
        return value

    # ------------------------------------------------------------------ losses
    def _losses(self, params: Params, mb: Batch, reg_state: Any = None, reg_obs: jax.Array | None = None,
                offsets: dict[str, jax.Array] | None = None) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
        """The loss as named, unweighted scalar terms, and metrics.

        Terms: `actor/base` = L_pi - c_ent * entropy (+ the actor's load-balancing loss),
        `critic/base` = vf_coef * L_V (+ the critic's), and `<network>/<term>` for every enabled
        regulariser term of each penalised network (weighted later, in `_gradients`). `offsets` (method
        `injection`, on `mb.obs`) enter the policy and the value; the penalties see the live networks.
        """
        p = self.cfg.ppo
        outputs = {"actor": self.actor.apply(params["actor"], mb.obs), "critic": self.critic.apply(params["critic"], mb.obs)}
        actor_out, critic_out = self._with_offsets(outputs["actor"], outputs["critic"], offsets)
        log_prob = gaussian_log_prob(actor_out.mean, actor_out.log_std, mb.actions)
        advantages = normalize_advantages(mb.advantages) if p.normalize_advantage else mb.advantages
        surrogate = clipped_surrogate(log_prob, mb.log_probs, advantages, p.clip_range)
        entropy = gaussian_entropy(actor_out.log_std)
        v_loss = value_loss(critic_out.value, mb.returns)
        policy_objective = surrogate["policy_loss"] - p.ent_coef * entropy
        terms = {
            "actor/base": policy_objective + actor_out.aux_loss,
            "critic/base": p.vf_coef * v_loss + critic_out.aux_loss,
        }
        metrics = {
            **surrogate,
            "approx_kl_official": approx_kl(log_prob - mb.log_probs, ADAPTIVE_KL_EPS),
            "value_loss": v_loss,
            "entropy": entropy,
            "aux_loss": actor_out.aux_loss + critic_out.aux_loss,
            "policy_objective": policy_objective,
        }
        reg_terms = {}
        for name in self.reg_networks:
            state = None if reg_state is None else reg_state[name]
            reg_terms[name], info = self.regularizer.penalty(outputs[name], params[name], state)
            prefix = "reg/" if name == "actor" else "reg/critic/"
            metrics.update({f"{prefix}{k}": v for k, v in info.items()})
        # every enabled term has a value; a term the network cannot have (SPHERE's routing term on a
        # network without a router) is 0 and adds nothing, whatever the mode
        for name, term, _ in self._sphere_terms():
            terms[f"{name}/{term}"] = reg_terms[name].get(term, jnp.zeros((), jnp.float32))
        for method in self.losses:
            for name in method.networks:
                state = None if reg_state is None else reg_state[method.name][name]
                out = outputs[name]
                if method.regularizer.uses_reference_batch:  # e.g. C-CHAIN: this network on the reference batch
                    network = self.actor if name == "actor" else self.critic
                    ref_obs = mb.obs if reg_obs is None else reg_obs
                    ref_params = jax.lax.stop_gradient(params[name]) if state is None else state
                    out = ReferenceOutputs(network.apply(params[name], ref_obs), network.apply(ref_params, ref_obs))
                values, info = method.regularizer.penalty(out, params[name], state)
                for term in method.regularizer.coefs:
                    terms[f"{name}/{method.name}/{term}"] = values.get(term, jnp.zeros((), jnp.float32))
                metrics.update({_method_metric(method.name, name, k): v for k, v in info.items()})
        return terms, metrics

    def _base_loss_for_scale(self, name: str, metrics: dict[str, jax.Array]) -> jax.Array:
        """|L_base| that `loss` mode scales a network's penalty against: |L_pi + c_ent L_ent| (official,
        without the load-balancing loss) for the actor, |vf_coef L_V| for the critic."""
        if name == "actor":
            return jnp.abs(metrics["policy_objective"])
        return jnp.abs(self.cfg.ppo.vf_coef * metrics["value_loss"])

    @staticmethod
    def _metric_key(name: str, term: str, what: str) -> str:
        """Metric name of a penalty term: `reg/penalty`, `reg/lambda`, `reg/loss_share`, `reg/grad_share`
        for the actor's main (`feature`) term; `reg/<network>/<term>[/what]` for the others."""
        if name == "actor" and term == "feature":
            return f"reg/{what or 'penalty'}"
        return f"reg/{name}/{term}" + (f"/{what}" if what else "")

    def _term_metrics(self, penalty: "Penalty", value: jax.Array, lam: jax.Array,
                      metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
        base = self._base_loss_for_scale(penalty.network, metrics)
        return {
            penalty.metric: value,
            penalty.metric_of("lambda"): lam,
            penalty.metric_of("loss_share"): lam * value / (base + 1e-8),
        }

    def _sphere_terms(self) -> list[tuple[str, str, float]]:
        """(network, term, coefficient) of every enabled SPHERE term, in a fixed order."""
        if self.regularizer is None:
            return []
        return [(name, term, coef) for name in self.reg_networks for term, coef in self.regularizer.coefs.items() if coef > 0]

    def _penalty_terms(self) -> list[Penalty]:
        """Every enabled penalty term, SPHERE's first, in a fixed order, with its weighting mode."""
        out = [Penalty(f"{name}/{term}", name, self.cfg.reg.mode, coef, self._metric_key(name, term, ""))
               for name, term, coef in self._sphere_terms()]
        for method in self.losses:
            for name in method.networks:
                for term, coef in method.regularizer.coefs.items():
                    if coef > 0:
                        out.append(Penalty(f"{name}/{method.name}/{term}", name, method.mode, coef,
                                           _method_metric(method.name, name, term)))
        return out

    def _gradients(self, params: Params, mb: Batch, reg_state: Any = None, reg_obs: jax.Array | None = None,
                   offsets: dict[str, jax.Array] | None = None) -> tuple[Params, dict[str, jax.Array]]:
        """Gradients of the weighted loss, and metrics. Each penalty term gets its own weight, per network:

        - `fixed`: lambda = coef;
        - `loss`: lambda = coef * |L_base| / (L_term + 1e-8), not differentiated (official);
        - `grad`: the term's gradient is scaled to coef * |g_base| / (|g_term| + 1e-8), norms over that
          network's parameters, |x| = sqrt(sum x^2 + 1e-8) (official): one backward pass per term.
        Logged per term: the value, lambda (the gradient scale in `grad` mode), its loss share
        lambda * L_term / |L_base| and, in `grad` mode, its gradient share |s g_term| / |g_base|
        (= coef up to the epsilons, by construction).
        """
        penalties = self._penalty_terms()
        by_grad = [p for p in penalties if p.mode == "grad"]
        added = [p for p in penalties if p.mode != "grad"]

        def weighted(terms: dict[str, jax.Array], metrics: dict[str, jax.Array]) -> jax.Array:
            """The base loss plus every `fixed`/`loss`-mode term times its lambda (logging each)."""
            loss = terms["actor/base"] + terms["critic/base"]
            for p in added:
                value = terms[p.key]
                if p.mode == "fixed":
                    lam = jnp.asarray(p.coef, jnp.float32)
                else:
                    lam = jax.lax.stop_gradient(p.coef * self._base_loss_for_scale(p.network, metrics) / (value + 1e-8))
                loss = loss + lam * value
                metrics.update(self._term_metrics(p, value, lam, metrics))
            return loss

        if not by_grad:

            def total_loss(params: Params):
                terms, metrics = self._losses(params, mb, reg_state, reg_obs, offsets)
                return weighted(terms, metrics), metrics

            (loss, metrics), grads = jax.value_and_grad(total_loss, has_aux=True)(params)
        else:

            def stacked(params: Params):
                terms, metrics = self._losses(params, mb, reg_state, reg_obs, offsets)
                base = terms["actor/base"] + terms["critic/base"]
                values = [base, *(terms[p.key] for p in by_grad)]
                if added:
                    values.append(weighted(terms, metrics) - base)
                return jnp.stack(values), metrics

            values, vjp_fn, metrics = jax.vjp(stacked, params, has_aux=True)
            basis = jnp.eye(values.shape[0], dtype=values.dtype)
            (g_base,) = vjp_fn(basis[0])
            grads = dict(g_base)
            loss = values[0]
            for i, p in enumerate(by_grad, start=1):
                (g_term,) = vjp_fn(basis[i])
                base_norm = _official_norm(g_base[p.network])
                term_norm = _official_norm(g_term[p.network])
                scale = jax.lax.stop_gradient(p.coef * base_norm / (term_norm + NORM_EPS))
                grads[p.network] = jax.tree.map(lambda g, t: g + scale * t, grads[p.network], g_term[p.network])
                loss = loss + scale * values[i]
                metrics.update(self._term_metrics(p, values[i], scale, metrics))
                metrics[p.metric_of("grad_share")] = scale * _global_norm(g_term[p.network]) / _global_norm(g_base[p.network])
            if added:  # the fixed/loss-mode terms, already weighted: their gradient as it is
                (g_added,) = vjp_fn(basis[-1])
                grads = jax.tree.map(lambda g, a: g + a, grads, g_added)
                loss = loss + values[-1]
        if not any(p.key == "actor/feature" for p in penalties):
            metrics.update({"reg/penalty": jnp.zeros(()), "reg/lambda": jnp.zeros(())})
        metrics["loss"] = loss
        metrics["grad_norm/actor"] = _global_norm(grads["actor"])
        metrics["grad_norm/critic"] = _global_norm(grads["critic"])
        return grads, metrics

    @property
    def uses_reference_batch(self) -> bool:
        """Whether a loss method reads a second, independently shuffled minibatch (C-CHAIN)."""
        return any(m.regularizer.uses_reference_batch for m in self.losses)

    @property
    def steps_state(self) -> bool:
        """Whether a loss method updates its state after every minibatch step (C-CHAIN's reference)."""
        return any(type(m.regularizer).after_step is not Regularizer.after_step for m in self.losses)

    def _after_step(self, state: AgentState, params_before: Params, applied: jax.Array) -> AgentState:
        reg_state = dict(state.reg_state)
        for m in self.losses:
            reg_state[m.name] = {n: m.regularizer.after_step(state.reg_state[m.name][n], params_before[n], applied)
                                 for n in m.networks}
        return state.replace(reg_state=reg_state)

    def apply_gradients(self, state: AgentState, grads: Params) -> AgentState:
        """One optimiser step on actor and critic separately: each network's gradient is clipped to
        `max_grad_norm` by its own global norm, then its own Adam step (as SBX and the official code)."""
        new_params, new_opt = {}, {}
        for name in NETWORKS:
            updates, new_opt[name] = self.tx.update(grads[name], state.opt_state[name], state.params[name])
            new_params[name] = optax.apply_updates(state.params[name], updates)
        return state.replace(params=new_params, opt_state=new_opt)

    # ------------------------------------------------------------------ update phase
    def _minibatch_step(self, carry: tuple[AgentState, jax.Array], xs: Any):
        """One minibatch step. `xs`: a minibatch, or (minibatch, the reference minibatch's observations or None
        [, method `injection`'s offsets on the minibatch or None])."""
        state, stopped = carry
        p = self.cfg.ppo
        parts = (xs,) if isinstance(xs, Batch) else tuple(xs)
        mb, reg_obs, offsets = parts + (None,) * (3 - len(parts))
        if offsets is not None and "log_std" in offsets:
            offsets = {**offsets, "log_std": offsets["log_std"][0]}

        def run(state: AgentState):
            lr_used = opt_learning_rate(state.opt_state["actor"])
            params_before = state.params
            grads, metrics = self._gradients(state.params, mb, state.reg_state, reg_obs, offsets)
            finite = all_finite((metrics["loss"], grads))
            if p.kl_mode == "early_stop":
                kl_ok = metrics["approx_kl"] <= 1.5 * p.target_kl
            else:
                kl_ok = jnp.asarray(True)
            apply = jnp.logical_and(kl_ok, finite)
            # A branch, not a select: a select would read and write every parameter and moment twice.
            state = jax.lax.cond(apply, self.apply_gradients, lambda s, g: s, state, grads)
            if self.steps_state:
                state = self._after_step(state, params_before, apply)
            if p.kl_mode == "adaptive_lr":
                kl_lr = adaptive_lr_update(state.kl_lr, metrics["approx_kl_official"], p.target_kl, p.kl_lr_factor,
                                           p.kl_lr_min, p.kl_lr_max)
                kl_lr = jnp.where(finite, kl_lr, state.kl_lr)
                state = state.replace(kl_lr=kl_lr, opt_state=with_learning_rate(state.opt_state, kl_lr))
            metrics = {**metrics, "learning_rate": lr_used, "computed": finite.astype(jnp.float32),
                       "applied": apply.astype(jnp.float32), "nonfinite": jnp.logical_not(finite).astype(jnp.float32)}
            # a non-finite step does not stop the phase: the next minibatch may be fine
            return state, jnp.logical_and(finite, jnp.logical_not(kl_ok)), metrics

        if p.kl_mode != "early_stop":
            state, _, metrics = run(state)
            return (state, stopped), metrics

        metric_shapes = jax.eval_shape(lambda s: run(s)[2], state)

        def skip(state: AgentState):
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)
            return state, jnp.asarray(True), zeros

        state, stop_now, metrics = jax.lax.cond(stopped, skip, run, state)
        return (state, jnp.logical_or(stopped, stop_now)), metrics

    def _update_phase(self, state: AgentState, batch: Batch, key: jax.Array, learning_rate: jax.Array):
        """Epochs x minibatches of PPO updates on a flat batch, as one scan. Returns (state, metrics).

        `learning_rate` (the schedule's value) is written into both Adam states first, except with
        `kl_mode=adaptive_lr`, where the rate already in them (the adaptive one) is used and updated.
        Metrics: `learning_rate` is the mean rate the applied steps used, `learning_rate_end` the rate
        in the Adam states after the phase.
        """
        cfg = self.cfg
        n_mb, mb_size = cfg.n_minibatches, cfg.ppo.minibatch_size
        if cfg.ppo.kl_mode != "adaptive_lr":
            state = state.replace(opt_state=with_learning_rate(state.opt_state, learning_rate))
        # method `injection`: the frozen networks do not change during the phase, so their part of the
        # outputs is computed once per sample and shuffled with the batch (the log std's, the same for
        # every sample, travels as one row per sample too; `_minibatch_step` takes the first)
        per_sample = self.offsets(state, batch.obs)
        if per_sample is not None and "log_std" in per_sample:
            per_sample["log_std"] = jnp.broadcast_to(per_sample["log_std"], per_sample["mean"].shape)

        def epoch(carry, epoch_key):
            perm = jax.random.permutation(epoch_key, cfg.batch_size)
            split = lambda x: x[perm].reshape((n_mb, mb_size) + x.shape[1:])  # noqa: E731
            ref_obs = None
            if self.uses_reference_batch:  # a second, independent shuffle: each step's reference minibatch
                ref_perm = jax.random.permutation(jax.random.fold_in(epoch_key, 1), cfg.batch_size)
                ref_obs = batch.obs[ref_perm].reshape((n_mb, mb_size) + batch.obs.shape[1:])
            mb_offsets = None if per_sample is None else jax.tree.map(split, per_sample)
            return jax.lax.scan(self._minibatch_step, carry, (jax.tree.map(split, batch), ref_obs, mb_offsets))

        epoch_keys = jax.random.split(key, cfg.ppo.n_epochs)
        (state, stopped), metrics = jax.lax.scan(epoch, (state, jnp.asarray(False)), epoch_keys)
        computed = metrics.pop("computed")  # 1 for every finite step that ran (applied or early-stopping)
        applied = metrics.pop("applied")
        nonfinite = metrics.pop("nonfinite")
        # averages over the finite steps; NaN when there was none (every step non-finite)
        denom = jnp.where(computed.sum() > 0, computed.sum(), jnp.nan)
        summary = {k: jnp.sum(jnp.where(computed > 0, v, 0.0)) / denom for k, v in metrics.items()}
        summary["n_updates"] = applied.sum()
        summary["nonfinite_updates"] = nonfinite.sum()
        summary["early_stopped"] = stopped.astype(jnp.float32)
        summary["learning_rate_end"] = opt_learning_rate(state.opt_state["actor"])
        log_std = state.params["actor"]["params"]["log_std"]
        if "actor" in self.injected:  # the policy's log std: the live one plus the frozen offset (0 before)
            frozen = state.injection["actor"]
            log_std = log_std + frozen["old"]["params"]["log_std"] - frozen["init"]["params"]["log_std"]
        summary["log_std"] = jnp.mean(log_std)
        if self.trac:
            summary["trac/scale"] = trac.scale_of(state.opt_state["actor"])
            summary["trac/critic/scale"] = trac.scale_of(state.opt_state["critic"])
        return state, summary
