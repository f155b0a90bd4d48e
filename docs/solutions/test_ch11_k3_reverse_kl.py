"""Chapter 11, exercise 3: the k3 term's gradient is the reverse KL's.

GRPO adds beta * k3 at every sampled token and differentiates it through the
token's log-prob, d k3 / d log pi(v) = 1 - pi_ref(v) / pi(v). In expectation
over v ~ pi (the tokens the policy samples) that gradient is

    sum_v pi(v) (1 - pi_ref(v) / pi(v)) grad log pi(v) = -sum_v pi_ref(v) grad log pi(v)
                                                       = grad KL(pi_ref || pi),

the gradient of the REVERSE divergence. Gradient descent with it and with
the exact gradient of KL(pi || pi_ref) both end at pi_ref (the two
divergences share their minimum), along different paths.
"""

import numpy as np

from alignment_np.functional.stable import log_softmax, log_softmax_backward
from alignment_np.losses.grpo import k3_per_token
from alignment_np.losses.kl import kl_divergence, kl_divergence_backward, kl_divergence_forward

V = 6
_rng = np.random.default_rng(0)
LOG_REF = log_softmax(_rng.normal(size=V))
START = 4.0 * _rng.normal(size=V)  # far from the reference


def expected_k3_gradient(theta):
    """E_{v ~ pi}[d k3(v) / d theta], exactly (the pathwise gradient GRPO follows)."""
    log_pi = log_softmax(theta)
    pi = np.exp(log_pi)
    _, d_k3 = k3_per_token(log_pi, LOG_REF)
    return log_softmax_backward(pi * d_k3, pi)


def kl_gradient(theta, reverse):
    log_pi = log_softmax(theta)
    if reverse:  # KL(pi_ref || pi): the policy is the second argument
        _, cache = kl_divergence_forward(LOG_REF, log_pi)
        _, d_log_pi = kl_divergence_backward(1.0, cache)
    else:
        _, cache = kl_divergence_forward(log_pi, LOG_REF)
        d_log_pi, _ = kl_divergence_backward(1.0, cache)
    return log_softmax_backward(d_log_pi, np.exp(log_pi))


def descend(gradient, steps=3000, lr=0.5):
    theta, path = START.copy(), []
    for _ in range(steps):
        g = gradient(theta)
        path.append((theta.copy(), g))
        theta = theta - lr * g
    return theta, path


def test_along_its_whole_path_the_k3_step_is_the_reverse_kl_gradient():
    theta, path = descend(expected_k3_gradient)
    for point, g in path[::100]:
        np.testing.assert_allclose(g, kl_gradient(point, reverse=True), rtol=1e-9, atol=1e-13)
    start, g = path[0]
    assert float(kl_divergence(log_softmax(start), LOG_REF)) > 1.0  # far from the reference,
    assert not np.allclose(g, kl_gradient(start, reverse=False), rtol=0.05)  # the two gradients differ
    np.testing.assert_allclose(log_softmax(theta), LOG_REF, atol=1e-6)


def test_both_divergences_lead_to_the_reference_by_different_paths():
    end_k3, path_k3 = descend(expected_k3_gradient)
    end_kl, path_kl = descend(lambda t: kl_gradient(t, reverse=False))
    np.testing.assert_allclose(log_softmax(end_kl), LOG_REF, atol=1e-6)
    np.testing.assert_allclose(log_softmax(end_k3), LOG_REF, atol=1e-6)
    # From the same start the first steps point different ways.
    first_k3, first_kl = path_k3[0][1], path_kl[0][1]
    cosine = first_k3 @ first_kl / np.linalg.norm(first_k3) / np.linalg.norm(first_kl)
    assert cosine < 0.99
