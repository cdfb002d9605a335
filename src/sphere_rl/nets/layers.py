"""Building blocks shared by every network: activations, initialisers, dense and expert-stacked layers."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sphere_rl.nets.grouped import grouped_matmul

Initializer = Callable[..., jax.Array]

def crelu(x: jax.Array) -> jax.Array:
    """Concatenated ReLU [ReLU(x), ReLU(-x)] along the feature axis: twice the width (Shang et al. 2016)."""
    return jnp.concatenate([nn.relu(x), nn.relu(-x)], axis=-1)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {"relu": nn.relu, "tanh": jnp.tanh, "crelu": crelu}
"""Hidden activations. `crelu` doubles each hidden layer's output width (the next layer reads 2 H inputs)."""

LAYER_NORM_EPS = 1e-6
"""Epsilon of every LayerNorm (flax's default, as the official SPHERE code's `nn.LayerNorm()`)."""

HIDDEN_GAIN = math.sqrt(2.0)
"""Orthogonal gain of every hidden layer (experts, dense MLPs, gating MLP)."""
POLICY_HEAD_GAIN = 0.01
"""Orthogonal gain of action-mean heads: the initial policy mean is close to 0."""
VALUE_HEAD_GAIN = 1.0
"""Orthogonal gain of value heads."""
GATE_HEAD_GAIN = 0.01
"""Orthogonal gain of the router's logit layer: logits start near 0, so routing starts near uniform."""


INITS = ("official", "orthogonal")
"""Weight-initialisation schemes (`net.init`). `official`: Flax's `nn.Dense` default, LeCun-normal
kernels (truncated normal, variance 1 / fan_in) and zero biases, every layer including the heads (the
official SPHERE code; SBX's `ortho_init` is off there). `orthogonal`: orthogonal kernels with the
per-role gains above, zero biases."""


def lecun_normal_stacked() -> Initializer:
    """LeCun-normal for an (E, in, out) kernel: fan_in = in for each expert (the leading axis is a batch
    axis), as Flax's default `nn.Dense` init gives every expert of an `nn.vmap`-ed stack."""
    return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", batch_axis=(0,))


def kernel_init(init: str, gain: float, stacked: bool = False) -> Initializer:
    """The kernel initialiser of scheme `init` for a layer whose orthogonal gain would be `gain`."""
    if init == "official":
        return lecun_normal_stacked() if stacked else nn.initializers.lecun_normal()
    if init == "orthogonal":
        return stacked_orthogonal(gain) if stacked else orthogonal(gain)
    raise ValueError(f"unknown init {init!r}; choose one of {INITS}")


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """The hidden activation called `name` (`relu` or `tanh`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def orthogonal(gain: float) -> Initializer:
    """Orthogonal initialiser for one (in, out) kernel."""
    return nn.initializers.orthogonal(scale=gain)


def stacked_orthogonal(gain: float) -> Initializer:
    """Initialiser for an (E, in, out) kernel: E independent orthogonal matrices, one key per expert.

    (`nn.initializers.orthogonal` alone would flatten the leading axes into one big matrix, so
    experts would not be independent draws.) The experts are drawn in a Python loop of unbatched
    QRs rather than with `jax.vmap`: on this jaxlib (0.10.2, CPU) a jitted init holding several
    vmapped (batched) QRs deadlocked on a 2-core machine.
    """
    single = nn.initializers.orthogonal(scale=gain)

    def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
        n_stack, *matrix_shape = shape
        keys = jax.random.split(key, n_stack)
        return jnp.stack([single(keys[i], tuple(matrix_shape), dtype) for i in range(n_stack)])

    return init


def dense(features: int, gain: float, name: str | None = None, init: str = "orthogonal") -> nn.Dense:
    """A Dense layer with zero bias and the `init` scheme's kernel (orthogonal(gain) or LeCun normal)."""
    return nn.Dense(features, kernel_init=kernel_init(init, gain), bias_init=nn.initializers.zeros, name=name)


