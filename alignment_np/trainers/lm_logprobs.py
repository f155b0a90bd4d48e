"""From a causal language model to per-sequence log-probs, and back.

DPO compares how likely the policy and the reference find each response,
``log pi(y | x)``; PPO and GRPO need the same number. This file is the glue
between ``TinyGPT`` (ids -> logits) and the log-prob gatherer of
``functional/logprobs.py`` (logits -> one number per row), in both directions:

    input_ids (B, T) -> model.forward -> logits (B, T, V)
      -> shift -> logits[:, :-1] scores input_ids[:, 1:] under loss_mask[:, 1:]
      -> sequence_logprobs_forward -> logps (B,)

    d_logps (B,) -> sequence_logprobs_backward -> d shifted logits (B, T-1, V)
      -> pad the last position with 0 -> dlogits (B, T, V) -> model.backward

The shift, on one row of T = 6 tokens (a prompt "ab" after <bos>, a response
"cd" and <eos>); loss_mask is 1 on the response tokens::

    position t        0      1    2    3    4    5
    input_ids        <bos>   a    b    c    d   <eos>
    loss_mask         0      0    0    1    1    1
    logits[:, t]      -> predicts input_ids[:, t + 1]

    scored pairs      logits[0] vs a      (mask 0, not counted)
                      logits[1] vs b      (mask 0)
                      logits[2] vs c      (mask 1)   <- the response starts here
                      logits[3] vs d      (mask 1)
                      logits[4] vs <eos>  (mask 1)
                      logits[5]           predicts past the row: never scored

so ``logps = log p(c | <bos> a b) + log p(d | ... c) + log p(<eos> | ... d)``.
The first token has no logits that predict it: ``loss_mask[:, 0]`` must be 0.
This is ``_get_batch_logps`` of the DPO reference implementation (Rafailov et
al. 2023, ``trainers.py``) and TRL's ``DPOTrainer.get_batch_logps``.

Already shifted? The collators of ``data/collate.py`` do the shift when they
build a batch: ``input_ids = s[:-1]``, ``targets = s[1:]``, and their
``loss_mask`` is aligned with ``targets``. Pass ``targets=`` and nothing is
shifted here: ``logits[:, t]`` scores ``targets[:, t]`` under ``loss_mask[:, t]``,
and no position is computed only to be thrown away::

    position t        0      1    2    3    4
    input_ids        <bos>   a    b    c    d
    targets           a      b    c    d   <eos>
    loss_mask         0      0    1    1    1

Per-token log-probs of a sampled response (RL)
----------------------------------------------
PPO, GRPO and RLOO need one log-prob per RESPONSE TOKEN, not one per
sequence, and at the temperature the response was sampled with.
``response_forward`` / ``response_backward`` score the layout that
``rl/generate.py`` produces: a left-padded prompt of P columns followed by N
response columns, ``tokens`` (B, P + N)::

    column            0      1     ...  P-1 | P      P+1   ...  P+N-1
    tokens           <pad>  <bos>  ...   s  | y_0    y_1   ...  y_{N-1}
    logits[:, c]      -> predicts tokens[:, c + 1]

    logps[b, i] = log_softmax(logits[b, P - 1 + i] / temperature)[y_i]     (B, N)
    values[b, i] = value head at column P - 1 + i: V(prompt, y_<i)         (B, N)

One forward over ``tokens[:, :-1]`` (the last token predicts nothing)
gives all N positions at once; dividing the logits by the temperature before
the log-softmax is what the sampler did, so the log-prob of a token is the
same number at rollout and at update time (TRL divides by the temperature in
both places too). The backward multiplies by 1 / temperature:
d logps / d logits = (onehot(y) - softmax(logits / tau)) / tau.

Shapes: B batch, T time, V vocabulary, D model width, P prompt columns, N response columns.
"""

from __future__ import annotations

import numpy as np

