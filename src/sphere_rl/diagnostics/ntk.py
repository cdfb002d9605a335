"""Empirical NTK of a policy's action mean: an exact generic path for any function, and an exact
structured fast path for networks built from dense layers (all of ours).

Definitions (SPEC §2). f(x) in R^A is the action mean on a state x, J_a(x) = ∂f_a(x)/∂θ.
- `reduction="trace"`: K[i, j] = Σ_a <J_a(x_i), J_a(x_j)>, an N×N matrix.
- `reduction="full"`: K[i·A + a, j·A + b] = <J_a(x_i), J_b(x_j)>, an (N·A)×(N·A) matrix (state-major).
  The trace of its (i, j) A×A block is the `trace` entry K[i, j].
Both are returned as float64 numpy arrays. The function must treat states independently (no
batch statistics), as every policy network does: Jacobians are taken per state.

Generic path (`empirical_ntk`): per-state Jacobians J (c, A, P) for chunks of c states, contracted
chunk pair by chunk pair, so at most two chunks are alive (`memory_budget` bytes). Cost
O(N²·A·P) plus recomputing Jacobians per chunk pair.

Structured path (`structured_ntk`): a dense layer y = x W + b contributes
  <∂f_a(x_i)/∂(W, b), ∂f_b(x_j)/∂(W, b)> = (x_i·x_j + 1) · (δ_a(x_i)·δ_b(x_j)),
with δ_a(x) = ∂f_a/∂y the output gradient of the layer. Summing over layers (and over the experts of
a stacked layer) gives K exactly from one forward pass, A backward passes to the layer outputs and
N×N products, never the N×P Jacobian. Rows of states an expert does not receive (zero gate) have
δ = 0 and are skipped, so each Top-K expert's product covers only its ~N·k/E routed states.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sphere_rl.diagnostics.spectral import effective_rank_with_report, top_eigenvalues
from sphere_rl.nets.layers import StackedDense
from sphere_rl.nets.moe import with_dense_dispatch

REDUCTIONS = ("trace", "full")
DEFAULT_MEMORY_BUDGET = 2 * 1024**3
"""Bytes the generic path may spend on Jacobian chunks, and the structured path on output gradients."""

ApplyFn = Callable[[Any, jax.Array], jax.Array]


class UnsupportedNetworkError(ValueError):
    """The structured path cannot account for every parameter of this network: use the generic path."""


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _highest_einsum(spec: str, *operands: jax.Array) -> jax.Array:
    return jnp.einsum(spec, *operands, precision=jax.lax.Precision.HIGHEST)


# =====================================================================================================
# generic path
# =====================================================================================================
def _param_count_and_itemsize(params: Any) -> tuple[int, int]:
    leaves = [jnp.asarray(x) for x in jax.tree_util.tree_leaves(params)]
    count = sum(int(np.prod(x.shape)) for x in leaves)
    itemsize = max((x.dtype.itemsize for x in leaves), default=4)
    return count, itemsize


def generic_chunk_size(n_states: int, out_dim: int, n_params: int, itemsize: int, memory_budget: int) -> int:
    """States per Jacobian chunk so that two chunks (c·A·P values each) fit in `memory_budget` bytes."""
    per_state = max(1, out_dim * n_params * itemsize)
    return int(max(1, min(n_states, memory_budget // (2 * per_state))))


def empirical_ntk(
    apply_fn: ApplyFn,
    params: Any,
    obs: jax.Array,
    *,
    reduction: str = "trace",
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> np.ndarray:
    """Exact empirical NTK of `apply_fn(params, obs) -> (N, A)` on the N states `obs` (generic path).

    `chunk_size` states per Jacobian chunk; None picks the largest chunk whose two live Jacobian
    chunks fit in `memory_budget` bytes (the whole set at once when it fits). Products are taken in
    the parameters' dtype at the highest matmul precision and returned as float64.
    """
    _check_reduction(reduction)
    obs = jnp.asarray(obs)
    n_states = obs.shape[0]
    out_shape = jax.eval_shape(apply_fn, params, obs[:1]).shape
    if len(out_shape) != 2:
        raise ValueError(f"apply_fn must return an (N, A) array, got shape {out_shape} for one state")
    out_dim = out_shape[1]
    n_params, itemsize = _param_count_and_itemsize(params)
    if chunk_size is None:
        chunk_size = generic_chunk_size(n_states, out_dim, n_params, itemsize, memory_budget)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chunk_size = min(chunk_size, n_states)

    def one_state(p: Any, x: jax.Array) -> jax.Array:
        return apply_fn(p, x[None])[0]

    @jax.jit
    def jacobian_chunk(p: Any, x: jax.Array) -> list[jax.Array]:
        jac = jax.vmap(jax.jacrev(one_state), in_axes=(None, 0))(p, x)
        return [leaf.reshape(leaf.shape[0], out_dim, -1) for leaf in jax.tree_util.tree_leaves(jac)]

    spec = "iap,jap->ij" if reduction == "trace" else "iap,jbp->iajb"

    @jax.jit
    def block(jac_i: list[jax.Array], jac_j: list[jax.Array]) -> jax.Array:
        return sum(_highest_einsum(spec, a, b) for a, b in zip(jac_i, jac_j))

    # Fixed chunk shapes (the last chunk is padded with state 0) so each function compiles once.
    n_chunks = math.ceil(n_states / chunk_size)
    padded = jnp.concatenate([obs, jnp.repeat(obs[:1], n_chunks * chunk_size - n_states, axis=0)])
    chunks = [padded[c * chunk_size:(c + 1) * chunk_size] for c in range(n_chunks)]
    size = n_states if reduction == "trace" else n_states * out_dim
    kernel = np.zeros((size, size), np.float64)

    def rows(c: int) -> slice:
        lo, hi = c * chunk_size, min((c + 1) * chunk_size, n_states)
        return slice(lo * (1 if reduction == "trace" else out_dim), hi * (1 if reduction == "trace" else out_dim))

    for ci in range(n_chunks):
        jac_i = jacobian_chunk(params, chunks[ci])
        for cj in range(ci, n_chunks):
            jac_j = jac_i if cj == ci else jacobian_chunk(params, chunks[cj])
            value = np.asarray(block(jac_i, jac_j), np.float64)
            if reduction == "full":
                value = value.reshape(chunk_size * out_dim, chunk_size * out_dim)
            ri, rj = rows(ci), rows(cj)
            value = value[: ri.stop - ri.start, : rj.stop - rj.start]
            kernel[ri, rj] = value
            kernel[rj, ri] = value.T
    return kernel


# =====================================================================================================
# structured path
# =====================================================================================================
@dataclass(frozen=True)
class _Tap:
    """One dense layer seen during a forward pass."""

    path: tuple[str, ...]
    stacked: bool
    """StackedDense: outputs (E, N, out)."""
    shared_input: bool
    """StackedDense fed one (N, in) input for all members (else one (E, N, in) slice per member)."""
    has_bias: bool
    out_shape: tuple[int, ...]
    """The layer's output shape on the traced batch: (N, out) or (E, N, out)."""
    out_dtype: str

    @property
    def name(self) -> str:
        return "/".join(self.path)


