"""SPHERE (SPEC §3): penalise the anisotropy of the routing-weighted expert-feature Gram A = Phi^T Phi / T.

L(Phi) = ||A - (Tr A / D) I||_F^2 = ||A||_F^2 - (Tr A)^2 / D.

Numerics (float32): the textbook form subtracts two large, nearly equal numbers when A is close to
isotropic. We use algebraically identical forms that are sums of squares instead, so the value is
non-negative by construction and free of that cancellation:
- feature space (D <= T, O(T D^2)): sum of squares of A - (Tr A / D) I;
- batch space (D > T, O(T^2 D); under sparse dispatch O((T k)^2 H) from the assignments, see
  `assignment_gram`): with G = Phi Phi^T / T (same nonzero eigenvalues as A) and
  m = Tr G / D, L = ||G - m I_T||_F^2 + (D - T) m^2 (the D - T zero eigenvalues of A each add m^2).
  The formula is exact for any shape, but for D < T the last term is a subtraction, so forced
  batch-space calls in that regime clip round-off below 0 (`sphere_loss` never takes that path).
Gram products use HIGHEST matmul precision so accelerators do not drop to TF32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from sphere_rl.config import RegConfig
from sphere_rl.diagnostics.spectral import (
    phi_effective_rank_jnp,
    routing_weighted_expert_features,
    routing_weighted_features,
)
from sphere_rl.nets.outputs import Features
from sphere_rl.regularizers.base import Info, Regularizer

PLACEMENTS = ("last", "all")
FORMS = ("concat", "per_expert")
FACTORS = ("forward", "gradient")
SCALES = ("raw", "trace")
_TRACE_EPS = 1e-12
"""Keeps `trace_scaled` finite at Phi = 0 (Tr A is a mean of squared activations: O(1) in a live layer)."""
_HIGHEST = jax.lax.Precision.HIGHEST


def sphere_loss_feature_space(phi: jax.Array) -> jax.Array:
    """L(Phi) through the D x D matrix A = Phi^T Phi / T."""
    n_rows, n_cols = phi.shape
    a = jnp.matmul(phi.T, phi, precision=_HIGHEST) / n_rows
    mean_eigenvalue = jnp.trace(a) / n_cols
    centred = a - mean_eigenvalue * jnp.eye(n_cols, dtype=a.dtype)
    return jnp.sum(jnp.square(centred))


def sphere_loss_from_gram(gram: jax.Array, n_cols: int) -> jax.Array:
    """L(Phi) from the T x T inner products Phi Phi^T (unnormalised) and the width D of Phi."""
    n_rows = gram.shape[0]
    g = gram / n_rows
    mean_eigenvalue = jnp.trace(g) / n_cols
    centred = g - mean_eigenvalue * jnp.eye(n_rows, dtype=g.dtype)
    value = jnp.sum(jnp.square(centred)) + (n_cols - n_rows) * jnp.square(mean_eigenvalue)
    return jnp.maximum(value, 0.0)  # only D < T (not the intended regime) subtracts; clip its round-off


def sphere_loss_batch_space(phi: jax.Array) -> jax.Array:
    """L(Phi) through the T x T matrix G = Phi Phi^T / T (cheaper when D > T)."""
    return sphere_loss_from_gram(jnp.matmul(phi, phi.T, precision=_HIGHEST), phi.shape[1])


def assignment_gram(features: Features, layer: int) -> jax.Array:
    """Phi Phi^T (T x T) of the concatenated routing-weighted features, from sparse dispatch's assignments.

    Two states' routed features meet only where they share an expert, so with Psi = g * h per
    assignment (T, k, H): (Phi Phi^T)[b, c] = sum over slot pairs (j, i) with the same expert of
    <Psi[b, j], Psi[c, i]>, plus the shared experts' (gate 1) inner products. This costs
    (T k)^2 H instead of T^2 E H and never builds the (T, E H) matrix Phi.
    """
    assigned = features.assignments
    psi = assigned.hidden[layer] * assigned.gates[..., None].astype(assigned.hidden[layer].dtype)
    same_expert = assigned.index[:, :, None, None] == assigned.index[None, None, :, :]  # (T, k, T, k)
    products = jnp.einsum("bjh,cih->bjci", psi, psi, precision=_HIGHEST)
    gram = jnp.sum(jnp.where(same_expert, products, 0.0), axis=(1, 3))
    if features.n_shared:
        shared = features.hidden[layer][: features.n_shared]
        gram = gram + jnp.einsum("sbh,sch->bc", shared, shared, precision=_HIGHEST)
    return gram


def sphere_loss(phi: jax.Array) -> jax.Array:
    """L(Phi) for Phi (T, D), in feature space when D <= T, else in batch space (as the official code)."""
    n_rows, n_cols = phi.shape
    return sphere_loss_feature_space(phi) if n_cols <= n_rows else sphere_loss_batch_space(phi)


def trace_scaled(loss: jax.Array, trace: jax.Array) -> jax.Array:
    """L / (Tr A)^2 = ||A / Tr A - I / D||_F^2 (`reg.scale=trace`): the loss of the spectrum's shape alone,
    unchanged when Phi is multiplied by a constant (the raw L is multiplied by its 4th power, so all-zero
    features minimise it). Zero, with a zero gradient, when Phi is zero."""
    return loss / (jnp.square(trace) + _TRACE_EPS)


def scaled_sphere_loss(phi: jax.Array, scale: str = "raw") -> jax.Array:
    """`sphere_loss`, divided by (Tr A)^2 with `scale='trace'`."""
    loss = sphere_loss(phi)
    if scale == "raw":
        return loss
    return trace_scaled(loss, jnp.sum(jnp.square(phi)) / phi.shape[0])


def routing_loss(gates: jax.Array) -> jax.Array:
    """Routing penalty on router weights G (T, E): (||G^T G / T||_F^2 - Tr(G^T G / T)^2 / E) / E.

    The official `sphere_output_loss`; it is applied to the top-k-masked gates (zeros outside each
    state's top-k), see `routed_gates`.
    """
    return sphere_loss(gates) / gates.shape[-1]


def routed_gates(features: Features) -> jax.Array | None:
    """(T, E_routed) the router's mixture weights: zero outside each state's top-k (the softmax for a
    Dense-MoE router); DS-MoE's always-on shared experts are left out. None without a router."""
    if features.probs is None:
        return None
    return features.gates[:, features.n_shared:]


def layer_loss(features: Features, layer: int, form: str, scale: str = "raw") -> jax.Array:
    """SPHERE loss of one hidden layer: on the concatenated Phi, or summed over experts (each expert's
    loss scaled by its own trace with `scale='trace'`)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if form == "concat":
        n_rows = features.gates.shape[0]
        n_cols = features.hidden[layer].shape[0] * features.hidden[layer].shape[-1]
        if features.assignments is not None and n_cols > n_rows:
            gram = assignment_gram(features, layer)
            loss = sphere_loss_from_gram(gram, n_cols)
            return loss if scale == "raw" else trace_scaled(loss, jnp.trace(gram) / n_rows)
        return scaled_sphere_loss(routing_weighted_features(features, layer), scale)
    if form == "per_expert":
        per_expert = jax.vmap(lambda phi: scaled_sphere_loss(phi, scale))
        return jnp.sum(per_expert(routing_weighted_expert_features(features, layer)))
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")


def feature_loss(features: Features, placement: str = "last", form: str = "concat", scale: str = "raw") -> jax.Array:
    """SPHERE feature term: last hidden layer, or the sum over all hidden layers."""
    if placement == "last":
        return layer_loss(features, -1, form, scale)
    if placement == "all":
        return sum(layer_loss(features, layer, form, scale) for layer in range(len(features.hidden)))
    raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")


def head_kernel(params: Any) -> jax.Array:
    """(E, H_in, A) the output layer's kernel of every expert (an MLP's head as E = 1) in a network's params."""
    p = params["params"]
    if "moe" in p:
        return p["moe"]["experts"]["head"]["kernel"]
    head = p["mean_head"] if "mean_head" in p else p["value_head"]
    return head["kernel"][None]