from ..backend import as_array_of, get_array_module, to_numpy
from ..checks import check_bool, check_float, check_int
from ..functional.logprobs import (
    sequence_logprobs_backward,
    sequence_logprobs_forward,
    shift_for_causal_lm,
    shift_for_causal_lm_backward,
    token_logprobs_backward,
    token_logprobs_forward,
)

__all__ = ["policy_logps_forward", "policy_logps_backward", "response_forward", "response_backward"]


def policy_logps_forward(model, input_ids, attention_mask, loss_mask, average=False, *, targets=None):
    """Per-sequence log-probs of the tokens that ``loss_mask`` counts.

    model: a causal LM with ``forward(idx, attention_mask, heads=("logits",))``
        and ``backward({"logits": dlogits}, cache)`` (e.g. ``TinyGPT``).
    input_ids: (B, T) integer token ids (T >= 2 unless ``targets`` are given).
    attention_mask: (B, T) of 0/1 or bool, 1 = real token; None = all real.
    loss_mask: (B, T) of 0/1 or bool, 1 = count this token (the response).
        It must be 0 in column 0 (no logits predict the first token) and 0
        wherever attention_mask is 0 (padding is never scored).
    average: divide each row's sum by its number of counted tokens (every row
        must then count at least one token).
    targets: None (shift here, as drawn above), or (B, T) ids that
        ``logits[:, t]`` predicts, already shifted (``collate_preferences``);
        then ``loss_mask`` is aligned with ``targets``, column 0 may count, and
        ids at positions the mask does not count may be anything (e.g. -100).

    Returns (logps (B,), cache): logps in the model's dtype, each <= 0, and a
    cache for ``policy_logps_backward``: a dict holding the model's cache, the
    gatherer's cache, whether the shift was done here, and the model itself
    (a reference, not a copy: the backward must know whose ``Parameter.grad``
    to accumulate into, and the signature ``backward(d_logps, cache)`` has no
    other place for it).

    Raises ValueError / TypeError naming the argument for a wrong shape or
    dtype, mask values other than 0/1, a loss_mask that counts column 0
    (without ``targets``) or a padding position, a counted target outside
    [0, V), or (with ``average``) a row that counts no token.
    """
    input_ids, attention_mask, loss_mask, targets = _check_inputs(
        model, input_ids, attention_mask, loss_mask, average, targets
    )
    outputs, model_cache = model.forward(input_ids, attention_mask, heads=("logits",))
    logits = outputs["logits"]  # (B, T, V); position t predicts token t + 1
    shift = targets is None
    if shift:
        # logits[:, :-1] (B, T-1, V) score input_ids[:, 1:] (B, T-1), and the
        # mask moves with the tokens it counts: loss_mask[:, 1:].
        logits, targets, loss_mask = shift_for_causal_lm(logits, input_ids, loss_mask)
    logps, logps_cache = sequence_logprobs_forward(logits, targets, loss_mask, average)
    cache = {"model": model, "model_cache": model_cache, "logps_cache": logps_cache, "shift": shift}
    return logps, cache


def policy_logps_backward(d_logps, cache):
    """Backpropagate d loss / d logps into the model's parameter gradients.

    d_logps: (B,) upstream gradient, one number per sequence.
    cache: from ``policy_logps_forward``.
    Accumulates (``+=``) into every ``Parameter.grad`` of the model and
    returns None. Neither ``d_logps`` nor the cache is modified.
    """
    xp = get_array_module(d_logps)
    logps_cache = cache["logps_cache"]
    b = logps_cache["weights"].shape[0]
    d_logps = xp.asarray(d_logps)
    if tuple(d_logps.shape) != (b,):
        raise ValueError(f"d_logps: expected shape (B,) = ({b},), got {tuple(d_logps.shape)}")
    dlogits = sequence_logprobs_backward(d_logps, logps_cache)  # (B, T-1, V) or (B, T, V)
    if cache["shift"]:
        dlogits = shift_for_causal_lm_backward(dlogits)  # (B, T, V); the last position is 0
    cache["model"].backward({"logits": dlogits}, cache["model_cache"])


