"""Layer normalisation over the last axis (Ba, Kiros & Hinton 2016, Sec. 3).

Forward, for each row x of width D (one token's features):

    mu   = mean(x)
    rstd = 1 / sqrt(mean((x - mu)^2) + eps)      (the biased variance, as torch)
    xhat = (x - mu) * rstd
    out  = gamma * xhat + beta

Backward (derived in llm.c's ``doc/layernorm/layernorm.md``). With
g = dout * gamma, the gradient through the normalisation is

    dx = rstd * (g - mean(g) - xhat * mean(g * xhat))

and ``dgamma = sum(dout * xhat)``, ``dbeta = sum(dout)`` over every row.

What to cache: ``xhat`` and ``rstd``. Keeping ``xhat`` costs one (B, T, D)
array but saves recomputing the normalisation in backward; ``mu`` is not
needed at all, because the formula above is written in terms of ``xhat``.

Speed: every row sum here is a matrix-vector product (``x @ (1/D)``,
``dout @ gamma``, ``ones @ dout``): BLAS runs it on all cores and reads each
row once, ~6x faster than NumPy's single-threaded ``sum(axis=-1)`` on rows of
a few hundred numbers. ``mean(g)`` and ``mean(g * xhat)`` are the row sums of
``dout * gamma`` and ``(dout * xhat) * gamma``, i.e. ``dout @ gamma`` and
``(dout * xhat) @ gamma``, and ``dout * xhat`` is needed anyway for
``dgamma``. The (N, D) passes left: five in forward, six in backward. They
run on every core, one block of rows per thread (``functional/parallel.py``:
the row sums stay on BLAS, outside the blocks), each on an array this kernel
allocated (``out=`` and in-place operators) from
``workspace.empty``, which reuses the previous step's memory.
"""

from __future__ import annotations

from ..backend import get_array_module
from .linear import rowwise
from . import parallel
from .workspace import empty

LAYERNORM_EPS = 1e-5


def layernorm_forward(x, gamma, beta, eps: float = LAYERNORM_EPS):
    """out = gamma * (x - mean) / sqrt(var + eps) + beta over the last axis.

    x: (..., D), e.g. (B, T, D). gamma, beta: (D,).
    Returns out (..., D) and cache = (xhat (..., D), rstd (..., 1), gamma).
    """
    xp = get_array_module(x)
    d = gamma.shape[0]
    x2 = x.reshape(-1, d)  # (N, D), N = B*T: a view when x is contiguous
    n = x2.shape[0]
    inv_d = xp.full(d, 1.0 / d, dtype=x.dtype)
    xhat = empty((n, d), x.dtype, xp)  # x - mu, normalised in place below
    out = empty((n, d), x.dtype, xp)  # (x - mu)^2, then ``out``
    rstd = xp.empty((n, 1), dtype=x.dtype)

    def block(i):  # rows i, on one thread: see functional/parallel.py
        xhat_i, out_i, rstd_i = xhat[i], out[i], rstd[i, 0]  # views: in-place operators write through
        mu = xp.matmul(x2[i], inv_d)[:, None]  # row means, on BLAS
        xp.subtract(x2[i], mu, out=xhat_i)
        xp.multiply(xhat_i, xhat_i, out=out_i)
        xp.matmul(out_i, inv_d, out=rstd_i)  # biased variance
        rstd_i += eps
        xp.sqrt(rstd_i, out=rstd_i)
        xp.divide(1.0, rstd_i, out=rstd_i)
        xhat_i *= rstd[i]
        rowwise(xp.multiply, xhat_i, gamma, out_i)  # out = xhat * gamma
        rowwise(xp.add, out_i, beta, out_i)  # out += beta

    parallel.for_blocks(block, n, d, xp)
    lead = x.shape[:-1]
    return out.reshape(x.shape), (xhat.reshape(x.shape), rstd.reshape(*lead, 1), gamma)


def layernorm_backward(dout, cache):
    """Gradients of LayerNorm.

    dout: (..., D). cache: (xhat, rstd, gamma) from ``layernorm_forward``.
    Returns (dx (..., D), dgamma (D,), dbeta (D,)), all new arrays.
    """
    xp = get_array_module(dout)
    xhat, rstd, gamma = cache
    d = gamma.shape[0]
    dout2 = dout.reshape(-1, d)  # (N, D), N = B*T
    xhat2 = xhat.reshape(-1, d)
    rstd2 = rstd.reshape(-1, 1)
    n = dout2.shape[0]
    ones = xp.ones(n, dtype=dout.dtype)
    dout_xhat = empty((n, d), dout.dtype, xp)  # (N, D)
    dx = empty((n, d), dout.dtype, xp)

    def block(i):  # rows i, on one thread: see functional/parallel.py
        dx_i, dout_xhat_i = dx[i], dout_xhat[i]  # views: in-place operators write through
        xp.multiply(dout2[i], xhat2[i], out=dout_xhat_i)
        mean_g = xp.matmul(dout2[i], gamma)[:, None]  # = sum(g) per row, on BLAS
        mean_g /= d
        mean_gx = xp.matmul(dout_xhat_i, gamma)[:, None]  # = sum(g * xhat) per row
        mean_gx /= d
        rowwise(xp.multiply, dout2[i], gamma, dx_i)  # g = dout * gamma
        dx_i -= mean_g
        dx_i -= xp.multiply(xhat2[i], mean_gx, out=empty(dx_i.shape, dx_i.dtype, xp))
        dx_i *= rstd2[i]

    parallel.for_blocks(block, n, d, xp)
    # the column sums over every row, on BLAS after the blocks (a reduction across them)
    dgamma = parallel.matmul(ones, dout_xhat, xp.empty(d, dtype=dout.dtype))  # split by columns
    dbeta = parallel.matmul(ones, dout2, xp.empty(d, dtype=dout.dtype))
    return dx.reshape(xhat.shape), dgamma, dbeta
