"""Best-of-N sampling: the baseline that needs no training at all.

Sample N completions per prompt from the SFT model, score each with the
reward model, keep the highest (Stiennon et al. 2020; Nakano et al. 2021,
WebGPT, "rejection sampling"). It moves the output distribution towards high
reward at a KL cost that is known in advance: for a continuous reward (no
ties), the best of N independent samples from pi_ref has density
N F(y)^(N-1) pi_ref(y), whose KL from pi_ref is the expression used by
Stiennon et al. 2020, Nakano et al. 2021 and Gao et al. 2022:

    KL(pi_BoN || pi_ref) = log N - (N - 1) / N.

Beirami et al. 2024 ("Theoretical guarantees on the best-of-n alignment
policy") show this is an UPPER bound in general: with a discrete output space,
or rewards with ties (our lexicon scores are small integers: many completions
tie for the best), the true KL is smaller, sometimes much smaller. The value
here is the analytic one, labelled as such.

Shapes: B prompts, N samples per prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..checks import check_positive_int
from .rollout import _check_prompts, sample_completions, score_completions

__all__ = ["BestOfNResult", "best_of_n", "best_of_n_kl"]


def best_of_n_kl(n: int) -> float:
    """log N - (N - 1) / N: the analytic KL of best-of-N from its base policy (0 for N = 1)."""
    n = check_positive_int("n", n)
    return math.log(n) - (n - 1) / n


@dataclass
class BestOfNResult:
    """What best-of-N kept, and what it chose from."""

    prompts: list
    """The B prompts."""

    completions: list
    """The B kept completions: the highest-scoring of each prompt's N (the first one on a tie)."""

    scores: np.ndarray
    """(B,) float64: the kept completions' scores (after the missing-eos rule)."""

    all_completions: list
    """B lists of N completions each, in sampling order."""

    all_scores: np.ndarray
    """(B, N) float64: every sample's score."""

    n: int
    """N, samples per prompt."""

    kl: float
    """The analytic KL(pi_BoN || pi_ref) = log N - (N - 1) / N (an upper bound with ties)."""


def best_of_n(
    model,
    tokenizer,
    prompts,
    reward_fn: Callable,
    n: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    missing_eos_penalty: float | None = None,
    rng=0,
    batch_size: int = 256,
) -> BestOfNResult:
    """Sample ``n`` completions per prompt from ``model``, keep the one ``reward_fn`` scores highest.

    model: a TinyGPT (the SFT model: best-of-N changes no weights).
    tokenizer: its CharTokenizer. prompts: B strings.
    reward_fn: ``reward_fn(prompts, completions) -> (B,)`` (the reward model's score).
    n: N >= 1 samples per prompt.
    max_new_tokens, temperature, missing_eos_penalty: as in ``collect_rollout``.
    rng: an int seed or a numpy Generator (advanced in place).
    batch_size: rows generated at once (bounds the memory), > 0. The sampling
        noise is drawn per chunk of rows, so the samples depend on it.
    """
    prompts = _check_prompts(prompts)
    n = check_positive_int("n", n)
    batch_size = check_positive_int("batch_size", batch_size)
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    rows = [p for p in prompts for _ in range(n)]  # prompt g's samples in rows [g*N, (g+1)*N)
    completions, scores = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        s = sample_completions(model, tokenizer, chunk, max_new_tokens, temperature, rng)
        _, sc = score_completions(reward_fn, chunk, s.completions, s.contains_eos, missing_eos_penalty)
        completions.extend(s.completions)
        scores.append(sc)
    all_scores = np.concatenate(scores).reshape(len(prompts), n)
    best = all_scores.argmax(axis=1)  # the first maximum on a tie
    grouped = [completions[g * n : (g + 1) * n] for g in range(len(prompts))]
    return BestOfNResult(
        prompts=prompts,
        completions=[grouped[g][int(best[g])] for g in range(len(prompts))],
        scores=all_scores[np.arange(len(prompts)), best],
        all_completions=grouped,
        all_scores=all_scores,
        n=n,
        kl=best_of_n_kl(n),
    )