# --------------------------------------------------------------------------
# per-token log-probs (and values) of a sampled response
# --------------------------------------------------------------------------

RESPONSE_HEADS = ("logits", "values")


def response_forward(model, tokens, attention_mask, prompt_length, temperature=1.0, heads=("logits",),
                     response_mask=None, keep_cache=True):
    """Per-token log-probs (and values) of the N response tokens after a P-column prompt.

    model: a TinyGPT (``forward(idx, mask, heads)`` / ``backward(grads, cache)``).
    tokens: (B, P + N) integer ids: a left-padded prompt, then the response
        (``generate(...)["tokens"]``). N >= 1.
    attention_mask: (B, P + N) of 0/1 (1 = real token), or None (all real).
    prompt_length: P >= 1, the number of prompt columns (padding included).
    temperature: tau > 0; the logits are divided by it before the log-softmax,
        as the sampler did.
    heads: a non-empty subset of ("logits", "values"): "logits" gives the
        log-probs, "values" the value head's V at the same positions (one
        forward for both when the value head sits on the policy's trunk).
    response_mask: (B, N) of 0/1 or None. Where it is 0 (after a response's
        end) logps and values are returned as 0 and receive no gradient.
    keep_cache: False to score only (a rollout): the model keeps no layer's
        activations (``TinyGPT.forward(keep_cache=False)``) and the cache
        returned is None.

    Returns (out, cache) with out a dict of new arrays in the model's dtype:
        "logps"   (B, N)    log_softmax(logits / tau)[token]  (with "logits")
        "logits"  (B, N, V) logits / tau at the predicting positions (with
                            "logits"; for an entropy bonus)
        "values"  (B, N)    (with "values")
    and a cache for ``response_backward`` (holding a reference to the model,
    like ``policy_logps_forward``'s).
    """
    tokens, attention_mask, p, temperature, heads, response_mask = _check_response_inputs(
        model, tokens, attention_mask, prompt_length, temperature, heads, response_mask
    )
    keep_cache = check_bool("keep_cache", keep_cache)
    xp = get_array_module(tokens)
    inputs = tokens[:, :-1]  # (B, P + N - 1): the last token is context for nothing
    mask = None if attention_mask is None else attention_mask[:, :-1]
    if keep_cache:
        outputs, model_cache = model.forward(inputs, mask, heads=heads)
    else:
        outputs, model_cache = model.forward(inputs, mask, heads=heads, keep_cache=False)
    out = {}
    cache = {"model": model, "model_cache": model_cache, "prompt_length": p, "temperature": temperature,
             "response_mask": response_mask, "input_shape": tuple(inputs.shape), "heads": heads}
    if "logits" in heads:
        # Column P - 1 + i predicts response token i: the last N columns of the inputs.
        scaled = outputs["logits"][:, p - 1:] / temperature  # (B, N, V), a new array
        logps, token_cache = token_logprobs_forward(scaled, tokens[:, p:])
        if response_mask is not None:
            logps = xp.where(response_mask, logps, 0).astype(scaled.dtype, copy=False)
        out["logps"], out["logits"] = logps, scaled
        cache["token_cache"] = token_cache
    if "values" in heads:
        values = outputs["values"][:, p - 1:]  # (B, N)
        out["values"] = values.copy() if response_mask is None else xp.where(response_mask, values, 0).astype(
            values.dtype, copy=False)
    return out, (cache if keep_cache else None)


