"""GELU, the tanh approximation GPT-2 uses.

    gelu(x) = 0.5 x (1 + tanh(u)),   u = k (x + c x^3),   k = sqrt(2/pi), c = 0.044715

(Hendrycks & Gimpel 2016, "Gaussian Error Linear Units", Sec. 2, the tanh
approximation; GPT-2's ``gelu``; ``torch.nn.functional.gelu(x, approximate="tanh")``.)

Derivative, with t = tanh(u) and du/dx = k (1 + 3 c x^2):

    gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2)

The function is smooth everywhere, so a gradient check needs no care about
kinks. tanh saturates to +-1 for large |u| (never overflows), so the kernel is
finite for any finite float32 input.

Speed: ``x**3`` on a float32 array goes through ``pow`` and is ~250x slower
than ``x*x*x``; every intermediate here is an array this kernel allocated, so
the arithmetic runs in place on it (``out=`` and ``*=``) instead of allocating
a new array per operation.
"""

from __future__ import annotations

import math

from ..backend import get_array_module

GELU_K = math.sqrt(2.0 / math.pi)
GELU_C = 0.044715


def gelu_forward(x):
    """GELU (tanh approximation), elementwise.

    x: any shape, e.g. (B, T, 4D). Returns out (same shape and dtype) and
    cache = (x, t) where t = tanh(k (x + c x^3)) is kept for the backward.
    """
    xp = get_array_module(x)
    # u = k * x * (1 + c x^2), built in one buffer
    t = x * x
    t *= GELU_C
    t += 1.0
    t *= x
    t *= GELU_K
    xp.tanh(t, out=t)
    out = t + 1.0
    out *= x
    out *= 0.5
    return out, (x, t)


def gelu_backward(dout, cache):
    """dL/dx of GELU. dout: same shape as x. cache: (x, t). Returns dx (new array)."""
    xp = get_array_module(dout)
    x, t = cache
    # a = 0.5 * [ (1 + t) + x (1 - t^2) k (1 + 3 c x^2) ] * dout
    a = x * x
    a *= 3.0 * GELU_C
    a += 1.0
    a *= GELU_K
    a *= x
    one_minus_t2 = t * t
    xp.subtract(1.0, one_minus_t2, out=one_minus_t2)
    a *= one_minus_t2
    a += t
    a += 1.0
    a *= 0.5
    a *= dout
    return a
