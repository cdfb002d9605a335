"""Regulariser registry: `RegConfig.name` -> a Regularizer (or None for `none`)."""

from __future__ import annotations

from typing import Callable, Optional

from sphere_rl.config import RegConfig
from sphere_rl.regularizers import sphere
from sphere_rl.regularizers.base import Regularizer
from sphere_rl.regularizers.sphere import SphereRegularizer, sphere_loss

RegularizerBuilder = Callable[[RegConfig], Optional[Regularizer]]

REGULARIZERS: dict[str, RegularizerBuilder] = {
    "none": lambda reg_cfg: None,
    "sphere": sphere.build,
}
"""A new regulariser: one module with a `Regularizer` subclass and a builder `(RegConfig) -> Regularizer` + one line here."""


def make_regularizer(reg_cfg: RegConfig) -> Optional[Regularizer]:
    """The regulariser named by `reg_cfg.name`; None means no penalty."""
    if reg_cfg.name not in REGULARIZERS:
        raise ValueError(f"unknown regularizer {reg_cfg.name!r}; choose one of {sorted(REGULARIZERS)}")
    return REGULARIZERS[reg_cfg.name](reg_cfg)


__all__ = ["REGULARIZERS", "Regularizer", "SphereRegularizer", "make_regularizer", "sphere_loss"]