def response_backward(cache, d_logps=None, d_logits=None, d_values=None):
    """Backpropagate gradients of the response's log-probs / scaled logits / values.

    cache: from ``response_forward``.
    d_logps: (B, N) d loss / d logps, or None.
    d_logits: (B, N, V) d loss / d (logits / tau), e.g. from an entropy bonus, or None.
    d_values: (B, N) d loss / d values, or None.
    At least one must be given, each only for a head the forward computed.
    Accumulates (``+=``) into the model's ``Parameter.grad`` and returns None;
    nothing passed in, nor the cache, is modified.
    """
    heads = cache["heads"]
    if d_logps is None and d_logits is None and d_values is None:
        raise ValueError("response_backward: expected at least one of d_logps, d_logits, d_values")
    if (d_logps is not None or d_logits is not None) and "logits" not in heads:
        raise ValueError(f"d_logps / d_logits: the forward computed heads {heads}, not 'logits'")
    if d_values is not None and "values" not in heads:
        raise ValueError(f"d_values: the forward computed heads {heads}, not 'values'")
    b, t_in = cache["input_shape"]
    p = cache["prompt_length"]
    n = t_in - p + 1
    mask = cache["response_mask"]
    grads = {}
    if "logits" in heads and (d_logps is not None or d_logits is not None):
        token_cache = cache["token_cache"]
        xp = get_array_module(token_cache["logp"])
        dtype = token_cache["logp"].dtype
        v = token_cache["logp"].shape[-1]
        if d_logps is not None:
            d_logps = _check_grad_shape("d_logps", d_logps, (b, n), xp)
            if mask is not None:
                d_logps = xp.where(mask, d_logps, 0)  # a new array: dout is never touched
            d_scaled = token_logprobs_backward(d_logps.astype(dtype, copy=False), token_cache)  # (B, N, V), new
        else:
            d_scaled = xp.zeros((b, n, v), dtype=dtype)
        if d_logits is not None:
            d_scaled += _check_grad_shape("d_logits", d_logits, (b, n, v), xp)
        d_scaled /= cache["temperature"]  # d (z / tau) / dz = 1 / tau
        dlogits = xp.zeros((b, t_in, v), dtype=dtype)  # the prompt's own predictions get nothing
        dlogits[:, p - 1:] = d_scaled
        grads["logits"] = dlogits
    if d_values is not None:
        xp = get_array_module(d_values)
        d_values = _check_grad_shape("d_values", d_values, (b, n), xp)
        dv = xp.zeros((b, t_in), dtype=d_values.dtype)
        dv[:, p - 1:] = d_values if mask is None else xp.where(mask, d_values, 0)
        grads["values"] = dv
    cache["model"].backward(grads, cache["model_cache"])


def _check_grad_shape(name, g, shape, xp):
    g = xp.asarray(g)
    if tuple(g.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(g.shape)}")
    return g


def _check_response_inputs(model, tokens, attention_mask, prompt_length, temperature, heads, response_mask):
    if not (callable(getattr(model, "forward", None)) and callable(getattr(model, "backward", None))):
        raise TypeError(
            f"model: expected a causal LM with forward() and backward() (e.g. TinyGPT), got {type(model).__name__}"
        )
    xp = get_array_module(model.wte.data) if hasattr(model, "wte") else np
    tokens = as_array_of(xp, tokens, "tokens")
    if tokens.ndim != 2:
        raise ValueError(f"tokens: expected a (B, P + N) array, got shape {tuple(tokens.shape)}")
    if tokens.dtype.kind not in "iu":
        raise TypeError(f"tokens: expected integer token ids, got dtype {tokens.dtype}")
    b, t = tokens.shape
    p = check_int("prompt_length", prompt_length, low=1, high=max(t - 1, 1))
    if t - p < 1:
        raise ValueError(f"tokens: expected at least one response column after prompt_length={p}, got T={t}")
    temperature = check_float("temperature", temperature, 0.0, low_open=True)
    given = (heads,) if isinstance(heads, str) else tuple(heads)
    if not given or any(h not in RESPONSE_HEADS for h in given):
        raise ValueError(f"heads: expected a non-empty subset of {RESPONSE_HEADS}, got {heads!r}")
    heads = tuple(h for h in RESPONSE_HEADS if h in given)
    if attention_mask is not None:
        attention_mask = _check_mask("attention_mask", attention_mask, (b, t), xp)
    if response_mask is not None:
        response_mask = _check_mask("response_mask", response_mask, (b, t - p), xp).astype(bool)
    return tokens, attention_mask, p, temperature, heads, response_mask


