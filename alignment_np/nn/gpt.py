"""TinyGPT: a GPT-2-style decoder with hand-written backprop and three heads.

    idx (B, T) -> wte[idx] + wpe[pos]                      (B, T, D)
               -> n_layer pre-LN Blocks                    (B, T, D)
               -> final LayerNorm = h                      (B, T, D)
    heads:  logits  = h @ wte.T                            (B, T, V)  language model
            values  = h @ w_v + b_v                        (B, T)     PPO critic
            rewards = h[b, last real token] @ w_r + b_r    (B,)       reward model

The LM head is *tied* to the token embedding (Press & Wolf 2017; GPT-2):
the same matrix wte maps ids to vectors and vectors to logits, so its
gradient is the sum of both uses. There is no dropout: every forward pass is
deterministic, which the gradient checks and the PPO ratios rely on.

Padding. ``attention_mask`` (B, T) marks real tokens with 1. Positions are
counted over real tokens only, ``pos = cumsum(mask) - 1`` (clipped at 0), so a
LEFT-padded prompt (as generation uses) starts at position 0 at its first real
token, and padding keys are masked out of attention: the real tokens of a
padded row compute exactly what they would compute alone.

Generation. ``init_kv_cache`` and ``forward_incremental`` keep every layer's
keys and values, so each new token costs one position's work instead of a
whole forward over the sequence (inference only: nothing is kept for backward).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np

from ..backend import as_array_of, get_array_module
from ..checks import check_bool
from ..functional import parallel
from ..functional.attention import attention_bias, empty_kv_cache
from ..functional.embedding import embedding_backward, embedding_forward
from ..functional.workspace import empty
from .layers import (
    Block,
    LayerNorm,
    Linear,
    _check_dtype,
    _check_positive_int,
    _check_std,
    _normal,
)
from .module import Module, Parameter

HEADS = ("logits", "values", "rewards")


@dataclass
class GPTConfig:
    """The shape of a TinyGPT. The defaults are the course's benchmark model."""

    vocab_size: int
    """V: number of token ids (the tokenizer's vocabulary, padding included)."""

    block_size: int = 128
    """The longest sequence T the model accepts (rows of the position table wpe)."""

    n_layer: int = 4
    """L: number of transformer blocks."""

    n_head: int = 4
    """H: attention heads per block; must divide d_model (head width d_model / n_head)."""

    d_model: int = 128
    """D: width of the residual stream; the MLP is 4 * D wide inside."""

    dtype: str = "float32"
    """'float32' to train, 'float64' for gradient checks."""

    init_std: float = 0.02
    """Std of the normal initial weights (GPT-2); the residual projections use
    init_std / sqrt(2 * n_layer)."""

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            setattr(self, name, _check_positive_int(name, getattr(self, name)))
        if self.d_model % self.n_head:
            raise ValueError(
                f"n_head: must divide d_model={self.d_model}, got n_head={self.n_head}"
            )
        self.dtype = _check_dtype(self.dtype)
        self.init_std = _check_std("init_std", self.init_std)


def position_ids(attention_mask):
    """Position of each token among the real tokens of its row.

    attention_mask: (B, T) of 0/1. Returns (B, T) ints: cumsum(mask) - 1,
    clipped at 0 (left padding sits at position 0; it is never attended to).
    """
    xp = get_array_module(attention_mask)
    return xp.maximum(xp.cumsum(attention_mask.astype(np.int64), axis=1) - 1, 0)


def last_token_index(attention_mask):
    """(B,) index of each row's last real token. attention_mask: (B, T) of 0/1."""
    xp = get_array_module(attention_mask)
    t = attention_mask.shape[1]
    return t - 1 - xp.argmax(attention_mask[:, ::-1].astype(bool), axis=1)


