"""Tests for best-of-N sampling (``alignment_np/rl/best_of_n.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignment_np.data.tokenizer import CharTokenizer
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.rl.best_of_n import best_of_n, best_of_n_kl

TOK = CharTokenizer.from_text("ab c.")


def model(seed=0):
    config = GPTConfig(vocab_size=TOK.vocab_size, block_size=24, n_layer=1, n_head=2, d_model=8, dtype="float64",
                       init_std=0.5)
    return TinyGPT(config, seed=seed)


def count_a(prompts, completions):
    return np.array([c.count("a") - 0.1 * len(c) for c in completions])


def exact_best_of_n_kl(probs, rewards, n):
    """KL(best-of-n || base) of a discrete distribution, exactly. Ties are broken by sample order, so
    within a class of equal rewards the kept output is distributed like the base; per class c:
    P_bon(c) = F(c)^n - F(c-)^n, and KL = sum_c P_bon(c) log(P_bon(c) / p(c))."""
    values, inverse = np.unique(rewards, return_inverse=True)  # classes in increasing reward
    p_class = np.bincount(inverse, weights=probs, minlength=len(values))
    cdf = np.cumsum(p_class)
    below = np.concatenate([[0.0], cdf[:-1]])
    mass = cdf**n - below**n  # P(the best of n samples falls in class c)
    keep = mass > 0
    return float(np.sum(mass[keep] * np.log(mass[keep] / p_class[keep])))


def test_analytic_kl():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    with pytest.raises(ValueError, match="n: expected a positive int"):
        best_of_n_kl(0)


@pytest.mark.parametrize("n", [2, 4, 16, 64])
def test_analytic_kl_is_the_continuous_limit_and_an_upper_bound(n):
    """Beirami et al. 2024: with many outcomes of distinct rewards the exact KL approaches
    log n - (n - 1) / n from below; with ties (few reward values) it is much smaller."""
    rng = np.random.default_rng(n)
    probs = rng.dirichlet(np.ones(20000))
    distinct = rng.permutation(20000).astype(float)
    near_continuous = exact_best_of_n_kl(probs, distinct, n)
    assert near_continuous <= best_of_n_kl(n) + 1e-12
    assert near_continuous == pytest.approx(best_of_n_kl(n), abs=5e-3)
    classes = rng.integers(0, 3, 20000).astype(float)
    tied = exact_best_of_n_kl(probs, classes, n)
    assert tied < best_of_n_kl(n)
    # with ties the KL can never exceed -log P(best class), however large n grows
    assert tied <= -math.log(probs[classes == 2].sum()) + 1e-12


def test_keeps_the_highest_scoring_of_n_completions():
    prompts = ["ab", "c", "a b"]
    result = best_of_n(model(), TOK, prompts, count_a, n=6, max_new_tokens=6, rng=0)
    assert result.all_scores.shape == (3, 6) and len(result.all_completions) == 3
    assert all(len(c) == 6 for c in result.all_completions)
    np.testing.assert_array_equal(result.scores, result.all_scores.max(axis=1))
    for g in range(3):
        best = int(np.argmax(result.all_scores[g]))  # the first maximum
        assert result.completions[g] == result.all_completions[g][best]
        np.testing.assert_allclose(count_a([prompts[g]], [result.completions[g]]), result.scores[g])
        np.testing.assert_allclose(count_a(prompts, result.all_completions[g]), result.all_scores[g])
    assert result.scores.mean() >= result.all_scores.mean()
    assert result.kl == best_of_n_kl(6) and result.n == 6 and result.prompts == prompts


def test_best_of_one_is_plain_sampling_and_chunks_cover_every_row():
    one = best_of_n(model(), TOK, ["ab", "c"], count_a, n=1, max_new_tokens=5, rng=3)
    assert one.kl == 0.0
    np.testing.assert_array_equal(one.scores, one.all_scores[:, 0])
    chunked = best_of_n(model(), TOK, ["ab", "c", "b"], count_a, n=5, max_new_tokens=5, rng=3, batch_size=4)
    assert chunked.all_scores.shape == (3, 5) and np.all(np.isfinite(chunked.all_scores))


def test_missing_eos_penalty_applies_to_every_sample():
    result = best_of_n(model(), TOK, ["ab"] * 4, count_a, n=4, max_new_tokens=1, rng=0, missing_eos_penalty=9.0)
    completed = np.array([[c == "" for c in row] for row in result.all_completions])  # eos came first
    np.testing.assert_array_equal(result.all_scores[~completed], -9.0)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="n: expected a positive int"):
        best_of_n(model(), TOK, ["a"], count_a, n=0, max_new_tokens=3)
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        best_of_n(model(), TOK, ["a"], count_a, n=2, max_new_tokens=3, batch_size=0)
    with pytest.raises(ValueError, match="prompts: expected a non-empty list"):
        best_of_n(model(), TOK, [], count_a, n=2, max_new_tokens=3)
