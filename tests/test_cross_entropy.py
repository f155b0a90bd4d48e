"""Tests for the token-level cross-entropy: ``cross_entropy_forward`` / ``_backward``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from alignment_np.backend import to_numpy
from alignment_np.functional.cross_entropy import cross_entropy_backward, cross_entropy_forward
from alignment_np.gradcheck import check_gradients


@st.composite
def ce_cases(draw):
    """logits (B, T, V), targets (B, T), mask (B, T) with at least one counted token."""
    b, t, v = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(2, 6))
    logits = draw(arrays(np.float64, (b, t, v), elements=st.floats(-8.0, 8.0)))
    targets = draw(arrays(np.int64, (b, t), elements=st.integers(0, v - 1)))
    mask = draw(arrays(np.int64, (b, t), elements=st.integers(0, 1)))
    mask.flat[draw(st.integers(0, b * t - 1))] = 1
    return logits, targets, mask


def ce_loop(logits, targets, mask):
    """Obviously correct: -log softmax(z)[y] per counted token, averaged."""
    v = logits.shape[-1]
    total, count = 0.0, 0
    for z, y, m in zip(logits.reshape(-1, v), targets.reshape(-1), mask.reshape(-1)):
        if m:
            top = max(z)
            log_z = top + math.log(sum(math.exp(zi - top) for zi in z))
            total += log_z - z[y]
            count += 1
    return total / max(count, 1)


@given(ce_cases(), st.floats(0.1, 3.0))
def test_gradient_matches_finite_differences(case, dout):
    logits, targets, mask = case
    _, cache = cross_entropy_forward(logits, targets, mask)
    dlogits = cross_entropy_backward(dout, cache)
    check_gradients(
        lambda z: cross_entropy_forward(z, targets, mask)[0],
        [logits],
        [dlogits],
        dout=dout,
        tol=1e-6,
        names=["logits"],
    )


@given(ce_cases())
def test_forward_matches_loop(case):
    logits, targets, mask = case
    loss, _ = cross_entropy_forward(logits, targets, mask)
    assert math.isclose(float(loss), ce_loop(logits, targets, mask), rel_tol=1e-12, abs_tol=1e-12)
    full, _ = cross_entropy_forward(logits, targets)
    assert math.isclose(float(full), ce_loop(logits, targets, np.ones_like(mask)), rel_tol=1e-12,
                        abs_tol=1e-12)


@given(ce_cases())
def test_gradient_properties(case):
    """Each counted row of dlogits sums to 0 (softmax minus one-hot); masked rows are 0;
    the loss is non-negative."""
    logits, targets, mask = case
    loss, cache = cross_entropy_forward(logits, targets, mask)
    dlogits = cross_entropy_backward(1.0, cache)
    assert float(loss) >= 0.0
    np.testing.assert_allclose(dlogits.sum(axis=-1), 0.0, atol=1e-12)
    np.testing.assert_array_equal(dlogits[mask == 0], 0.0)


def test_ignored_targets_may_hold_anything():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 3, 5))
    targets = np.array([[1, -100, 4], [-100, 0, 2]])
    mask = (targets >= 0).astype(np.int64)
    loss, cache = cross_entropy_forward(logits, targets, mask)
    assert math.isclose(float(loss), ce_loop(logits, np.maximum(targets, 0), mask), rel_tol=1e-12)
    assert np.all(np.isfinite(cross_entropy_backward(1.0, cache)))


def test_all_masked_gives_zero_loss_and_zero_gradient(xp):
    logits = xp.ones((2, 3, 4))
    loss, cache = cross_entropy_forward(logits, xp.zeros((2, 3), dtype=xp.int64), xp.zeros((2, 3)))
    assert float(loss) == 0.0
    assert float(xp.abs(cross_entropy_backward(1.0, cache)).max()) == 0.0


def test_extreme_float32_logits(xp):
    """Logits of magnitude 1e4 in float32: finite loss and gradient, no overflow warning."""
    logits = xp.asarray([[[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]]], dtype=xp.float32)
    targets = xp.asarray([[1, 0]])
    loss, cache = cross_entropy_forward(logits, targets)
    dlogits = to_numpy(cross_entropy_backward(xp.float32(1.0), cache))
    assert loss.dtype == dlogits.dtype == np.float32
    # row 0: -log p(1) = 2e4; row 1: logsumexp = 1e4 + log 2, minus z[0] = -1e4
    np.testing.assert_allclose(float(loss), (2e4 + 2e4 + math.log(2)) / 2, rtol=1e-6)
    np.testing.assert_allclose(dlogits, [[[0.5, -0.5, 0.0], [-0.5, 0.25, 0.25]]], atol=1e-7)


def test_dtype_follows_logits(xp):
    for dtype in (xp.float32, xp.float64):
        logits = xp.zeros((1, 2, 3), dtype=dtype)
        loss, cache = cross_entropy_forward(logits, xp.asarray([[0, 2]]))
        assert loss.dtype == dtype and cross_entropy_backward(1.0, cache).dtype == dtype
        assert math.isclose(float(loss), math.log(3), rel_tol=1e-6)


def test_backward_does_not_mutate_or_alias(xp):
    rng = np.random.default_rng(1)
    logits = xp.asarray(rng.standard_normal((2, 3, 4)))
    targets = xp.asarray(rng.integers(0, 4, (2, 3)))
    mask = xp.asarray([[1, 1, 0], [0, 1, 1]])
    _, cache = cross_entropy_forward(logits, targets, mask)
    arrays_in = (logits, targets, mask, *cache[:3])
    saved = [to_numpy(a).copy() for a in arrays_in]
    dlogits = cross_entropy_backward(1.0, cache)
    for a, before in zip(arrays_in, saved):
        np.testing.assert_array_equal(to_numpy(a), before)
    for a in arrays_in:
        assert not xp.shares_memory(dlogits, a)


@pytest.mark.parametrize(
    "logits, targets, mask, match",
    [
        (np.zeros(4), np.zeros((), np.int64), None, "logits: expected an array of shape"),
        (np.zeros((2, 3), np.int64), np.zeros(2, np.int64), None, "logits: expected a floating"),
        (np.zeros((2, 3, 4)), np.zeros((2, 4), np.int64), None, r"targets: expected shape \(2, 3\)"),
        (np.zeros((2, 3)), np.zeros(2), None, "targets: expected an integer dtype, got float64"),
        (np.zeros((2, 3)), np.array([0, 3]), None, r"targets: expected values in \[0, 3\).*max 3"),
        (np.zeros((2, 3)), np.array([-1, 0]), None, r"targets: .*min -1"),
        (np.zeros((2, 3)), np.array([0, 1]), np.ones(3), r"mask: expected shape \(2,\)"),
        (np.zeros((2, 3)), np.array([0, 1]), np.array([1, 2]), "mask: expected only 0/1"),
    ],
)
def test_bad_inputs_raise_value_error(logits, targets, mask, match):
    with pytest.raises(ValueError, match=match):
        cross_entropy_forward(logits, targets, mask)
