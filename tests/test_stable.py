"""Stable primitives: correct against naive formulas where those work, finite where they don't."""

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from alignment_np.backend import to_numpy
from alignment_np.functional import stable as S
from alignment_np.gradcheck import check_gradients

moderate = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6),
    elements=st.floats(-20, 20),
)


@given(moderate)
def test_logsumexp_matches_naive_on_moderate_inputs(x):
    naive = np.log(np.sum(np.exp(x), axis=-1))
    np.testing.assert_allclose(S.logsumexp(x), naive, rtol=1e-12, atol=1e-12)
    assert S.logsumexp(x, keepdims=True).shape == x.shape[:-1] + (1,)


@given(moderate)
def test_log_softmax_normalises_and_is_never_positive(x):
    lp = S.log_softmax(x)
    assert np.all(lp <= 0)
    np.testing.assert_allclose(np.exp(lp).sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(S.softmax(x), np.exp(lp))


@given(moderate)
def test_sigmoid_family_matches_naive(x):
    naive_sig = 1.0 / (1.0 + np.exp(-x))
    np.testing.assert_allclose(S.sigmoid(x), naive_sig, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(S.logsigmoid(x), np.log(naive_sig), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(S.softplus(x), np.log1p(np.exp(x)), rtol=1e-12, atol=1e-12)
    # identities: logsigmoid(x) = -softplus(-x);  sigmoid(x) + sigmoid(-x) = 1
    np.testing.assert_allclose(S.logsigmoid(x), -S.softplus(-x), rtol=1e-12)
    np.testing.assert_allclose(S.sigmoid(x) + S.sigmoid(-x), 1.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_extreme_inputs_stay_finite_and_exact(xp, dtype):
    # [-1e4, 1e4] overflow exp() in both float32 (~88) and float64 (~709).
    x = xp.asarray([[-1e4, 1.0, 1e4], [-1e4, -1e4, -1e4]], dtype=dtype)
    lse = to_numpy(S.logsumexp(x))
    assert lse.dtype == dtype
    np.testing.assert_allclose(lse, [1e4, -1e4 + np.log(3.0)], rtol=1e-6)
    lp = to_numpy(S.log_softmax(x))
    assert np.all(np.isfinite(lp))
    np.testing.assert_allclose(lp[0], [-2e4, 1.0 - 1e4, 0.0], rtol=1e-6, atol=1e-6)
    v = xp.asarray([-1e4, -50.0, 0.0, 50.0, 1e4], dtype=dtype)
    ls = to_numpy(S.logsigmoid(v))
    assert ls.dtype == dtype and np.all(np.isfinite(ls))
    np.testing.assert_allclose(ls[[0, 2, 4]], [-1e4, -np.log(2.0), 0.0], rtol=1e-6, atol=1e-30)
    sp = to_numpy(S.softplus(v))
    np.testing.assert_allclose(sp[[0, 2, 4]], [0.0, np.log(2.0), 1e4], rtol=1e-6, atol=1e-30)
    sg = to_numpy(S.sigmoid(v))
    np.testing.assert_allclose(sg[[0, 2, 4]], [0.0, 0.5, 1.0], atol=1e-7)


def test_fully_masked_row_gives_minus_inf_not_nan():
    x = np.array([[-np.inf, -np.inf], [0.0, -np.inf]])
    out = S.logsumexp(x)
    assert out[0] == -np.inf and out[1] == 0.0


@given(moderate, st.data())
def test_log_softmax_backward_matches_finite_differences(x, data):
    dout = data.draw(hnp.arrays(np.float64, x.shape, elements=st.floats(-1, 1)))
    # A ramp along the softmax axis keeps each row of dout from being constant: a constant
    # row c has the exact gradient c - p * V c = 0 at x = 0, a point where only the finite
    # difference's rounding (~2e-8 over 216 entries of size 20) is left to compare.
    dout = dout + 0.25 * np.arange(x.shape[-1])
    probs = np.exp(S.log_softmax(x))
    dx = S.log_softmax_backward(dout, probs)
    check_gradients(S.log_softmax, [x], [dx], dout=dout)


@given(hnp.arrays(np.float64, st.integers(1, 8), elements=st.floats(-30, 30)))
def test_derivatives_stated_in_the_docstring(x):
    check_gradients(S.logsigmoid, [x], [S.sigmoid(-x)])
    check_gradients(S.softplus, [x], [S.sigmoid(x)])
    # sigmoid saturates: at |x| = 14 its slope is 8e-7 while float64 rounding
    # in sigmoid(x +- h) ~ 1 is 1e-16 / h = 1e-10, a 1e-4 relative error that is
    # the finite difference's, not the formula's. Check it where FD resolves it.
    xs = np.clip(x, -8, 8)
    check_gradients(S.sigmoid, [xs], [S.sigmoid(xs) * S.sigmoid(-xs)])


def test_log_softmax_backward_does_not_mutate_or_alias():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5))
    dout = rng.normal(size=(3, 5))
    probs = S.softmax(x)
    d0, p0 = dout.copy(), probs.copy()
    dx = S.log_softmax_backward(dout, probs)
    np.testing.assert_array_equal(dout, d0)
    np.testing.assert_array_equal(probs, p0)
    assert not np.shares_memory(dx, dout) and not np.shares_memory(dx, probs)


# ----------------------------------------------------------------------------- every kernel at the extremes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_and_its_backward_at_extremes(xp, dtype):
    # Logits of 1e4 (exp overflows both dtypes) and -inf (a banned token).
    x = xp.asarray([[1e4, -1e4, 0.0], [-np.inf, 0.0, 1e4], [-np.inf, 2.0, -np.inf]], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = S.softmax(x)
        lp = S.log_softmax(x)
        dout = xp.asarray([[1.0, -2.0, 0.5]] * 3, dtype=dtype)
        dx = S.log_softmax_backward(dout, p)
    p, lp, dx = to_numpy(p), to_numpy(lp), to_numpy(dx)
    assert p.dtype == lp.dtype == dx.dtype == dtype
    np.testing.assert_array_equal(p, [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(lp[1], [-np.inf, -1e4, 0.0])
    np.testing.assert_array_equal(lp[2], [-np.inf, 0.0, -np.inf])
    # dx = g - p * sum(g): all mass on one token, so dx = g - onehot * sum(g), exactly.
    np.testing.assert_allclose(dx, [[1.0 + 0.5, -2.0, 0.5], [1.0, -2.0, 0.5 + 0.5], [1.0, -2.0 + 0.5, 0.5]])
    assert np.all(np.isfinite(dx))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logsumexp_with_some_minus_inf_and_plus_inf(dtype):
    x = np.array([[-np.inf, 0.0, 1.0], [-np.inf, 1e4, -np.inf], [np.inf, 0.0, -np.inf]], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = S.logsumexp(x)
    assert out.dtype == dtype
    np.testing.assert_allclose(out[:2], [np.log(1.0 + np.e), 1e4], rtol=1e-6)
    assert out[2] == np.inf  # the true value: a +inf term dominates


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_family_at_infinities(dtype):
    v = np.array([-np.inf, np.inf], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(S.logsigmoid(v), [-np.inf, 0.0])
        np.testing.assert_array_equal(S.sigmoid(v), [0.0, 1.0])
        np.testing.assert_array_equal(S.softplus(v), [0.0, np.inf])
    for f in (S.logsigmoid, S.sigmoid, S.softplus):
        assert f(v).dtype == dtype


@pytest.mark.parametrize(
    "kernel, row_wise",
    [(S.logsumexp, True), (S.log_softmax, True), (S.softmax, True), (S.logsigmoid, False), (S.sigmoid, False), (S.softplus, False)],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_every_kernel_propagates_nan_never_a_number(kernel, row_wise):
    x = np.array([[0.5, np.nan, -1.0], [0.5, 2.0, -1.0]], dtype=np.float32)
    with np.errstate(invalid="ignore"):
        out = kernel(x)
    # A NaN logit spoils its whole row for the normalising kernels, only itself elsewhere.
    expected_nan = np.array([True, False]) if kernel is S.logsumexp else np.isnan(x)
    if row_wise and kernel is not S.logsumexp:
        expected_nan = np.repeat(np.isnan(x).any(-1, keepdims=True), 3, axis=-1)
    np.testing.assert_array_equal(np.isnan(out), expected_nan)
    assert out.dtype == np.float32


def test_log_softmax_of_a_row_with_no_finite_logit_is_nan_not_a_distribution():
    # No token can be sampled: there is no distribution. logsumexp says -inf
    # (the log of an empty sum); log_softmax says nan, loudly, rather than
    # inventing one (e.g. a uniform row).
    x = np.array([[-np.inf, -np.inf], [0.0, 1.0]])
    with np.errstate(divide="ignore", invalid="ignore"):
        lp = S.log_softmax(x)
    assert np.all(np.isnan(lp[0])) and np.all(np.isfinite(lp[1]))
