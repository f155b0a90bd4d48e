"""Tests for causal multi-head self-attention (``functional/attention.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.backend import to_numpy
from alignment_np.functional.attention import (
    attention_backward,
    attention_bias,
    attention_forward,
    attention_forward_kv,
    attention_forward_loop,
    causal_bias,
)
from alignment_np.gradcheck import check_gradients, numerical_gradient, relative_error


def padding_mask(rng, b: int, t: int, style: str):
    """(B, T) 0/1: 'none' all real, 'left'/'right' padding, 'holes' random, >= 1 real per row."""
    mask = np.ones((b, t), dtype=np.int64)
    for row in range(b):
        n_pad = int(rng.integers(0, t))  # at most t - 1: one real token stays
        if style == "left":
            mask[row, :n_pad] = 0
        elif style == "right":
            mask[row, t - n_pad :] = 0
        elif style == "holes":
            mask[row] = rng.integers(0, 2, t)
            mask[row, rng.integers(0, t)] = 1
    return mask


@st.composite
def attention_cases(draw):
    """qkv (B, T, 3D) float64, H, mask (B, T) or None, dout (B, T, D)."""
    n_head, hd = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    b, t = draw(st.integers(1, 2)), draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    d = n_head * hd
    qkv = rng.standard_normal((b, t, 3 * d)) * draw(st.floats(0.3, 2.0))
    style = draw(st.sampled_from(["none", "left", "right", "holes"]))
    mask = None if style == "none" else padding_mask(rng, b, t, style)
    return qkv, n_head, mask, rng.standard_normal((b, t, d))


@given(attention_cases())
def test_gradient_matches_finite_differences(case):
    qkv, n_head, mask, dout = case
    _, cache = attention_forward(qkv, n_head, mask)
    dqkv = attention_backward(dout, cache)
    check_gradients(
        lambda qkv: attention_forward(qkv, n_head, mask)[0], [qkv], [dqkv], dout=dout, tol=1e-6,
        names=["qkv"],
    )


@given(attention_cases())
def test_forward_matches_loop(case):
    qkv, n_head, mask, _ = case
    np.testing.assert_allclose(
        attention_forward(qkv, n_head, mask)[0],
        attention_forward_loop(qkv, n_head, mask),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("style", ["none", "left", "holes"])
def test_backward_matches_finite_differences_of_the_loop(style):
    """The vectorised backward against the slow loop's own numerical gradient."""
    rng = np.random.default_rng({"none": 0, "left": 1, "holes": 2}[style])
    b, t, n_head, hd = 2, 4, 2, 2
    qkv = rng.standard_normal((b, t, 3 * n_head * hd))
    mask = None if style == "none" else padding_mask(rng, b, t, style)
    dout = rng.standard_normal((b, t, n_head * hd))
    dqkv = attention_backward(dout, attention_forward(qkv, n_head, mask)[1])
    numeric = numerical_gradient(lambda q: attention_forward_loop(q, n_head, mask), [qkv], dout)
    assert relative_error(dqkv, numeric) < 1e-8


@given(attention_cases())
def test_probabilities_are_causal_masked_distributions(case):
    qkv, n_head, mask, _ = case
    _, cache = attention_forward(qkv, n_head, mask)
    probs = cache["probs"]  # (B, H, T, T)
    b, _, t, _ = probs.shape
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-12)
    future = np.triu(np.ones((t, t), dtype=bool), k=1)
    assert np.all(probs[:, :, future] == 0.0)
    if mask is not None:
        for row in range(b):
            pads = np.flatnonzero(mask[row] == 0)
            for j in pads:  # a padding key is seen by nobody but itself
                others = [i for i in range(t) if i != j]
                assert np.all(probs[row, :, others, j] == 0.0)


@given(attention_cases())
def test_output_ignores_the_future_and_padding(case):
    """Changing the tokens after position t, or the padding, leaves the real outputs at t."""
    qkv, n_head, mask, _ = case
    b, t, _ = qkv.shape
    out = attention_forward(qkv, n_head, mask)[0]
    cut = t // 2
    changed = qkv.copy()
    changed[:, cut + 1 :] += 1.0
    np.testing.assert_array_equal(attention_forward(changed, n_head, mask)[0][:, : cut + 1],
                                  out[:, : cut + 1])
    if mask is not None:
        changed = qkv.copy()
        changed[mask == 0] += 1.0
        real = mask == 1
        np.testing.assert_allclose(attention_forward(changed, n_head, mask)[0][real], out[real],
                                   rtol=1e-12, atol=1e-12)


@given(attention_cases())
def test_precomputed_bias_gives_the_same_result(case):
    qkv, n_head, mask, _ = case
    t = qkv.shape[1]
    bias = causal_bias(t, t, qkv.dtype) if mask is None else attention_bias(t, t, mask, qkv.dtype)
    np.testing.assert_array_equal(attention_forward(qkv, n_head, mask, bias)[0],
                                  attention_forward(qkv, n_head, mask)[0])