class TinyGPT(Module):
    """A small GPT-2 with a tied LM head, a value head and a reward head.

    Parameters (names as ``named_parameters`` gives them): wte (V, D),
    wpe (block_size, D), blocks.i.{ln1, attn, ln2, mlp}.*, ln_f.{gamma, beta},
    value_head.{w (D, 1), b (1,)}, reward_head.{w (D, 1), b (1,)}.
    ``seed`` makes the initial weights reproducible.
    """

    def __init__(self, config: GPTConfig, seed: int = 0):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config: expected a GPTConfig, got {type(config).__name__}")
        self.config = config
        c = config
        rng = np.random.default_rng(seed)
        proj_std = c.init_std / math.sqrt(2 * c.n_layer)
        self.wte = Parameter(_normal(rng, (c.vocab_size, c.d_model), c.init_std, c.dtype))
        self.wpe = Parameter(_normal(rng, (c.block_size, c.d_model), c.init_std, c.dtype))
        self.blocks = [
            Block(c.d_model, c.n_head, std=c.init_std, proj_std=proj_std, rng=rng, dtype=c.dtype)
            for _ in range(c.n_layer)
        ]
        self.ln_f = LayerNorm(c.d_model, dtype=c.dtype)
        self.value_head = Linear(c.d_model, 1, std=c.init_std, rng=rng, dtype=c.dtype)
        self.reward_head = Linear(c.d_model, 1, std=c.init_std, rng=rng, dtype=c.dtype)

    # ------------------------------------------------------------------ trunk

    @parallel.single_threaded_blas  # the products on this library's threads: functional/parallel.py
    def trunk_forward(self, idx, attention_mask=None, keep_cache=True):
        """Embeddings, blocks and the final LayerNorm (inputs already validated).

        idx: (B, T) ints. attention_mask: (B, T) bool or None (all real).
        keep_cache: False drops each block's cache as soon as the block returns.
        Returns h (B, T, D) and the trunk cache (None when not kept).
        """
        t = idx.shape[1]
        dtype = self.wte.data.dtype
        x, tok_cache = embedding_forward(idx, self.wte.data)  # a new array
        if attention_mask is None:
            pos = None
            x += self.wpe.data[:t]  # positions 0..T-1 for every row
            bias = None  # causal only: attention masks just its tiles' diagonal squares
        else:
            pos = position_ids(attention_mask)
            x += embedding_forward(pos, self.wpe.data)[0]
            bias = attention_bias(t, t, attention_mask, dtype)  # built once for all layers
        block_caches = []
        for block in self.blocks:
            x, c = block.forward(x, attention_mask, bias)
            if keep_cache:
                block_caches.append(c)
            del c  # unkept, it goes now (not when the next block returns): its buffers serve that block
        h, ln_f_cache = self.ln_f.forward(x)
        if not keep_cache:
            return h, None
        return h, {"tok": tok_cache, "pos": pos, "blocks": block_caches, "ln_f": ln_f_cache}

    @parallel.single_threaded_blas  # the products on this library's threads: functional/parallel.py
    def trunk_backward(self, dh, cache):
        """Backward through the trunk: dh (B, T, D) = dL/dh. Accumulates grads; returns None."""
        dx = self.ln_f.backward(dh, cache["ln_f"])
        for block, c in zip(reversed(self.blocks), reversed(cache["blocks"])):
            dx = block.backward(dx, c)
        self.wte.grad += embedding_backward(dx, cache["tok"])
        if cache["pos"] is None:
            self.wpe.grad[: dx.shape[1]] += dx.sum(axis=0)
        else:
            self.wpe.grad += embedding_backward(dx, (cache["pos"], self.config.block_size))

    # ------------------------------------------------------------------ model

    @parallel.single_threaded_blas  # the products on this library's threads: functional/parallel.py
    def forward(self, idx, attention_mask=None, heads=("logits",), keep_cache=True):
        """Run the model and the requested heads.

        idx: (B, T) integer token ids in [0, V), T <= block_size.
        attention_mask: (B, T) of 0/1 or bool (1 = real token), or None (all real).
            Every row needs at least one real token.
        heads: a subset of ("logits", "values", "rewards").
        keep_cache: True (the default) keeps what ``backward`` needs. False is
            for scoring only (a rollout's log-probs, an evaluation): each
            block's activations are dropped as soon as the next block has run,
            so the forward holds one block's worth of them at a time instead of
            every layer's (what PyTorch's ``no_grad`` does); the cache returned
            is None and no backward can follow. The outputs are the same.
        Returns (outputs, cache) with outputs {"logits": (B, T, V), "values":
        (B, T), "rewards": (B,)} for the requested heads; rewards are read at
        each row's last real token.
        """
        heads = _check_heads(heads)
        keep_cache = check_bool("keep_cache", keep_cache)
        idx, mask = self._check_tokens(idx, attention_mask)
        xp = get_array_module(self.wte.data)
        b, t = idx.shape
        d = self.config.d_model
        h, trunk_cache = self.trunk_forward(idx, mask, keep_cache)
        outputs, cache = {}, {"trunk": trunk_cache, "h": h, "heads": heads}
        if "logits" in heads:  # tied head: logits = h @ wte.T, one (B*T, D) x (D, V) GEMM
            v = self.config.vocab_size
            logits = parallel.matmul(h.reshape(-1, d), self.wte.data.T, empty((b * t, v), h.dtype, xp))
            outputs["logits"] = logits.reshape(b, t, v)
        if "values" in heads:
            values, cache["values"] = self.value_head.forward(h)
            outputs["values"] = values.reshape(b, t)
        if "rewards" in heads:
            last = xp.full(b, t - 1) if mask is None else last_token_index(mask)
            rewards, reward_cache = self.reward_head.forward(h[xp.arange(b), last])  # (B, 1)
            outputs["rewards"] = rewards.reshape(b)
            cache["rewards"] = (last, reward_cache)
        return outputs, (cache if keep_cache else None)

    @parallel.single_threaded_blas  # the products on this library's threads: functional/parallel.py
    def backward(self, grads, cache):
        """Accumulate every parameter's gradient from the heads' upstream gradients.

        grads: a dict with any non-empty subset of the forward's output keys,
        e.g. {"logits": dlogits (B, T, V)}, {"values": dvalues (B, T)},
        {"rewards": drewards (B,)}. cache: from ``forward``. Returns None.
        """
        h = cache["h"]
        b, t, d = h.shape
        _check_grads(grads, cache["heads"], (b, t, self.config.vocab_size))
        xp = get_array_module(h)
        dh = None
        if "logits" in grads:
            dlogits = grads["logits"].reshape(-1, self.config.vocab_size)  # (B*T, V)
            h2 = h.reshape(-1, d)
            share = empty(self.wte.grad.shape, self.wte.grad.dtype, xp)
            self.wte.grad += parallel.matmul(dlogits.T, h2, share)  # the head's share of wte
            dh = empty(h2.shape, xp.result_type(dlogits, self.wte.data), xp)
            dh = parallel.matmul(dlogits, self.wte.data, dh).reshape(b, t, d)
        if "values" in grads:
            dh_v = self.value_head.backward(grads["values"].reshape(b, t, 1), cache["values"])
            dh = dh_v if dh is None else xp.add(dh, dh_v, out=dh)
        if "rewards" in grads:
            last, reward_cache = cache["rewards"]
            dh_last = self.reward_head.backward(grads["rewards"].reshape(b, 1), reward_cache)
            if dh is None:
                dh = xp.zeros_like(h)
            dh[xp.arange(b), last] += dh_last  # one position per row: no repeated index
        self.trunk_backward(dh, cache["trunk"])

    # ------------------------------------------------------------ generation

    def init_kv_cache(self, batch_size: int, max_len: int) -> dict:
        """Empty key/value buffers for ``forward_incremental``.

        Returns {"k": [L arrays (B, H, hd, max_len)], "v": [L arrays (B, H,
        max_len, hd)], "length": 0, "batch_size": B, "max_len": max_len};
        max_len <= block_size. The keys are stored transposed and scaled by
        1/sqrt(hd) (``attention.empty_kv_cache``): the score product then
        reads them in place instead of copying the whole cache at every token.
        """
        c = self.config
        batch_size = _check_positive_int("batch_size", batch_size)
        max_len = _check_positive_int("max_len", max_len)
        if max_len > c.block_size:
            raise ValueError(f"max_len: expected <= block_size={c.block_size}, got {max_len}")
        xp = get_array_module(self.wte.data)
        buffers = [
            empty_kv_cache(batch_size, c.n_head, max_len, c.d_model // c.n_head,
                           self.wte.data.dtype, xp)
            for _ in range(c.n_layer)
        ]
        return {
            "k": [k for k, _ in buffers],
            "v": [v for _, v in buffers],
            "length": 0,
            "batch_size": batch_size,
            "max_len": max_len,
        }

    def forward_incremental(self, idx_new, kv_cache, attention_mask=None):
        """Logits for new tokens, appending their keys and values to ``kv_cache``.

        idx_new: (B, t_new) token ids following the ``kv_cache["length"]`` already seen.
        attention_mask: the running mask (B, length + t_new) of 0/1, or None.
        Returns logits (B, t_new, V), equal to the last t_new positions of
        ``forward`` on the whole sequence. Advances ``kv_cache["length"]``.
        """
        self._check_kv_cache(kv_cache)
        xp = get_array_module(self.wte.data)
        start = kv_cache["length"]
        idx_new = self._check_ids(idx_new, "idx_new")
        b, t_new = idx_new.shape
        end = start + t_new
        if b != kv_cache["batch_size"]:
            raise ValueError(
                f"idx_new: expected batch size {kv_cache['batch_size']} (the cache's), got {b}"
            )
        if end > kv_cache["max_len"]:
            raise ValueError(
                f"idx_new: {t_new} new tokens after {start} exceed the cache's "
                f"max_len={kv_cache['max_len']}"
            )
        x, _ = embedding_forward(idx_new, self.wte.data)
        bias = None  # causal only: attention_forward_kv masks the new tokens itself
        if attention_mask is not None:
            attention_mask = _check_mask_values(attention_mask, (b, end), xp)
            if bool(attention_mask.all()):
                attention_mask = None  # nothing padded: take the cheaper unmasked path
        if attention_mask is None:
            x += self.wpe.data[start:end]
        else:
            x += embedding_forward(position_ids(attention_mask)[:, start:end], self.wpe.data)[0]
            bias = attention_bias(t_new, end, attention_mask, x.dtype)  # built once for all layers
        # A prompt is a forward of training size: its blocks run on the library's
        # threads, BLAS single-threaded throughout (functional/parallel.py). One
        # new token per row is too small to cut: BLAS keeps its own threads.
        with parallel.blas_single_threaded() if t_new > 1 else contextlib.nullcontext():
            for block, k_cache, v_cache in zip(self.blocks, kv_cache["k"], kv_cache["v"]):
                x = block.forward_kv(x, k_cache, v_cache, start, bias=bias)
            h, _ = self.ln_f.forward(x)
            d, v = self.config.d_model, self.config.vocab_size
            logits = parallel.matmul(h.reshape(-1, d), self.wte.data.T, empty((b * t_new, v), h.dtype, xp))
        kv_cache["length"] = end
        return logits.reshape(b, t_new, -1)

    # ------------------------------------------------------------ validation

    def _check_kv_cache(self, kv_cache) -> None:
        """ValueError unless kv_cache is an ``init_kv_cache`` of a model of this shape.

        A cache of another model (another number of layers, heads or width,
        another dtype or backend) would otherwise be read silently: wrong
        logits, or a confusing error deep inside attention.
        """
        keys = ("k", "v", "length", "batch_size", "max_len")
        if not isinstance(kv_cache, dict) or any(k not in kv_cache for k in keys):
            raise ValueError("kv_cache: expected the dict returned by init_kv_cache")
        c = self.config
        k_list, v_list = kv_cache["k"], kv_cache["v"]
        if not isinstance(k_list, list) or not isinstance(v_list, list) or len(k_list) != len(v_list):
            raise ValueError("kv_cache: expected the dict returned by init_kv_cache ('k' and 'v': one array per layer)")
        if len(k_list) != c.n_layer:
            raise ValueError(
                f"kv_cache: holds {len(k_list)} layers, this model has n_layer={c.n_layer}; "
                f"make it with this model's init_kv_cache"
            )
        b, max_len, hd = kv_cache["batch_size"], kv_cache["max_len"], c.d_model // c.n_head
        want_k, want_v = (b, c.n_head, hd, max_len), (b, c.n_head, max_len, hd)
        xp, dtype = get_array_module(self.wte.data), self.wte.data.dtype
        for k, v in zip(k_list, v_list):
            if getattr(k, "shape", None) != want_k or getattr(v, "shape", None) != want_v:
                raise ValueError(
                    f"kv_cache: expected keys {want_k} and values {want_v} per layer (B, H={c.n_head}, "
                    f"head width {hd}, max_len) for this model, got {getattr(k, 'shape', type(k).__name__)} "
                    f"and {getattr(v, 'shape', type(v).__name__)}; make it with this model's init_kv_cache"
                )
            if get_array_module(k, v) is not xp or k.dtype != dtype or v.dtype != dtype:
                raise ValueError(
                    f"kv_cache: expected {xp.__name__} arrays of dtype {dtype} (the model's), got "
                    f"{type(k).__module__}.{type(k).__name__} of dtype {k.dtype}"
                )
        length = kv_cache["length"]
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or not 0 <= length <= max_len:
            raise ValueError(f"kv_cache: 'length' must be an int in [0, {max_len}], got {length!r}")

    def _check_ids(self, idx, name: str):
        idx = as_array_of(get_array_module(self.wte.data), idx, name)
        if not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"{name}: expected an integer dtype, got {idx.dtype}")
        if idx.ndim != 2 or idx.shape[0] == 0 or idx.shape[1] == 0:
            raise ValueError(f"{name}: expected a non-empty (B, T) array, got shape {idx.shape}")
        v = self.config.vocab_size
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= v:
            raise ValueError(f"{name}: expected token ids in [0, {v}), got min {lo}, max {hi}")
        return idx

    def _check_tokens(self, idx, attention_mask):
        """Validated idx and mask (bool, or None when every token is real)."""
        idx = self._check_ids(idx, "idx")
        b, t = idx.shape
        if t > self.config.block_size:
            raise ValueError(
                f"idx: sequence length T={t} exceeds block_size={self.config.block_size}"
            )
        if attention_mask is None:
            return idx, None
        xp = get_array_module(self.wte.data)
        mask = _check_mask_values(attention_mask, (b, t), xp)
        empty = ~mask.any(axis=1)
        if bool(empty.any()):
            raise ValueError(
                f"attention_mask: every row needs at least one real token (1); "
                f"rows {xp.flatnonzero(empty).tolist()} have none"
            )
        if bool(mask.all()):
            return idx, None  # nothing padded: take the cheaper unmasked path
        return idx, mask


