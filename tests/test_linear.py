"""Tests for the affine kernel ``linear_forward`` / ``linear_backward``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from alignment_np.backend import to_numpy
from alignment_np.functional.linear import linear_backward, linear_forward, rowwise
from alignment_np.gradcheck import check_gradients

# magnitude * sign with a minimum magnitude: no entry is (nearly) zero
SIGNED = st.builds(
    lambda m, s: m * s, st.floats(0.1, 2.0), st.sampled_from([-1.0, 1.0])
)


@st.composite
def linear_cases(draw):
    """(x (B, T, Din), w (Din, Dout), b (Dout,), dout (B, T, Dout)) in float64.

    The upstream gradient is random normal (from a drawn seed), as chainer's
    ``check_backward`` does: hand-picked values such as all ones can cancel
    exactly (dx = dout @ w.T = 0), and a zero gradient has no relative error.
    """
    b, t = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    d_in, d_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    x = draw(arrays(np.float64, (b, t, d_in), elements=SIGNED))
    w = draw(arrays(np.float64, (d_in, d_out), elements=SIGNED))
    bias = draw(arrays(np.float64, (d_out,), elements=SIGNED))
    seed = draw(st.integers(0, 2**32 - 1))
    dout = np.random.default_rng(seed).standard_normal((b, t, d_out))
    return x, w, bias, dout


def linear_loop(x, w, b):
    """Obviously correct: one output number at a time, out[n, j] = sum_i x[n, i] w[i, j] + b[j]."""
    x2 = x.reshape(-1, w.shape[0])
    out = np.zeros((x2.shape[0], w.shape[1]))
    for n in range(x2.shape[0]):
        for j in range(w.shape[1]):
            out[n, j] = sum(x2[n, i] * w[i, j] for i in range(w.shape[0])) + (
                0.0 if b is None else b[j]
            )
    return out.reshape(*x.shape[:-1], w.shape[1])


@given(linear_cases())
def test_gradients_match_finite_differences(case):
    x, w, b, dout = case
    _, cache = linear_forward(x, w, b)
    dx, dw, db = linear_backward(dout, cache)
    check_gradients(
        lambda x, w, b: linear_forward(x, w, b)[0],
        [x, w, b],
        [dx, dw, db],
        dout=dout,
        tol=1e-6,
        names=["x", "w", "b"],
    )


@given(linear_cases())
def test_gradients_without_bias(case):
    x, w, _, dout = case
    _, cache = linear_forward(x, w, None)
    dx, dw, db = linear_backward(dout, cache)
    assert db is None
    check_gradients(lambda x, w: linear_forward(x, w)[0], [x, w], [dx, dw], dout=dout)


@given(linear_cases())
def test_forward_matches_loop(case):
    x, w, b, _ = case
    np.testing.assert_allclose(linear_forward(x, w, b)[0], linear_loop(x, w, b), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(linear_forward(x, w)[0], linear_loop(x, w, None), rtol=1e-12, atol=1e-12)


@given(linear_cases())
def test_weight_gradient_is_sum_of_per_token_outer_products(case):
    """W is shared by every token, so dW sums each token's outer product x_n dout_n^T."""
    x, w, b, dout = case
    _, cache = linear_forward(x, w, b)
    _, dw, db = linear_backward(dout, cache)
    x2, g2 = x.reshape(-1, w.shape[0]), dout.reshape(-1, w.shape[1])
    expected = sum(np.outer(x2[n], g2[n]) for n in range(x2.shape[0]))
    np.testing.assert_allclose(dw, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db, g2.sum(axis=0), rtol=1e-12, atol=1e-12)


def test_shapes_and_dtype_follow_inputs(xp):
    rng = np.random.default_rng(0)
    for dtype in (xp.float32, xp.float64):
        x = xp.asarray(rng.standard_normal((2, 5, 3)), dtype=dtype)
        w = xp.asarray(rng.standard_normal((3, 4)), dtype=dtype)
        b = xp.asarray(rng.standard_normal(4), dtype=dtype)
        out, cache = linear_forward(x, w, b)
        assert out.shape == (2, 5, 4) and out.dtype == dtype
        dx, dw, db = linear_backward(xp.ones_like(out), cache)
        assert (dx.shape, dw.shape, db.shape) == (x.shape, w.shape, b.shape)
        assert dx.dtype == dw.dtype == db.dtype == dtype


def test_works_on_2d_and_non_contiguous_input():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4))
    xt = x[:, ::2]  # (6, 2): every other column, not contiguous
    w = rng.standard_normal((2, 3))
    out, cache = linear_forward(xt, w)
    np.testing.assert_allclose(out, linear_loop(np.ascontiguousarray(xt), w, None), rtol=1e-12)
    dx, dw, _ = linear_backward(np.ones((6, 3)), cache)
    check_gradients(lambda x: linear_forward(x, w)[0], [xt], [dx], wrt=[0])


def test_backward_does_not_mutate_or_alias(xp):
    rng = np.random.default_rng(2)
    x = xp.asarray(rng.standard_normal((2, 3, 4)))
    w = xp.asarray(rng.standard_normal((4, 5)))
    b = xp.asarray(rng.standard_normal(5))
    out, cache = linear_forward(x, w, b)
    dout = xp.asarray(rng.standard_normal(out.shape))
    before = [to_numpy(a).copy() for a in (x, w, b, dout)]
    grads = linear_backward(dout, cache)
    for a, saved in zip((x, w, b, dout), before):
        np.testing.assert_array_equal(to_numpy(a), saved)
    for g in grads:
        for a in (x, w, b, dout, out):
            assert not xp.shares_memory(g, a)


@pytest.mark.parametrize("ufunc", [np.add, np.multiply])
@pytest.mark.parametrize("shape", [(2048, 256), (3, 5, 7), (1000, 96), (64, 1024), (2, 64, 1024), (1 << 16, 3)])
def test_rowwise_equals_the_plain_broadcast(ufunc, shape):
    """The long-loop trick gives exactly ``ufunc(x, row)``: into a new array and in place,
    for sizes above and below its threshold and row counts with and without factors of 2."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    row = rng.standard_normal(shape[-1]).astype(np.float32)
    expected = ufunc(x, row)
    out = rowwise(ufunc, x, row, np.empty_like(x))
    np.testing.assert_array_equal(out, expected)
    inplace = x.copy()
    assert rowwise(ufunc, inplace, row, inplace) is inplace
    np.testing.assert_array_equal(inplace, expected)


def test_rowwise_on_non_contiguous_arrays_falls_back_correctly():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((512, 512))
    x = base[:, ::2]  # (512, 256), not contiguous
    row = rng.standard_normal(256)
    out = np.empty((512, 512))[:, 1::2]  # a non-contiguous output view
    rowwise(np.add, x, row, out)
    np.testing.assert_array_equal(out, x + row)


def test_large_layer_matches_the_loop_on_a_sample_of_rows():
    """Sizes where the bias add and the bias gradient take their fast paths."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 32, 48))  # 2048 rows
    w, b = rng.standard_normal((48, 40)), rng.standard_normal(40)
    out, cache = linear_forward(x, w, b)
    rows = [0, 7, 1000, 2047]
    x2 = x.reshape(-1, 48)
    np.testing.assert_allclose(out.reshape(-1, 40)[rows], linear_loop(x2[rows], w, b), rtol=1e-12)
    dout = rng.standard_normal(out.shape)
    _, dw, db = linear_backward(dout, cache)
    np.testing.assert_allclose(db, dout.reshape(-1, 40).sum(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, np.einsum("ni,nj->ij", x2, dout.reshape(-1, 40)), rtol=1e-12)
