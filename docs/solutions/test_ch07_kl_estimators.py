"""Chapter 7, exercise 2: bias and standard deviation of k1, k2, k3 as the policy drifts.

Over a small vocabulary the expectations under v ~ pi can be computed exactly
by summing over the V tokens (no sampling noise):
    bias = sum_v pi(v) k(v) - KL,   std = sqrt(sum_v pi(v) k(v)^2 - (sum_v pi(v) k(v))^2).
"""

import numpy as np

from alignment_np.functional.stable import log_softmax
from alignment_np.losses.kl import kl_divergence, kl_estimate

V = 50
_rng = np.random.default_rng(0)
LOG_REF = log_softmax(_rng.normal(size=V))
REWARD = _rng.normal(size=V)
KL_COEFS = (8.0, 4.0, 2.0, 1.0, 0.5, 0.25)  # from close to the reference to far from it


def table():
    rows = []
    for kl_coef in KL_COEFS:
        log_pi = log_softmax(LOG_REF + REWARD / kl_coef)
        pi = np.exp(log_pi)
        exact = float(kl_divergence(log_pi, LOG_REF))
        row = {"kl": exact}
        for name in ("k1", "k2", "k3"):
            k = kl_estimate(log_pi, LOG_REF, estimator=name)  # the estimate at every possible token
            mean = float(pi @ k)
            row[name] = (mean - exact, float(np.sqrt(pi @ k**2 - mean**2)))  # (bias, std)
        rows.append(row)
    return rows


def test_k1_and_k3_are_unbiased_everywhere():
    for row in table():
        assert abs(row["k1"][0]) < 1e-12 * max(1.0, row["kl"])
        assert abs(row["k3"][0]) < 1e-10 * max(1.0, row["kl"])


def test_k2_relative_bias_grows_with_the_kl():
    rows = table()
    kls = [row["kl"] for row in rows]
    assert all(a < b for a, b in zip(kls, kls[1:]))  # the policies do drift further
    relative = [abs(row["k2"][0]) / row["kl"] for row in rows]
    assert relative[0] < 0.05  # close: nearly unbiased
    assert relative[-1] > 0.1  # far: visibly biased
    assert relative[-1] > 5 * relative[0]


def test_k3_beats_k1_near_the_reference_and_loses_far_from_it():
    rows = table()
    k3_better = [row["k3"][1] < row["k1"][1] for row in rows]
    assert k3_better[0] and not k3_better[-1]
    # One crossover: once k3 is the noisier, it stays so as the policy drifts further.
    crossover = k3_better.index(False)
    assert not any(k3_better[crossover:])
    assert 0.1 < rows[crossover]["kl"] < 3.0
