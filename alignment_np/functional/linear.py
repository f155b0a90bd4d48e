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
copies for ``X.T @ G``.
"""

from __future__ import annotations

from ..backend import get_array_module


def linear_forward(x, w, b=None):
    """out = x @ w + b over the last axis of x.

    x: (..., Din) e.g. (B, T, D). w: (Din, Dout). b: (Dout,) or None.
    Returns out (..., Dout) and cache = (x, w, has_bias).
    """
    xp = get_array_module(x)
    d_in, d_out = w.shape
    x2 = x.reshape(-1, d_in)  # a view when x is contiguous: no copy
    out = xp.matmul(x2, w)  # (B*T, Dout), a new array: safe to add into
    if b is not None:
        out += b
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
    dx = xp.matmul(g, w.T).reshape(x.shape)
    dw = xp.matmul(x.reshape(-1, d_in).T, g)
    db = g.sum(axis=0) if has_bias else None
    return dx, dw, db
