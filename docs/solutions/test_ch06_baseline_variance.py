"""Chapter 6, exercise 1: a baseline leaves the policy gradient's mean alone and cuts its variance.

Bandit with a softmax policy pi = softmax(theta) over three arms with mean
rewards mean_a and noise. Single-sample REINFORCE estimate: (e_a - pi) (r - b),
since d log pi(a) / d theta = e_a - pi (e_a the one-hot vector of arm a).
Exact gradient: sum_a pi_a mean_a (e_a - pi).
"""

import numpy as np

from alignment_np.functional.stable import log_softmax

THETA = np.array([0.5, -0.3, 0.0])
MEANS = np.array([1.0, 2.0, 1.5])  # all rewards positive: the case where a baseline helps most
NOISE = 0.3
N = 200_000


def estimates(baseline, seed):
    rng = np.random.default_rng(seed)
    pi = np.exp(log_softmax(THETA))
    actions = rng.choice(3, size=N, p=pi)
    rewards = MEANS[actions] + rng.normal(scale=NOISE, size=N)
    score = np.eye(3)[actions] - pi  # (N, 3): gradient of log pi(a) w.r.t. theta
    return score * (rewards - baseline)[:, None]


def test_baseline_is_unbiased_and_lowers_variance():
    pi = np.exp(log_softmax(THETA))
    exact = (pi * MEANS) @ (np.eye(3) - pi)  # sum_a pi_a m_a (e_a - pi)
    b = float(pi @ MEANS)  # the value of the (single) state

    plain, based = estimates(0.0, seed=0), estimates(b, seed=0)
    for g in (plain, based):
        standard_error = g.std(axis=0) / np.sqrt(N)
        assert (np.abs(g.mean(axis=0) - exact) < 4 * standard_error).all()

    total_variance = lambda g: g.var(axis=0).sum()
    assert total_variance(based) < 0.5 * total_variance(plain)
