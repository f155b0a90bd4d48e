"""Tests for GELU (tanh approximation): ``gelu_forward`` / ``gelu_backward``."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from alignment_np.backend import to_numpy
from alignment_np.functional.activations import GELU_C, GELU_K, gelu_backward, gelu_forward
from alignment_np.gradcheck import check_gradients

# GELU-tanh is smooth everywhere: no kinks to avoid. The range stops at -3
# because of the *oracle*, not the kernel: far in the negative tail
# 1 + tanh(u) is a difference of nearly equal numbers (tanh(u) ~ -1), and at
# x = -6 its rounding (1e-16) is as large as the finite difference's signal
# (h * gelu'(x) ~ 1e-15). The extreme-input test covers the tail.
INPUTS = arrays(
    np.float64,
    array_shapes(min_dims=1, max_dims=3, max_side=4),
    elements=st.floats(-3.0, 6.0, allow_nan=False, allow_infinity=False),
)


def gelu_loop(x):
    """Obviously correct: the formula, one Python float at a time."""
    flat = [0.5 * v * (1.0 + math.tanh(GELU_K * (v + GELU_C * v**3))) for v in x.ravel()]
    return np.array(flat).reshape(x.shape)


@given(INPUTS, st.integers(0, 2**32 - 1))
def test_gradient_matches_finite_differences(x, seed):
    dout = np.random.default_rng(seed).standard_normal(x.shape)
    _, cache = gelu_forward(x)
    dx = gelu_backward(dout, cache)
    check_gradients(lambda x: gelu_forward(x)[0], [x], [dx], dout=dout, tol=1e-6, names=["x"])


@given(INPUTS)
def test_forward_matches_loop(x):
    np.testing.assert_allclose(gelu_forward(x)[0], gelu_loop(x), rtol=1e-12, atol=1e-15)


@given(INPUTS)
def test_odd_part_is_identity(x):
    """gelu(x) - gelu(-x) = x exactly in the math (tanh is odd), so gelu'(x) + gelu'(-x) = 1."""
    out_pos, cache_pos = gelu_forward(x)
    out_neg, cache_neg = gelu_forward(-x)
    np.testing.assert_allclose(out_pos - out_neg, x, rtol=1e-12, atol=1e-12)
    ones = np.ones_like(x)
    slope_sum = gelu_backward(ones, cache_pos) + gelu_backward(ones, cache_neg)
    np.testing.assert_allclose(slope_sum, ones, rtol=1e-12, atol=1e-12)


def test_matches_exact_erf_gelu_closely():
    """The tanh form approximates x * Phi(x) to about 1e-3 (Hendrycks & Gimpel 2016)."""
    x = np.linspace(-5, 5, 201)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    assert np.max(np.abs(gelu_forward(x)[0] - exact)) < 1e-3


def test_extreme_float32_inputs_are_finite(xp):
    x = xp.asarray([-1e4, -100.0, -10.0, 0.0, 10.0, 100.0, 1e4], dtype=xp.float32)
    out, cache = gelu_forward(x)
    dx = gelu_backward(xp.ones_like(x), cache)
    out, dx, x = to_numpy(out), to_numpy(dx), to_numpy(x)
    assert out.dtype == dx.dtype == np.float32
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(dx))
    # saturation: gelu(x) = x and slope 1 for large x; 0 and slope 0 for very negative x
    np.testing.assert_array_equal(out[[0, 1, -2, -1]], [0.0, 0.0, 100.0, 1e4])
    np.testing.assert_array_equal(dx[[0, 1, -2, -1]], [0.0, 0.0, 1.0, 1.0])


def test_dtype_follows_input(xp):
    for dtype in (xp.float32, xp.float64):
        x = xp.linspace(-3, 3, 12, dtype=dtype).reshape(3, 4)
        out, cache = gelu_forward(x)
        assert out.dtype == dtype and gelu_backward(xp.ones_like(x), cache).dtype == dtype


def test_backward_does_not_mutate_or_alias(xp):
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((3, 5)))
    out, cache = gelu_forward(x)
    dout = xp.asarray(rng.standard_normal((3, 5)))
    saved = [to_numpy(a).copy() for a in (x, dout, *cache)]
    dx = gelu_backward(dout, cache)
    for a, before in zip((x, dout, *cache), saved):
        np.testing.assert_array_equal(to_numpy(a), before)
    for a in (x, dout, out, *cache):
        assert not xp.shares_memory(dx, a)


def gelu_derivative_loop(x):
    """Obviously correct: d/dx of 0.5 x (1 + tanh u) by the chain rule, in the tanh form,
    one Python float at a time (the kernel uses the equivalent s = (1 + tanh u) / 2 form)."""
    out = []
    for v in x.ravel():
        t = math.tanh(GELU_K * (v + GELU_C * v**3))
        out.append(0.5 * (1 + t) + 0.5 * v * (1 - t * t) * GELU_K * (1 + 3 * GELU_C * v * v))
    return np.array(out).reshape(x.shape)


@given(INPUTS, st.integers(0, 2**32 - 1))
def test_backward_matches_the_derivative_loop(x, seed):
    dout = np.random.default_rng(seed).standard_normal(x.shape)
    dx = gelu_backward(dout, gelu_forward(x)[1])
    np.testing.assert_allclose(dx, dout * gelu_derivative_loop(x), rtol=1e-12, atol=1e-14)
