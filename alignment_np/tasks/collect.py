"""Collecting preference pairs: sample from the SFT model, let a rater pick best and worst.

The DPO paper's controlled sentiment experiment (Rafailov et al. 2023,
Sec. 6.1) and the RLHF papers before it (Ziegler et al. 2019; Stiennon et al.
2020) build preference data the same way: the SFT model writes several
completions y_1..y_K for a prompt x, a judge scores them, and the best and the
worst become a pair (x, y_w, y_l). Here the judge is any rater::

    rate(prompts: list[str], completions: list[str]) -> np.ndarray (N,) float64

(e.g. VADER's compound score of prompt + completion), and one call does::

    prompts (P,) --repeat K--> (P*K,) --encode, LEFT padded, <bos> first--> ids (B, L)
      --generate (temperature, KV cache)--> completions, did each end with <eos>?
      --rate--> scores (P*K,)
      per prompt: chosen = argmax score, rejected = argmin score over the finished ones
      keep the pair iff score_chosen - score_rejected >= min_gap and > 0
      flip exactly round(flip_rate * kept) pairs, chosen at random (noisy-label experiments)

Decisions, and why
------------------
* A completion that never emitted <eos> within ``max_new_tokens`` is
  *unfinished* and never becomes chosen or rejected. DPO and the reward model
  score a response as ``<bos> prompt response <eos>``: a truncated text would
  be trained as if the model should stop mid-sentence, and the rater would
  judge a fragment. It is counted (``unfinished``), not rated. A prompt with
  fewer than two finished completions gives no pair (``dropped_unfinished``).
  (PPO treats the same case differently, with a fixed penalty, because there
  the score is a reward rather than a label.)
* A completion that contains a special token (pad, bos, unk) before its
  <eos> has no faithful text: decoding would drop or rewrite the token. It is
  counted as ``invalid`` and excluded like an unfinished one.
* Equal scores carry no preference: a pair needs ``score_chosen -
  score_rejected >= min_gap`` AND a strictly positive gap, whatever min_gap.
  Among equal best (or worst) scores the first sample wins.
* Flipping picks exactly ``round(flip_rate * kept)`` pairs (half rounds up),
  not each pair with probability flip_rate, so the noise level of an
  experiment is what its config says. A flipped pair swaps its texts AND
  its scores, so ``meta["score_chosen"]`` is always the rater's score of
  ``chosen``; ``meta["flipped"]`` says which pairs were flipped.

Reproducible: everything random comes from ``seed`` (one stream for the
sampling, an independent one for the flips, ``numpy.random.SeedSequence(seed)
.spawn(2)``). The same seed, prompts, model, ``batch_size`` and
``max_new_tokens`` give the same pairs; another ``batch_size`` changes the
sampling noise.

Shapes: P prompts, K = samples_per_prompt, B rows per generation batch, L
longest prompt (with <bos>) in a batch, N = max_new_tokens.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from ..backend import to_numpy
from ..checks import check_float, check_int, check_positive_int
from ..data.preferences import PreferencePair
from ..progress import Progress
from ..rl.generate import generate

__all__ = ["collect_preferences", "flip_labels", "sample_completions", "check_rater_scores"]


def check_rater_scores(scores, n: int, name: str = "rate") -> np.ndarray:
    """The rater's output as a finite float64 NumPy array of shape (n,); ValueError otherwise.

    A rater that returns the wrong number of scores, or a NaN, would silently
    pair the wrong texts or poison every statistic: refuse it here, naming it.
    """
    try:
        arr = np.asarray(to_numpy(scores) if hasattr(scores, "shape") else scores, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected an array of {n} float scores, got {type(scores).__name__} ({err})") from None
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected {n} scores, shape ({n},), one per completion, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name}: returned a non-finite score {arr[bad[0]]} for completion {int(bad[0])}")
    return arr


def _check_prompts(prompts) -> None:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError(f"prompts: expected a non-empty list of str, got {prompts!r:.80}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}]: expected a str, got {type(p).__name__}")


def _check_common(policy, tokenizer, prompts, max_new_tokens, batch_size, temperature):
    for attr in ("forward", "init_kv_cache", "forward_incremental", "config"):
        if not hasattr(policy, attr):
            raise TypeError(f"policy: expected a TinyGPT, got {type(policy).__name__}")
    for attr in ("encode_batch", "decode", "pad_id", "bos_id", "eos_id", "vocab_size"):
        if not hasattr(tokenizer, attr):
            raise TypeError(f"tokenizer: expected a CharTokenizer-like object, {type(tokenizer).__name__} has no {attr}")
    if tokenizer.vocab_size != policy.config.vocab_size:
        raise ValueError(
            f"tokenizer: vocab_size {tokenizer.vocab_size} differs from the model's vocab_size {policy.config.vocab_size}"
        )
    _check_prompts(prompts)
    block = policy.config.block_size
    longest = 1 + max(len(tokenizer.encode(p)) for p in prompts)  # <bos> + prompt
    if max_new_tokens is None:
        max_new_tokens = block - longest
        if max_new_tokens < 1:
            raise ValueError(
                f"prompts: the longest prompt takes {longest} tokens with <bos>, leaving no room in "
                f"block_size={block} for a completion"
            )
    else:
        max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
        if longest + max_new_tokens > block:
            raise ValueError(
                f"max_new_tokens: the longest prompt takes {longest} tokens with <bos>; plus "
                f"max_new_tokens={max_new_tokens} that exceeds the model's block_size={block}"
            )
    batch_size = check_positive_int("batch_size", batch_size)
    temperature = check_float("temperature", temperature, 0.0, low_open=True)
    return max_new_tokens, batch_size, temperature


def sample_completions(
    policy,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int | None = None,
    temperature: float = 1.0,
    batch_size: int = 64,
    seed=0,
    progress: bool = False,
    desc: str = "sample",
) -> dict:
    """One completion per prompt (repeat a prompt to sample it several times), with the KV cache.

    policy: a TinyGPT. tokenizer: its CharTokenizer.
    prompts: (M,) str; each row is ``<bos> prompt``, left padded within its batch.
    max_new_tokens: N; None: as many as the model's block_size leaves after
        the longest prompt.
    temperature: > 0; 1 samples the model's own distribution.
    batch_size: rows per call of ``generate``.
    seed: an int >= 0 or a ``numpy.random.Generator`` (advanced in place).

    Returns a dict of host arrays / lists, one entry per prompt:
        completions  list[str] (M,) the text before <eos> (a special token,
                     which only an invalid completion holds, is written
                     as ``<bos>``, ``<pad>``, ``<unk>``)
        finished     (M,) bool: the completion ended with <eos> within N tokens
        valid        (M,) bool: finished, and no special token (pad, bos, unk)
                     before the <eos>; only these have a faithful text
        logps        (M,) float64: sum of the sampled tokens' log-probs (at
                     ``temperature``), <eos> included when emitted
        lengths      (M,) int64: number of sampled tokens, <eos> included
        tokens       list[list[int]] (M,): the sampled ids, <eos> included
                     when emitted (what the text cannot always say)
    """
    max_new_tokens, batch_size, temperature = _check_common(
        policy, tokenizer, prompts, max_new_tokens, batch_size, temperature
    )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(check_int("seed", seed, low=0))
    eos = tokenizer.eos_id
    special = set(getattr(tokenizer, "special_ids", (tokenizer.pad_id, tokenizer.bos_id, eos)))
    m = len(prompts)
    completions, tokens, finished, valid = [], [], np.zeros(m, bool), np.zeros(m, bool)
    logps, lengths = np.zeros(m, np.float64), np.zeros(m, np.int64)
    bar = Progress(total=math.ceil(m / batch_size), desc=desc, enabled=progress)
    try:
        for lo in range(0, m, batch_size):
            hi = min(lo + batch_size, m)
            ids, mask = tokenizer.encode_batch(list(prompts[lo:hi]), add_bos=True, padding_side="left")
            out = generate(policy, ids, max_new_tokens, temperature=temperature, seed=rng,
                           attention_mask=mask, eos_id=eos, pad_id=tokenizer.pad_id)
            new = to_numpy(out["new_tokens"])  # (B, N)
            resp = to_numpy(out["response_mask"]).astype(bool)  # (B, N): sampled tokens, <eos> included
            lp = to_numpy(out["logprobs"]).astype(np.float64)
            for r in range(hi - lo):
                toks = new[r][resp[r]].tolist()
                done = bool(toks) and toks[-1] == eos
                body = toks[:-1] if done else toks
                ok = done and not any(t in special for t in body)
                i = lo + r
                finished[i], valid[i] = done, ok
                lengths[i] = len(toks)
                logps[i] = float(lp[r][resp[r]].sum())
                completions.append(tokenizer.decode(body, skip_special=False))
                tokens.append(toks)
            bar.update(1)
    finally:
        bar.close()
    return {"completions": completions, "finished": finished, "valid": valid, "logps": logps, "lengths": lengths,
            "tokens": tokens}


def flip_labels(pairs: Sequence[PreferencePair], flip_rate: float, seed: int = 0) -> tuple[list, int]:
    """Swap the labels of exactly ``round(flip_rate * len(pairs))`` pairs (half up), chosen at random.

    pairs: (M,) ``PreferencePair`` as ``collect_preferences`` returns them
        (meta with "score_chosen" and "score_rejected"), unflipped.
    flip_rate: in [0, 1]. seed: int >= 0.
    Returns (new list of pairs, number flipped); the input list is not changed.
    A flipped pair swaps its texts AND its scores and records
    ``meta["flipped"] = True`` (the module docstring).

    The flips come from the same stream ``collect_preferences`` draws its
    flips from (the second child of ``SeedSequence(seed)``), so flipping a
    clean collection with its own seed gives exactly the pairs that
    ``collect_preferences(..., flip_rate=flip_rate, seed=seed)`` would have
    returned, without sampling again (the noisy-preference experiment).
    """
    flip_rate = check_float("flip_rate", flip_rate, 0.0, 1.0)
    seed = check_int("seed", seed, low=0)
    pairs = list(pairs)
    for i, q in enumerate(pairs):
        if not isinstance(q, PreferencePair):
            raise TypeError(f"pairs[{i}]: expected a PreferencePair, got {type(q).__name__}")
        if q.meta.get("flipped"):
            raise ValueError(f"pairs[{i}]: already flipped; flip_labels expects the clean pairs")
    return _flip(pairs, flip_rate, np.random.SeedSequence(seed).spawn(2)[1])


def _flip(pairs: list, flip_rate: float, flip_seq) -> tuple[list, int]:
    """Flip exactly round(flip_rate * len(pairs)) of ``pairs`` (a new list), drawing from ``flip_seq``."""
    pairs = list(pairs)
    n_flip = int(math.floor(flip_rate * len(pairs) + 0.5))
    flip_rng = np.random.default_rng(flip_seq)
    for i in sorted(flip_rng.choice(len(pairs), size=n_flip, replace=False).tolist()):
        q = pairs[i]
        pairs[i] = PreferencePair(q.prompt, q.rejected, q.chosen, meta={
            **q.meta, "score_chosen": q.meta["score_rejected"], "score_rejected": q.meta["score_chosen"],
            "flipped": True,
        })
    return pairs, n_flip


def collect_preferences(
    policy,
    tokenizer,
    prompts: Sequence[str],
    rate: Callable,
    *,
    samples_per_prompt: int = 4,
    min_gap: float = 0.0,
    flip_rate: float = 0.0,
    seed: int = 0,
    temperature: float = 1.0,
    max_new_tokens: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[list[PreferencePair], dict]:
    """Preference pairs labelled by ``rate`` on the policy's own samples.

    policy: the SFT TinyGPT. tokenizer: its CharTokenizer.
    prompts: (P,) str, the training split's prompts.
    rate: ``rate(prompts, completions) -> (N,) float`` scores, higher is better.
    samples_per_prompt: K >= 2 completions sampled per prompt.
    min_gap: >= 0, the smallest score difference kept (a strictly positive
        difference is always required).
    flip_rate: in [0, 1], the fraction of kept pairs whose labels are swapped
        on purpose (exactly round(flip_rate * kept), half up).
    seed: int >= 0; the sampling and the flips derive from it (module docstring).
    temperature: > 0 (1: the SFT model's own distribution).
    max_new_tokens: None fills the block_size after the longest prompt.
    batch_size: rows (prompt samples) per generation call.
    progress: show a progress bar over the generation batches.

    Returns (pairs, summary). pairs: ``PreferencePair`` in prompt order with
    meta {"score_chosen", "score_rejected", "flipped"}. summary (JSON-ready):
        prompts, samples                 P and P * K
        finished, unfinished, invalid    completions that ended with <eos>, that
                                         did not, and finished ones with special tokens
        eos_fraction                     finished / samples
        rated                            completions scored (the valid ones)
        pairs, dropped_gap, dropped_unfinished, flipped
        score_mean, score_std, score_min, score_max     over the rated completions
        gap_mean                         mean best-minus-worst score of the kept pairs
        gap_min                          the smallest kept gap
    (a statistic of nothing, e.g. gap_mean with no pair kept, is None).
    """
    if not callable(rate):
        raise TypeError(f"rate: expected a callable rate(prompts, completions) -> scores, got {type(rate).__name__}")
    k = check_int("samples_per_prompt", samples_per_prompt, low=2)
    min_gap = check_float("min_gap", min_gap, 0.0)
    flip_rate = check_float("flip_rate", flip_rate, 0.0, 1.0)
    seed = check_int("seed", seed, low=0)
    sample_seq, flip_seq = np.random.SeedSequence(seed).spawn(2)
    _check_prompts(prompts)
    rows = [p for p in prompts for _ in range(k)]  # (P*K,) each prompt K times in a row
    out = sample_completions(
        policy, tokenizer, rows, max_new_tokens=max_new_tokens, temperature=temperature,
        batch_size=batch_size, seed=np.random.default_rng(sample_seq), progress=progress, desc="collect",
    )
    n_prompts = len(prompts)
    valid = out["valid"]
    rated_idx = np.flatnonzero(valid)
    scores = np.full(len(rows), np.nan)  # nan marks "not rated"; never leaves this function
    if rated_idx.size:
        got = rate([rows[i] for i in rated_idx], [out["completions"][i] for i in rated_idx])
        scores[rated_idx] = check_rater_scores(got, rated_idx.size)

    pairs, gaps = [], []
    dropped_gap = dropped_unfinished = 0
    for p in range(n_prompts):
        idx = np.arange(p * k, (p + 1) * k)
        idx = idx[valid[idx]]
        if idx.size < 2:
            dropped_unfinished += 1
            continue
        s = scores[idx]
        best, worst = idx[int(np.argmax(s))], idx[int(np.argmin(s))]  # first of equal scores
        gap = scores[best] - scores[worst]
        if not (gap > 0 and gap >= min_gap):
            dropped_gap += 1
            continue
        gaps.append(gap)
        pairs.append(PreferencePair(
            prompts[p], out["completions"][best], out["completions"][worst],
            meta={"score_chosen": float(scores[best]), "score_rejected": float(scores[worst]), "flipped": False},
        ))

    pairs, n_flip = _flip(pairs, flip_rate, flip_seq)

    rated = scores[rated_idx]
    n_finished = int(out["finished"].sum())
    summary = {
        "prompts": n_prompts,
        "samples": len(rows),
        "finished": n_finished,
        "unfinished": len(rows) - n_finished,
        "invalid": n_finished - int(valid.sum()),
        "eos_fraction": n_finished / len(rows),
        "rated": int(rated_idx.size),
        "pairs": len(pairs),
        "dropped_gap": dropped_gap,
        "dropped_unfinished": dropped_unfinished,
        "flipped": n_flip,
        # None, not nan, where there is nothing to summarise: the summary goes to JSON.
        "score_mean": float(rated.mean()) if rated.size else None,
        "score_std": float(rated.std()) if rated.size else None,
        "score_min": float(rated.min()) if rated.size else None,
        "score_max": float(rated.max()) if rated.size else None,
        "gap_mean": float(np.mean(gaps)) if gaps else None,
        "gap_min": float(np.min(gaps)) if gaps else None,
    }
    return pairs, summary