def _check_mask_values(attention_mask, shape, xp):
    """attention_mask as a bool (B, T) array; ValueError on a wrong shape or non-0/1 values."""
    if not hasattr(attention_mask, "shape"):
        attention_mask = xp.asarray(attention_mask)
    if tuple(attention_mask.shape) != tuple(shape):
        raise ValueError(
            f"attention_mask: expected shape {tuple(shape)} like the token ids, "
            f"got {tuple(attention_mask.shape)}"
        )
    if attention_mask.dtype != bool and not bool(
        xp.all((attention_mask == 0) | (attention_mask == 1))
    ):
        raise ValueError("attention_mask: expected only 0/1 (or bool) values, got other values")
    return attention_mask.astype(bool)


def _check_heads(heads) -> tuple:
    if isinstance(heads, str):
        heads = (heads,)
    heads = tuple(heads)
    unknown = [h for h in heads if h not in HEADS]
    if not heads or unknown:
        raise ValueError(f"heads: expected a non-empty subset of {HEADS}, got {heads!r}")
    return tuple(h for h in HEADS if h in heads)


def _check_grads(grads, heads, btv) -> None:
    b, t, v = btv
    if not isinstance(grads, dict) or not grads:
        raise ValueError(f"grads: expected a non-empty dict keyed by {heads}, got {grads!r}")
    unknown = [k for k in grads if k not in heads]
    if unknown:
        raise ValueError(f"grads: keys {unknown} were not computed by forward (heads {heads})")
    expected = {"logits": (b, t, v), "values": (b, t), "rewards": (b,)}
    for key, g in grads.items():
        if tuple(getattr(g, "shape", ())) != expected[key]:
            raise ValueError(
                f"grads[{key!r}]: expected shape {expected[key]}, "
                f"got {getattr(g, 'shape', type(g).__name__)}"
            )
