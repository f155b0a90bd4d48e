"""Chapter 7, exercise 3: why the sampled KL penalty goes into the reward, not the loss.

For a softmax policy pi = softmax(theta) and k1(v) = log pi(v) - log pi_ref(v):
    E_{v~pi}[ grad k1(v) ] = E[ grad log pi(v) ] = sum_v pi(v) (e_v - pi) = 0,
so differentiating the sampled penalty gives, on average, no pull at all; the
score-function (policy-gradient) estimate E[ k1(v) grad log pi(v) ] is the true
gradient of KL(pi || pi_ref).
"""

import numpy as np

from alignment_np.functional.stable import log_softmax, log_softmax_backward
from alignment_np.losses.kl import kl_divergence_backward, kl_divergence_forward, kl_estimate

V = 8
_rng = np.random.default_rng(0)
THETA = _rng.normal(size=V)
LOG_REF = log_softmax(_rng.normal(size=V))


def true_kl_gradient():
    log_pi = log_softmax(THETA)
    _, cache = kl_divergence_forward(log_pi, LOG_REF)
    d_log_pi, _ = kl_divergence_backward(np.ones(()), cache)
    return log_softmax_backward(d_log_pi, np.exp(log_pi))


def test_pathwise_gradient_of_k1_vanishes_in_expectation():
    pi = np.exp(log_softmax(THETA))
    score = np.eye(V) - pi  # row v: d log pi(v) / d theta = e_v - pi; also d k1(v) / d theta
    np.testing.assert_allclose(pi @ score, 0.0, atol=1e-15)
    assert np.abs(true_kl_gradient()).max() > 0.01  # while the KL itself has a real gradient


def test_score_function_estimate_is_the_kl_gradient():
    log_pi = log_softmax(THETA)
    pi = np.exp(log_pi)
    k1 = kl_estimate(log_pi, LOG_REF, estimator="k1")  # at every token
    exact_expectation = (pi * k1) @ (np.eye(V) - pi)
    np.testing.assert_allclose(exact_expectation, true_kl_gradient(), rtol=1e-10, atol=1e-14)

    # And from samples, as PPO would see it, within sampling error.
    x = np.random.default_rng(1).choice(V, size=200_000, p=pi)
    samples = kl_estimate(log_pi[x], LOG_REF[x], estimator="k1")[:, None] * (np.eye(V)[x] - pi)
    standard_error = samples.std(axis=0) / np.sqrt(len(x))
    assert (np.abs(samples.mean(axis=0) - true_kl_gradient()) < 4 * standard_error + 1e-12).all()
