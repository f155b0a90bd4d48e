"""Causal multi-head self-attention on a fused qkv (Vaswani et al. 2017, Eq. 1).

Shapes: qkv (B, T, 3D) is ``[q | k | v]`` along the last axis, each split into
H heads of width hd = D / H; out (B, T, D). For each head,

    S = q k^T / sqrt(hd) + bias      (B, H, T, T)   scores
    P = softmax(S)                   (B, H, T, T)   each row sums to 1
    y = P v                          (B, H, T, hd)

and the heads are laid side by side again: out[b, t] = concat_h y[b, h, t].

The mask is an additive ``bias`` of 0 (may attend) and -inf (may not):
``exp(-inf) = 0`` removes a key exactly, with no magic "-1e9". Query t may
attend to key j when j <= t (causal) and key j is a real token (the key
padding mask, 1 = real). A padding *query* would then have no key at all
under left padding, and its softmax would be 0/0; it is allowed to attend to
itself, which keeps every row finite and changes nothing that a real token
sees (real queries never attend to padding keys).

Softmax is max-shifted: subtracting the row max m makes every exponent <= 0.

Backward, with dy = dL/dy:

    dv = P^T dy
    dP = dy v^T
    dS = P * (dP - sum_j(dP * P))               (softmax backward, per row)
    dq = dS k / sqrt(hd),   dk = dS^T q / sqrt(hd)

The row sum ``sum_j P_ij dP_ij = sum_j P_ij (dy_i . v_j) = dy_i . y_i``: it is
computed from dy and the forward's output y, over hd numbers per row rather
than T (as FlashAttention's backward does: Dao et al. 2022, Appendix B,
D_i = rowsum(dO_i * O_i)).

How it runs fast (the same numbers, less work)
----------------------------------------------
The (T, T) score matrices dominate: for T = 256 they hold 8x more numbers
than q, k and v together, and NumPy's elementwise passes over them (mask,
max, subtract, exp) run on one core. Three ideas, all from FlashAttention
(Dao et al. 2022), cut that work:

1. **Tiles, and skipping the masked half.** The queries are cut into blocks
   of ``TILE_QUERIES`` rows; the block of queries [q0, q1) may only see keys
   [0, q1), so the scores right of that are never computed (with n blocks,
   (n - 1) / 2n of the (T, T) matrix is skipped: 3/8 with 4). Only the last
   (bq, bq) square of a block needs the causal mask. Each tile also takes
   only as many batch rows as keep it near ``TILE_ELEMENTS`` numbers, so it
   stays in the CPU's cache between passes. When T <= TILE_QUERIES and the
   whole batch fits, there is a single tile: the plain batched computation
   of the formulas above (``attention_tiles`` says which tiles a call uses).
2. **Deferred normalisation** (Dao et al. 2022, Algorithm 1, line 12). The
   tile keeps E = exp(S - m) and the row sums l = sum_j E_ij; instead of
   dividing the (T, T) matrix E by l, the (T, hd) output is divided:
   y = (E v) / l. Backward uses P = E / l through r = 1 / l on (T, hd) arrays:

       dv = E^T (r dy)
       dS = E * r (dP - D) = E * ([r dy, -r D] @ [v^T; 1])

3. **Row sums inside the GEMM.** A column of ones appended to v gives the
   row sums as one more output column: E @ [v, 1] = [E v, l]. Likewise the
   "- D" of the softmax backward rides in the dP product as the extra column
   [r dy, -r D] against a row of ones under v^T. Each costs 1/hd more GEMM
   work and saves a whole pass over the scores (a row sum in forward, a
   subtraction in backward). The 1/sqrt(hd) rides along too: it scales the
   copy of k^T in forward and of [v^T; 1] in backward, so no pass scales S,
   dq or dk.

So a tile costs four passes over its scores in forward (the mask on the
diagonal square, max, subtract, exp) and one in backward (times E), instead
of six and two, on (n + 1) / 2n of the scores with n query blocks.
``attention_probs(cache)`` rebuilds the full (B, H, T, T) matrix P from the
tiles, for a learner who wants to look at it.

The per-head views of qkv, dqkv and out are strided views, not copies: NumPy
hands a 2-D slice whose last axis is contiguous straight to BLAS. k^T is
copied to a contiguous (B, H, hd, T) array because a GEMM whose second
operand is a transposed view with a short inner dimension hd runs slower in
OpenBLAS (up to ~4x measured); for the same reason the key/value cache of
generation stores its keys already transposed (and scaled),
(B, H, hd, max_len), so nothing is copied per new token. The small (B, H, T,
hd) copies are read in the memory order of qkv, (B, T, H, hd): NumPy copies a
strided array ~2x faster that way.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from .parallel import for_blocks, num_threads
from .workspace import empty, zeros

# Queries per tile, and the number of scores a tile aims at (256 Ki float32 =
# 1 MiB, a core's L2 cache). Chosen by measurement (benchmarks/tile_sizes.py;
# docs/performance.md, "Query blocks of 64"): on the benchmark configs (T = 64
# to 256, two threads), 64 queries against 32 left the forward within 5% and
# made the backward 6-21% faster (fewer, larger GEMMs, and fewer partial sums
# of dk and dv to add up); 128 made the forward up to 22% slower. Fewer queries
# per block skip more of the masked half but make more, smaller GEMMs. With
# 64 queries, 2^17 scores per tile (fewer batch rows per tile at small and
# medium) were 5-8% slower than 2^18, and 2^19 (more rows at medium) 2-4%.
# Keep TILE_QUERIES * T * hd under ~1e6 on long sequences: OpenBLAS
# runs a GEMM that small on one thread with its small-matrix kernel, larger
# ones on all threads, which at these shapes was measured 2x slower.
# Changing them changes no result beyond rounding.
TILE_QUERIES = 64
TILE_ELEMENTS = 1 << 18

# (array module name, T, dtype) -> read-only (T, T) causal bias. A constant,
# shared by every call: it holds no gradient state.
_CAUSAL_BIAS: dict = {}


def _positions(xp, n_queries: int, n_keys: int):
    """Absolute positions: queries are the last n_queries of n_keys positions."""
    q_pos = xp.arange(n_keys - n_queries, n_keys)[:, None]  # (Tq, 1)
    k_pos = xp.arange(n_keys)[None, :]  # (1, Tk)
    return q_pos, k_pos


def causal_bias(n_queries: int, n_keys: int, dtype, xp=np):
    """Additive causal mask (Tq, Tk): 0 where key j <= the query's position, -inf after.

    The queries are the last Tq of the Tk positions (Tq == Tk in training;
    Tq < Tk when decoding with a key/value cache). The square (training) case
    is cached; do not write into the returned array.
    """
    square = n_queries == n_keys
    key = (xp.__name__, n_keys, np.dtype(dtype).str)
    if square and key in _CAUSAL_BIAS:
        return _CAUSAL_BIAS[key]
    q_pos, k_pos = _positions(xp, n_queries, n_keys)
    bias = xp.where(k_pos <= q_pos, 0.0, -np.inf).astype(dtype)
    if square:
        if xp is np:
            bias.flags.writeable = False
        _CAUSAL_BIAS[key] = bias
    return bias


def attention_bias(n_queries: int, n_keys: int, attention_mask, dtype):
    """Additive mask (B, 1, Tq, Tk) from the causal rule and a key padding mask.

    attention_mask: (B, Tk) of 0/1 or bool, 1 = real token. Query i (at
    absolute position p = Tk - Tq + i) may attend to key j when j <= p and
    (key j is real or j == p): a padding query attends to itself only.
    """
    xp = get_array_module(attention_mask)
    q_pos, k_pos = _positions(xp, n_queries, n_keys)
    key_real = attention_mask.astype(bool)[:, None, :]  # (B, 1, Tk)
    allowed = (k_pos <= q_pos) & (key_real | (k_pos == q_pos))  # (B, Tq, Tk)
    return xp.where(allowed, 0.0, -np.inf).astype(dtype)[:, None]


def attention_tiles(b: int, n_head: int, t: int, n_groups: int = 1) -> list:
    """The tiles of a (B, H, T, T) causal score array: (b0, b1, q0, q1) per tile.

    Tile (b0, b1, q0, q1) holds the scores of batch rows [b0, b1), every head,
    queries [q0, q1) against keys [0, q1): nothing right of q1 (all masked) is
    in any tile. Query blocks have TILE_QUERIES rows (the last may be shorter);
    batch rows are grouped so a tile has about TILE_ELEMENTS scores (at least
    one row), and into at least ``n_groups`` groups when there are that many
    rows (the groups are independent: ``attention_forward`` runs them on
    ``n_groups`` threads). Within each group of rows the query blocks come in order.
    """
    bq = min(TILE_QUERIES, t)
    rows = max(1, min(b, TILE_ELEMENTS // (n_head * bq * t), -(-b // n_groups)))
    return [
        (b0, min(b, b0 + rows), q0, min(t, q0 + bq))
        for b0 in range(0, b, rows)
        for q0 in range(0, t, bq)
    ]


def _row_groups(tiles) -> list:
    """The tiles' indices, grouped by their batch rows: [[i, ...] per (b0, b1)], in order."""
    groups: dict = {}
    for i, (b0, b1, _, _) in enumerate(tiles):
        groups.setdefault((b0, b1), []).append(i)
    return list(groups.values())


