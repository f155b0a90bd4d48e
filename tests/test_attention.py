"""Tests for causal multi-head self-attention (``functional/attention.py``)."""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.backend import to_numpy
from alignment_np.functional import attention as attn
from alignment_np.functional.attention import (
    attention_backward,
    attention_bias,
    attention_forward,
    attention_forward_kv,
    attention_forward_loop,
    attention_probs,
    attention_tiles,
    causal_bias,
    empty_kv_cache,
)
from alignment_np.gradcheck import check_gradients, numerical_gradient, relative_error

ONE_TILE = (1 << 30, 1 << 30)  # (TILE_QUERIES, TILE_ELEMENTS): the plain batched computation


@contextmanager
def tiling(queries: int, elements: int):
    """Run with other tile sizes (module constants), restored afterwards."""
    saved = attn.TILE_QUERIES, attn.TILE_ELEMENTS
    attn.TILE_QUERIES, attn.TILE_ELEMENTS = queries, elements
    try:
        yield
    finally:
        attn.TILE_QUERIES, attn.TILE_ELEMENTS = saved


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


# Tile sizes for the property tests: one tile (the plain computation), blocks of
# 2 or 3 queries (several blocks, the last one short) with one batch row per tile.
TILINGS = st.sampled_from([ONE_TILE, (2, 1), (3, 1), (2, 1 << 30)])


