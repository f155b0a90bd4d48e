"""Sequence log-probabilities: from logits (B, T, V) to log pi(y | x) per sequence (B,).

DPO, PPO and the reward model all need the same number: how likely a model
finds a given response. A language model gives logits ``z[b, t, :]`` over the
vocabulary at each position; the response's log-probability is

    log pi(y | x) = sum_t  mask[b, t] * log_softmax(z[b, t, :])[y[b, t]]

(Rafailov et al. 2023, the DPO reference ``trainers.py: _get_batch_logps``).
With ``average=True`` the sum is divided by the number of counted tokens, the
length-normalised log-probability that IPO and SimPO use.

Alignment of logits and tokens
------------------------------
Everything here assumes the logits at position ``t`` score ``tokens[:, t]``.
A causal LM's logits at position ``t`` predict the *next* token, so the caller
shifts first: ``logits[:, :-1]`` scores ``tokens[:, 1:]`` (and the mask is
``mask[:, 1:]``), exactly as ``_get_batch_logps`` does. ``shift_for_causal_lm``
does that slice, and ``shift_for_causal_lm_backward`` pads the gradient back
to T positions (the last position predicts nothing, so its gradient is 0).
The same gatherer as a module (forward then backward, for a model to call on
the chosen and the rejected batch) is ``alignment_np.nn.SequenceLogProbs``
in ``nn/sequence_logprobs.py``, one layer up.

Backward
--------
For ``lp = log_softmax(z)`` and the gathered entry ``lp[y]`` with upstream
gradient ``g`` (one number per position), the log-softmax backward
``dz = g_full - softmax(z) * sum(g_full)`` with ``g_full = g * onehot(y)``
becomes

    dz = -softmax(z) * g  +  g * onehot(y).

The forward already computed ``lp``; ``softmax(z) = exp(lp)``, so the
backward reuses it instead of running a second logsumexp over V, and adds
``g`` at the token's index with fancy indexing rather than building a dense
(B, T, V) one-hot.

Non-finite logits
-----------------
A -inf logit is a banned token: it gets probability 0, a gradient of exactly
0, and scoring it gives a log-prob of -inf (the true value). A NaN logit (or
+inf) makes its row's log-probs NaN, and the sequence's log-prob NaN: the
gatherer propagates it visibly and never turns it into a number; the losses
that consume the log-probs then refuse it with the argument's name.

Shapes use B batch, T time, V vocabulary.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_array_module, to_numpy
from ..checks import check_bool
from .stable import log_softmax
from .workspace import empty

__all__ = [
    "token_logprobs_forward",
    "token_logprobs_backward",
    "sequence_logprobs_forward",
    "sequence_logprobs_backward",
    "shift_for_causal_lm",
    "shift_for_causal_lm_backward",
    "check_log_prob_inputs",
    "compute_log_probs",
]


# --------------------------------------------------------------------------
# Kernels (pure; inputs are trusted)
# --------------------------------------------------------------------------


def token_logprobs_forward(logits, tokens):
    """Log-probability of each token under the softmax of its logits.

    logits: (B, T, V) float, position t scores tokens[:, t].
    tokens: (B, T) integer ids in [0, V).
    Returns ``token_logps`` (B, T), same dtype as logits, and a cache holding
    the log-softmax (B, T, V) and the tokens.
    """
    xp = get_array_module(logits)
    # log_softmax subtracts the row max before the log-sum-exp, so the winning
    # entry is 0 - log(sum), accurate to float precision even for logits of 1e4.
    logp = log_softmax(logits, axis=-1)  # (B, T, V); kept for the backward
    token_logps = xp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]  # (B, T)
    cache = {"logp": logp, "tokens": tokens}
    return token_logps, cache


def token_logprobs_backward(d_token_logps, cache):
    """Gradient of the gathered log-probs with respect to the logits.

    d_token_logps: (B, T) upstream gradient g.
    cache: from ``token_logprobs_forward``.
    Returns dlogits (B, T, V) = -softmax * g[..., None] plus g at each token's index.
    """
    xp = get_array_module(d_token_logps)
    logp, tokens = cache["logp"], cache["tokens"]
    g = d_token_logps
    B, T = tokens.shape
    # exp(logp) is softmax(logits): a new array, so the in-place work below
    # touches only memory this kernel allocated (never the cache).
    dlogits = xp.exp(logp, out=empty(logp.shape, logp.dtype, xp))  # (B, T, V), workspace memory
    dlogits *= -g[..., None]
    # Scatter g at the token index without a dense one-hot: every (b, t)
    # appears once, so plain fancy-index += is exact (no repeated indices).
    rows = xp.arange(B)[:, None]  # (B, 1)
    cols = xp.arange(T)[None, :]  # (1, T)
    dlogits[rows, cols, tokens] += g
    return dlogits


def sequence_logprobs_forward(logits, tokens, mask=None, average=False):
    """Per-sequence sum (or mean) of token log-probs over masked-in positions.

    logits: (B, T, V) float, position t scores tokens[:, t] (already shifted).
    tokens: (B, T) integer ids in [0, V).
    mask: (B, T) of 0/1 (bool, int or float), 1 = count this token; None counts all.
    average: divide each row's sum by its number of counted tokens (every row
        must count at least one token; the public ``compute_log_probs`` checks).
    Returns ``seq_logps`` (B,) in the logits' dtype, and a cache.
    """
    xp = get_array_module(logits)
    token_logps, token_cache = token_logprobs_forward(logits, tokens)  # (B, T)
    if mask is None:
        weights = xp.ones(tokens.shape, dtype=logits.dtype)
    else:
        weights = xp.asarray(mask).astype(logits.dtype)  # a copy: 0/1 as float
    seq_logps = (token_logps * weights).sum(axis=-1)  # (B,)
    counts = None
    if average:
        counts = weights.sum(axis=-1)  # (B,) number of counted tokens
        seq_logps = seq_logps / counts
    cache = {"token_cache": token_cache, "weights": weights, "counts": counts}
    return seq_logps, cache


def sequence_logprobs_backward(d_seq_logps, cache):
    """Gradient of the per-sequence log-probs with respect to the logits.

    d_seq_logps: (B,) upstream gradient.
    Returns dlogits (B, T, V): each counted position receives d_seq_logps[b]
    (divided by the row's token count when averaging), masked ones 0.
    """
    weights, counts = cache["weights"], cache["counts"]
    per_token = d_seq_logps if counts is None else d_seq_logps / counts  # (B,)
    d_token_logps = per_token[:, None] * weights  # (B, T), a new array
    return token_logprobs_backward(d_token_logps, cache["token_cache"])


def shift_for_causal_lm(logits, tokens, mask=None):
    """Align a causal LM's logits with the tokens they predict.

    logits: (B, T, V); position t predicts token t + 1.
    tokens: (B, T); mask: (B, T) or None.
    Returns (logits[:, :-1] (B, T-1, V), tokens[:, 1:] (B, T-1),
    mask[:, 1:] (B, T-1) or None), as in the DPO reference's ``_get_batch_logps``.
    The returned arrays are views (forward only); the backward allocates.
    """
    shifted_mask = None if mask is None else mask[:, 1:]
    return logits[:, :-1], tokens[:, 1:], shifted_mask


def shift_for_causal_lm_backward(d_shifted_logits):
    """Pad the gradient of ``logits[:, :-1]`` back to T positions.

    d_shifted_logits: (B, T-1, V). Returns dlogits (B, T, V), a new array whose
    last position is 0 (the final logits predict no token in the sequence).
    """
    xp = get_array_module(d_shifted_logits)
    B, Tm1, V = d_shifted_logits.shape
    dlogits = empty((B, Tm1 + 1, V), d_shifted_logits.dtype, xp)
    dlogits[:, :-1] = d_shifted_logits
    dlogits[:, -1] = 0
    return dlogits


# --------------------------------------------------------------------------
# Public boundary: validation, then the kernels
# --------------------------------------------------------------------------


def _as_array(x, xp, name):
    """``x`` as an array of the logits' module ``xp``; TypeError for another device or a non-array."""
    if get_array_module(x) is not xp:
        raise TypeError(
            f"{name} lives on a different device than logits "
            f"({type(x).__module__}.{type(x).__name__} vs {xp.__name__}); "
            "move it explicitly with alignment_np.to_device"
        )
    if x is None or isinstance(x, (str, bytes, dict)):
        raise TypeError(f"{name}: expected an array, got {type(x).__name__}")
    try:
        return xp.asarray(x)
    except (TypeError, ValueError) as err:  # a ragged list
        raise TypeError(f"{name}: expected an array, got {type(x).__name__} that is not one ({err})") from None


def check_log_prob_inputs(logits, tokens, mask, average, shift):
    """Validate the public inputs, shift if asked, and return what the kernels score.

    Used by ``compute_log_probs`` and by the module ``nn.SequenceLogProbs``.

    Returns (logits, tokens, mask) as arrays of the logits' module, already
    shifted when ``shift`` is true, with the ids at masked-out positions
    replaced by 0 (they are never counted; the DPO reference does the same with
    its -100 labels), so the gather stays in bounds.
    """
    average = check_bool("average", average)
    shift = check_bool("shift", shift)
    xp = get_array_module(logits)
    logits = _as_array(logits, xp, "logits")
    tokens = _as_array(tokens, xp, "tokens")
    mask = None if mask is None else _as_array(mask, xp, "mask")
    if logits.ndim != 3:
        raise ValueError(
            f"logits must be 3-D (B, T, V), got {logits.ndim}-D with shape {tuple(logits.shape)}"
        )
    if logits.dtype.kind != "f":
        raise TypeError(f"logits must be a float array, got dtype {logits.dtype}")
    if tokens.dtype.kind not in "iu":
        raise TypeError(f"tokens must be an integer array of token ids, got dtype {tokens.dtype}")
    if tuple(tokens.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"tokens must have shape (B, T) = {tuple(logits.shape[:2])} to match logits "
            f"{tuple(logits.shape)}, got {tuple(tokens.shape)}"
        )
    B, T, V = logits.shape
    if V < 1:
        raise ValueError(f"logits must have a vocabulary axis V >= 1, got V = {V}")
    if mask is not None:
        if tuple(mask.shape) != tuple(tokens.shape):
            raise ValueError(
                f"mask must have the shape of tokens {tuple(tokens.shape)}, got {tuple(mask.shape)}"
            )
        if mask.dtype.kind not in "biuf":
            raise TypeError(f"mask must be bool or numeric, got dtype {mask.dtype}")
        if not bool(to_numpy(((mask == 0) | (mask == 1)).all())):
            raise ValueError(
                "mask must contain only 0 and 1 (1 = count the token), got other values"
            )
    if shift:
        if T < 2:
            raise ValueError(
                f"shift=True needs T >= 2 positions (logits t predicts token t+1), got T = {T}"
            )
        logits, tokens, mask = shift_for_causal_lm(logits, tokens, mask)

    counted = None if mask is None else mask != 0  # (B, T') bool
    in_range = (tokens >= 0) & (tokens < V)
    bad = to_numpy(~in_range if counted is None else counted & ~in_range)
    if bad.any():
        b, t = (int(i) for i in np.argwhere(bad)[0])
        value = int(to_numpy(tokens[b, t]))
        step = t + 1 if shift else t  # report the position in the caller's tokens
        raise ValueError(
            f"tokens must be ids in [0, V) = [0, {V}) wherever mask counts them; got {value} "
            f"at position (row {b}, step {step}) ({int(bad.sum())} counted id(s) out of range)"
        )
    if average:
        counts = np.full(B, tokens.shape[1]) if counted is None else to_numpy(counted.sum(axis=-1))
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            raise ValueError(
                f"average=True divides by the number of counted tokens, but mask row "
                f"{int(empty[0])} counts none (rows with no tokens: {empty.tolist()})"
            )
    if counted is not None:
        tokens = xp.where(counted, tokens, 0)  # a new array: masked ids never reach the gather
    return logits, tokens, mask


def compute_log_probs(logits, tokens, mask=None, average=False, *, shift=False):
    """log pi(tokens | logits) per sequence: the sum of token log-probs over the mask.

    logits: (B, T, V) float. Position t scores tokens[:, t]; for a causal LM
        pass ``shift=True`` (logits[:, :-1] then score tokens[:, 1:]).
    tokens: (B, T) integer ids, in [0, V) wherever the mask counts them;
        masked-out positions may hold anything (e.g. -100 or a pad id).
    mask: (B, T) of 0/1, 1 = count the token (e.g. response tokens only); None counts all.
    average: divide by the number of counted tokens (length-normalised log-prob).
    shift: apply ``shift_for_causal_lm`` first.
    Returns (B,) log-probs in the logits' dtype, each <= 0.

    Raises ValueError / TypeError for a wrong shape or dtype, a counted token
    id outside [0, V) (naming it and its position), a mask of another shape or
    with values other than 0/1, and, with ``average=True``, a row with no
    counted tokens.
    """
    logits, tokens, mask = check_log_prob_inputs(logits, tokens, mask, average, shift)
    seq_logps, _ = sequence_logprobs_forward(logits, tokens, mask, average)
    return seq_logps


def __getattr__(name: str):
    # ``SequenceLogProbs`` (a module) lives in ``alignment_np.nn.sequence_logprobs``:
    # kernels must not import the module layer above them. The old import path
    # ``from alignment_np.functional.logprobs import SequenceLogProbs`` keeps
    # working through this lazy lookup (PEP 562), which runs only when that
    # name is asked for, never when this file is imported.
    if name == "SequenceLogProbs":
        from ..nn.sequence_logprobs import SequenceLogProbs

        return SequenceLogProbs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