def _split_heads(qkv, n_head: int):
    """Views q, k, v (B, H, T, hd) of qkv (B, T, 3D); no copy."""
    b, t, d3 = qkv.shape
    hd = d3 // (3 * n_head)
    heads = qkv.reshape(b, t, 3, n_head, hd)
    return tuple(heads[:, :, i].transpose(0, 2, 1, 3) for i in range(3))


def _merge_view(out, n_head: int):
    """The (B, H, T, hd) view of out (B, T, D), for writing head outputs in place."""
    b, t, d = out.shape
    return out.reshape(b, t, n_head, d // n_head).transpose(0, 2, 1, 3)


def _matmul_into(a, b, out):
    """out[...] = a @ b, written straight into the (strided) view ``out`` with NumPy."""
    xp = get_array_module(a)
    if xp is np:
        np.matmul(a, b, out=out)
    else:  # other backends may want a contiguous ``out``: compute, then copy in
        out[...] = xp.matmul(a, b)
    return out


def _token_major(x):
    """The (B, T, H, hd) view of a (B, H, T, hd) array: the memory order of qkv and out."""
    return x.transpose(0, 2, 1, 3)


def _contiguous_heads(x):
    """A contiguous copy of the head view x (B, H, T, hd) of qkv or out.

    NumPy copies a strided array fastest when it reads it in its memory order,
    (B, T, H, hd) here: ~2x faster than ``ascontiguousarray`` on the head view.
    """
    xp = get_array_module(x)
    out = empty(x.shape, x.dtype, xp)
    _token_major(out)[...] = _token_major(x)
    return out


def _ones_column(x):
    """A new array [x, 1] (B, H, T, hd + 1) from the head view x (B, H, T, hd)."""
    xp = get_array_module(x)
    b, h, t, hd = x.shape
    out = empty((b, h, t, hd + 1), x.dtype, xp)
    _token_major(out)[..., :hd] = _token_major(x)  # read x in its memory order
    out[..., hd] = 1
    return out


def _transposed_ones_row(x, scale: float):
    """A new array scale * [x^T; 1] (B, H, hd + 1, T) from the head view x (B, H, T, hd)."""
    xp = get_array_module(x)
    b, h, t, hd = x.shape
    out = empty((b, h, hd + 1, t), x.dtype, xp)
    xp.multiply(_contiguous_heads(x).swapaxes(-1, -2), scale, out=out[..., :hd, :])
    out[..., hd, :] = scale
    return out


def attention_forward(qkv, n_head: int, attention_mask=None, bias=None):
    """Causal multi-head self-attention.

    qkv: (B, T, 3D), the fused projection [q | k | v].
    n_head: H; D must be divisible by H.
    attention_mask: (B, T) of 0/1 (1 = real token) or None (all real).
    bias: optional precomputed ``attention_bias(T, T, attention_mask, dtype)``
        (or ``causal_bias``), so that a model builds it once for all layers.
        It must include the causal mask. None with no attention_mask is the
        fastest: only the diagonal squares of the tiles get masked.
    Returns out (B, T, D) and cache, a dict of q, k, v (B, H, T, hd) (views
    of qkv), out (B, T, D), the scale 1/sqrt(hd), the ``tiles``
    (``attention_tiles``), per tile its ``exp_scores`` E = exp(S - rowmax)
    (b1 - b0, H, q1 - q0, q1), and ``inv_sums`` r = 1 / sum_j E_ij
    (B, H, T, 1): P = E * r on each tile (``attention_probs``).
    """
    xp = get_array_module(qkv)
    b, t, d3 = qkv.shape
    d = d3 // 3
    hd = d // n_head
    scale = 1.0 / math.sqrt(hd)
    q, k, v = _split_heads(qkv, n_head)
    if bias is None and attention_mask is not None:
        bias = attention_bias(t, t, attention_mask, qkv.dtype)
    e_v = empty((b, n_head, t, hd + 1), qkv.dtype, xp)  # [E v, l] of every query
    inv_sums = empty((b, n_head, t, 1), qkv.dtype, xp)  # r = 1 / l
    out = empty((b, t, d), qkv.dtype, xp)
    y = _merge_view(out, n_head)  # (B, H, T, hd) view of out
    tiles = attention_tiles(b, n_head, t, num_threads())
    exp_scores = [None] * len(tiles)
    groups = _row_groups(tiles)

    def run_groups(i):  # groups of batch rows i, each on its own rows: see functional/parallel.py
        for tile_ids in groups[i]:
            b0, b1 = tiles[tile_ids[0]][:2]
            rows = slice(b0, b1)
            # k^T / sqrt(hd) of these rows, contiguous (rows, H, hd, T): the copy
            # BLAS wants anyway also applies the scale, so S = q (k^T / sqrt(hd))
            # needs no extra pass
            k_t = _contiguous_heads(k[rows]).swapaxes(-1, -2)
            k_t = xp.multiply(k_t, scale, out=empty(k_t.shape, qkv.dtype, xp))
            v_ones = _ones_column(v[rows])  # (rows, H, T, hd + 1) = [v, 1]
            for j in tile_ids:
                q0, q1 = tiles[j][2:]
                queries, keys = slice(q0, q1), slice(0, q1)
                e = xp.matmul(q[rows, :, queries], k_t[..., keys],  # scores S, ours
                              out=empty((b1 - b0, n_head, q1 - q0, q1), qkv.dtype, xp))
                if bias is None:  # causal only: the keys before q0 are all visible
                    e[..., queries] += causal_bias(q1 - q0, q1 - q0, e.dtype, xp)
                elif bias.ndim == 4:  # (B, 1, T, T): a padding mask
                    e += bias[rows, :, queries, keys]
                else:  # (T, T)
                    e += bias[queries, keys]
                e -= e.max(axis=-1, keepdims=True)  # every exponent <= 0
                xp.exp(e, out=e)  # E, unnormalised
                _matmul_into(e, v_ones[:, :, keys], e_v[rows, :, queries])  # [E v, l]
                exp_scores[j] = e
            xp.divide(1.0, e_v[rows, ..., hd:], out=inv_sums[rows])  # r = 1 / l
            xp.multiply(_token_major(e_v[rows, ..., :hd]), _token_major(inv_sums[rows]),
                        out=_token_major(y[rows]))  # P v

    for_blocks(run_groups, len(groups), b * n_head * t * t // len(groups), xp)
    cache = {"q": q, "k": k, "v": v, "exp_scores": exp_scores, "inv_sums": inv_sums,
             "tiles": tiles, "out": out, "scale": scale}
    return out, cache


def attention_probs(cache):
    """The attention probabilities P (B, H, T, T) of a forward, rebuilt from its cache.

    For looking at (and testing): zeros where a query may not attend, each row
    summing to 1. A new array.
    """
    xp = get_array_module(cache["inv_sums"])
    b, n_head, t, _ = cache["q"].shape
    probs = xp.zeros((b, n_head, t, t), dtype=cache["inv_sums"].dtype)
    for (b0, b1, q0, q1), e in zip(cache["tiles"], cache["exp_scores"]):
        probs[b0:b1, :, q0:q1, :q1] = e * cache["inv_sums"][b0:b1, :, q0:q1]
    return probs


def attention_backward(dout, cache):
    """dL/dqkv of causal self-attention.

    dout: (B, T, D). cache: from ``attention_forward``.
    Returns dqkv (B, T, 3D), a new array.
    """
    xp = get_array_module(dout)
    q, k, v, out = cache["q"], cache["k"], cache["v"], cache["out"]
    inv_sums, scale = cache["inv_sums"], cache["scale"]
    b, n_head, t, hd = q.shape
    d = n_head * hd
    dy_heads = dout.reshape(b, t, n_head, hd)  # (B, T, H, hd), the memory order of dout
    out_heads = out.reshape(b, t, n_head, hd)
    g = empty((b, n_head, t, hd + 1), dout.dtype, xp)
    r_dy = g[..., :hd]
    dqkv = empty((b, t, 3 * d), dout.dtype, xp)
    dq, dk, dv = _split_heads(dqkv, n_head)  # views we write into
    tiles, exp_scores = cache["tiles"], cache["exp_scores"]
    groups = _row_groups(tiles)

    def run_groups(i):  # groups of batch rows i: each writes only its own rows of dqkv
        for tile_ids in groups[i]:
            b0, b1 = tiles[tile_ids[0]][:2]
            rows = slice(b0, b1)
            # D_i = rowsum(dP * P) = dy_i . y_i per (row, head, query): (rows, H, T, 1)
            rowsum = xp.einsum("bthd,bthd->bht", dy_heads[rows], out_heads[rows])[..., None]
            # g = [r dy, -r D] (B, H, T, hd + 1) against [v^T; 1] / sqrt(hd) (B, H, hd + 1, T):
            # E * (g @ that) = P * (dP - D) / sqrt(hd) = dS / sqrt(hd), the scale that
            # dq = (dS / sqrt(hd)) k and dk = (dS / sqrt(hd))^T q both need
            xp.multiply(dy_heads[rows], _token_major(inv_sums[rows]), out=_token_major(r_dy[rows]))
            xp.multiply(rowsum, inv_sums[rows], out=g[rows, ..., hd:])
            xp.negative(g[rows, ..., hd:], out=g[rows, ..., hd:])
            v_t_ones = _transposed_ones_row(v[rows], scale)  # (rows, H, hd + 1, T)
            # The last query block of a group of rows sees every key: visiting the
            # tiles backwards writes dk and dv for all T keys first; the earlier
            # blocks then add into the keys they see.
            for j in reversed(tile_ids):
                (q0, q1), e = tiles[j][2:], exp_scores[j]
                queries, keys = slice(q0, q1), slice(0, q1)
                ds = xp.matmul(g[rows, :, queries], v_t_ones[..., keys],  # r (dP - D) / sqrt(hd)
                               out=empty(e.shape, dout.dtype, xp))
                ds *= e  # dS / sqrt(hd)
                _matmul_into(ds, k[rows, :, keys], dq[rows, :, queries])  # dq = dS k / sqrt(hd)
                e_t, ds_t = e.swapaxes(-1, -2), ds.swapaxes(-1, -2)
                if q1 == t:  # first visit of these rows: write
                    _matmul_into(e_t, r_dy[rows, :, queries], dv[rows])  # dv = P^T dy
                    _matmul_into(ds_t, q[rows, :, queries], dk[rows])  # dk = dS^T q / sqrt(hd)
                else:  # keys [0, q1) already hold the later blocks' share: add
                    part = empty((b1 - b0, n_head, q1, hd), dout.dtype, xp)
                    dv[rows, :, keys] += xp.matmul(e_t, r_dy[rows, :, queries], out=part)
                    dk[rows, :, keys] += xp.matmul(ds_t, q[rows, :, queries], out=part)

    for_blocks(run_groups, len(groups), b * n_head * t * t // len(groups), xp)
    return dqkv


def empty_kv_cache(batch_size: int, n_head: int, max_len: int, head_dim: int, dtype, xp=np):
    """Zeroed key and value buffers for ``attention_forward_kv``: (k_t, v).

    k_t: (B, H, hd, max_len), the keys transposed and scaled by 1/sqrt(hd):
    exactly the k^T / sqrt(hd) the score product q k^T / sqrt(hd) reads, in
    place, with no copy or scaling per new token. v: (B, H, max_len, hd).
    """
    return (zeros((batch_size, n_head, head_dim, max_len), dtype, xp),
            zeros((batch_size, n_head, max_len, head_dim), dtype, xp))


def attention_forward_kv(qkv_new, n_head: int, k_cache, v_cache, start: int, attention_mask=None,
                         bias=None):
    """Inference only: attention for new tokens against a key/value cache.

    qkv_new: (B, Tn, 3D) for the positions start .. start+Tn-1.
    k_cache: (B, H, hd, max_len), keys TRANSPOSED and scaled by 1/sqrt(hd);
        v_cache: (B, H, max_len, hd) (``empty_kv_cache``). This call WRITES
        the new keys and values into them at [start, start+Tn) (the cache is
        the caller's state).
    attention_mask: (B, start+Tn) running mask of 0/1 (1 = real) or None.
    bias: optional precomputed ``attention_bias(Tn, start+Tn, attention_mask, dtype)``,
        so that a model builds it once for all layers.
    Returns out (B, Tn, D), equal to the last Tn rows of ``attention_forward``
    on the whole sequence. No backward: nothing is kept for one.
    """
    xp = get_array_module(qkv_new)
    b, t_new, d3 = qkv_new.shape
    d = d3 // 3
    end = start + t_new
    q, k, v = _split_heads(qkv_new, n_head)
    xp.multiply(k.swapaxes(-1, -2), 1.0 / math.sqrt(d // n_head), out=k_cache[..., start:end])
    v_cache[:, :, start:end] = v
    if start == 0:  # a whole prompt: exactly the training forward (tiled, masked half skipped)
        return attention_forward(qkv_new, n_head, attention_mask, bias)[0]
    if bias is None and attention_mask is not None:
        bias = attention_bias(t_new, end, attention_mask, qkv_new.dtype)
    e = xp.matmul(q, k_cache[..., :end])  # scores (B, H, Tn, end), a new array
    if bias is not None:
        e += bias
    elif t_new > 1:  # causal among the new tokens; every earlier key is visible
        e[..., start:] += causal_bias(t_new, t_new, e.dtype, xp)
    e -= e.max(axis=-1, keepdims=True)
    xp.exp(e, out=e)
    out = xp.empty((b, t_new, d), dtype=qkv_new.dtype)
    y = _matmul_into(e, v_cache[:, :, :end], _merge_view(out, n_head))  # E v
    y /= e.sum(axis=-1, keepdims=True)  # P v
    return out


def attention_forward_loop(qkv, n_head: int, attention_mask=None):
    """The slow, obviously correct version of ``attention_forward`` (for tests).

    One batch row, one head, one query at a time, over the keys it may see.
    qkv: (B, T, 3D); attention_mask: (B, T) or None. Returns out (B, T, D).
    """
    xp = get_array_module(qkv)
    b_size, t_size, d3 = qkv.shape
    d = d3 // 3
    hd = d // n_head
    out = xp.zeros((b_size, t_size, d), dtype=qkv.dtype)
    for b in range(b_size):
        for h in range(n_head):
            cols = slice(h * hd, (h + 1) * hd)
            q = qkv[b, :, 0 * d : 1 * d][:, cols]  # (T, hd)
            k = qkv[b, :, 1 * d : 2 * d][:, cols]
            v = qkv[b, :, 2 * d : 3 * d][:, cols]
            for t in range(t_size):
                keys = [
                    j
                    for j in range(t + 1)
                    if attention_mask is None or bool(attention_mask[b, j]) or j == t
                ]
                scores = [float(xp.dot(q[t], k[j])) / math.sqrt(hd) for j in keys]
                m = max(scores)
                weights = [math.exp(s - m) for s in scores]
                z = sum(weights)
                for j, w in zip(keys, weights):
                    out[b, t, cols] += (w / z) * v[j]
    return out
