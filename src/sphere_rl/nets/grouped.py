"""Grouped matrix multiply: rows sorted by group (expert), each group times its own weight matrix.

`grouped_matmul(x, w, group_sizes)` computes, for rows `x[start_g : start_g + size_g]` of group g,
`x_rows @ w[g]`: `jax.lax.ragged_dot` semantics. `ragged_dot` lowers to a dense masked product on
CPU (every row times every group's weights), which is exactly the cost sparse dispatch avoids, so
this module computes it with loops over groups and fixed-size row blocks, skipping empty groups:
only `sum_g ceil(size_g / block) * block` rows are multiplied. Loop trip counts are data dependent,
so reverse-mode differentiation comes from a custom VJP whose backward is two more grouped products
(rows: `dy @ w[g]^T`; weights: `x_g^T dy_g`), computed in the same blocked way. Shapes are static,
so one compiled program serves every routing pattern.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

DEFAULT_BLOCK = 16
"""Rows per block. Measured on a 2-core CPU (benchmarks/): 8 and 16 are close, 32 is slower."""


def _padded(x: jax.Array, block: int) -> jax.Array:
    """`x` with `block` zero rows appended, so a block starting at any valid row stays in bounds."""
    return jnp.concatenate([x, jnp.zeros((block,) + x.shape[1:], x.dtype)])


def _group_starts(group_sizes: jax.Array) -> jax.Array:
    return jnp.cumsum(group_sizes) - group_sizes


def _rows_times_weights(x: jax.Array, w: jax.Array, group_sizes: jax.Array, block: int, transpose_w: bool) -> jax.Array:
    """y[rows of g] = x[rows of g] @ w[g] (or @ w[g]^T): the forward product and the input gradient."""
    n_rows = x.shape[0]
    out_dim = w.shape[1] if transpose_w else w.shape[2]
    contract = ((1,), (1,)) if transpose_w else ((1,), (0,))
    x_padded = _padded(x, block)
    starts = _group_starts(group_sizes)

    def group_body(g: jax.Array, y: jax.Array) -> jax.Array:
        w_g = w[g]
        start, size = starts[g], group_sizes[g]

        def block_body(j: jax.Array, y: jax.Array) -> jax.Array:
            row = start + j * block
            x_block = jax.lax.dynamic_slice_in_dim(x_padded, row, block)
            y_block = jax.lax.dot_general(x_block, w_g, (contract, ((), ())))
            keep = (jnp.arange(block) < size - j * block)[:, None]
            previous = jax.lax.dynamic_slice_in_dim(y, row, block)
            return jax.lax.dynamic_update_slice_in_dim(y, jnp.where(keep, y_block, previous), row, 0)

        return jax.lax.fori_loop(0, (size + block - 1) // block, block_body, y)

    y = jax.lax.fori_loop(0, w.shape[0], group_body, jnp.zeros((n_rows + block, out_dim), x.dtype))
    return y[:n_rows]


def _weight_gradient(x: jax.Array, dy: jax.Array, group_sizes: jax.Array, block: int) -> jax.Array:
    """dw[g] = x[rows of g]^T dy[rows of g], zero for empty groups; shape (G, in, out)."""
    x_padded, dy_padded = _padded(x, block), _padded(dy, block)
    starts = _group_starts(group_sizes)

    def group_body(carry: None, g: jax.Array) -> tuple[None, jax.Array]:
        start, size = starts[g], group_sizes[g]

        def block_body(j: jax.Array, acc: jax.Array) -> jax.Array:
            row = start + j * block
            keep = (jnp.arange(block) < size - j * block)[:, None]
            x_block = jnp.where(keep, jax.lax.dynamic_slice_in_dim(x_padded, row, block), 0)
            return acc + x_block.T @ jax.lax.dynamic_slice_in_dim(dy_padded, row, block)

        acc = jnp.zeros((x.shape[1], dy.shape[1]), x.dtype)
        return carry, jax.lax.fori_loop(0, (size + block - 1) // block, block_body, acc)

    return jax.lax.scan(group_body, None, jnp.arange(group_sizes.shape[0]))[1]


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _grouped_matmul(x: jax.Array, w: jax.Array, group_sizes: jax.Array, block: int) -> jax.Array:
    return _rows_times_weights(x, w, group_sizes, block, transpose_w=False)


def _grouped_matmul_fwd(x, w, group_sizes, block):
    return _rows_times_weights(x, w, group_sizes, block, transpose_w=False), (x, w, group_sizes)


def _grouped_matmul_bwd(block, residuals, dy):
    x, w, group_sizes = residuals
    dx = _rows_times_weights(dy, w, group_sizes, block, transpose_w=True)
    dw = _weight_gradient(x, dy, group_sizes, block)
    return dx, dw, None


_grouped_matmul.defvjp(_grouped_matmul_fwd, _grouped_matmul_bwd)


def grouped_matmul(x: jax.Array, w: jax.Array, group_sizes: jax.Array, block: int = DEFAULT_BLOCK) -> jax.Array:
    """Rows `x` (R, in), sorted by group, times their group's weights `w` (G, in, out) -> (R, out).

    `group_sizes` (G,) int, summing to at most R; rows past the last group come out zero.
    Differentiable in `x` and `w`.
    """
    if x.ndim != 2 or w.ndim != 3 or x.shape[1] != w.shape[1]:
        raise ValueError(f"grouped_matmul needs x (R, in) and w (G, in, out); got {x.shape} and {w.shape}")
    if group_sizes.shape != (w.shape[0],):
        raise ValueError(f"group_sizes must have shape ({w.shape[0]},), got {group_sizes.shape}")
    return _grouped_matmul(x, w, group_sizes.astype(jnp.int32), int(block))


@jax.custom_vjp
def permute_rows(x: jax.Array, order: jax.Array, inverse: jax.Array) -> jax.Array:
    """`x[order]` for a permutation `order` with inverse `inverse`; the gradient is a gather, not a scatter-add."""
    return x[order]


def _permute_rows_fwd(x, order, inverse):
    return x[order], (order, inverse)


def _permute_rows_bwd(residuals, dy):
    order, inverse = residuals
    return dy[inverse], None, None


permute_rows.defvjp(_permute_rows_fwd, _permute_rows_bwd)