# --------------------------------------------------------------------------
# validation at the public boundary
# --------------------------------------------------------------------------


def _check_mask(name, mask, shape, xp):
    """mask as an array of the model's module, checked for shape and 0/1 values."""
    mask = as_array_of(xp, mask, name)
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name}: expected shape (B, T) = {shape} like input_ids, got {tuple(mask.shape)}")
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected a bool or numeric 0/1 array, got dtype {mask.dtype}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name}: expected only 0/1 values, got others")
    return mask


def _check_inputs(model, input_ids, attention_mask, loss_mask, average, targets):
    if not (callable(getattr(model, "forward", None)) and callable(getattr(model, "backward", None))):
        raise TypeError(
            f"model: expected a causal LM with forward() and backward() (e.g. TinyGPT), "
            f"got {type(model).__name__}"
        )
    if not isinstance(average, (bool, np.bool_)):
        raise TypeError(f"average: expected a bool, got {type(average).__name__}")
    xp = get_array_module(model.wte.data) if hasattr(model, "wte") else np
    if not hasattr(input_ids, "shape"):
        input_ids = xp.asarray(input_ids)
    if getattr(input_ids, "ndim", 0) != 2:
        raise ValueError(f"input_ids: expected a (B, T) array, got shape {tuple(input_ids.shape)}")
    if input_ids.dtype.kind not in "iu":
        raise TypeError(f"input_ids: expected integer token ids, got dtype {input_ids.dtype}")
    shape = tuple(input_ids.shape)
    if targets is None and shape[1] < 2:
        raise ValueError(
            f"input_ids: expected T >= 2 (logits at t predict token t + 1), got shape {shape}"
        )
    if loss_mask is None:
        raise ValueError("loss_mask: expected a (B, T) array of 0/1 marking the scored tokens, got None")
    loss_mask = _check_mask("loss_mask", loss_mask, shape, xp)
    if targets is not None:
        targets = _check_targets(targets, loss_mask, shape, model, xp)
    elif bool(loss_mask[:, 0].any()):
        rows = to_numpy(xp.flatnonzero(loss_mask[:, 0])).tolist()
        raise ValueError(
            f"loss_mask: column 0 must be 0 (no logits predict the first token), "
            f"but rows {rows} count it"
        )
    if attention_mask is not None:
        attention_mask = _check_mask("attention_mask", attention_mask, shape, xp)
        padded = (loss_mask != 0) & (attention_mask == 0)
        if bool(padded.any()):
            b, t = (int(i) for i in np.argwhere(to_numpy(padded))[0])
            raise ValueError(
                f"loss_mask: counts a padding position (attention_mask 0) at row {b}, "
                f"step {t}; padding is never scored"
            )
    if average:
        counted = loss_mask if targets is not None else loss_mask[:, 1:]
        counts = to_numpy((counted != 0).sum(axis=1))
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            raise ValueError(
                f"loss_mask: average=True divides by the number of counted tokens, "
                f"but rows {empty.tolist()} count none"
            )
    return input_ids, attention_mask, loss_mask, targets


def _check_targets(targets, loss_mask, shape, model, xp):
    """Pre-shifted targets, with the ids the mask does not count replaced by 0."""
    if not hasattr(targets, "shape"):
        targets = xp.asarray(targets)
    if tuple(targets.shape) != shape:
        raise ValueError(f"targets: expected shape (B, T) = {shape} like input_ids, got {tuple(targets.shape)}")
    if targets.dtype.kind not in "iu":
        raise TypeError(f"targets: expected integer token ids, got dtype {targets.dtype}")
    v = model.config.vocab_size
    bad = to_numpy((loss_mask != 0) & ((targets < 0) | (targets >= v)))
    if bad.any():
        b, t = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"targets: expected ids in [0, {v}) wherever loss_mask counts them, got "
            f"{int(to_numpy(targets[b, t]))} at row {b}, step {t}"
        )
    # a new array: uncounted ids (e.g. -100) never reach the gather
    return xp.where(loss_mask != 0, targets, 0)
