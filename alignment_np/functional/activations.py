"""GELU, the tanh approximation GPT-2 uses.

    gelu(x) = 0.5 x (1 + tanh(u)),   u = k (x + c x^3),   k = sqrt(2/pi), c = 0.044715

(Hendrycks & Gimpel 2016, "Gaussian Error Linear Units", Sec. 2, the tanh
approximation; GPT-2's ``gelu``; ``torch.nn.functional.gelu(x, approximate="tanh")``.)

Derivative. Write s = (1 + tanh(u)) / 2, so that gelu(x) = x s; since
1 - tanh(u)^2 = 4 s (1 - s) and du/dx = k (1 + 3 c x^2),

    gelu'(x) = s + x ds/dx = s + 2 k x (1 + 3 c x^2) s (1 - s)

(the same as 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2) with t = tanh(u)).
The forward keeps s, which makes the backward three passes shorter than
keeping t would.

The function is smooth everywhere, so a gradient check needs no care about
kinks.

Computing s. Since (1 + tanh u) / 2 = 1 / (1 + exp(-2u)) (the logistic
sigmoid of 2u), the forward computes s with ``exp`` rather than ``tanh``:
the same number up to rounding (measured within 1.2e-7 in float32), and
NumPy's float32 ``exp`` is about twice as fast as its ``tanh``. It is stable
without any clipping: for very negative x, exp(-2u) overflows to +inf and
s = 1 / inf = 0 exactly, the right limit; for very positive x it underflows
to 0 and s = 1. So the kernel is finite for any finite float32 input.

Speed: the elementwise passes over a (B*T, 4D) array are the cost. A NumPy
ufunc runs on one core, so the array is cut into one block per core and the
blocks run on threads at once (``functional/parallel.py``: the same numbers,
bit for bit). And there are as few passes as possible: eight in forward
(exp the dearest), nine in backward. ``x**3`` on a float32 array goes
through ``pow`` and is ~250x slower than ``x*x*x``; the constants are folded
(k c x^2 + k, not c x^2 + 1 then times k); every intermediate is an array
this kernel allocated, so the arithmetic runs in place on it (``out=`` and
``*=``) instead of allocating a new array per operation. Each block is walked
in chunks of ``parallel.CACHE_ELEMENTS`` numbers, every pass over one chunk
before the next chunk: the chunk's arrays stay in the core's cache between
passes instead of going to memory and back eight or nine times (on a medium
model's (2048, 1024) arrays: the forward 11% and the backward 30% faster).
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from . import parallel
from .parallel import for_blocks
from .workspace import empty

GELU_K = math.sqrt(2.0 / math.pi)
GELU_C = 0.044715


def gelu_forward(x):
    """GELU (tanh approximation), elementwise.

    x: any shape, e.g. (B, T, 4D). Returns out (same shape and dtype) and
    cache = (x, s) where s = (1 + tanh(k (x + c x^3))) / 2 is kept for the backward.
    """
    xp = get_array_module(x)
    s = empty(x.shape, x.dtype, xp)
    out = empty(x.shape, x.dtype, xp)
    x1, s1, out1 = x.reshape(-1), s.reshape(-1), out.reshape(-1)  # flat views (x: a copy if strided)

    def block(i):  # the numbers i of every array: see functional/parallel.py
        xi, si = x1[i], s1[i]
        xp.multiply(xi, xi, out=si)  # -2u = x (-2k c x^2 - 2k), in one buffer
        si *= -2.0 * GELU_K * GELU_C
        si -= 2.0 * GELU_K
        si *= xi
        with np.errstate(over="ignore"):  # exp(-2u) = inf for very negative x: s = 1 / inf = 0, exactly right
            xp.exp(si, out=si)
        si += 1.0
        xp.reciprocal(si, out=si)  # s = 1 / (1 + exp(-2u)) = (1 + tanh u) / 2
        xp.multiply(xi, si, out=out1[i])

    for_blocks(block, x1.size, xp=xp, chunk=parallel.CACHE_ELEMENTS)  # eight passes: a chunk at a time
    return out, (x, s)


def gelu_recompute(cache):
    """The forward's output x * s again, from its cache: one pass, a new array.

    For a caller that would rather recompute gelu(x) than keep it (the MLP
    keeps x and s for this backward anyway; keeping gelu(x) too would cost a
    third array of the same size for the next layer's weight gradient).
    """
    x, s = cache
    xp = get_array_module(x)
    out = empty(x.shape, x.dtype, xp)
    x1, s1, out1 = x.reshape(-1), s.reshape(-1), out.reshape(-1)
    for_blocks(lambda i: xp.multiply(x1[i], s1[i], out=out1[i]), x1.size, xp=xp)
    return out


def gelu_backward(dout, cache):
    """dL/dx of GELU. dout: same shape as x. cache: (x, s). Returns dx (new array)."""
    xp = get_array_module(dout)
    x, s = cache
    dx = empty(x.shape, x.dtype, xp)
    s_1s = empty(s.shape, s.dtype, xp)
    x1, s1, dout1, dx1, s_1s1 = (a.reshape(-1) for a in (x, s, dout, dx, s_1s))

    def block(i):
        # dx = [ s + 2 k x (1 + 3 c x^2) s (1 - s) ] * dout
        xi, si, a, b = x1[i], s1[i], dx1[i], s_1s1[i]
        xp.multiply(xi, xi, out=a)
        a *= 6.0 * GELU_K * GELU_C
        a += 2.0 * GELU_K
        a *= xi  # 2 k x (1 + 3 c x^2)
        xp.multiply(si, si, out=b)
        xp.subtract(si, b, out=b)  # s (1 - s)
        a *= b
        a += si
        a *= dout1[i]

    for_blocks(block, x1.size, xp=xp, chunk=parallel.CACHE_ELEMENTS)
    return dx
