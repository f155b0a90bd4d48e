"""One rollout, shared by every on-policy trainer (PPO, GRPO, RLOO) and best-of-N.

A rollout is what the policy did and what it was worth:

    prompts (B strings)
      -> encode with <bos>, LEFT padded                        prompt ids (B, P)
      -> generate with the KV cache, stop at <eos>             tokens (B, P + N)
      -> decode each response up to its end                    completions (B strings)
      -> reward_fn(prompts, completions)                       raw_scores (B,)
      -> no <eos> within max_new_tokens? the fixed penalty     scores (B,)
      -> ONE forward of the policy over the whole sequences    logprobs (B, N)
      -> ONE forward of the frozen reference                   ref_logprobs (B, N)
      (-> the value model at the same positions                values (B, N), PPO only)

Why recompute the log-probs instead of keeping the sampler's? The sampler
scores each token inside the KV-cached incremental forward; the update scores
it with a full forward over the whole sequence. The two are the same function
mathematically but not bit for bit (different summation orders), and any
mismatch reads as a policy change in PPO's ratio. TRL recomputes them with one
forward for the same reason, so the update's first ratio is 1 up to the
float rounding of a different batch shape. Both forwards divide the logits by
the sampling temperature (``trainers/lm_logprobs.response_forward``).

The missing-eos rule (Huang et al. 2024, "The N+ Implementation Details of
RLHF with PPO", Sec. "EOS trick"): a response that does not end within
``max_new_tokens`` gets the fixed score ``-missing_eos_penalty`` INSTEAD of its
score, so the policy cannot earn reward with text that never finishes. (TRL's
``missing_eos_penalty`` SUBTRACTS the penalty from the score instead; with a
score range like ours, replacing it is the stronger and simpler rule.)

A reward function is any callable ``reward_fn(prompts, completions) ->
(B,) float64`` (the sentiment rater, a reward model's ``score``, a lexicon):
the rollout decodes the completions to text, so the reward never needs the
policy's tokenizer. A non-finite reward is refused, never used.

Shapes: B rows (prompts, repeated G times for group methods), P prompt columns
(after left padding, <bos> included), N response columns (the longest
response of the batch, eos included; at most ``max_new_tokens``), V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..backend import get_array_module, to_numpy
from ..checks import check_finite_array, check_float, check_positive_int
from ..trainers.lm_logprobs import response_forward
from .generate import generate

__all__ = ["Rollout", "Samples", "sample_completions", "score_completions", "collect_rollout"]


@dataclass
class Samples:
    """Completions sampled for a batch of prompts (no log-probs, no reward yet)."""

    prompts: list
    """The B prompts (text), in row order."""

    completions: list
    """The B decoded responses (text), without <eos> or padding."""

    tokens: object
    """(B, P + N) int64: the left-padded prompt ids (with <bos>), then the response ids, pad after <eos>."""

    attention_mask: object
    """(B, P + N) int64: 1 on real tokens (prompt and response, <eos> included), 0 on padding."""

    prompt_length: int
    """P: the number of prompt columns; the response starts at column P."""

    response_mask: object
    """(B, N) int64: 1 on each response's tokens (its <eos> included), 0 after it."""

    response_lengths: np.ndarray
    """(B,) int64 host array: tokens in each response (<eos> included); the response ends at column P + length - 1."""

    contains_eos: np.ndarray
    """(B,) bool host array: the response ended with <eos> within max_new_tokens."""

    @property
    def response_tokens(self):
        """(B, N) int64: the sampled response ids (pad after <eos>)."""
        return self.tokens[:, self.prompt_length:]

    @property
    def response_ends(self) -> np.ndarray:
        """(B,) int64 host array: the column of ``tokens`` holding each response's last token
        (its <eos> when it has one)."""
        return self.prompt_length + self.response_lengths - 1


@dataclass
class Rollout(Samples):
    """Samples plus everything an on-policy update needs (see the module docstring)."""

    logprobs: object = None
    """(B, N) float, model dtype: log pi(y_t | prefix) at the sampling temperature, one forward of
    the policy; 0 after each response's end."""

    ref_logprobs: object = None
    """(B, N) float: the frozen reference's log-probs of the same tokens at the same temperature; 0 after the end."""

    raw_scores: np.ndarray = None
    """(B,) float64 host array: reward_fn(prompts, completions), before the missing-eos rule."""

    scores: np.ndarray = None
    """(B,) float64 host array: the reward each response earns: raw_scores, or -missing_eos_penalty
    where no <eos> came."""

    values: object = None
    """(B, N) float or None: the value model's V at each response position (PPO only); 0 after the end."""

    temperature: float = 1.0
    """The sampling temperature, which every log-prob above was computed at."""


def _check_prompts(prompts) -> list:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError(f"prompts: expected a non-empty list of str, got {type(prompts).__name__}"
                         + (" of length 0" if isinstance(prompts, Sequence) else ""))
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}]: expected a str, got {type(p).__name__}")
    return list(prompts)


