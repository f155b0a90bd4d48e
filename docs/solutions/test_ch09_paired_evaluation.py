"""Chapter 9, exercise 3: what pairing by prompt buys, derived and simulated.

Model an evaluation of N prompts: prompt i has an effect x_i ~ N(0, sx^2)
shared by both models (some prompts are easier to please), and each score
adds independent noise e ~ N(0, se^2). The policy's true gain is delta:

    r_i = x_i + delta + e_i,        r_i^SFT = x_i + e'_i.

Unpaired, the gain is the difference of two means, with variance
2 (sx^2 + se^2) / N. Paired, it is the mean of d_i = r_i - r_i^SFT =
delta + e_i - e'_i, whose variance 2 se^2 / N does not contain the prompt
effect. So

    SE_paired / SE_unpaired = sqrt(se^2 / (se^2 + sx^2)),

and to claim a gain delta at two standard errors, N > (2 SE_1 / delta)^2 with
SE_1 the standard deviation of one difference: 2 se^2 paired,
2 (sx^2 + se^2) unpaired. With sx = 0.4, se = 0.2 and delta = 0.05: 128
prompts paired against 640 unpaired, five times fewer.
"""

import math

import numpy as np

from alignment_np.stats import mean_se, paired_difference

SX, SE_NOISE, DELTA = 0.4, 0.2, 0.05


def prompts_needed(variance_of_one_difference):
    """The smallest N with 2 SE < delta: N > 4 variance / delta^2."""
    return math.floor(4 * variance_of_one_difference / DELTA**2) + 1


def simulate(n, repeats, rng):
    x = rng.normal(0.0, SX, size=(repeats, n))
    policy = x + DELTA + rng.normal(0.0, SE_NOISE, size=(repeats, n))
    sft = x + rng.normal(0.0, SE_NOISE, size=(repeats, n))
    return policy, sft


def test_the_ratio_of_standard_errors_is_the_derived_one():
    rng = np.random.default_rng(0)
    policy, sft = simulate(400, 300, rng)
    paired = np.array([paired_difference(p, s).se for p, s in zip(policy, sft)])
    unpaired = np.array([math.hypot(mean_se(p).se, mean_se(s).se) for p, s in zip(policy, sft)])
    predicted = math.sqrt(SE_NOISE**2 / (SE_NOISE**2 + SX**2))
    assert abs(np.mean(paired / unpaired) - predicted) < 0.02
    # and each SE is the standard deviation of its estimate over repeated evaluations
    gains_paired = (policy - sft).mean(axis=1)
    assert abs(gains_paired.std() / np.mean(paired) - 1) < 0.15


def test_how_many_prompts_each_needs():
    n_paired = prompts_needed(2 * SE_NOISE**2)
    n_unpaired = prompts_needed(2 * (SX**2 + SE_NOISE**2))
    assert (n_paired, n_unpaired) == (129, 641)
    # At those sizes the claim is made in about half the evaluations (2 SE is the expected gain
    # itself); four times more prompts make it almost always.
    rng = np.random.default_rng(1)
    for n, rate_low, rate_high in ((n_paired, 0.35, 0.65), (4 * n_paired, 0.93, 1.0)):
        policy, sft = simulate(n, 400, rng)
        claims = [paired_difference(p, s).mean > 2 * paired_difference(p, s).se for p, s in zip(policy, sft)]
        assert rate_low < np.mean(claims) <= rate_high
