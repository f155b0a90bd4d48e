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

Softmax is max-shifted: subtracting the row max makes every exponent <= 0.

Backward, with dy = dL/dy:

    dv = P^T dy
    dP = dy v^T
    dS = P * (dP - sum_j(dP * P))               (softmax backward, per row)
    dq = dS k / sqrt(hd),   dk = dS^T q / sqrt(hd)

The row sum ``sum_j P_ij dP_ij = sum_j P_ij (dy_i . v_j) = dy_i . y_i``: it is
computed from dy and the forward's output y, over hd numbers per row rather
than T (as FlashAttention's backward does: Dao et al. 2022, Appendix B,
D_i = rowsum(dO_i * O_i)).

Speed: every product is a batched ``matmul`` over (B, H). The per-head views
of qkv, dqkv and out are strided views, not copies: NumPy hands a 2-D slice
whose last axis is contiguous straight to BLAS. The one exception is k^T (and
v^T in backward), copied to contiguous (B, H, hd, T) because a GEMM whose
second operand is a transposed view with a short inner dimension hd runs ~4x
slower in OpenBLAS. The causal bias is built once per (T, dtype) and kept in a
module-level dict (it is a constant, not state).
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module

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


def _softmax_attend(q, k, v, bias, out_heads):
    """P = softmax(q k^T + bias); writes P v into out_heads; returns P.

    q: (B, H, Tq, hd), already scaled by 1/sqrt(hd). k, v: (B, H, Tk, hd).
    bias: broadcastable to (B, H, Tq, Tk). out_heads: (B, H, Tq, hd) view.
    """
    xp = get_array_module(q)
    # k^T as a contiguous (B, H, hd, Tk) copy: with hd as the inner dimension a
    # GEMM on the transposed *view* runs ~4x slower in OpenBLAS (measured, T=128,
    # hd=32), and the copy is T/hd times smaller than the scores it speeds up
    k_t = xp.ascontiguousarray(k.swapaxes(-1, -2))
    probs = xp.matmul(q, k_t)  # scores (B, H, Tq, Tk), a new array
    probs += bias
    probs -= probs.max(axis=-1, keepdims=True)  # every exponent <= 0
    xp.exp(probs, out=probs)
    probs /= probs.sum(axis=-1, keepdims=True)
    _matmul_into(probs, v, out_heads)
    return probs


def attention_forward(qkv, n_head: int, attention_mask=None, bias=None):
    """Causal multi-head self-attention.

    qkv: (B, T, 3D), the fused projection [q | k | v].
    n_head: H; D must be divisible by H.
    attention_mask: (B, T) of 0/1 (1 = real token) or None (all real).
    bias: optional precomputed ``attention_bias(T, T, attention_mask, dtype)``
        (or ``causal_bias``), so that a model builds it once for all layers.
    Returns out (B, T, D) and cache, a dict of q (scaled), k, v (B, H, T, hd),
    probs P (B, H, T, T), out and the scale.
    """
    xp = get_array_module(qkv)
    b, t, d3 = qkv.shape
    d = d3 // 3
    scale = 1.0 / math.sqrt(d // n_head)
    q, k, v = _split_heads(qkv, n_head)
    q = q * scale  # (B, H, T, hd): scaling q is T/hd times cheaper than scaling S
    if bias is None:
        if attention_mask is None:
            bias = causal_bias(t, t, qkv.dtype, xp)
        else:
            bias = attention_bias(t, t, attention_mask, qkv.dtype)
    out = xp.empty((b, t, d), dtype=qkv.dtype)
    probs = _softmax_attend(q, k, v, bias, _merge_view(out, n_head))
    cache = {"q": q, "k": k, "v": v, "probs": probs, "out": out, "scale": scale}
    return out, cache


def attention_backward(dout, cache):
    """dL/dqkv of causal self-attention.

    dout: (B, T, D). cache: from ``attention_forward``.
    Returns dqkv (B, T, 3D), a new array.
    """
    xp = get_array_module(dout)
    q, k, v = cache["q"], cache["k"], cache["v"]
    probs, out, scale = cache["probs"], cache["out"], cache["scale"]
    b, n_head, t, hd = q.shape
    d = n_head * hd
    dy = _merge_view(dout, n_head)  # (B, H, T, hd) view of dout
    dqkv = xp.empty((b, t, 3 * d), dtype=dout.dtype)
    dq, dk, dv = _split_heads(dqkv, n_head)  # views we write into

    _matmul_into(probs.swapaxes(-1, -2), dy, dv)  # dv = P^T dy
    ds = xp.matmul(dy, xp.ascontiguousarray(v.swapaxes(-1, -2)))  # dP = dy v^T, new
    # softmax backward: dS = P * (dP - rowsum(dP * P)), rowsum = dy_i . y_i
    rowsum = (dout * out).reshape(b, t, n_head, hd).sum(axis=-1)  # (B, T, H)
    ds -= rowsum.transpose(0, 2, 1)[..., None]
    ds *= probs
    _matmul_into(ds, k, dq)
    dq *= scale  # S = (q * scale) k^T
    _matmul_into(ds.swapaxes(-1, -2), q, dk)  # q in the cache is already scaled
    return dqkv


def attention_forward_kv(qkv_new, n_head: int, k_cache, v_cache, start: int, attention_mask=None):
    """Inference only: attention for new tokens against a key/value cache.

    qkv_new: (B, Tn, 3D) for the positions start .. start+Tn-1.
    k_cache, v_cache: (B, H, max_len, hd); this call WRITES the new keys and
        values into them at [start, start+Tn) (the cache is the caller's state).
    attention_mask: (B, start+Tn) running mask of 0/1 (1 = real) or None.
    Returns out (B, Tn, D), equal to the last Tn rows of ``attention_forward``
    on the whole sequence. No backward: nothing is kept for one.
    """
    xp = get_array_module(qkv_new)
    b, t_new, d3 = qkv_new.shape
    d = d3 // 3
    end = start + t_new
    q, k, v = _split_heads(qkv_new, n_head)
    q = q * (1.0 / math.sqrt(d // n_head))
    k_cache[:, :, start:end] = k
    v_cache[:, :, start:end] = v
    if attention_mask is None:
        bias = causal_bias(t_new, end, qkv_new.dtype, xp)
    else:
        bias = attention_bias(t_new, end, attention_mask, qkv_new.dtype)
    out = xp.empty((b, t_new, d), dtype=qkv_new.dtype)
    _softmax_attend(q, k_cache[:, :, :end], v_cache[:, :, :end], bias, _merge_view(out, n_head))
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