_TAPPED_LAYERS = (nn.Dense, StackedDense)


def _trace_layers(module: nn.Module, variables: Any, obs: jax.Array) -> list[_Tap]:
    """The dense layers a forward pass goes through, in call order (abstract evaluation, no FLOPs)."""
    taps: list[_Tap] = []

    def record(next_fun, args, kwargs, context):
        y = next_fun(*args, **kwargs)
        if context.method_name != "__call__" or not isinstance(context.module, _TAPPED_LAYERS):
            return y
        x = args[0]
        if isinstance(context.module, nn.Dense) and x.ndim != 2:
            raise UnsupportedNetworkError(f"layer {'/'.join(context.module.path)}: the structured NTK needs (N, in) inputs")
        stacked = isinstance(context.module, StackedDense)
        has_bias = stacked or bool(context.module.use_bias)
        taps.append(_Tap(tuple(context.module.path), stacked, stacked and x.ndim == 2, has_bias,
                         tuple(y.shape), jnp.dtype(y.dtype).name))
        return y

    def forward(v: Any, x: jax.Array) -> Any:
        with nn.intercept_methods(record):
            return module.apply(v, x)

    jax.eval_shape(forward, variables, obs)
    return taps


def _check_coverage(taps: list[_Tap], params: Any, output_free: tuple[str, ...]) -> None:
    """Every parameter must belong to exactly one tapped layer, or be declared output-free."""
    paths = [t.path for t in taps]
    repeated = sorted({"/".join(p) for p in paths if paths.count(p) > 1})
    if repeated:
        raise UnsupportedNetworkError(f"layers called more than once (shared weights): {repeated}")
    covered = set(paths)
    uncovered = []
    for key_path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = tuple(str(getattr(k, "key", k)) for k in key_path)
        if names[0] == "params":
            names = names[1:]
        if names[:-1] in covered and names[-1] in ("kernel", "bias"):
            continue
        if names[-1] in output_free:
            continue
        uncovered.append("/".join(names))
    if uncovered:
        raise UnsupportedNetworkError(
            f"the structured NTK handles Dense and StackedDense layers only; parameters {uncovered} are not in one "
            "(use method='generic', or list output-free parameters in `output_free`)"
        )


