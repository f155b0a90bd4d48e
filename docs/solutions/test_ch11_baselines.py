"""Chapter 11, exercise 1: three baselines, their exact means and variances.

On a softmax policy over four responses, G independent samples y_1..y_G, the
estimator g = (1/G) sum_i A_i (e_{y_i} - pi) of grad_theta E[R] with

    none           A_i = R_i
    leave-one-out  A_i = R_i - mean of the other G - 1        (RLOO)
    rescaled mean  A_i = G / (G - 1) (R_i - mean of all G)

Every expectation is a finite sum over the 4^G draws. The leave-one-out
baseline is independent of y_i, so it is unbiased; the rescaled mean is the
same number draw by draw (R_i - mean_others = G/(G-1) (R_i - mean_all)); and
removing what the samples share lowers the variance (the trace of the
covariance of g) below the estimator without a baseline.
"""

import itertools

import numpy as np
import pytest

from alignment_np.functional.stable import log_softmax
from alignment_np.rl.advantages import leave_one_out_advantages

V = 4
_rng = np.random.default_rng(0)
PI = np.exp(log_softmax(_rng.normal(size=V)))
REWARD = np.array([2.0, 1.0, 1.5, 0.5])  # all positive: the case where a baseline matters most
GRAD_J = PI * (REWARD - PI @ REWARD)


def moments(advantages_of, g):
    """Exact mean (V,) and total variance (trace of the covariance) of the estimator."""
    mean, second = np.zeros(V), 0.0
    for draw in itertools.product(range(V), repeat=g):
        y = np.array(draw)
        a = advantages_of(REWARD[y])
        estimate = (a[:, None] * (np.eye(V)[y] - PI)).sum(axis=0) / g
        p = np.prod(PI[y])
        mean += p * estimate
        second += p * estimate @ estimate
    return mean, second - mean @ mean


@pytest.mark.parametrize("g", [2, 3, 5])
def test_leave_one_out_is_unbiased_and_lowers_the_variance(g):
    none_mean, none_var = moments(lambda r: r, g)
    loo_mean, loo_var = moments(lambda r: leave_one_out_advantages(r, g), g)
    rescaled_mean, rescaled_var = moments(lambda r: g / (g - 1) * (r - r.mean()), g)
    np.testing.assert_allclose(none_mean, GRAD_J, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(loo_mean, GRAD_J, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(rescaled_mean, loo_mean, rtol=1e-10, atol=1e-14)
    assert rescaled_var == pytest.approx(loo_var, rel=1e-10)
    assert loo_var < 0.5 * none_var
