"""Numerically stable primitives: logsumexp, log-softmax, logsigmoid, sigmoid, softplus.

Every function here is finite and correct for float32 inputs of magnitude 1e4
(``exp(10000)`` overflows float32 at about 88.7, float64 at about 709). The
tricks are exact identities, not epsilons or clipping:

* ``logsumexp(x) = m + log(sum(exp(x - m)))`` with ``m = max(x)``: every
  exponent is <= 0, and the largest is exactly 0, so the sum lies in [1, n].
* ``logsigmoid(x) = -log(1 + exp(-x)) = -logaddexp(0, -x)``; NumPy's
  ``logaddexp`` already does the max-shift internally.
* ``softplus(x) = log(1 + exp(x)) = logaddexp(0, x)``.
* ``sigmoid(x) = exp(logsigmoid(x))``: the exponent is <= 0, so it never
  overflows, and for very negative ``x`` it underflows gracefully to 0.

Infinities and NaN: a -inf logit (a banned token) is exact everywhere
(probability 0, log-probability -inf, no warning); a row of only -inf has
``logsumexp = -inf`` (the log of an empty sum) and a NaN ``log_softmax``
(there is no distribution to normalise; NumPy warns). A NaN input gives a
NaN output (its whole row for the normalising kernels): these kernels
propagate NaN, never turn it into a number. The tests check each case.

Derivatives used by backward passes:
``d logsigmoid(x)/dx = sigmoid(-x)``, ``d softplus(x)/dx = sigmoid(x)``,
``d sigmoid(x)/dx = sigmoid(x) * sigmoid(-x)``, and for log-softmax
``dx = g - softmax(x) * sum(g)`` along the normalised axis.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .workspace import empty


def logsumexp(x, axis: int = -1, keepdims: bool = False):
    """log(sum(exp(x))) along ``axis``, shifted by the max for stability.

    x: any shape (..., V). Returns (...,) or (..., 1) with ``keepdims``.
    """
    xp = get_array_module(x)
    m = xp.max(x, axis=axis, keepdims=True)
    # A row of all -inf (fully masked) would give m = -inf and -inf - -inf = nan.
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    s = xp.sum(xp.exp(x - m), axis=axis, keepdims=True)
    if xp is np:
        with np.errstate(divide="ignore"):  # log(0) = -inf is the right answer there
            out = xp.log(s) + m
    else:
        out = xp.log(s) + m
    return out if keepdims else xp.squeeze(out, axis=axis)


def log_softmax(x, axis: int = -1):
    """Log-probabilities along ``axis``; same shape as x.

    Computed as ``(x - m) - log(sum(exp(x - m)))`` in that order: the winning
    entry is then ``0 - log(sum)``, accurate to float precision, whereas
    ``x - (m + log(sum))`` cancels to an absolute error of eps * |m| (about
    1e-3 for float32 logits of 1e4).
    """
    xp = get_array_module(x)
    m = xp.max(x, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    if getattr(x, "dtype", None) is None or x.dtype.kind != "f":
        shifted = x - m  # a new array, every entry <= 0
        shifted -= xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))
        return shifted
    # the same, in workspace memory (reused between steps): the result and one temporary
    shifted = xp.subtract(x, m, out=empty(x.shape, x.dtype, xp))  # every entry <= 0
    e = xp.exp(shifted, out=empty(x.shape, x.dtype, xp))
    sums = xp.sum(e, axis=axis, keepdims=True)
    del e
    shifted -= xp.log(sums)
    return shifted


def softmax(x, axis: int = -1):
    """exp(log_softmax(x)); rows sum to 1, same shape as x."""
    xp = get_array_module(x)
    return xp.exp(log_softmax(x, axis=axis))


def log_softmax_backward(dout, probs, axis: int = -1):
    """Backward of ``y = log_softmax(x)``: dx = g - softmax(x) * sum(g).

    dout: upstream gradient dL/dy, same shape as x. probs: softmax(x), which a
    forward pass already has as ``exp(y)``: reusing it saves a second pass.
    """
    xp = get_array_module(dout)
    return dout - probs * xp.sum(dout, axis=axis, keepdims=True)


def logsigmoid(x):
    """log(sigmoid(x)) = -log(1 + exp(-x)), computed as -logaddexp(0, -x). Always <= 0."""
    xp = get_array_module(x)
    return -xp.logaddexp(0.0, -x)


def sigmoid(x):
    """1 / (1 + exp(-x)) as exp(logsigmoid(x)): never overflows."""
    xp = get_array_module(x)
    return xp.exp(logsigmoid(x))


def softplus(x):
    """log(1 + exp(x)) = logaddexp(0, x). Its derivative is sigmoid(x)."""
    xp = get_array_module(x)
    return xp.logaddexp(0.0, x)
