"""Tests for LayerNorm: ``layernorm_forward`` / ``layernorm_backward``."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from alignment_np.backend import to_numpy
from alignment_np.functional.layernorm import layernorm_backward, layernorm_forward
from alignment_np.gradcheck import check_gradients

EPS = 1e-5


@st.composite
def rows_with_spread(draw, max_rows: int = 4, max_d: int = 6):
    """x (N, D) whose rows have a spread, gamma, beta (D,), dout (N, D).

    A nearly constant row has variance ~ 0, so rstd ~ 1/sqrt(eps) and the
    gradient is ill-conditioned: not a bug, but a finite difference cannot
    check it. Each row is built as a shuffled ramp a * linspace(-1, 1, D)
    with a >= 0.5, plus small noise (|noise| <= 0.3, too small to cancel the
    ramp), plus an arbitrary offset (LayerNorm must ignore it). D >= 3: with
    D = 2 the output is +-1 whatever x is, and dx ~ eps is all rounding.
    """
    n, d = draw(st.integers(1, max_rows)), draw(st.integers(3, max_d))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    ramp = np.linspace(-1.0, 1.0, d)
    scale = draw(arrays(np.float64, (n, 1), elements=st.floats(0.5, 3.0)))
    offset = draw(arrays(np.float64, (n, 1), elements=st.floats(-5.0, 5.0)))
    noise = draw(arrays(np.float64, (n, d), elements=st.floats(-0.3, 0.3)))
    x = np.stack([rng.permutation(ramp) for _ in range(n)]) * scale + noise + offset
    gamma = rng.uniform(0.5, 2.0, d) * rng.choice([-1.0, 1.0], d)
    beta = rng.standard_normal(d)
    dout = rng.standard_normal((n, d))
    return x, gamma, beta, dout


def layernorm_loop(x, gamma, beta, eps=EPS):
    """Obviously correct: the definition, one row and one number at a time."""
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        row = x[i]
        mu = sum(row) / len(row)
        var = sum((v - mu) ** 2 for v in row) / len(row)
        for j in range(len(row)):
            out[i, j] = gamma[j] * (row[j] - mu) / math.sqrt(var + eps) + beta[j]
    return out


@given(rows_with_spread())
def test_gradients_match_finite_differences(case):
    x, gamma, beta, dout = case
    _, cache = layernorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = layernorm_backward(dout, cache)
    check_gradients(
        lambda x, g, b: layernorm_forward(x, g, b)[0],
        [x, gamma, beta],
        [dx, dgamma, dbeta],
        dout=dout,
        tol=1e-6,
        names=["x", "gamma", "beta"],
    )


@given(rows_with_spread())
def test_forward_matches_loop(case):
    x, gamma, beta, _ = case
    np.testing.assert_allclose(
        layernorm_forward(x, gamma, beta)[0], layernorm_loop(x, gamma, beta), rtol=1e-10, atol=1e-12
    )


@given(rows_with_spread(), st.floats(-100.0, 100.0), st.floats(0.1, 10.0))
def test_invariant_to_shift_and_scale_of_each_row(case, shift, scale):
    """LayerNorm removes the row's mean and scale: normalising a*x + c gives the same
    output. Exactly so with eps = 0 (eps is what breaks the symmetry for tiny variances)."""
    x, gamma, beta, _ = case
    out = layernorm_forward(x, gamma, beta, eps=0.0)[0]
    moved = layernorm_forward(scale * x + shift, gamma, beta, eps=0.0)[0]
    np.testing.assert_allclose(moved, out, rtol=1e-9, atol=1e-9)


@given(rows_with_spread())
def test_normalised_rows_have_zero_mean_unit_variance(case):
    x, _, _, _ = case
    d = x.shape[1]
    xhat, _ = layernorm_forward(x, np.ones(d), np.zeros(d))
    np.testing.assert_allclose(xhat.mean(axis=1), 0.0, atol=1e-12)
    var = x.var(axis=1)
    np.testing.assert_allclose(xhat.var(axis=1), var / (var + EPS), rtol=1e-12)


@given(rows_with_spread())
def test_input_gradient_is_orthogonal_to_ones_and_xhat(case):
    """dx has zero row sum (any eps) and, with eps = 0, zero dot with xhat: moving x
    along 1 (shift) or along xhat (scale) leaves the output unchanged."""
    x, gamma, beta, dout = case
    _, cache = layernorm_forward(x, gamma, beta, eps=0.0)
    dx = layernorm_backward(dout, cache)[0]
    xhat = cache[0]
    scale = np.abs(dout).max() * np.abs(gamma).max() / np.sqrt(x.var(axis=1).min())
    np.testing.assert_allclose(dx.sum(axis=1), 0.0, atol=1e-12 * scale * x.shape[1])
    np.testing.assert_allclose((dx * xhat).sum(axis=1), 0.0, atol=1e-12 * scale * x.shape[1])


def test_three_dimensional_input(xp):
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((2, 3, 5)))
    gamma, beta = xp.asarray(rng.standard_normal(5)), xp.asarray(rng.standard_normal(5))
    out, cache = layernorm_forward(x, gamma, beta)
    assert out.shape == (2, 3, 5)
    np.testing.assert_allclose(
        to_numpy(out).reshape(6, 5),
        layernorm_loop(to_numpy(x).reshape(6, 5), to_numpy(gamma), to_numpy(beta)),
        rtol=1e-10,
    )
    dx, dgamma, dbeta = layernorm_backward(xp.ones_like(out), cache)
    assert dx.shape == x.shape and dgamma.shape == dbeta.shape == (5,)


def test_extreme_float32_inputs(xp):
    """Rows of magnitude 1e4 (and a constant row) stay finite in float32 and normalise."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 64)) * 1e4
    x[1] += 1e4  # large offset too
    x[2] = 7e3  # a constant row: variance 0, rstd = 1/sqrt(eps), xhat = 0
    x32 = xp.asarray(x, dtype=xp.float32)
    gamma, beta = xp.ones(64, dtype=xp.float32), xp.zeros(64, dtype=xp.float32)
    out, cache = layernorm_forward(x32, gamma, beta)
    dx, dgamma, dbeta = layernorm_backward(xp.ones_like(out), cache)
    out, dx = to_numpy(out), to_numpy(dx)
    assert out.dtype == dx.dtype == np.float32
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(dx))
    np.testing.assert_array_equal(out[2], 0.0)
    expected = layernorm_loop(x, np.ones(64), np.zeros(64))
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_backward_does_not_mutate_or_alias(xp):
    rng = np.random.default_rng(2)
    x = xp.asarray(rng.standard_normal((3, 4)))
    gamma, beta = xp.asarray(rng.standard_normal(4)), xp.asarray(rng.standard_normal(4))
    out, cache = layernorm_forward(x, gamma, beta)
    dout = xp.asarray(rng.standard_normal((3, 4)))
    arrays_in = (x, gamma, beta, dout, *cache)
    saved = [to_numpy(a).copy() for a in arrays_in]
    grads = layernorm_backward(dout, cache)
    for a, before in zip(arrays_in, saved):
        np.testing.assert_array_equal(to_numpy(a), before)
    for g in grads:
        for a in (*arrays_in, out):
            assert not xp.shares_memory(g, a)


def test_large_input_matches_the_textbook_formulas():
    """(B*T, D) = (2048, 64): sizes where the row sums run on BLAS and gamma and beta
    take the long-loop broadcast. Forward against the definition, backward against
    the three-term formula written with NumPy's own reductions, in float64."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 128, 64)) * rng.uniform(0.5, 2.0, (16, 128, 1)) + 3.0
    gamma, beta = rng.standard_normal(64), rng.standard_normal(64)
    dout = rng.standard_normal(x.shape)
    out, cache = layernorm_forward(x, gamma, beta)
    mu, var = x.mean(axis=-1, keepdims=True), x.var(axis=-1, keepdims=True)
    xhat = (x - mu) / np.sqrt(var + EPS)
    np.testing.assert_allclose(out, gamma * xhat + beta, rtol=1e-12, atol=1e-12)
    dx, dgamma, dbeta = layernorm_backward(dout, cache)
    g = dout * gamma
    expected = (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    expected /= np.sqrt(var + EPS)
    np.testing.assert_allclose(dx, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dgamma, (dout * xhat).sum(axis=(0, 1)), rtol=1e-12)
    np.testing.assert_allclose(dbeta, dout.sum(axis=(0, 1)), rtol=1e-12)
