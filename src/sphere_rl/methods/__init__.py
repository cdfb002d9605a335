"""The plasticity-method registry: every method a run can list in `methods` (docs/methods.md).

A method is a :class:`~sphere_rl.methods.base.MethodSpec`: its kind (`loss`, `intervention`,
`architecture`, `optimizer`), what it does, its reference, the config section of its settings and its
builder. A run switches methods on by listing them (`methods=[reset]`); two older switches still work
and count as listing: `reg.name=sphere` (SPHERE) and `net.load_balance_coef > 0` (load balancing).
A new method is one module and one `register_method` call here.
"""

from __future__ import annotations

from typing import Any

from sphere_rl.methods import injection, redo, reset, shrink_perturb, trac
from sphere_rl.methods.base import KINDS, Events, Intervention, LossMethod, MethodSpec, networks_of, settings_of
from sphere_rl.regularizers.churn import Churn
from sphere_rl.regularizers.l2 import L2, L2Init
from sphere_rl.regularizers.parseval import Parseval

__all__ = ["KINDS", "METHODS", "Events", "Intervention", "LossMethod", "MethodSpec", "enabled_methods",
           "build_interventions", "build_losses", "register_method", "resolved_net", "settings_of"]

METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    if spec.kind not in KINDS:
        raise ValueError(f"method kind must be one of {KINDS}, got {spec.kind!r}")
    if spec.name in METHODS:
        raise ValueError(f"method {spec.name!r} is already registered")
    METHODS[spec.name] = spec
    return spec


register_method(MethodSpec(
    name="sphere", kind="loss", section="reg", enabled_by="reg.name=sphere",
    settings=("reg.mode", "reg.coef", "reg.placement", "reg.form", "reg.routing_coef", "reg.critic"),
    summary="SPHERE: penalises the anisotropy of the routing-weighted expert-feature Gram A = Phi^T Phi / T "
            "(||A - Tr(A)/D I||_F^2) on the actor's last hidden expert layer; `loss`/`grad`/`fixed` weighting",
    reference="SPHERE, ICML 2026 (SPEC §3); official code sphere-rl/sphere"))
register_method(MethodSpec(
    name="load_balance", kind="loss", section="net", enabled_by="net.load_balance_coef > 0",
    settings=("net.load_balance_coef",),
    summary="auxiliary load-balancing loss of MoE routers (Switch Transformer form), weight net.load_balance_coef",
    reference="Fedus, Zoph, Shazeer 2022, Switch Transformers, JMLR (eq. 4)"))
register_method(MethodSpec(
    name="l2", kind="loss", section="l2",
    build=lambda cfg: LossMethod("l2", L2(coef=cfg.l2.coef), networks_of(cfg.l2.networks), cfg.l2.mode),
    summary="L2 towards zero: 0.5 sum theta^2 over every parameter (coupled, as Adam weight decay)",
    reference="the usual L2 baseline of plasticity studies (e.g. Plasticine; Kumar et al. 2023 §5)"))
register_method(MethodSpec(
    name="l2_init", kind="loss", section="l2_init",
    build=lambda cfg: LossMethod("l2_init", L2Init(coef=cfg.l2_init.coef, anchor=cfg.l2_init.anchor),
                                 networks_of(cfg.l2_init.networks), cfg.l2_init.mode),
    summary="L2-init (regenerative): 0.5 sum (theta - theta_0)^2, theta_0 the very first parameters "
            "(l2_init.anchor=task: each task's start)",
    reference="Kumar, Marklund, Van Roy 2023, Maintaining Plasticity in Continual Learning via Regenerative "
              "Regularization, CoLLAs 2024 (arXiv 2308.11958); code skumar9876/L2_Init"))
def _parseval(cfg: Any) -> LossMethod:
    p = cfg.parseval
    scale = p.scale if p.scale is not None else (2.0 if cfg.net.init == "orthogonal" else 1.0)
    return LossMethod("parseval", Parseval(coef=p.coef, scale=scale), networks_of(p.networks), p.mode)


register_method(MethodSpec(
    name="parseval", kind="loss", section="parseval", build=_parseval,
    net_overrides=lambda cfg: (("diag_layer", True),) if cfg.parseval.diag_layer else (),
    summary="Parseval: sum over hidden layers of (64/width)^2 ||W W^T - s I||_F^2, s the init's squared gain "
            "(outputs and biases excluded), with a learnable diagonal layer after each (parseval.diag_layer)",
    reference="Chung, Cherif, Meger, Precup 2024, Parseval Regularization for Continual Reinforcement Learning, "
              "NeurIPS (arXiv 2412.07224); code wechu/parseval_reg"))
register_method(MethodSpec(
    name="cchain", kind="loss", section="cchain",
    build=lambda cfg: LossMethod("cchain", Churn(coef=cfg.cchain.coef), networks_of(cfg.cchain.networks), cfg.cchain.mode),
    summary="C-CHAIN: churn reduction, mean (mu_theta(x) - mu_ref(x))^2 on a second shuffled minibatch, mu_ref "
            "the action mean one gradient step earlier; weighted against |L_pi| (loss mode, ratio 0.05)",
    reference="Tang, Obando-Ceron, Castro, Courville, Berseth 2025, Mitigating Plasticity Loss in Continual "
              "Reinforcement Learning by Reducing Churn, ICML; code bluecontra/C-CHAIN"))