def gradient_factor(features: Features, kernel: jax.Array, activation: str) -> jax.Array:
    """(E, T, A, H) the routing-weighted backpropagated factor d f_a / d z_{e,i}: f the network's output
    (the gate-weighted sum of the experts' linear heads), z_e expert e's last hidden pre-activation (the
    input of its activation, after LayerNorm when there is one). With h = act(z) and W_e the head kernel:
    g_e(x) * W_e[i, a] * act'(z_i), act' read from h: relu 1[h > 0], tanh 1 - h^2; crelu (h = [relu(z),
    relu(-z)]) W_e[i, a] 1[z_i > 0] - W_e[H + i, a] 1[z_i < 0]. Computed from the forward pass, so its
    gradient needs no second derivative of the network (nor of sparse dispatch's custom VJP)."""
    hidden = features.hidden[-1]  # (E, T, H_out)
    gates = features.gates.T.astype(hidden.dtype)  # (E, T)
    w = jnp.swapaxes(kernel, 1, 2)[:, None]  # (E, 1, A, H_in)
    if activation == "crelu":
        width = hidden.shape[-1] // 2
        pos, neg = (hidden[..., :width] > 0), (hidden[..., width:] > 0)
        factor = w[..., :width] * pos[:, :, None, :] - w[..., width:] * neg[:, :, None, :]
    elif activation == "relu":
        factor = w * (hidden > 0)[:, :, None, :]
    elif activation == "tanh":
        factor = w * (1.0 - jnp.square(hidden))[:, :, None, :]
    else:
        raise ValueError(f"gradient factor: unknown activation {activation!r}")
    return gates[:, :, None, None] * factor