class StackedDense(nn.Module):
    """`n_stack` independent Dense layers evaluated at once in the (E, B, features) layout.

    The input is either shared by all members, shape (B, in) (`'bi,eio->ebo'`), or one slice per
    member, shape (E, B, in) (`'ebi,eio->ebo'`). Parameters: `kernel` (E, in, out), `bias` (E, out).
    `members=(start, stop)` evaluates only those members (the parameters keep all `n_stack`).
    With `groups=(group_sizes, row_member)` the input is instead rows (R, in) sorted by member,
    `group_sizes[m]` of them for member m, and the output is (R, features): each row through its
    own member only (`grouped_matmul`; sparse expert dispatch).
    """

    n_stack: int
    features: int
    gain: float
    init_scheme: str = "orthogonal"

    @nn.compact
    def __call__(self, x: jax.Array, members: tuple[int, int] | None = None,
                 groups: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        in_dim = x.shape[-1]
        kernel = self.param("kernel", kernel_init(self.init_scheme, self.gain, stacked=True), (self.n_stack, in_dim, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.n_stack, self.features))
        if members is not None:
            kernel, bias = kernel[members[0]:members[1]], bias[members[0]:members[1]]
        if groups is not None:
            group_sizes, row_member = groups
            return grouped_matmul(x, kernel, group_sizes) + bias[row_member]
        if x.ndim == 2:
            y = jnp.einsum("bi,eio->ebo", x, kernel)
        else:
            y = jnp.einsum("ebi,eio->ebo", x, kernel)
        return y + bias[:, None, :]


class StackedLayerNorm(nn.Module):
    """LayerNorm over the feature axis with a scale and bias per stack member: `scale`, `bias` (E, H).

    Inputs as `StackedDense`'s outputs: (E, B, H), or rows (R, H) with `groups` (each row normalised with
    its own member's scale and bias); `members=(start, stop)` uses those members' parameters."""

    n_stack: int
    epsilon: float = LAYER_NORM_EPS

    @nn.compact
    def __call__(self, x: jax.Array, members: tuple[int, int] | None = None,
                 groups: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        width = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (self.n_stack, width))
        bias = self.param("bias", nn.initializers.zeros, (self.n_stack, width))
        if members is not None:
            scale, bias = scale[members[0]:members[1]], bias[members[0]:members[1]]
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        normed = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        if groups is not None:
            _, row_member = groups
            return normed * scale[row_member] + bias[row_member]
        return normed * scale[:, None, :] + bias[:, None, :]


class StackedDiagonal(nn.Module):
    """A learnable per-unit affine map y = x * scale + bias (Parseval's diagonal layer, `DiagLinear` in the
    official code: scale 1, bias 0 at initialisation), one per stack member: `scale`, `bias` (E, H). Inputs as
    `StackedLayerNorm`'s: (E, B, H), (B, H) with `n_stack=1` (an MLP), or rows (R, H) with `groups`."""

    n_stack: int

    @nn.compact
    def __call__(self, x: jax.Array, members: tuple[int, int] | None = None,
                 groups: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        width = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (self.n_stack, width))
        bias = self.param("bias", nn.initializers.zeros, (self.n_stack, width))
        if members is not None:
            scale, bias = scale[members[0]:members[1]], bias[members[0]:members[1]]
        if groups is not None:
            _, row_member = groups
            return x * scale[row_member] + bias[row_member]
        if x.ndim == 2:  # (B, H), one member
            return x * scale[0] + bias[0]
        return x * scale[:, None, :] + bias[:, None, :]


class MLPTrunk(nn.Module):
    """Dense hidden layers; returns every post-activation output, each (B, H_l) ((B, 2 H_l) with CReLU).
    With `layer_norm` a LayerNorm (`ln_<i>`) sits after each Dense, before the activation (the official
    SPHERE code's `use_layer_norm`); with `diag_layer` a diagonal layer (`diag_<i>`) right after the Dense
    (Parseval's `add_diag_layer`)."""

    hidden_sizes: Sequence[int]
    activation: str = "relu"
    init_scheme: str = "orthogonal"
    layer_norm: bool = False
    diag_layer: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        act = activation_fn(self.activation)
        hidden = []
        for i, width in enumerate(self.hidden_sizes):
            x = dense(width, HIDDEN_GAIN, name=f"dense_{i}", init=self.init_scheme)(x)
            if self.diag_layer:
                x = StackedDiagonal(1, name=f"diag_{i}")(x)
            if self.layer_norm:
                x = nn.LayerNorm(epsilon=LAYER_NORM_EPS, name=f"ln_{i}")(x)
            x = act(x)
            hidden.append(x)
        return tuple(hidden)


class StackedMLP(nn.Module):
    """`n_stack` independent MLPs (experts) with a linear head each, evaluated densely.

    Returns `(hidden, out)`: hidden is a tuple with one (E, B, H_l) array per hidden layer
    (post-activation), out is (E, B, out_dim). The input is (B, in) shared by all experts or
    (E, B, in) one batch per expert; `members=(start, stop)` evaluates only those experts.
    With `groups=(group_sizes, row_expert)` the input is rows (R, in) sorted by expert and every
    output is per row, (R, .): each row through its own expert only (see `StackedDense`).
    """

    n_stack: int
    hidden_sizes: Sequence[int]
    out_dim: int
    head_gain: float
    activation: str = "relu"
    init_scheme: str = "orthogonal"
    layer_norm: bool = False
    diag_layer: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, members: tuple[int, int] | None = None,
                 groups: tuple[jax.Array, jax.Array] | None = None) -> tuple[tuple[jax.Array, ...], jax.Array]:
        act = activation_fn(self.activation)
        hidden = []
        for i, width in enumerate(self.hidden_sizes):
            x = StackedDense(self.n_stack, width, HIDDEN_GAIN, self.init_scheme, name=f"layer_{i}")(x, members, groups)
            if self.diag_layer:
                x = StackedDiagonal(self.n_stack, name=f"diag_{i}")(x, members, groups)
            if self.layer_norm:
                x = StackedLayerNorm(self.n_stack, name=f"ln_{i}")(x, members, groups)
            x = act(x)
            hidden.append(x)
        out = StackedDense(self.n_stack, self.out_dim, self.head_gain, self.init_scheme, name="head")(x, members, groups)
        return tuple(hidden), out
