"""Tests for the embedding lookup: ``embedding_forward`` / ``embedding_backward``."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from alignment_np.backend import to_numpy
from alignment_np.functional.embedding import embedding_backward, embedding_forward
from alignment_np.gradcheck import check_gradients


@st.composite
def lookups(draw):
    """idx (B, T) from a small vocabulary (so ids repeat), w (V, D), dout (B, T, D)."""
    v, d = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    b, t = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    idx = draw(arrays(np.int64, (b, t), elements=st.integers(0, v - 1)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return idx, rng.standard_normal((v, d)), rng.standard_normal((b, t, d))


def scatter_loop(idx, dout, vocab_size):
    """Obviously correct: visit every position, add its gradient to the row it read."""
    dw = np.zeros((vocab_size, dout.shape[-1]))
    flat_idx, flat_g = idx.reshape(-1), dout.reshape(-1, dout.shape[-1])
    for n in range(flat_idx.size):
        dw[flat_idx[n]] += flat_g[n]
    return dw


@given(lookups())
def test_gradient_matches_finite_differences(case):
    idx, w, dout = case
    _, cache = embedding_forward(idx, w)
    dw = embedding_backward(dout, cache)
    check_gradients(lambda w: embedding_forward(idx, w)[0], [w], [dw], dout=dout, tol=1e-6,
                    names=["w"])


@given(lookups())
def test_backward_matches_scatter_loop_and_add_at(case):
    idx, w, dout = case
    dw = embedding_backward(dout, embedding_forward(idx, w)[1])
    np.testing.assert_allclose(dw, scatter_loop(idx, dout, w.shape[0]), rtol=1e-12, atol=1e-12)
    reference = np.zeros_like(w)
    np.add.at(reference, idx.reshape(-1), dout.reshape(-1, w.shape[1]))
    np.testing.assert_allclose(dw, reference, rtol=1e-12, atol=1e-12)


@given(lookups())
def test_forward_gathers_rows(case):
    idx, w, _ = case
    out = embedding_forward(idx, w)[0]
    for b in range(idx.shape[0]):
        for t in range(idx.shape[1]):
            np.testing.assert_array_equal(out[b, t], w[idx[b, t]])


def test_repeated_ids_accumulate():
    """The pitfall ``dw[idx] += dout`` keeps one write per id; the kernel must keep all."""
    idx = np.array([[2, 2, 2, 0]])
    w = np.zeros((3, 2))
    dout = np.arange(8.0).reshape(1, 4, 2)
    dw = embedding_backward(dout, embedding_forward(idx, w)[1])
    np.testing.assert_array_equal(dw, [[6.0, 7.0], [0.0, 0.0], [0.0 + 2 + 4, 1.0 + 3 + 5]])


def test_unused_rows_get_zero_and_dtype_follows(xp):
    w = xp.ones((5, 3), dtype=xp.float32)
    idx = xp.asarray([[1, 3], [3, 1]])
    out, cache = embedding_forward(idx, w)
    assert out.shape == (2, 2, 3) and out.dtype == xp.float32
    dw = to_numpy(embedding_backward(xp.ones_like(out), cache))
    assert dw.dtype == np.float32
    np.testing.assert_array_equal(dw[[0, 2, 4]], 0.0)
    np.testing.assert_array_equal(dw[[1, 3]], 2.0)


def test_large_vocabulary_matches_add_at():
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 5000, (4, 64))
    dout = rng.standard_normal((4, 64, 8)).astype(np.float32)
    dw = embedding_backward(dout, (idx, 5000))
    reference = np.zeros((5000, 8), np.float32)
    np.add.at(reference, idx.reshape(-1), dout.reshape(-1, 8))
    np.testing.assert_allclose(dw, reference, rtol=1e-5, atol=1e-6)


def test_backward_does_not_mutate_or_alias(xp):
    rng = np.random.default_rng(4)
    w = xp.asarray(rng.standard_normal((4, 3)))
    idx = xp.asarray([[0, 1, 1], [3, 0, 2]])
    out, cache = embedding_forward(idx, w)
    dout = xp.asarray(rng.standard_normal(out.shape))
    saved = [to_numpy(a).copy() for a in (w, idx, dout)]
    dw = embedding_backward(dout, cache)
    for a, before in zip((w, idx, dout), saved):
        np.testing.assert_array_equal(to_numpy(a), before)
    for a in (w, idx, dout, out):
        assert not xp.shares_memory(dw, a)
    assert not xp.shares_memory(out, w)  # the forward's gather is a copy too
