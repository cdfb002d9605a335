"""The plasticity-method registry: every method a run can list in `methods` (docs/methods.md).

A method is a :class:`~sphere_rl.methods.base.MethodSpec`: its kind (`loss`, `intervention`,
`architecture`, `optimizer`), what it does, its reference, the config section of its settings and its
builder. A run switches methods on by listing them (`methods=[reset]`); two older switches still work
and count as listing: `reg.name=sphere` (SPHERE) and `net.load_balance_coef > 0` (load balancing).
A new method is one module and one `register_method` call here.
"""

from __future__ import annotations

from typing import Any

from sphere_rl.methods import reset
from sphere_rl.methods.base import KINDS, Events, Intervention, MethodSpec, settings_of

__all__ = ["KINDS", "METHODS", "Events", "Intervention", "MethodSpec", "enabled_methods", "build_interventions",
           "register_method", "settings_of"]

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
    name="reset", kind="intervention", section="reset", build=reset.build,
    summary="re-initialise parts of the agent at every CRL task switch (reset.parts: all, actor, critic, heads, "
            "gate, log_std); Adam moments of reset parameters zeroed",
    reference="Nikishin et al. 2022, The Primacy Bias in Deep Reinforcement Learning, ICML"))


def enabled_methods(cfg: Any) -> tuple[str, ...]:
    """The methods a config switches on, in order: `methods`, then SPHERE (`reg.name`) and load balancing
    (`net.load_balance_coef`) when switched on their older way and not listed."""
    names = list(dict.fromkeys(cfg.methods))
    if cfg.reg.name == "sphere" and "sphere" not in names:
        names.append("sphere")
    if cfg.net.load_balance_coef > 0 and "load_balance" not in names:
        names.append("load_balance")
    return tuple(names)


def build_interventions(cfg: Any) -> tuple[Intervention, ...]:
    """The interventions of a config's enabled methods, in order."""
    return tuple(METHODS[name].build(cfg) for name in enabled_methods(cfg) if METHODS[name].kind == "intervention")