register_method(MethodSpec(
    name="layernorm", kind="architecture", section=None, settings=("net.layer_norm",), enabled_by="net.layer_norm=true",
    net_overrides=(("layer_norm", True),),
    summary="LayerNorm after every hidden Dense (actor, experts, gating MLP, critic), before the activation",
    reference="Ba, Kiros, Hinton 2016, Layer Normalization; the official SPHERE code's use_layer_norm (SPEC §5); "
              "Lyle et al. 2023, Understanding Plasticity in Neural Networks, ICML"))
register_method(MethodSpec(
    name="crelu", kind="architecture", section=None, settings=("net.activation",), enabled_by="net.activation=crelu",
    net_overrides=(("activation", "crelu"),),
    summary="CReLU activation [ReLU(x), ReLU(-x)]: each hidden layer outputs twice its width (widths not halved)",
    reference="Shang et al. 2016 (ICML); as a plasticity baseline Abbas et al. 2023, Loss of Plasticity in Continual "
              "Deep Reinforcement Learning, CoLLAs"))
register_method(MethodSpec(
    name="redo", kind="intervention", section="redo", build=redo.build,
    summary="ReDo: every redo.every update phases, re-initialise the incoming weights of tau-dormant hidden units "
            "(bias 0), zero their outgoing weights and the Adam moments of both",
    reference="Sokar, Agarwal, Castro, Evci 2023, The Dormant Neuron Phenomenon in Deep Reinforcement Learning, "
              "ICML; code google/dopamine labs/redo"))
register_method(MethodSpec(
    name="reset", kind="intervention", section="reset", build=reset.build,
    summary="re-initialise parts of the agent at every CRL task switch (reset.parts: all, actor, critic, heads, "
            "gate, log_std); Adam moments of reset parameters zeroed",
    reference="Nikishin et al. 2022, The Primacy Bias in Deep Reinforcement Learning, ICML"))
register_method(MethodSpec(
    name="shrink_perturb", kind="intervention", section="shrink_perturb", build=shrink_perturb.build,
    summary="Shrink & Perturb: theta <- shrink theta + perturb theta_fresh (a fresh init sample) at every CRL task "
            "switch and/or every shrink_perturb.every update phases; Adam moments zeroed (moments=keep: kept)",
    reference="Ash, Adams 2020, On Warm-Starting Neural Network Training, NeurIPS (arXiv 1910.08475); code "
              "JordanAsh/warm_start"))
register_method(MethodSpec(
    name="injection", kind="intervention", section="injection", build=injection.build,
    summary="plasticity injection, once: f = f_new + stop_grad(f_old - f_new0) with f_old the network at the "
            "injection (frozen) and f_new a fresh init, trainable; the function is unchanged at the injection",
    reference="Nikishin, Oh, Ostrovski, Lyle, Pascanu, Dabney, Barreto 2023, Deep Reinforcement Learning with "
              "Plasticity Injection, NeurIPS (arXiv 2305.15555)"))
register_method(MethodSpec(
    name="trac", kind="optimizer", section="trac",
    summary="TRAC: parameter-free scaling of each network's Adam trajectory from its starting point, "
            "theta = theta_ref + max(sum s, 0) delta, s from erfi-based online estimators (6 betas)",
    reference="Muppidi, Zhang, Yang 2024, Fast TRAC: A Parameter-Free Optimizer for Lifelong Reinforcement "
              "Learning, NeurIPS (arXiv 2405.16642); code ComputationalRobotics/TRAC"))


def enabled_methods(cfg: Any) -> tuple[str, ...]:
    """The methods a config switches on, in order: `methods`, then SPHERE (`reg.name`) and load balancing
    (`net.load_balance_coef`) when switched on their older way and not listed."""
    names = list(dict.fromkeys(cfg.methods))
    if cfg.reg.name == "sphere" and "sphere" not in names:
        names.append("sphere")
    if cfg.net.load_balance_coef > 0 and "load_balance" not in names:
        names.append("load_balance")
    if cfg.net.layer_norm and "layernorm" not in names:
        names.append("layernorm")
    if cfg.net.activation == "crelu" and "crelu" not in names:
        names.append("crelu")
    return tuple(names)


def resolved_net(cfg: Any) -> Any:
    """`cfg.net` with the `net.*` settings of every listed architecture method applied (what PPO builds)."""
    import dataclasses

    net = cfg.net
    for name in enabled_methods(cfg):
        spec_overrides = METHODS[name].net_overrides
        overrides = dict(spec_overrides(cfg) if callable(spec_overrides) else spec_overrides)
        if overrides:
            net = dataclasses.replace(net, **overrides)
    return net


def build_interventions(cfg: Any) -> tuple[Intervention, ...]:
    """The interventions of a config's enabled methods, in order."""
    return tuple(METHODS[name].build(cfg) for name in enabled_methods(cfg) if METHODS[name].kind == "intervention")


def build_losses(cfg: Any) -> tuple[LossMethod, ...]:
    """The loss-kind methods of a config other than SPHERE and load balancing (which PPO and the networks
    build their own way), in order."""
    return tuple(METHODS[name].build(cfg) for name in enabled_methods(cfg)
                 if METHODS[name].kind == "loss" and METHODS[name].build is not None)

