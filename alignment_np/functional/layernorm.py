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

Speed: ``mean(g)`` and ``mean(g * xhat)`` are row sums of ``dout * gamma`` and
``(dout * xhat) * gamma``, i.e. matrix-vector products with gamma, and
``dout * xhat`` is needed anyway for ``dgamma``.
"""

from __future__ import annotations

from ..backend import get_array_module

LAYERNORM_EPS = 1e-5


def layernorm_forward(x, gamma, beta, eps: float = LAYERNORM_EPS):
    """out = gamma * (x - mean) / sqrt(var + eps) + beta over the last axis.

    x: (..., D), e.g. (B, T, D). gamma, beta: (D,).
    Returns out (..., D) and cache = (xhat (..., D), rstd (..., 1), gamma).
    """
    xp = get_array_module(x)
    mu = x.mean(axis=-1, keepdims=True)
    xhat = x - mu  # new array: normalised in place below
    var = xp.mean(xhat * xhat, axis=-1, keepdims=True)
    var += eps
    rstd = xp.sqrt(var, out=var)
    xp.divide(1.0, rstd, out=rstd)
    xhat *= rstd
    out = xhat * gamma
    out += beta
    return out, (xhat, rstd, gamma)


def layernorm_backward(dout, cache):
    """Gradients of LayerNorm.

    dout: (..., D). cache: (xhat, rstd, gamma) from ``layernorm_forward``.
    Returns (dx (..., D), dgamma (D,), dbeta (D,)), all new arrays.
    """
    xp = get_array_module(dout)
    xhat, rstd, gamma = cache
    d = gamma.shape[0]
    shape = xhat.shape
    dout2 = dout.reshape(-1, d)  # (N, D), N = B*T
    xhat2 = xhat.reshape(-1, d)
    dout_xhat = dout2 * xhat2  # (N, D)
    dgamma = dout_xhat.sum(axis=0)
    dbeta = dout2.sum(axis=0)
    mean_g = xp.matmul(dout2, gamma)  # (N,)  = sum(g) per row
    mean_g /= d
    mean_gx = xp.matmul(dout_xhat, gamma)  # (N,) = sum(g * xhat) per row
    mean_gx /= d
    dx = dout2 * gamma  # g, a new array
    dx -= mean_g[:, None]
    tmp = xp.multiply(xhat2, mean_gx[:, None], out=dout_xhat)  # reuse our buffer
    dx -= tmp
    dx *= rstd.reshape(-1, 1)
    return dx.reshape(shape), dgamma, dbeta
