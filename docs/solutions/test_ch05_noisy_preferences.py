"""Chapter 5, exercise 3: DPO, cDPO and rDPO when labels are flipped with probability eta.

A pair whose clean preference probability is p = sigmoid(z_clean), z_clean its
true reward difference, is observed with p' = (1 - eta) p + eta (1 - p).
Setting the derivative of each expected loss (over the observed label) to
zero, with z = beta h:

    DPO   sigmoid(z*) = p'                             shrunk toward 1/2
    cDPO  sigmoid(z*) = (1 - eta) p' + eta (1 - p')    shrunk twice (noise on top of noise)
    rDPO  sigmoid(z*) = p, i.e. z* = z_clean           the clean optimum: its loss is unbiased

(eta is ``label_smoothing``; the code below calls it E.)
"""

from functools import lru_cache

import numpy as np
import pytest

from alignment_np.functional.stable import log_softmax, log_softmax_backward, sigmoid
from alignment_np.losses.dpo import dpo_loss
from alignment_np.nn.module import Parameter
from alignment_np.optim import AdamW, cosine_schedule

E, BETA = 0.2, 0.5
VARIANTS = {
    "dpo": dict(loss_type="sigmoid"),
    "cdpo": dict(loss_type="sigmoid", label_smoothing=E),
    "rdpo": dict(loss_type="robust", label_smoothing=E),
}


def logit(p):
    return np.log(p) - np.log1p(-p)


def expected_dlosses_dz(z, p_observed, variant):
    """d/dz of p' loss(z) + (1 - p') loss(-z): the observed label says 'chosen' with prob p'."""
    zeros = np.zeros_like(z)
    h = z / BETA
    _, g_forward, _, _, _ = dpo_loss(h, zeros, zeros, zeros, beta=BETA, **VARIANTS[variant])
    _, g_flipped, _, _, _ = dpo_loss(-h, zeros, zeros, zeros, beta=BETA, **VARIANTS[variant])
    # dpo_loss returns d mean / d h; times B is the per-pair derivative; dh/dz = 1 / beta;
    # the flipped term depends on -h, hence the minus sign.
    B = z.shape[0]
    return (p_observed * g_forward - (1 - p_observed) * g_flipped) * B / BETA


def per_pair_minimiser(delta, variant):
    """z* for one pair with clean reward difference delta, by bisection on the expected gradient."""
    p = sigmoid(np.array([delta]))
    p_observed = (1 - E) * p + E * (1 - p)
    lo, hi = np.array([-50.0]), np.array([50.0])
    for _ in range(200):  # the expected losses are convex in z: the gradient crosses 0 once
        mid = (lo + hi) / 2
        positive = expected_dlosses_dz(mid, p_observed, variant) > 0
        hi, lo = np.where(positive, mid, hi), np.where(positive, lo, mid)
    return float((lo + hi)[0] / 2)


@pytest.mark.parametrize("delta", [-2.0, 0.5, 3.0])
def test_per_pair_minimisers_match_the_derivation(delta):
    p = sigmoid(delta)
    p_obs = (1 - E) * p + E * (1 - p)
    assert per_pair_minimiser(delta, "dpo") == pytest.approx(logit(p_obs), abs=1e-9)
    assert per_pair_minimiser(delta, "cdpo") == pytest.approx(logit((1 - E) * p_obs + E * (1 - p_obs)), abs=1e-9)
    assert per_pair_minimiser(delta, "rdpo") == pytest.approx(delta, abs=1e-9)
    # Shrinkage: |z*| of DPO and cDPO is smaller than the clean |Delta|, cDPO's most.
    assert abs(per_pair_minimiser(delta, "cdpo")) < abs(per_pair_minimiser(delta, "dpo")) < abs(delta)


@lru_cache(maxsize=None)
def tabular_policy(variant, steps=3000, lr=0.05):
    """Minimise the expected loss over every ordered pair of 5 responses, labels flipped with rate E."""
    rng = np.random.default_rng(0)
    V = 5
    reward = rng.normal(size=V)
    log_ref = log_softmax(rng.normal(size=V))
    i, j = np.nonzero(~np.eye(V, dtype=bool))
    p = sigmoid(reward[i] - reward[j])
    weight = (1 - E) * p + E * (1 - p)  # how often the observed label says "i over j"

    param = Parameter(log_ref.copy())
    opt = AdamW([param], lr=lr, weight_decay=0.0)
    for step in range(steps):
        opt.lr = cosine_schedule(step, lr, warmup_steps=0, total_steps=steps)
        log_pi = log_softmax(param.data)
        _, g_c, g_r, _, _ = dpo_loss(log_pi[i], log_pi[j], log_ref[i], log_ref[j], beta=BETA, **VARIANTS[variant])
        dlog_pi = np.zeros(V)
        np.add.at(dlog_pi, i, g_c * weight * len(i))
        np.add.at(dlog_pi, j, g_r * weight * len(i))
        opt.zero_grad()
        param.grad += log_softmax_backward(dlog_pi, np.exp(log_pi))
        opt.step()
    log_pi = log_softmax(param.data)
    return log_pi, log_softmax(log_ref + reward / BETA), log_ref


def spread(log_pi, log_ref):
    """Standard deviation of the implicit rewards beta log(pi / pi_ref) over the responses."""
    return float(np.std(BETA * (log_pi - log_ref)))


def test_only_rdpo_recovers_the_clean_optimum():
    log_pi, log_pi_star, log_ref = tabular_policy("rdpo")
    np.testing.assert_allclose(log_pi, log_pi_star, atol=1e-6)

    clean = spread(log_pi_star, log_ref)
    dpo_spread = spread(tabular_policy("dpo")[0], log_ref)
    cdpo_spread = spread(tabular_policy("cdpo")[0], log_ref)
    assert cdpo_spread < dpo_spread < clean  # noisy labels shrink the implicit rewards
    assert np.abs(tabular_policy("dpo")[0] - log_pi_star).max() > 0.1
