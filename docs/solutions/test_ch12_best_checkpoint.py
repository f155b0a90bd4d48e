"""Chapter 12, exercise 3: picking the best checkpoint on the same samples biases the test of a fall.

The over-optimisation experiment asks whether the gold score fell: it takes
the checkpoint with the highest mean score, subtracts the last checkpoint's
score prompt by prompt, and claims a fall when that paired difference exceeds
two standard errors. Under the null (every checkpoint equally good), a test
of one pre-chosen pair would claim a fall 2.3% of the time (one-sided, normal).
But the best checkpoint is chosen *because* its mean came out high on these
very samples, so the difference is biased upwards and the test fires more
often. Choosing the best checkpoint on one half of the prompts and testing on
the other half removes the bias: the choice no longer depends on the samples
tested.

The simulation: P held-out prompts, each with an effect shared by every
checkpoint (some prompts are easier to please), plus independent noise per
checkpoint and prompt; K checkpoints with the same true mean.
"""

import numpy as np

from alignment_np.stats import paired_difference

P, K, REPEATS = 256, 4, 2000
NOMINAL = 0.0228  # P(Z > 2), one-sided


def claims_a_fall(scores, pick, test):
    """The experiment's test: best checkpoint on prompts ``pick`` minus the last, on prompts ``test``."""
    best = int(np.argmax(scores[:, pick].mean(axis=1)))
    if best == K - 1:  # the last is the best: no fall
        return False
    d = paired_difference(scores[best, test], scores[K - 1, test])
    return d.mean > 2 * d.se


def false_claim_rates(seed=0):
    rng = np.random.default_rng(seed)
    everything = np.arange(P)
    halves = (np.arange(P // 2), np.arange(P // 2, P))
    same, split = 0, 0
    for _ in range(REPEATS):
        prompt_effect = rng.normal(0.0, 0.5, size=P)
        scores = prompt_effect + rng.normal(0.0, 0.3, size=(K, P))  # (K, P), equal true means
        same += claims_a_fall(scores, everything, everything)
        split += claims_a_fall(scores, *halves)
    return same / REPEATS, split / REPEATS


def test_the_same_samples_claim_falls_too_often_and_a_split_does_not():
    same, split = false_claim_rates()
    mc = np.sqrt(NOMINAL * (1 - NOMINAL) / REPEATS)  # Monte Carlo error of a rate near nominal
    assert same > NOMINAL + 5 * mc  # the bias: several times the nominal rate
    assert same > 2 * NOMINAL
    # Picked on one half, tested on the other: at most the nominal rate (less, since a best
    # checkpoint that is the last one is never tested).
    assert split < NOMINAL + 3 * mc


def test_the_bias_is_in_the_difference_itself():
    """Under the null, the best-of-K mean minus the last is positive on average: E[max] > E[one]."""
    rng = np.random.default_rng(1)
    gaps = []
    for _ in range(REPEATS):
        scores = rng.normal(0.0, 0.5, size=P) + rng.normal(0.0, 0.3, size=(K, P))
        means = scores.mean(axis=1)
        gaps.append(means.max() - means[-1])
    # E[max of K iid normals] - E[one] is about 1.03 standard deviations of a mean for K = 4:
    # the noise not shared by the checkpoints, 0.3 / sqrt(P) here.
    expected = 1.0294 * 0.3 / np.sqrt(P)
    assert abs(np.mean(gaps) - expected) < 0.1 * expected