@pytest.mark.parametrize("style", ["none", "left"])
def test_kv_cache_matches_full_attention(xp, style):
    """Feeding the sequence in chunks through a key/value cache gives the full output."""
    rng = np.random.default_rng(5)
    b, t, n_head, hd = 3, 7, 2, 3
    qkv = xp.asarray(rng.standard_normal((b, t, 3 * n_head * hd)))
    mask = None if style == "none" else xp.asarray(padding_mask(rng, b, t, "left"))
    full = attention_forward(qkv, n_head, mask)[0]
    k_cache = xp.zeros((b, n_head, t + 2, hd))
    v_cache = xp.zeros((b, n_head, t + 2, hd))
    pieces, start = [], 0
    for size in (3, 1, 1, 2):
        end = start + size
        running = None if mask is None else mask[:, :end]
        pieces.append(attention_forward_kv(qkv[:, start:end], n_head, k_cache, v_cache, start,
                                           running))
        start = end
    np.testing.assert_allclose(to_numpy(xp.concatenate(pieces, axis=1)), to_numpy(full),
                               rtol=1e-12, atol=1e-12)


def test_causal_bias_is_cached_and_read_only():
    a = causal_bias(6, 6, np.float32)
    assert causal_bias(6, 6, np.float32) is a
    assert causal_bias(6, 6, np.float64) is not a and causal_bias(6, 6, np.float64).dtype == np.float64
    assert not a.flags.writeable
    np.testing.assert_array_equal(np.isinf(a), np.triu(np.ones((6, 6), dtype=bool), k=1))
    # the decoding case (fewer queries than keys) lines the queries up with the last keys
    np.testing.assert_array_equal(causal_bias(2, 6, np.float64), a[4:])


def test_extreme_float32_inputs(xp):
    """qkv of magnitude 1e4 in float32: scores ~1e8, still a finite, exact-ish softmax."""
    rng = np.random.default_rng(6)
    b, t, n_head, hd = 2, 8, 2, 4
    qkv64 = rng.standard_normal((b, t, 3 * n_head * hd)) * 1e4
    mask = padding_mask(rng, b, t, "left")
    qkv = xp.asarray(qkv64, dtype=xp.float32)
    out, cache = attention_forward(qkv, n_head, xp.asarray(mask))
    dqkv = attention_backward(xp.ones_like(out), cache)
    out, dqkv, probs = to_numpy(out), to_numpy(dqkv), to_numpy(cache["probs"])
    assert out.dtype == dqkv.dtype == np.float32
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(dqkv))
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-6)
    expected = attention_forward_loop(qkv64.astype(np.float32).astype(np.float64), n_head, mask)
    real = mask == 1
    np.testing.assert_allclose(out[real], expected[real], rtol=1e-6, atol=1e-6)


def test_dtype_and_shapes(xp):
    for dtype in (xp.float32, xp.float64):
        qkv = xp.ones((2, 3, 12), dtype=dtype)
        out, cache = attention_forward(qkv, 2)
        assert out.shape == (2, 3, 4) and out.dtype == dtype
        assert cache["probs"].shape == (2, 2, 3, 3) and cache["probs"].dtype == dtype
        dqkv = attention_backward(xp.ones_like(out), cache)
        assert dqkv.shape == qkv.shape and dqkv.dtype == dtype


def test_backward_does_not_mutate_or_alias(xp):
    rng = np.random.default_rng(7)
    qkv = xp.asarray(rng.standard_normal((2, 4, 12)))
    mask = xp.asarray([[0, 1, 1, 1], [1, 1, 1, 0]])
    out, cache = attention_forward(qkv, 2, mask)
    dout = xp.asarray(rng.standard_normal(out.shape))
    arrays_in = [qkv, mask, dout, out, *[cache[k] for k in ("q", "k", "v", "probs", "out")]]
    saved = [to_numpy(a).copy() for a in arrays_in]
    dqkv = attention_backward(dout, cache)
    for a, before in zip(arrays_in, saved):
        np.testing.assert_array_equal(to_numpy(a), before)
    for a in arrays_in:
        assert not xp.shares_memory(dqkv, a)


@given(attention_cases())
def test_single_head_matches_the_matrix_formula(case):
    """With H = 1: out = softmax(q k^T / sqrt(D) + bias) v, written out in full."""
    qkv, _, mask, dout = case
    d = qkv.shape[-1] // 3
    q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
    t = qkv.shape[1]
    bias = causal_bias(t, t, np.float64) if mask is None else attention_bias(t, t, mask, np.float64)[:, 0]
    scores = scores + bias
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(attention_forward(qkv, 1, mask)[0], probs @ v, rtol=1e-12, atol=1e-12)