def _default_output(out: Any) -> jax.Array:
    return out.mean if hasattr(out, "mean") and not isinstance(out, jax.Array) else out


def _layer_gradients_jit(module: nn.Module, output_fn: Callable[[Any], jax.Array], taps: tuple[_Tap, ...],
                         outputs: tuple[int, ...]) -> Callable[[Any, jax.Array], tuple[dict, dict]]:
    """Jitted (variables, obs) -> (layer inputs, output gradients δ_a for a in `outputs`), keyed by layer name."""
    names = [t.name for t in taps]

    def run(variables: Any, obs: jax.Array) -> tuple[dict, dict]:
        zero_taps = {t.name: jnp.zeros(t.out_shape, t.out_dtype) for t in taps}

        def tapped_forward(tap_values: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
            seen_inputs: dict[str, jax.Array] = {}

            def add_tap(next_fun, args, kwargs, context):
                y = next_fun(*args, **kwargs)
                if context.method_name != "__call__" or not isinstance(context.module, _TAPPED_LAYERS):
                    return y
                name = "/".join(context.module.path)
                seen_inputs[name] = args[0]
                return y + tap_values[name]

            with nn.intercept_methods(add_tap):
                out = output_fn(module.apply(variables, obs))
            return out, seen_inputs

        mean, pullback, inputs = jax.vjp(tapped_forward, zero_taps, has_aux=True)
        cotangents = jax.vmap(lambda a: jnp.zeros_like(mean).at[:, a].set(1.0))(jnp.asarray(outputs))
        (deltas,) = jax.vmap(pullback)(cotangents)
        return {n: inputs[n] for n in names}, {n: deltas[n] for n in names}

    return jax.jit(run)


def _live_rows(delta: np.ndarray) -> np.ndarray:
    """States whose output gradient at this layer is not identically zero (e.g. routed to the expert)."""
    return np.flatnonzero(np.any(delta != 0, axis=(0, 2)))


def _input_gram(x: np.ndarray, rows: np.ndarray, has_bias: bool) -> np.ndarray:
    """x xᵀ (+ 1 for the bias) on the given state rows, float64."""
    xr = x[rows].astype(np.float64)
    input_gram = xr @ xr.T
    if has_bias:
        input_gram += 1.0
    return input_gram


def _trace_block(x: np.ndarray, delta: np.ndarray, has_bias: bool, rows: np.ndarray) -> np.ndarray:
    """(n, n) block (x xᵀ + bias) ⊙ Σ_a δ_a δ_aᵀ on the given rows; x (N, in), delta (A, N, out)."""
    flat = np.transpose(delta[:, rows].astype(np.float64), (1, 0, 2)).reshape(rows.size, -1)  # (n, A·out)
    return _input_gram(x, rows, has_bias) * (flat @ flat.T)


def _full_block(x: np.ndarray, d_rows: np.ndarray, d_cols: np.ndarray, has_bias: bool, rows: np.ndarray) -> np.ndarray:
    """(n, A_r, n, A_c) block (x xᵀ + bias)[i, j] · δ_a(x_i)·δ_b(x_j) on the given state rows."""
    dr = np.transpose(d_rows[:, rows].astype(np.float64), (1, 0, 2))  # (n, A_r, out)
    dc = np.transpose(d_cols[:, rows].astype(np.float64), (1, 0, 2))  # (n, A_c, out)
    n, a_r, width = dr.shape
    products = (dr.reshape(n * a_r, width) @ dc.reshape(-1, width).T).reshape(n, a_r, n, dc.shape[1])
    return products * _input_gram(x, rows, has_bias)[:, None, :, None]


def _per_member(tap: _Tap, x: np.ndarray, delta: np.ndarray):
    """(x, δ) per member of a layer: one pair for Dense, one per expert for StackedDense."""
    if not tap.stacked:
        yield x, delta
        return
    for e in range(delta.shape[1]):
        yield (x if tap.shared_input else x[e]), delta[:, e]


def outputs_per_chunk(n_states: int, taps_width: int, itemsize: int, memory_budget: int, out_dim: int) -> int:
    """Outputs whose layer gradients (N × Σ widths values each, twice for the backward pass) fit the budget."""
    per_output = max(1, 2 * n_states * taps_width * itemsize)
    return int(max(1, min(out_dim, memory_budget // per_output)))


def structured_ntk(
    module: nn.Module,
    variables: Any,
    obs: jax.Array,
    *,
    reduction: str = "trace",
    output_fn: Callable[[Any], jax.Array] = _default_output,
    output_free: tuple[str, ...] = ("log_std",),
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> np.ndarray:
    """Exact empirical NTK of a Flax network made of `nn.Dense` / `StackedDense` layers (fast path).

    `output_fn` picks the (N, A) output from what the module returns (default: `.mean` of an
    `ActorOutput`). Parameters named in `output_free` must not influence that output (the
    state-independent `log_std`); any other parameter outside a dense layer raises
    `UnsupportedNetworkError`. `chunk_size` outputs per batch of backward passes (None: as many as
    `memory_budget` allows). Returns float64 numpy, same layout as `empirical_ntk`. MoE networks
    are evaluated with dense dispatch (same function): their expert layers then see all states.
    """
    _check_reduction(reduction)
    module = with_dense_dispatch(module)
    obs = jnp.asarray(obs)
    taps = _trace_layers(module, variables, obs)
    _check_coverage(taps, variables, output_free)
    out = jax.eval_shape(lambda v, x: output_fn(module.apply(v, x)), variables, obs)
    n_states, out_dim = out.shape
    if chunk_size is None:
        width = sum(math.prod(t.out_shape) // n_states for t in taps)
        chunk_size = outputs_per_chunk(n_states, width, jnp.dtype(out.dtype).itemsize, memory_budget, out_dim)
    chunks = [tuple(range(lo, min(lo + chunk_size, out_dim))) for lo in range(0, out_dim, chunk_size)]

    if reduction == "trace":
        kernel = np.zeros((n_states, n_states), np.float64)
        for outputs in chunks:
            inputs, deltas = _gradients_on_host(module, variables, obs, output_fn, taps, outputs)
            for tap in taps:
                for x, delta in _per_member(tap, inputs[tap.name], deltas[tap.name]):
                    rows = _live_rows(delta)
                    if rows.size:
                        kernel[np.ix_(rows, rows)] += _trace_block(x, delta, tap.has_bias, rows)
        return kernel

    kernel4 = np.zeros((n_states, out_dim, n_states, out_dim), np.float64)
    host = [_gradients_on_host(module, variables, obs, output_fn, taps, outputs) for outputs in chunks]
    for ci, rows_out in enumerate(chunks):
        for cj, cols_out in enumerate(chunks):
            inputs, deltas_r = host[ci]
            deltas_c = host[cj][1]
            for tap in taps:
                for (x, d_r), (_, d_c) in zip(_per_member(tap, inputs[tap.name], deltas_r[tap.name]),
                                              _per_member(tap, inputs[tap.name], deltas_c[tap.name])):
                    rows = np.union1d(_live_rows(d_r), _live_rows(d_c))
                    if rows.size:
                        kernel4[np.ix_(rows, rows_out, rows, cols_out)] += _full_block(x, d_r, d_c, tap.has_bias, rows)
    return kernel4.reshape(n_states * out_dim, n_states * out_dim)


@functools.lru_cache(maxsize=32)
def _cached_gradients_fn(module, output_fn, taps, outputs):
    return _layer_gradients_jit(module, output_fn, taps, outputs)


def _gradients_on_host(module, variables, obs, output_fn, taps, outputs):
    """Layer inputs and output gradients as numpy arrays (one compiled function per module and outputs)."""
    inputs, deltas = jax.device_get(_cached_gradients_fn(module, output_fn, tuple(taps), tuple(outputs))(variables, obs))
    return {k: np.asarray(v) for k, v in inputs.items()}, {k: np.asarray(v) for k, v in deltas.items()}


# =====================================================================================================
# spectrum
# =====================================================================================================
@dataclass(frozen=True)
class NTKSpectrum:
    """Eigen-summary of an eNTK (float64)."""

    effective_rank: float
    eigenvalues: np.ndarray
    """All eigenvalues, descending (negative round-off kept as computed)."""
    clipped_fraction: float
    """Negative round-off mass clipped before r_e, relative to the total absolute spectrum."""

    @property
    def trace(self) -> float:
        return float(self.eigenvalues.sum())

    def top(self, k: int = 3) -> np.ndarray:
        """The k largest eigenvalues (clipped at 0; zero-padded)."""
        return top_eigenvalues(self.eigenvalues, k)

    @property
    def zero_tolerance(self) -> float:
        """Eigenvalues at or below this are numerically zero: λ_max · N · eps(float32), numpy's
        `matrix_rank` rule with the precision the kernel was computed in (float32 Jacobians)."""
        lam_max = float(self.eigenvalues.max(initial=0.0))
        return lam_max * self.eigenvalues.size * float(np.finfo(np.float32).eps)

    @property
    def numerical_rank(self) -> int:
        """How many eigenvalues are above :attr:`zero_tolerance`."""
        return int(np.sum(self.eigenvalues > self.zero_tolerance))

    @property
    def min_nonzero(self) -> float:
        """The smallest eigenvalue above :attr:`zero_tolerance` (the λ_min of spectral-plasticity
        readings); NaN for a zero kernel."""
        kept = self.eigenvalues[self.eigenvalues > self.zero_tolerance]
        return float(kept.min()) if kept.size else float("nan")

    @property
    def condition(self) -> float:
        """λ_max / :attr:`min_nonzero`: the condition number of K on its numerical range."""
        lam_min = self.min_nonzero
        return float(self.eigenvalues.max() / lam_min) if np.isfinite(lam_min) else float("nan")


def ntk_spectrum(kernel: np.ndarray) -> NTKSpectrum:
    """Eigenvalues (float64, `eigvalsh` of the symmetrised kernel) and r_e(K)."""
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"kernel must be a square matrix, got shape {kernel.shape}")
    eigenvalues = np.linalg.eigvalsh(0.5 * (kernel + kernel.T))[::-1]
    report = effective_rank_with_report(eigenvalues)
    return NTKSpectrum(report.effective_rank, eigenvalues, report.clipped_fraction)


NTK_METHODS = ("structured", "generic")


def actor_ntk(
    actor: nn.Module,
    actor_params: Any,
    obs: jax.Array,
    *,
    reduction: str = "trace",
    method: str = "structured",
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> np.ndarray:
    """eNTK of one of our actors' action mean: the structured path by default, the generic one on request."""
    if method not in NTK_METHODS:
        raise ValueError(f"method must be one of {NTK_METHODS}, got {method!r}")
    if method == "structured":
        return structured_ntk(actor, actor_params, obs, reduction=reduction, chunk_size=chunk_size,
                              memory_budget=memory_budget)
    return empirical_ntk(lambda p, x: actor.apply(p, x).mean, actor_params, obs, reduction=reduction,
                         chunk_size=chunk_size, memory_budget=memory_budget)
