"""Token-level cross-entropy: the language-modelling (SFT) loss.

For logits z (..., V) and integer targets y (...), with a mask m (...) of
counted positions (1 = counted; prompt and padding tokens get 0):

    loss = sum_i m_i * (logsumexp(z_i) - z_i[y_i]) / sum_i m_i
         = -sum_i m_i * log_softmax(z_i)[y_i] / N,      N = number of counted tokens

Forward uses the max-shifted log-sum-exp of ``stable.logsumexp``, inlined so
that one ``exp`` gives both the loss and the softmax. Backward:
d loss / d z_i = m_i / N * (softmax(z_i) - onehot(y_i)), reusing the forward's
softmax instead of a second pass over the logits.

A mask with no counted token gives loss 0 and zero gradients (N is taken as
max(N, 1)): an empty batch teaches nothing, and must not produce a NaN.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from .workspace import empty


def cross_entropy_forward(logits, targets, mask=None):
    """Mean cross-entropy over the counted positions.

    logits: (..., V), e.g. (B, T, V), float32 or float64.
    targets: (...) integers, e.g. (B, T); entries at masked-out positions are
        ignored and may hold anything (e.g. -100, as in Hugging Face).
    mask: (...) of 0/1 or bool, 1 = counted; None counts every position.
    Returns loss (a 0-d array of logits' dtype) and cache = (probs (N, V),
    targets (N,), weights (N,), shape), with N = number of positions.
    Raises ValueError for mismatched shapes, non-integer targets, or a counted
    target outside [0, V).
    """
    xp = get_array_module(logits)
    _validate(xp, logits, targets, mask)
    v = logits.shape[-1]
    z = logits.reshape(-1, v)  # (N, V)
    n = z.shape[0]
    if mask is None:
        weights = xp.ones(n, dtype=logits.dtype)
    else:
        weights = xp.asarray(mask).reshape(-1).astype(logits.dtype)
    # ignored positions may hold any target; gather at 0 there (weight 0 anyway)
    y = xp.where(weights > 0, xp.asarray(targets).reshape(-1), 0).astype(np.int64)
    # max-shifted log-softmax, log p_i = (z_i - m) - log(sum exp(z - m)), in that
    # order: m + log(s) first would round to float32's spacing at |z| = 1e4 (~1e-3)
    shifted = xp.subtract(z, z.max(axis=-1, keepdims=True), out=empty(z.shape, z.dtype, xp))  # <= 0
    picked = shifted[xp.arange(n), y]  # (N,) z_y - m, copied before the exp below
    probs = xp.exp(shifted, out=shifted)  # in [0, 1], the largest exactly 1
    sums = probs.sum(axis=-1, keepdims=True)  # (N, 1) in [1, V]
    probs /= sums  # softmax, kept for the backward
    logp_y = picked - xp.log(sums[:, 0])  # (N,) log p(y_i)
    count = max(float(weights.sum()), 1.0)
    weights = weights / count  # each counted token's share of the mean
    loss = -(logp_y * weights).sum()
    return loss, (probs, y, weights, logits.shape)


def cross_entropy_backward(dout, cache):
    """dL/dlogits. dout: scalar upstream gradient (1.0 for the loss itself).

    cache: from ``cross_entropy_forward``. Returns dlogits (..., V), a new array.
    """
    xp = get_array_module(cache[0])  # dout may be a plain float: the cache's arrays decide
    probs, y, weights, shape = cache
    scale = weights * dout  # (N,)
    dlogits = xp.multiply(probs, scale[:, None], out=empty(probs.shape, probs.dtype, xp))  # softmax part
    dlogits[xp.arange(y.shape[0]), y] -= scale  # minus the one-hot part
    return dlogits.reshape(shape)


def _validate(xp, logits, targets, mask) -> None:
    if not hasattr(logits, "ndim") or logits.ndim < 2:
        raise ValueError(
            f"logits: expected an array of shape (..., V) with at least 2 dims, "
            f"got {getattr(logits, 'shape', type(logits).__name__)}"
        )
    if not np.issubdtype(logits.dtype, np.floating):
        raise ValueError(f"logits: expected a floating dtype, got {logits.dtype}")
    targets = xp.asarray(targets)
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"targets: expected shape {tuple(logits.shape[:-1])} (logits without V), "
            f"got {tuple(targets.shape)}"
        )
    if not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets: expected an integer dtype, got {targets.dtype}")
    counted = None
    if mask is not None:
        mask = xp.asarray(mask)
        if tuple(mask.shape) != tuple(targets.shape):
            raise ValueError(
                f"mask: expected shape {tuple(targets.shape)} like targets, got {tuple(mask.shape)}"
            )
        if not bool(xp.all((mask == 0) | (mask == 1))):
            raise ValueError("mask: expected only 0/1 (or bool) values, got other values")
        counted = mask.astype(bool)
    v = logits.shape[-1]
    checked = targets if counted is None else targets[counted]
    if checked.size and (int(checked.min()) < 0 or int(checked.max()) >= v):
        raise ValueError(
            f"targets: expected values in [0, {v}) at counted positions, "
            f"got min {int(checked.min())}, max {int(checked.max())}"
        )
