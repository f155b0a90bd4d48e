"""Sampling continuations from a TinyGPT, with a key/value cache.

PPO for RLHF (Ouyang et al. 2022; Ziegler et al. 2019) collects its
experience by letting the policy write responses to prompts. ``generate``
does that for a batch of prompts at once, one token per step for every row:

    logits = model(prompt + response so far)[:, -1]          (B, V)
    scaled = logits / temperature
    keep the top_k largest entries of each row (if top_k)
    token  = argmax(scaled + Gumbel noise)                   a sample of softmax(scaled)
    logp   = log_softmax(scaled)[token]                      (B,) what PPO needs

Gumbel-max trick (Gumbel 1954; Maddison et al. 2014, "A* sampling"): if
g_v are independent standard Gumbel draws, ``argmax_v (z_v + g_v)`` is
distributed as ``softmax(z)``. Each step draws one (B, V) array of noise from
a seeded ``numpy.random.Generator``, on the host, so the same seed gives the
same noise with and without the cache and on either backend (the samples then
agree wherever the logits do: exactly in the tests, up to near-ties in float32).

Which log-probs are returned (precisely)
----------------------------------------
``logprobs[b, i] = log_softmax(logits[b, i] / temperature)[new_tokens[b, i]]``:
the log-probability of the sampled token under the temperature-scaled policy
over the WHOLE vocabulary, i.e. what PPO's training forward recomputes
(TRL also divides the logits by the sampling temperature), so the first PPO
ratio is exactly 1. Two consequences a learner should know:

* with ``top_k`` the token was drawn from the renormalised top-k
  distribution, but its returned log-prob is still that of the full
  distribution (top-k is a sampling device, not part of the policy);
* with ``temperature == 0`` (greedy: argmax, no noise) the log-probs are
  those of the model's own distribution, ``log_softmax(logits)``
  (temperature 1).

Every returned log-prob is <= 0. Positions after a row's eos hold 0 and are
masked out.

Padding
-------
Prompts of different lengths are LEFT padded (``CharTokenizer.encode_batch(...,
padding_side="left")``) with an attention mask: every prompt then ends at the
last column, so all rows sample their next token at the same position, and
TinyGPT counts positions over real tokens only, so a padded row continues
exactly as it would alone. A row that samples ``eos_id`` stops: its later
tokens are ``pad_id``, their masks 0, their log-probs 0.

KV cache
--------
``use_cache=True`` runs the prompt through ``forward_incremental`` once and
then one position per new token (keys and values of earlier positions are
kept in ``init_kv_cache``'s buffers). ``use_cache=False`` recomputes the full
forward over the whole sequence every step: the slow, obviously correct
version the tests compare with.

Shapes: B batch, P prompt length (after padding), N = max_new_tokens, V vocab.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import as_array_of, get_array_module, to_numpy
from ..functional.stable import log_softmax

__all__ = ["generate", "sample_tokens"]


def sample_tokens(logits, temperature: float, top_k: int | None = None, gumbel=None):
    """One sampling step (a pure kernel; inputs are trusted).

    logits: (B, V) float, the model's logits for the next token.
    temperature: > 0 samples from softmax(logits / temperature); 0 is greedy.
    top_k: keep only each row's top_k largest logits when sampling (ties with
        the k-th value are kept too); None keeps all.
    gumbel: (B, V) standard Gumbel noise in the logits' dtype (ignored when greedy).
    Returns (tokens (B,) int64, logprobs (B,) in the logits' dtype) with
    logprobs = log_softmax(logits / temperature)[tokens] (temperature 1 when greedy).
    """
    xp = get_array_module(logits)
    scaled = logits / temperature if temperature > 0 else logits  # a new array (or the input, read only)
    logp = log_softmax(scaled, axis=-1)  # (B, V), max-shifted: finite for any finite logits
    if temperature == 0:
        tokens = xp.argmax(logits, axis=-1)  # greedy: the mode (of the logits themselves: no rounding ties)
    else:
        scores = logp + gumbel  # argmax of (log p + g) samples p; log p differs from scaled by a row constant
        if top_k is not None and top_k < logits.shape[-1]:
            v = logits.shape[-1]
            kth = xp.partition(logp, v - top_k, axis=-1)[:, v - top_k : v - top_k + 1]  # (B, 1)
            scores[logp < kth] = -np.inf  # exp(-inf) = 0: outside the top k, never the argmax
        tokens = xp.argmax(scores, axis=-1)
    tokens = tokens.astype(np.int64)
    logprobs = logp[xp.arange(logits.shape[0]), tokens]  # (B,) a new array (fancy indexing)
    return tokens, logprobs


def generate(
    model,
    prompt_ids,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed=0,
    attention_mask=None,
    eos_id: int | None = None,
    use_cache: bool = True,
    pad_id: int = 0,
) -> dict:
    """Sample up to ``max_new_tokens`` tokens after each prompt.

    model: a TinyGPT (anything with ``forward``, ``init_kv_cache``,
        ``forward_incremental`` and a ``config`` with block_size, vocab_size).
    prompt_ids: (B, P) integer ids on the model's backend, LEFT padded.
    max_new_tokens: N >= 0; P + N must not exceed the model's block_size.
    temperature: >= 0; 0 is greedy decoding.
    top_k: None, or an int in [1, V]: sample among the k most likely tokens.
    seed: an int >= 0, or a ``numpy.random.Generator`` (advanced in place).
    attention_mask: (B, P) of 0/1, 1 = real token, zeros only on the left;
        None means no padding.
    eos_id: a token id that ends a row, or None (always N tokens).
    use_cache: True uses the key/value cache; False recomputes every step.
    pad_id: the id written after a row's eos.

    Returns a dict of arrays on the model's backend:
        tokens          (B, P + N) int64: the prompt ids, then the new tokens
        new_tokens      (B, N) int64: the sampled tokens, ``pad_id`` after eos
        logprobs        (B, N) model dtype: log_softmax(logits / temperature) at
                        each sampled token (see the module docstring), 0 after eos
        response_mask   (B, N) int64: 1 on sampled tokens (eos included), 0 after eos
        attention_mask  (B, P + N) int64: the prompt mask, then response_mask
    """
    xp = get_array_module(model.wte.data) if hasattr(model, "wte") else np
    prompt_ids, mask, n_new, temperature, top_k = _validate(
        model, prompt_ids, max_new_tokens, temperature, top_k, attention_mask, eos_id, use_cache, pad_id, xp
    )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(_check_seed(seed))
    b, p = prompt_ids.shape
    v = model.config.vocab_size
    dtype = model.wte.data.dtype
    tokens = xp.full((b, p + n_new), pad_id, dtype=np.int64)  # (B, P + N), filled as we go
    tokens[:, :p] = prompt_ids
    full_mask = xp.zeros((b, p + n_new), dtype=np.int64)  # (B, P + N)
    full_mask[:, :p] = mask
    logprobs = xp.zeros((b, n_new), dtype=dtype)  # (B, N)
    finished = xp.zeros(b, dtype=bool)  # rows that have produced eos

    # Until a row is padded or has finished, the running mask is all ones, and the
    # model is given None instead: it would turn an all-ones mask into None itself
    # (the same logits), after checking its values, once per new token.
    padded = not bool(mask.all())
    logits = None
    if use_cache and n_new > 0:
        kv_cache = model.init_kv_cache(b, p + n_new)
        logits = model.forward_incremental(prompt_ids, kv_cache, attention_mask=mask if padded else None)
        logits = logits[:, -1]  # (B, V)
    for i in range(n_new):
        t = p + i  # the column the new token goes to
        if not use_cache:  # the slow reference: the whole sequence again
            outputs, _ = model.forward(tokens[:, :t], full_mask[:, :t])
            logits = outputs["logits"][:, -1]  # (B, V)
        # Draw the noise even for rows that have finished: the draws then do not
        # depend on which rows are alive, and cache / no-cache consume the same stream.
        noise = None if temperature == 0 else xp.asarray(rng.gumbel(size=(b, v)).astype(dtype))
        new, logp = sample_tokens(logits, temperature, top_k, noise)
        alive = ~finished
        tokens[:, t] = xp.where(alive, new, pad_id)
        full_mask[:, t] = alive
        logprobs[:, i] = xp.where(alive, logp, 0)
        if eos_id is not None:
            finished |= alive & (new == eos_id)
            if bool(finished.all()):
                break  # every row has stopped; the rest stays padding
            padded = padded or bool(finished.any())  # its next columns are 0
        if use_cache and i + 1 < n_new:
            running = full_mask[:, : t + 1] if padded else None
            logits = model.forward_incremental(tokens[:, t : t + 1], kv_cache, attention_mask=running)[:, -1]
    return {
        "tokens": tokens,
        "new_tokens": tokens[:, p:].copy(),
        "logprobs": logprobs,
        "response_mask": full_mask[:, p:].copy(),
        "attention_mask": full_mask,
    }


# --------------------------------------------------------------------------- validation
def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0 or a numpy.random.Generator, got {seed!r}")
    return int(seed)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _validate(model, prompt_ids, max_new_tokens, temperature, top_k, attention_mask, eos_id, use_cache, pad_id, xp):
    for attr in ("forward", "init_kv_cache", "forward_incremental", "config", "wte"):
        if not hasattr(model, attr):
            raise TypeError(f"model: expected a TinyGPT (with {attr}), got {type(model).__name__}")
    block_size, v = model.config.block_size, model.config.vocab_size
    prompt_ids = as_array_of(xp, prompt_ids, "prompt_ids")
    if prompt_ids.ndim != 2 or 0 in prompt_ids.shape:
        raise ValueError(f"prompt_ids: expected a non-empty (B, P) array, got shape {tuple(prompt_ids.shape)}")
    if not np.issubdtype(prompt_ids.dtype, np.integer):
        raise ValueError(f"prompt_ids: expected integer token ids, got dtype {prompt_ids.dtype}")
    lo, hi = int(prompt_ids.min()), int(prompt_ids.max())
    if lo < 0 or hi >= v:
        raise ValueError(f"prompt_ids: expected ids in [0, {v}), got min {lo}, max {hi}")
    b, p = prompt_ids.shape
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    if p + max_new_tokens > block_size:
        raise ValueError(
            f"max_new_tokens: prompt length {p} + max_new_tokens {max_new_tokens} = {p + max_new_tokens} "
            f"exceeds the model's block_size={block_size}"
        )
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating)) or not (
        0 <= temperature < math.inf
    ):
        raise ValueError(f"temperature: expected a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or not 1 <= top_k <= v):
        raise ValueError(f"top_k: expected None or an int in [1, V={v}], got {top_k!r}")
    for name, value in (("eos_id", eos_id), ("pad_id", pad_id)):
        if value is not None and (not _is_int(value) or not 0 <= value < v):
            raise ValueError(f"{name}: expected a token id in [0, {v}), got {value!r}")
    if not isinstance(use_cache, (bool, np.bool_)):
        raise TypeError(f"use_cache: expected a bool, got {type(use_cache).__name__}")
    if attention_mask is None:
        mask = xp.ones((b, p), dtype=np.int64)
    else:
        if not hasattr(attention_mask, "shape"):
            attention_mask = xp.asarray(attention_mask)
        if tuple(attention_mask.shape) != (b, p):
            raise ValueError(
                f"attention_mask: expected shape {(b, p)} like prompt_ids, got {tuple(attention_mask.shape)}"
            )
        m = to_numpy(attention_mask)
        if not np.all((m == 0) | (m == 1)):
            raise ValueError("attention_mask: expected only 0/1 (or bool) values, got other values")
        m = m.astype(np.int64)
        if np.any(np.diff(m, axis=1) < 0) or not np.all(m[:, -1] == 1):
            rows = np.flatnonzero((np.diff(m, axis=1) < 0).any(axis=1) | (m[:, -1] != 1)).tolist()
            raise ValueError(
                f"attention_mask: expected LEFT padding (zeros only before the prompt, its last column 1), "
                f"rows {rows} are not; encode prompts with padding_side='left'"
            )
        mask = xp.asarray(m)
    return prompt_ids, mask, int(max_new_tokens), float(temperature), (None if top_k is None else int(top_k))
