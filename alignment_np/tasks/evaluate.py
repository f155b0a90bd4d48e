"""Evaluating a policy on held-out prompts: rater score, fluency, KL and win rate, with error bars.

What an aligned model is judged on (DESIGN.md, "Evaluation"): the policy
writes completions for prompts it never trained or collected on, sampling at
temperature 1 (its own distribution) with the KV cache, and we measure

    score          the rater's mean score of prompt + completion            (what was optimised)
    grammatical    the fraction of lines the task's grammar accepts         (what the rater never sees)
    kl             KL(pi_theta || pi_ref) per sequence, estimated on the policy's own samples:
                       mean over samples of  sum_t [log pi_theta(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)]
                   (the k1 estimator summed over the response tokens, <eos> included when
                   written: unbiased for the KL between the two distributions over
                   completions of at most max_new_tokens tokens)
    win_rate       how often the rater prefers the policy's completion to the reference's
                   for the same prompt (the reference samples its own); a tie counts 1/2
    score_diff     the paired difference of the two scores, policy minus reference
    eos_fraction   the fraction of completions that ended with <eos> within max_new_tokens

each with its standard error (``stats.py``): an improvement is claimed only
when it exceeds two of them. Both models' log-probs come from one
teacher-forced forward over ``<bos> prompt completion`` (the sampled token
ids themselves, not a re-encoding of the text), so the policy's and the
reference's numbers are computed by the same function and a policy compared
with itself gives a KL of exactly 0.

Decisions:
* Every completion is judged as written, finished or not: a policy that
  rambles past ``max_new_tokens`` is scored on what it wrote, and it shows in
  ``eos_fraction`` (and in ``grammatical``: a truncated line is not a
  sentence). A special token sampled mid-completion is written out
  (``<bos>``, ``<pad>``) in the text the rater and the grammar see.
* ``reference=None`` (or the policy itself) means "compare the policy with
  itself": the KL is exactly 0, and the win rate is that of the policy against
  a second, independent sample of its own, about 1/2 up to noise: a baseline
  for reading the other numbers, not a result.

Reproducible: the policy's and the reference's samples come from two
independent streams of ``numpy.random.SeedSequence(seed)``; the same seed,
prompts, models and ``batch_size`` give the same numbers. The reference's
stream is the same whatever the policy, and a policy evaluated against
itself draws its samples from that stream: with one seed, the SFT model's own
evaluation and every other policy's comparison see the same SFT samples.

Shapes: P prompts, K samples per prompt, N = P * K samples.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..backend import get_array_module, to_numpy
from ..checks import check_int, check_positive_int
from ..stats import mean_se, paired_difference, win_rate
from ..trainers.lm_logprobs import policy_logps_forward
from .collect import _check_prompts, check_rater_scores, sample_completions

__all__ = ["evaluate_policy", "completion_logps"]


def completion_logps(model, tokenizer, prompts: Sequence[str], completion_tokens, batch_size: int = 64) -> np.ndarray:
    """log pi(y | x) of given completions, by one teacher-forced forward per batch: (N,) float64.

    prompts: (N,) str. completion_tokens: (N,) lists of token ids (at least
    one each; <eos> included if the completion has one), as sampled.
    Each row is ``<bos> prompt completion``: inputs s[:-1], targets s[1:],
    the loss mask on the completion's tokens (``policy_logps_forward``).
    """
    xp = get_array_module(model.wte.data)
    out = []
    for lo in range(0, len(prompts), batch_size):
        rows = []
        for prompt, toks in zip(prompts[lo : lo + batch_size], completion_tokens[lo : lo + batch_size]):
            s = [tokenizer.bos_id] + tokenizer.encode(prompt) + list(toks)
            rows.append((s, len(toks)))
        t = max(len(s) - 1 for s, _ in rows)
        ids = np.full((len(rows), t), tokenizer.pad_id, dtype=np.int64)  # (B, T) right padded
        targets = np.zeros((len(rows), t), dtype=np.int64)
        attention = np.zeros((len(rows), t), dtype=np.int64)
        mask = np.zeros((len(rows), t), dtype=np.int64)
        for i, (s, n_resp) in enumerate(rows):
            n = len(s) - 1
            ids[i, :n], targets[i, :n], attention[i, :n] = s[:-1], s[1:], 1
            mask[i, n - n_resp : n] = 1  # the completion's tokens are the last n_resp targets
        logps, _ = policy_logps_forward(model, xp.asarray(ids), xp.asarray(attention), xp.asarray(mask),
                                        False, targets=xp.asarray(targets))
        out.append(to_numpy(logps).astype(np.float64))
    return np.concatenate(out)


def evaluate_policy(
    policy,
    reference,
    tokenizer,
    prompts: Sequence[str],
    rate: Callable,
    is_grammatical: Callable[[str], bool],
    *,
    samples_per_prompt: int = 1,
    seed: int = 0,
    max_new_tokens: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> dict:
    """Sample from ``policy`` (and ``reference``) on held-out ``prompts``; measure it, with standard errors.

    policy: the TinyGPT to evaluate. reference: the frozen TinyGPT it is
        compared with (the SFT model), or None (then the policy is its own
        reference: KL 0, win rate against a second sample of itself).
    tokenizer: their CharTokenizer.
    prompts: (P,) held-out prompts (the task's evaluation split).
    rate: ``rate(prompts, completions) -> (N,)`` scores, higher is better.
    is_grammatical: ``is_grammatical(prompt + completion) -> bool``.
    samples_per_prompt: K >= 1 completions of each model per prompt.
    seed: int >= 0. max_new_tokens: None fills the block_size after the
        longest prompt. batch_size: rows per generation call and per forward.
    progress: show progress bars.

    Returns a JSON-ready dict:
        n, prompts, samples_per_prompt, max_new_tokens
        score, score_se                   the policy's mean rater score
        reference_score, reference_score_se
        score_diff, score_diff_se         paired: policy minus reference, per sample
        win_rate, win_rate_se             ties count 1/2
        grammatical, grammatical_se       fraction accepted by is_grammatical
        kl, kl_se                         per sequence, on the policy's samples
        eos_fraction, eos_fraction_se     the policy's completions that ended with <eos>
        length_mean                       the policy's completion length in tokens (<eos> included)
        samples  list of N dicts: prompt, completion, score, grammatical, finished,
                 logp, ref_logp (of the policy's completion), reference_completion,
                 reference_score
    """
    if not callable(rate):
        raise TypeError(f"rate: expected a callable rate(prompts, completions) -> scores, got {type(rate).__name__}")
    if not callable(is_grammatical):
        raise TypeError(f"is_grammatical: expected a callable(text) -> bool, got {type(is_grammatical).__name__}")
    k = check_positive_int("samples_per_prompt", samples_per_prompt)
    seed = check_int("seed", seed, low=0)
    batch_size = check_positive_int("batch_size", batch_size)
    _check_prompts(prompts)
    self_reference = reference is None or reference is policy
    if not self_reference:
        for attr in ("forward", "config"):
            if not hasattr(reference, attr):
                raise TypeError(f"reference: expected a TinyGPT or None, got {type(reference).__name__}")
        if reference.config.vocab_size != policy.config.vocab_size:
            raise ValueError(
                f"reference: vocab_size {reference.config.vocab_size} differs from the policy's "
                f"{policy.config.vocab_size}"
            )
    ref_model = policy if self_reference else reference
    rows = [p for p in prompts for _ in range(k)]  # (N,) each prompt K times in a row
    policy_seq, reference_seq = np.random.SeedSequence(seed).spawn(2)
    if self_reference:
        # The reference evaluated as a policy draws from the reference's stream: its samples are
        # then exactly those every other policy is paired with (same seed, same prompts), so its
        # score row and their "reference_score" are one and the same measurement.
        policy_seq, reference_seq = reference_seq, policy_seq
    common = dict(max_new_tokens=max_new_tokens, temperature=1.0, batch_size=batch_size, progress=progress)
    if max_new_tokens is None:  # fill the smaller block of the two models (sample_completions checks the fit)
        longest = 1 + max(len(tokenizer.encode(p)) for p in prompts)  # <bos> + prompt
        common["max_new_tokens"] = max(1, min(policy.config.block_size, ref_model.config.block_size) - longest)
    mine = sample_completions(policy, tokenizer, rows, seed=np.random.default_rng(policy_seq), desc="eval", **common)
    theirs = sample_completions(ref_model, tokenizer, rows, seed=np.random.default_rng(reference_seq),
                                desc="eval (reference)", **common)

    logp = completion_logps(policy, tokenizer, rows, mine["tokens"], batch_size)
    ref_logp = logp.copy() if self_reference else completion_logps(reference, tokenizer, rows, mine["tokens"], batch_size)
    kl = logp - ref_logp  # (N,) k1 summed over each response: exactly 0 against itself

    score = check_rater_scores(rate(rows, mine["completions"]), len(rows))
    ref_score = check_rater_scores(rate(rows, theirs["completions"]), len(rows))
    grammatical = np.array([bool(is_grammatical(p + c)) for p, c in zip(rows, mine["completions"])], dtype=np.float64)
    finished = mine["finished"].astype(np.float64)

    result = {
        "n": len(rows),
        "prompts": len(prompts),
        "samples_per_prompt": k,
        "max_new_tokens": common["max_new_tokens"],
        **mean_se(score).as_dict("score"),
        **mean_se(ref_score).as_dict("reference_score"),
        **paired_difference(score, ref_score).as_dict("score_diff"),
        **win_rate(score, ref_score).as_dict("win_rate"),
        **mean_se(grammatical).as_dict("grammatical"),
        **mean_se(kl).as_dict("kl"),
        **mean_se(finished).as_dict("eos_fraction"),
        "length_mean": float(mine["lengths"].mean()),
    }
    result["samples"] = [
        {
            "prompt": rows[i],
            "completion": mine["completions"][i],
            "score": float(score[i]),
            "grammatical": bool(grammatical[i]),
            "finished": bool(finished[i]),
            "logp": float(logp[i]),
            "ref_logp": float(ref_logp[i]),
            "reference_completion": theirs["completions"][i],
            "reference_score": float(ref_score[i]),
        }
        for i in range(len(rows))
    ]
    return result