def sample_completions(model, tokenizer, prompts, max_new_tokens: int, temperature: float = 1.0, rng=0) -> Samples:
    """Sample one completion per prompt with the KV cache (``rl/generate.generate``).

    model: a TinyGPT. tokenizer: its CharTokenizer (bos, eos, pad, decode).
    prompts: B strings; each is encoded as <bos> + prompt and LEFT padded.
    max_new_tokens: N_max >= 1; P + N_max must fit the model's block_size.
    temperature: > 0 (RL samples from the policy itself, never greedily).
    rng: an int seed or a numpy Generator (advanced in place).

    Returns ``Samples`` whose response columns are trimmed to the longest
    response (N <= max_new_tokens): columns that are padding in every row cost
    nothing downstream.
    """
    prompts = _check_prompts(prompts)
    max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
    temperature = check_float("temperature", temperature, 0.0, low_open=True)
    prompt_ids, prompt_mask = tokenizer.encode_batch(prompts, add_bos=True, padding_side="left")
    xp = get_array_module(model.wte.data)
    prompt_ids, prompt_mask = xp.asarray(prompt_ids), xp.asarray(prompt_mask)
    out = generate(model, prompt_ids, max_new_tokens, temperature=temperature, seed=rng,
                   attention_mask=prompt_mask, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    p = int(prompt_ids.shape[1])
    response_mask = to_numpy(out["response_mask"])
    lengths = response_mask.sum(axis=1).astype(np.int64)  # every row samples at least one token
    n = int(lengths.max())
    new = to_numpy(out["new_tokens"])[:, :n]
    contains_eos = (new == tokenizer.eos_id).any(axis=1)
    # decode drops <eos> and padding (special tokens): the text the reward sees
    completions = [tokenizer.decode(new[b, : lengths[b]]) for b in range(len(prompts))]
    return Samples(
        prompts=prompts,
        completions=completions,
        tokens=out["tokens"][:, : p + n].copy(),
        attention_mask=out["attention_mask"][:, : p + n].copy(),
        prompt_length=p,
        response_mask=out["response_mask"][:, :n].copy(),
        response_lengths=lengths,
        contains_eos=contains_eos,
    )


def score_completions(reward_fn: Callable, prompts, completions, contains_eos, missing_eos_penalty=None):
    """(raw_scores, scores), both (B,) float64: the reward, then the missing-eos rule.

    reward_fn: ``reward_fn(prompts, completions) -> (B,)`` numbers.
    contains_eos: (B,) bool. missing_eos_penalty: None (no rule) or a number
    >= 0: a response without <eos> scores ``-missing_eos_penalty`` instead.
    Raises TypeError / ValueError naming reward_fn if it returns the wrong
    shape or a non-finite number (a NaN reward is never used).
    """
    if not callable(reward_fn):
        raise TypeError(f"reward_fn: expected a callable(prompts, completions) -> (B,) array, "
                        f"got {type(reward_fn).__name__}")
    raw = reward_fn(list(prompts), list(completions))
    raw = np.asarray(to_numpy(raw) if hasattr(raw, "shape") else raw)
    if raw.dtype.kind not in "iuf" or raw.shape != (len(prompts),):
        raise ValueError(f"reward_fn: expected a ({len(prompts)},) array of numbers (one per completion), "
                         f"got shape {raw.shape} dtype {raw.dtype}")
    raw = raw.astype(np.float64)
    try:
        check_finite_array("reward_fn(prompts, completions)", raw)
    except ValueError as err:
        i = int(np.flatnonzero(~np.isfinite(raw))[0])
        raise ValueError(f"{err}; completion {i} was {completions[i]!r}") from None
    scores = raw.copy()
    if missing_eos_penalty is not None:
        penalty = check_float("missing_eos_penalty", missing_eos_penalty, 0.0)
        scores[~np.asarray(contains_eos, dtype=bool)] = -penalty
    return raw, scores


def collect_rollout(
    policy,
    reference,
    tokenizer,
    prompts,
    reward_fn: Callable,
    max_new_tokens: int,
    temperature: float = 1.0,
    missing_eos_penalty: float | None = None,
    rng=0,
    value_model=None,
) -> Rollout:
    """Sample, score and log-prob one batch: the shared first half of every on-policy step.

    policy: the TinyGPT being trained (samples the completions).
    reference: the frozen TinyGPT (the SFT model) for the KL terms.
    tokenizer, prompts, max_new_tokens, temperature, rng: as ``sample_completions``.
    reward_fn: ``reward_fn(prompts, completions) -> (B,)``.
    missing_eos_penalty: None, or the score (negated) of a response without <eos>.
    value_model: None (no values), the policy itself (its own value head: the
        values come out of the SAME forward as the log-probs), or a separate
        TinyGPT (one more forward).

    Returns a ``Rollout``. Nothing here computes a gradient.
    """
    if not callable(reward_fn):
        raise TypeError(f"reward_fn: expected a callable(prompts, completions) -> (B,) array, "
                        f"got {type(reward_fn).__name__}")
    samples = sample_completions(policy, tokenizer, prompts, max_new_tokens, temperature, rng)
    raw, scores = score_completions(reward_fn, samples.prompts, samples.completions, samples.contains_eos,
                                    missing_eos_penalty)
    p, mask = samples.prompt_length, samples.response_mask
    heads = ("logits", "values") if value_model is policy else ("logits",)
    # Scoring only: no model keeps its layers' activations (keep_cache=False), as torch's no_grad.
    out, _ = response_forward(policy, samples.tokens, samples.attention_mask, p, temperature, heads, mask,
                              keep_cache=False)
    ref, _ = response_forward(reference, samples.tokens, samples.attention_mask, p, temperature, ("logits",), mask,
                              keep_cache=False)
    values = out.get("values")
    if value_model is not None and value_model is not policy:
        values = response_forward(value_model, samples.tokens, samples.attention_mask, p, temperature,
                                  ("values",), mask, keep_cache=False)[0]["values"]
    fields = {k: getattr(samples, k) for k in Samples.__dataclass_fields__}
    return Rollout(**fields, logprobs=out["logps"], ref_logprobs=ref["logps"], raw_scores=raw, scores=scores,
                   values=values, temperature=temperature)