def gradient_factor_loss(features: Features, kernel: jax.Array, activation: str, form: str,
                         scale: str = "raw") -> jax.Array:
    """SPHERE's penalty on the gradient factor: rows are (state, action output) pairs, columns the
    concatenated (expert, unit) pairs: Psi (T A, E H), L(Psi) as for Phi (`concat`), or summed over experts
    of each expert's (T A, H) block (`per_expert`)."""
    psi = gradient_factor(features, kernel, activation)  # (E, T, A, H)
    n_experts, batch, n_out, width = psi.shape
    if form == "concat":
        return scaled_sphere_loss(jnp.transpose(psi, (1, 2, 0, 3)).reshape(batch * n_out, n_experts * width), scale)
    if form == "per_expert":
        per_expert = jax.vmap(lambda block: scaled_sphere_loss(block, scale))
        return jnp.sum(per_expert(psi.reshape(n_experts, batch * n_out, width)))
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")


@dataclass(frozen=True)
class SphereRegularizer(Regularizer):
    """The SPHERE penalty on a network's routing-weighted expert features, as unweighted terms.

    Terms: `feature` = feature_loss(placement, form) with coefficient `coef`, and, when
    `routing_coef` > 0 and the network has a router, `routing` = routing_loss of the top-k-masked
    gates with coefficient `routing_coef` (weighted on its own, like the official
    `sphere_gating_ratio`). Info scalars (no gradient): `sphere_feature`, `sphere_routing` (0 without
    a router) and, with `log_proxy_rank`, `proxy_erank` = r_e(A) of the last hidden layer on the
    minibatch (an eigendecomposition per minibatch step costs more than the penalty itself, so it is
    off; the runner logs r_e(A) on probe states instead).
    """

    placement: str = "last"
    form: str = "concat"
    coef: float = 0.05
    routing_coef: float = 0.0
    log_proxy_rank: bool = False
    factor: str = "forward"
    """`forward`: Phi, the expert features (the paper's SPHERE); `gradient`: Psi, the backpropagated factor
    (the paper's gradient-factor ablation as we read it, SPEC §3; `gradient_factor`)."""
    activation: str = "relu"
    """The network's hidden activation (the gradient factor needs its derivative)."""
    scale: str = "raw"
    """`raw`: the paper's L; `trace`: L / (Tr A)^2, scale-invariant (`trace_scaled`; not the paper's)."""
    name: str = "sphere"

    def __post_init__(self) -> None:
        if self.factor not in FACTORS:
            raise ValueError(f"factor must be one of {FACTORS}, got {self.factor!r}")
        if self.factor == "gradient" and self.placement != "last":
            raise ValueError("the gradient factor is defined on the last hidden layer only (placement='last')")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        if self.coef < 0 or self.routing_coef < 0:
            raise ValueError(f"coef and routing_coef must be >= 0, got {self.coef}, {self.routing_coef}")

    @property
    def coefs(self) -> dict[str, float]:
        return {"feature": self.coef, "routing": self.routing_coef}

    def penalty(self, out: Any, params: Any, state: Any = None) -> tuple[dict[str, jax.Array], Info]:
        del state
        features = out.features
        if self.factor == "gradient":
            terms = {"feature": gradient_factor_loss(features, head_kernel(params), self.activation, self.form,
                                                     self.scale)}
        else:
            terms = {"feature": feature_loss(features, self.placement, self.form, self.scale)}
        gates = routed_gates(features)
        routing = routing_loss(gates) if gates is not None else jnp.zeros((), terms["feature"].dtype)
        if self.routing_coef > 0 and gates is not None:
            terms["routing"] = routing
        info: Info = {
            "sphere_feature": jax.lax.stop_gradient(terms["feature"]),
            "sphere_routing": jax.lax.stop_gradient(routing),
        }
        if self.log_proxy_rank:
            phi = jax.lax.stop_gradient(routing_weighted_features(features, -1))
            info["proxy_erank"] = phi_effective_rank_jnp(phi)
        return terms, info


def build(reg_cfg: RegConfig) -> SphereRegularizer:
    return SphereRegularizer(placement=reg_cfg.placement, form=reg_cfg.form, coef=reg_cfg.resolved_coef,
                             routing_coef=reg_cfg.routing_coef, factor=reg_cfg.factor, scale=reg_cfg.scale)
