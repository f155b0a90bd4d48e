"""The layers of a GPT as modules: Linear, Embedding, LayerNorm, GELU,
CausalSelfAttention, MLP and the pre-LN transformer Block.

Each module holds its ``Parameter``s and wires the pure kernels of
``alignment_np.functional``: ``forward(...) -> (out, cache)`` and
``backward(dout, cache) -> dx``, where backward adds (``+=``) the parameter
gradients into ``.grad``. The cache is returned, never stored on the module,
so a module can run forward twice (chosen, rejected) and then backward twice.

Initialisation follows GPT (Radford et al. 2018, Sec. 4.1: N(0, 0.02^2)) and
GPT-2 (Radford et al. 2019, Sec. 2.3), as nanoGPT does: weights ~ N(0, 0.02^2),
biases 0, LayerNorm gamma 1 and beta 0, and the two
projections that write into the residual stream (attention's ``w_proj``, the
MLP's ``proj``) scaled down to std 0.02 / sqrt(2 * n_layer), so the residual
stream's variance does not grow with depth.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module, xp_active
from ..functional.activations import gelu_backward, gelu_forward, gelu_recompute
from ..functional.attention import attention_backward, attention_forward, attention_forward_kv
from ..functional.embedding import embedding_backward, embedding_forward
from ..functional.layernorm import LAYERNORM_EPS, layernorm_backward, layernorm_forward
from ..functional.linear import linear_backward, linear_forward
from .module import Module, Parameter

FLOAT_DTYPES = ("float32", "float64")


# ----------------------------------------------------------------------------
# construction helpers: validate arguments, create parameters on the backend
# ----------------------------------------------------------------------------


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def _check_dtype(dtype) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in FLOAT_DTYPES:
        raise ValueError(f"dtype: expected one of {list(FLOAT_DTYPES)}, got {dtype!r}")
    return name


def _check_std(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        0 < value < math.inf
    ):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def _normal(rng, shape, std: float, dtype: str):
    """N(0, std^2) drawn in float64 with NumPy (reproducible), then cast and moved."""
    return xp_active().asarray((rng.standard_normal(shape) * std).astype(dtype))


def _constant(shape, value: float, dtype: str):
    return xp_active().full(shape, value, dtype=dtype)


def _check_last_dim(name: str, x, d: int, ndim: int | None = None) -> None:
    if not hasattr(x, "shape") or x.ndim < 1 or x.shape[-1] != d:
        raise ValueError(
            f"{name}: expected an array of shape (..., {d}), "
            f"got {getattr(x, 'shape', type(x).__name__)}"
        )
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dims (B, T, {d}), got shape {tuple(x.shape)}")


def _check_mask(mask, x) -> None:
    if mask is not None and tuple(getattr(mask, "shape", ())) != tuple(x.shape[:2]):
        raise ValueError(
            f"attention_mask: expected shape {tuple(x.shape[:2])} (B, T), "
            f"got {getattr(mask, 'shape', type(mask).__name__)}"
        )


# ----------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------


class Linear(Module):
    """out = x @ w + b.  x (..., d_in) -> out (..., d_out).

    Parameters: w (d_in, d_out) ~ N(0, std^2); b (d_out,) = 0 (absent when
    ``bias=False``). ``rng``: a NumPy Generator or seed for the initial weights.
    """

    def __init__(self, d_in: int, d_out: int, bias: bool = True, *, std: float = 0.02,
                 rng=None, dtype="float32"):
        self.d_in = _check_positive_int("d_in", d_in)
        self.d_out = _check_positive_int("d_out", d_out)
        std = _check_std("std", std)
        dtype = _check_dtype(dtype)
        rng = np.random.default_rng(rng)
        self.w = Parameter(_normal(rng, (self.d_in, self.d_out), std, dtype))
        self.b = Parameter(_constant((self.d_out,), 0.0, dtype)) if bias else None

    def forward(self, x):
        _check_last_dim("x", x, self.d_in)
        return linear_forward(x, self.w.data, None if self.b is None else self.b.data)

    def backward(self, dout, cache):
        dx, dw, db = linear_backward(dout, cache)
        self.w.grad += dw
        if self.b is not None:
            self.b.grad += db
        return dx


class Embedding(Module):
    """out[...] = w[idx[...]].  idx (B, T) ints in [0, num_embeddings) -> (B, T, d).

    Parameter: w (num_embeddings, d) ~ N(0, std^2). ``backward`` returns None:
    integer ids have no gradient.
    """

    def __init__(self, num_embeddings: int, d: int, *, std: float = 0.02, rng=None,
                 dtype="float32"):
        self.num_embeddings = _check_positive_int("num_embeddings", num_embeddings)
        self.d = _check_positive_int("d", d)
        std = _check_std("std", std)
        dtype = _check_dtype(dtype)
        self.w = Parameter(_normal(np.random.default_rng(rng), (self.num_embeddings, self.d),
                                   std, dtype))

    def forward(self, idx):
        if not hasattr(idx, "dtype") or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(
                f"idx: expected an integer array, got {getattr(idx, 'dtype', type(idx).__name__)}"
            )
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.num_embeddings):
            raise ValueError(
                f"idx: expected values in [0, {self.num_embeddings}), "
                f"got min {int(idx.min())}, max {int(idx.max())}"
            )
        return embedding_forward(idx, self.w.data)

    def backward(self, dout, cache):
        self.w.grad += embedding_backward(dout, cache)
        return None


class LayerNorm(Module):
    """LayerNorm over the last axis: x (..., d) -> (..., d). gamma = 1, beta = 0."""

    def __init__(self, d: int, eps: float = LAYERNORM_EPS, *, dtype="float32"):
        self.d = _check_positive_int("d", d)
        self.eps = _check_std("eps", eps)
        dtype = _check_dtype(dtype)
        self.gamma = Parameter(_constant((self.d,), 1.0, dtype))
        self.beta = Parameter(_constant((self.d,), 0.0, dtype))

    def forward(self, x):
        _check_last_dim("x", x, self.d)
        return layernorm_forward(x, self.gamma.data, self.beta.data, self.eps)

    def backward(self, dout, cache):
        dx, dgamma, dbeta = layernorm_backward(dout, cache)
        self.gamma.grad += dgamma
        self.beta.grad += dbeta
        return dx


class GELU(Module):
    """GELU, tanh approximation, elementwise. No parameters."""

    def forward(self, x):
        return gelu_forward(x)

    def backward(self, dout, cache):
        return gelu_backward(dout, cache)


class CausalSelfAttention(Module):
    """Causal multi-head self-attention: x (B, T, D) -> (B, T, D).

    Parameters: w_qkv (D, 3D), b_qkv (3D,) (one fused projection for q, k and
    v: one GEMM instead of three), w_proj (D, D), b_proj (D,).
    ``proj_std``: std of w_proj (default ``std``; GPT-2 scales it by depth).
    """

    def __init__(self, d_model: int, n_head: int, *, std: float = 0.02,
                 proj_std: float | None = None, rng=None, dtype="float32"):
        self.d_model = _check_positive_int("d_model", d_model)
        self.n_head = _check_positive_int("n_head", n_head)
        if self.d_model % self.n_head:
            raise ValueError(
                f"n_head: must divide d_model={self.d_model}, got n_head={self.n_head}"
            )
        std = _check_std("std", std)
        proj_std = std if proj_std is None else _check_std("proj_std", proj_std)
        dtype = _check_dtype(dtype)
        rng = np.random.default_rng(rng)
        d = self.d_model
        self.w_qkv = Parameter(_normal(rng, (d, 3 * d), std, dtype))
        self.b_qkv = Parameter(_constant((3 * d,), 0.0, dtype))
        self.w_proj = Parameter(_normal(rng, (d, d), proj_std, dtype))
        self.b_proj = Parameter(_constant((d,), 0.0, dtype))

    def forward(self, x, attention_mask=None, bias=None):
        """x (B, T, D); attention_mask (B, T) of 0/1 or None; bias: see ``attention_forward``."""
        _check_last_dim("x", x, self.d_model, ndim=3)
        _check_mask(attention_mask, x)
        qkv, qkv_cache = linear_forward(x, self.w_qkv.data, self.b_qkv.data)
        y, attn_cache = attention_forward(qkv, self.n_head, attention_mask, bias)
        out, proj_cache = linear_forward(y, self.w_proj.data, self.b_proj.data)
        return out, (qkv_cache, attn_cache, proj_cache)

    def backward(self, dout, cache):
        qkv_cache, attn_cache, proj_cache = cache
        dy, dw, db = linear_backward(dout, proj_cache)
        self.w_proj.grad += dw
        self.b_proj.grad += db
        dqkv = attention_backward(dy, attn_cache)
        dx, dw, db = linear_backward(dqkv, qkv_cache)
        self.w_qkv.grad += dw
        self.b_qkv.grad += db
        return dx

    def forward_kv(self, x, k_cache, v_cache, start: int, attention_mask=None, bias=None):
        """Inference with a key/value cache (see ``attention_forward_kv``); returns out only."""
        qkv, _ = linear_forward(x, self.w_qkv.data, self.b_qkv.data)
        y = attention_forward_kv(qkv, self.n_head, k_cache, v_cache, start, attention_mask, bias)
        return linear_forward(y, self.w_proj.data, self.b_proj.data)[0]


class MLP(Module):
    """The position-wise feed-forward net: proj(gelu(fc(x))), width 4D inside.

    x (..., D) -> (..., D). Submodules: fc Linear(D, 4D), act GELU,
    proj Linear(4D, D) with std ``proj_std``.

    Recompute rather than keep: ``proj``'s weight gradient needs its input
    gelu(h) (h = fc(x)), and GELU's own backward keeps h and s (``gelu_forward``),
    from which gelu(h) = h * s is one cheap pass. So the cache keeps h and s
    but not gelu(h): a third of the MLP's activations (each 4D wide, the
    widest arrays of a block) are not held from forward to backward, and
    backward recomputes them (``gelu_recompute``) just before they are needed.
    """

    def __init__(self, d_model: int, *, std: float = 0.02, proj_std: float | None = None,
                 rng=None, dtype="float32"):
        d = _check_positive_int("d_model", d_model)
        rng = np.random.default_rng(rng)
        self.fc = Linear(d, 4 * d, std=std, rng=rng, dtype=dtype)
        self.act = GELU()
        self.proj = Linear(4 * d, d, std=std if proj_std is None else proj_std, rng=rng,
                           dtype=dtype)

    def forward(self, x):
        hidden, fc_cache = self.fc.forward(x)
        act, act_cache = self.act.forward(hidden)
        out, (_, w, has_bias) = self.proj.forward(act)  # drop act: backward recomputes it
        return out, (fc_cache, act_cache, (w, has_bias))

    def backward(self, dout, cache):
        fc_cache, act_cache, (w, has_bias) = cache
        act = gelu_recompute(act_cache)  # the proj layer's input, as the forward computed it
        dact = self.proj.backward(dout, (act, w, has_bias))
        del act  # free it before the GELU's backward allocates its own arrays
        dhidden = self.act.backward(dact, act_cache)
        return self.fc.backward(dhidden, fc_cache)


class Block(Module):
    """A pre-LN transformer block (GPT-2): x (B, T, D) -> (B, T, D).

        x = x + attn(ln1(x))
        x = x + mlp(ln2(x))

    The residual additions pass the gradient through unchanged, so backward
    adds each branch's input gradient to the upstream gradient.
    """

    def __init__(self, d_model: int, n_head: int, *, std: float = 0.02,
                 proj_std: float | None = None, rng=None, dtype="float32"):
        rng = np.random.default_rng(rng)
        self.ln1 = LayerNorm(d_model, dtype=dtype)
        self.attn = CausalSelfAttention(d_model, n_head, std=std, proj_std=proj_std, rng=rng,
                                        dtype=dtype)
        self.ln2 = LayerNorm(d_model, dtype=dtype)
        self.mlp = MLP(d_model, std=std, proj_std=proj_std, rng=rng, dtype=dtype)

    def forward(self, x, attention_mask=None, bias=None):
        """x (B, T, D); attention_mask (B, T) of 0/1 or None; bias: see ``attention_forward``."""
        a_in, ln1_cache = self.ln1.forward(x)
        a, attn_cache = self.attn.forward(a_in, attention_mask, bias)
        a += x  # a is a fresh array no cache refers to: the residual add in place
        m_in, ln2_cache = self.ln2.forward(a)
        m, mlp_cache = self.mlp.forward(m_in)
        m += a
        return m, (ln1_cache, attn_cache, ln2_cache, mlp_cache)

    def backward(self, dout, cache):
        ln1_cache, attn_cache, ln2_cache, mlp_cache = cache
        d_mid = self.ln2.backward(self.mlp.backward(dout, mlp_cache), ln2_cache)
        d_mid += dout  # residual: the gradient also flows straight through
        dx = self.ln1.backward(self.attn.backward(d_mid, attn_cache), ln1_cache)
        dx += d_mid
        return dx

    def forward_kv(self, x, k_cache, v_cache, start: int, attention_mask=None, bias=None):
        """Inference with a key/value cache; x (B, Tn, D) -> (B, Tn, D)."""
        xp = get_array_module(x)
        a_in, _ = self.ln1.forward(x)
        x = x + self.attn.forward_kv(a_in, k_cache, v_cache, start, attention_mask, bias)
        m_in, _ = self.ln2.forward(x)
        m, _ = self.mlp.forward(m_in)
        return xp.add(x, m, out=m)
