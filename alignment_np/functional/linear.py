"""The affine (fully connected) layer: ``out = x @ W + b``.

Shapes: x (..., Din), W (Din, Dout), b (Dout,), out (..., Dout). In a
transformer the leading axes are (B, T), so a linear layer is a single 2-D
matrix product on the (B*T, Din) view of x: one large GEMM keeps the BLAS busy,
where B*T small ones (or a 3-D ``matmul``) would not.

Backward (CS231n's ``affine_backward``), with G = dL/dout viewed as (B*T, Dout)
and X = x viewed as (B*T, Din):

    dX = G @ W.T        (B*T, Din)
    dW = X.T @ G        (Din, Dout)    (summed over every token, as W is shared)
    db = sum_rows(G)    (Dout,)

The transposes are free: BLAS reads a transposed operand in place, NumPy never
copies for ``X.T @ G``. The bias gradient's column sums are a product too,
``ones @ G``: BLAS runs it on every core, NumPy's ``G.sum(axis=0)`` on one
(measured 2x faster on (2048, 1024)).

Memory: the output and every gradient come from ``workspace.empty``, so a
training step that runs the same shapes again reuses the same memory instead
of asking the operating system for it (see ``functional/workspace.py``), and
each product is written straight into it (``matmul(..., out=)``): no
temporary.
"""

from __future__ import annotations

from ..backend import get_array_module
from . import parallel
from .workspace import empty

_ROWWISE_WIDTH = 8192  # numbers per inner loop in ``rowwise``
_ROWWISE_MIN_SIZE = 1 << 16  # below this many numbers, the plain broadcast is as fast


def rowwise(ufunc, x, row, out):
    """out = ufunc(x, row) for x (..., D) and a row vector (D,) broadcast over every row.

    The same as ``ufunc(x, row, out=out)``, faster on big arrays: NumPy runs one
    inner loop per row of D numbers, and with D of a few hundred the per-loop
    cost is as large as the arithmetic (adding a bias to a (2048, 1024) array
    takes 2x as long as adding two such arrays). Viewing x as rows of k * D
    numbers against the row repeated k times gives k times fewer, longer
    loops. ``out`` may be x (in place).
    """
    if x.size < _ROWWISE_MIN_SIZE or not (x.flags.c_contiguous and out.flags.c_contiguous):
        return ufunc(x, row, out=out)  # small or strided: the plain broadcast
    xp = get_array_module(x)
    d = row.shape[0]
    n = x.size // d  # rows
    k = 1  # rows per long row: a power of 2 that divides n
    while n % (2 * k) == 0 and 2 * k * d <= _ROWWISE_WIDTH:
        k *= 2
    tiled = xp.empty(k * d, dtype=row.dtype)
    tiled.reshape(k, d)[...] = row  # the row k times (faster than xp.tile)
    ufunc(x.reshape(n // k, k * d), tiled, out=out.reshape(n // k, k * d))
    return out


def linear_forward(x, w, b=None):
    """out = x @ w + b over the last axis of x.

    x: (..., Din) e.g. (B, T, D). w: (Din, Dout). b: (Dout,) or None.
    Returns out (..., Dout) and cache = (x, w, has_bias).
    """
    xp = get_array_module(x)
    d_in, d_out = w.shape
    x2 = x.reshape(-1, d_in)  # a view when x is contiguous: no copy
    out = empty((x2.shape[0], d_out), xp.result_type(x2, w), xp)  # (B*T, Dout): ours to add into

    def block(i):  # rows i, on one thread: see functional/parallel.py
        xp.matmul(x2[i], w, out=out[i])
        if b is not None:
            rowwise(xp.add, out[i], b, out[i])  # out += b

    parallel.for_blocks(block, x2.shape[0], d_in * d_out, xp, parallel.MIN_MATMUL)
    return out.reshape(*x.shape[:-1], d_out), (x, w, b is not None)


def linear_backward(dout, cache):
    """Gradients of ``out = x @ w + b``.

    dout: (..., Dout) upstream gradient dL/dout. cache: from ``linear_forward``.
    Returns (dx (..., Din), dw (Din, Dout), db (Dout,) or None), all new arrays.
    """
    xp = get_array_module(dout)
    x, w, has_bias = cache
    d_in, d_out = w.shape
    g = dout.reshape(-1, d_out)  # (B*T, Dout)
    x2 = x.reshape(-1, d_in)
    dx = parallel.matmul(g, w.T, empty((g.shape[0], d_in), xp.result_type(g, w), xp))
    dw = parallel.matmul(x2.T, g, empty((d_in, d_out), xp.result_type(x2, g), xp))  # rows of dw: columns of X
    db = None
    if has_bias:  # sum_rows(G)
        db = parallel.matmul(xp.ones(g.shape[0], dtype=g.dtype), g, empty((d_out,), g.dtype, xp))
    return dx.reshape(x.shape), dw, db