@st.composite
def attention_cases(draw):
    """qkv (B, T, 3D) float64, H, mask (B, T) or None, dout (B, T, D), tiling."""
    n_head, hd = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    b, t = draw(st.integers(1, 2)), draw(st.integers(1, 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    d = n_head * hd
    qkv = rng.standard_normal((b, t, 3 * d)) * draw(st.floats(0.3, 2.0))
    style = draw(st.sampled_from(["none", "left", "right", "holes"]))
    mask = None if style == "none" else padding_mask(rng, b, t, style)
    return qkv, n_head, mask, rng.standard_normal((b, t, d)), draw(TILINGS)


@given(attention_cases())
def test_gradient_matches_finite_differences(case):
    qkv, n_head, mask, dout, tiles = case
    with tiling(*tiles):
        _, cache = attention_forward(qkv, n_head, mask)
        dqkv = attention_backward(dout, cache)
        check_gradients(
            lambda qkv: attention_forward(qkv, n_head, mask)[0], [qkv], [dqkv], dout=dout,
            tol=1e-6, names=["qkv"],
        )


@given(attention_cases())
def test_forward_matches_loop(case):
    qkv, n_head, mask, _, tiles = case
    with tiling(*tiles):
        out = attention_forward(qkv, n_head, mask)[0]
    np.testing.assert_allclose(out, attention_forward_loop(qkv, n_head, mask), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("tiles", [ONE_TILE, (2, 1)], ids=["one-tile", "tiled"])
@pytest.mark.parametrize("style", ["none", "left", "holes"])
def test_backward_matches_finite_differences_of_the_loop(style, tiles):
    """The vectorised backward against the slow loop's own numerical gradient."""
    rng = np.random.default_rng({"none": 0, "left": 1, "holes": 2}[style])
    b, t, n_head, hd = 2, 5, 2, 2
    qkv = rng.standard_normal((b, t, 3 * n_head * hd))
    mask = None if style == "none" else padding_mask(rng, b, t, style)
    dout = rng.standard_normal((b, t, n_head * hd))
    with tiling(*tiles):
        dqkv = attention_backward(dout, attention_forward(qkv, n_head, mask)[1])
    numeric = numerical_gradient(lambda q: attention_forward_loop(q, n_head, mask), [qkv], dout)
    assert relative_error(dqkv, numeric) < 1e-8


@given(attention_cases())
def test_tiling_changes_nothing_but_rounding(case):
    """Many small tiles (causal blocks skipped) = one tile (the plain batched formulas)."""
    qkv, n_head, mask, dout, tiles = case
    results = []
    for setting in (ONE_TILE, tiles):
        with tiling(*setting):
            out, cache = attention_forward(qkv, n_head, mask)
            results.append((out, attention_backward(dout, cache), attention_probs(cache)))
    for plain, tiled in zip(*results):
        np.testing.assert_allclose(tiled, plain, rtol=1e-12, atol=1e-13)


@given(attention_cases())
def test_probabilities_are_causal_masked_distributions(case):
    qkv, n_head, mask, _, tiles = case
    with tiling(*tiles):
        probs = attention_probs(attention_forward(qkv, n_head, mask)[1])  # (B, H, T, T)
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
    qkv, n_head, mask, _, tiles = case
    b, t, _ = qkv.shape
    with tiling(*tiles):
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
            np.testing.assert_allclose(attention_forward(changed, n_head, mask)[0][real],
                                       out[real], rtol=1e-12, atol=1e-12)


@given(attention_cases())
def test_precomputed_bias_gives_the_same_result(case):
    """A bias built once (as TinyGPT does) = the mask given to the kernel; and with no
    padding, the explicit (T, T) causal bias = the kernel's own diagonal-square masking."""
    qkv, n_head, mask, dout, tiles = case
    t = qkv.shape[1]
    bias = causal_bias(t, t, qkv.dtype) if mask is None else attention_bias(t, t, mask, qkv.dtype)
    with tiling(*tiles):
        expected, cache = attention_forward(qkv, n_head, mask)
        out, bias_cache = attention_forward(qkv, n_head, mask, bias)
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(attention_backward(dout, bias_cache),
                                      attention_backward(dout, cache))


@pytest.mark.parametrize("tiles", [(64, 1 << 17), (2, 1), (3, 4), (4, 1 << 30), ONE_TILE])
@pytest.mark.parametrize("b, n_head, t", [(1, 1, 1), (3, 2, 7), (2, 4, 64), (8, 8, 256), (5, 3, 130)])
def test_tiles_cover_the_causal_triangle_exactly_once(b, n_head, t, tiles):
    """Every (row, query i, key j <= i) lies in exactly one tile, nothing right of a
    tile's last query is in it, and the scores computed are fewer than B*H*T^2 as soon
    as there are several query blocks: n blocks compute (n + 1) / (2n) of the square."""
    with tiling(*tiles):
        plan = attention_tiles(b, n_head, t)
    covered = np.zeros((b, t, t), dtype=np.int64)
    for b0, b1, q0, q1 in plan:
        assert 0 <= b0 < b1 <= b and 0 <= q0 < q1 <= t
        covered[b0:b1, q0:q1, :q1] += 1  # the tile's scores: queries [q0, q1), keys [0, q1)
    lower = np.tril(np.ones((t, t), dtype=np.int64))
    assert np.all(covered[:, lower == 1] == 1)  # the causal triangle, once
    assert np.all(covered <= 1)  # no score twice, masked or not
    n_blocks = -(-t // min(tiles[0], t))
    computed = sum((b1 - b0) * n_head * (q1 - q0) * q1 for b0, b1, q0, q1 in plan)
    if t % n_blocks == 0 and t // n_blocks == min(tiles[0], t):  # equal blocks: the closed form
        assert computed * 2 * n_blocks == b * n_head * t * t * (n_blocks + 1)
    if n_blocks > 1:
        assert computed < b * n_head * t * t


def test_tiles_keep_near_the_target_size():
    """Rows are grouped so a tile holds about TILE_ELEMENTS scores (never less than a row)."""
    with tiling(64, 1 << 17):
        plan = attention_tiles(8, 8, 256)  # one row: 8 heads x 64 queries x 256 keys = 2^17
        assert {(b1 - b0) for b0, b1, _, _ in plan} == {1}
        assert len(plan) == 8 * 4
        plan = attention_tiles(16, 4, 64)  # one row's block: 4 x 64 x 64 = 2^14 -> 8 rows
        assert {(b1 - b0) for b0, b1, _, _ in plan} == {8}
    with tiling(64, 1):  # a tiny target still takes one whole row
        assert {(b1 - b0) for b0, b1, _, _ in attention_tiles(3, 2, 10)} == {1}


@pytest.mark.parametrize("style", ["none", "left"])
@pytest.mark.parametrize("tiles", [ONE_TILE, (2, 1)], ids=["one-tile", "tiled"])
def test_kv_cache_matches_full_attention(xp, style, tiles):
    """Feeding the sequence in chunks through a key/value cache gives the full output:
    a first chunk (a prompt, run as the training forward) then shorter ones."""
    rng = np.random.default_rng(5)
    b, t, n_head, hd = 3, 7, 2, 3
    qkv = xp.asarray(rng.standard_normal((b, t, 3 * n_head * hd)))
    mask = None if style == "none" else xp.asarray(padding_mask(rng, b, t, "left"))
    with tiling(*tiles):
        full = attention_forward(qkv, n_head, mask)[0]
        k_cache, v_cache = empty_kv_cache(b, n_head, t + 2, hd, qkv.dtype, xp)
        pieces, start = [], 0
        for size in (3, 1, 1, 2):
            end = start + size
            running = None if mask is None else mask[:, :end]
            pieces.append(attention_forward_kv(qkv[:, start:end], n_head, k_cache, v_cache, start,
                                               running))
            start = end
    np.testing.assert_allclose(to_numpy(xp.concatenate(pieces, axis=1)), to_numpy(full),
                               rtol=1e-12, atol=1e-12)


def test_kv_cache_holds_the_scaled_keys_transposed_and_the_values(xp):
    rng = np.random.default_rng(9)
    b, t, n_head, hd = 2, 5, 2, 3
    d = n_head * hd
    qkv = xp.asarray(rng.standard_normal((b, t, 3 * d)))
    k_cache, v_cache = empty_kv_cache(b, n_head, t + 1, hd, qkv.dtype, xp)
    assert k_cache.shape == (b, n_head, hd, t + 1) and v_cache.shape == (b, n_head, t + 1, hd)
    attention_forward_kv(qkv[:, :2], n_head, k_cache, v_cache, 0)
    attention_forward_kv(qkv[:, 2:], n_head, k_cache, v_cache, 2)
    heads = to_numpy(qkv).reshape(b, t, 3, n_head, hd)
    keys_t = heads[:, :, 1].transpose(0, 2, 3, 1) / math.sqrt(hd)  # scaled as the scores need
    np.testing.assert_allclose(to_numpy(k_cache)[..., :t], keys_t, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(to_numpy(v_cache)[:, :, :t], heads[:, :, 2].transpose(0, 2, 1, 3))
    assert not np.any(to_numpy(k_cache)[..., t:]) and not np.any(to_numpy(v_cache)[:, :, t:])


def test_causal_bias_is_cached_and_read_only():
    a = causal_bias(6, 6, np.float32)
    assert causal_bias(6, 6, np.float32) is a
    assert causal_bias(6, 6, np.float64) is not a and causal_bias(6, 6, np.float64).dtype == np.float64
    assert not a.flags.writeable
    np.testing.assert_array_equal(np.isinf(a), np.triu(np.ones((6, 6), dtype=bool), k=1))
    # the decoding case (fewer queries than keys) lines the queries up with the last keys
    np.testing.assert_array_equal(causal_bias(2, 6, np.float64), a[4:])


@pytest.mark.parametrize("tiles", [ONE_TILE, (3, 1)], ids=["one-tile", "tiled"])
def test_extreme_float32_inputs(xp, tiles):
    """qkv of magnitude 1e4 in float32: scores ~1e8, still a finite, exact-ish softmax."""
    rng = np.random.default_rng(6)
    b, t, n_head, hd = 2, 8, 2, 4
    qkv64 = rng.standard_normal((b, t, 3 * n_head * hd)) * 1e4
    mask = padding_mask(rng, b, t, "left")
    qkv = xp.asarray(qkv64, dtype=xp.float32)
    with tiling(*tiles):
        out, cache = attention_forward(qkv, n_head, xp.asarray(mask))
        dqkv = attention_backward(xp.ones_like(out), cache)
    out, dqkv, probs = to_numpy(out), to_numpy(dqkv), to_numpy(attention_probs(cache))
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
        probs = attention_probs(cache)
        assert probs.shape == (2, 2, 3, 3) and probs.dtype == dtype
        assert all(e.dtype == dtype for e in cache["exp_scores"])
        assert cache["inv_sums"].shape == (2, 2, 3, 1) and cache["inv_sums"].dtype == dtype
        dqkv = attention_backward(xp.ones_like(out), cache)
        assert dqkv.shape == qkv.shape and dqkv.dtype == dtype


@pytest.mark.parametrize("tiles", [ONE_TILE, (2, 1)], ids=["one-tile", "tiled"])
def test_backward_does_not_mutate_or_alias(xp, tiles):
    rng = np.random.default_rng(7)
    qkv = xp.asarray(rng.standard_normal((2, 5, 12)))
    mask = xp.asarray([[0, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with tiling(*tiles):
        out, cache = attention_forward(qkv, 2, mask)
        dout = xp.asarray(rng.standard_normal(out.shape))
        arrays_in = [qkv, mask, dout, out, *[cache[k] for k in ("q", "k", "v", "out", "inv_sums")],
                     *cache["exp_scores"]]
        saved = [to_numpy(a).copy() for a in arrays_in]
        dqkv = attention_backward(dout, cache)
    for a, before in zip(arrays_in, saved):
        np.testing.assert_array_equal(to_numpy(a), before)
    for a in arrays_in:
        assert not xp.shares_memory(dqkv, a)


@given(attention_cases())
def test_single_head_matches_the_matrix_formula(case):
    """With H = 1: out = softmax(q k^T / sqrt(D) + bias) v, written out in full; and the
    probabilities rebuilt from the cache are that softmax."""
    qkv, _, mask, _, tiles = case
    d = qkv.shape[-1] // 3
    q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
    t = qkv.shape[1]
    bias = causal_bias(t, t, np.float64) if mask is None else attention_bias(t, t, mask, np.float64)[:, 0]
    scores = scores + bias
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    with tiling(*tiles):
        out, cache = attention_forward(qkv, 1, mask)
    np.testing.assert_allclose(out, probs @ v, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(attention_probs(cache)[:, 0], probs, rtol=1e-12, atol=1e-15)


@pytest.mark.torch
@pytest.mark.parametrize("padded", [False, True])
def test_tiled_attention_matches_torch(padded):
    """Several tiles (blocks of 3 queries, a short last block, one row per tile) against
    torch's scaled_dot_product_attention and autograd, in float64."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    b, t, n_head, hd = 3, 8, 2, 3
    d = n_head * hd
    qkv = rng.standard_normal((b, t, 3 * d))
    mask = padding_mask(rng, b, t, "left") if padded else None
    dout = rng.standard_normal((b, t, d))
    with tiling(3, 1):
        out, cache = attention_forward(qkv, n_head, mask)
        dqkv = attention_backward(dout, cache)
    allowed = torch.tril(torch.ones(t, t, dtype=torch.bool))
    if mask is not None:
        real = torch.as_tensor(mask).bool()[:, None, :]
        allowed = (allowed & (real | torch.eye(t, dtype=torch.bool)))[:, None]
    qkv_t = torch.tensor(qkv, requires_grad=True)
    q, k, v = (z.reshape(b, t, n_head, hd).transpose(1, 2) for z in qkv_t.split(d, dim=2))
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    y = y.transpose(1, 2).reshape(b, t, d)
    y.backward(torch.as_tensor(dout))
    np.testing.assert_allclose(out, y.detach().numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dqkv, qkv_t.grad.numpy(), rtol=1e-6, atol=1e-9)
