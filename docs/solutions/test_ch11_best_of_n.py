"""Chapter 11, exercise 4: best-of-N by simulation, and what it buys per nat.

With a continuous reward, the reference's quantile of a response,
Pi(y) = P(r(y') <= r(y)), is uniform on [0, 1]; the kept response of
best-of-N has the quantile of the largest of N uniforms, density N u^(N-1).
So the KL from the reference can be estimated from samples of u alone,

    KL = E[log(N u^(N-1))]     (the density ratio at the kept response),

or from a histogram of the kept quantiles, and both agree with
log N - (N - 1) / N. With a standard normal reward, the kept reward grows
like sqrt(2 log N) (the largest of N normals) while the KL grows like
log N: best-of-N's reward is roughly proportional to sqrt(KL).
"""

import numpy as np
import pytest

from alignment_np.rl.best_of_n import best_of_n_kl

DRAWS = 200_000


@pytest.mark.parametrize("n", [2, 8, 32])
def test_the_simulated_kl_is_the_analytic_one(n):
    rng = np.random.default_rng(n)
    u = rng.random((DRAWS, n)).max(axis=1)  # the kept response's quantile
    log_ratio = np.log(n) + (n - 1) * np.log(u)
    estimate, se = log_ratio.mean(), log_ratio.std() / np.sqrt(DRAWS)
    assert abs(estimate - best_of_n_kl(n)) < 4 * se

    bins = 200  # the same from a histogram: KL = sum p log(p / (1 / bins))
    p = np.histogram(u, bins=bins, range=(0.0, 1.0))[0] / DRAWS
    histogram_kl = float(np.sum(p[p > 0] * np.log(p[p > 0] * bins)))
    assert histogram_kl == pytest.approx(best_of_n_kl(n), abs=0.02)


def test_the_reward_grows_like_the_square_root_of_the_kl():
    rng = np.random.default_rng(0)
    ns = [4, 16, 64, 256]
    kept = [rng.standard_normal((20_000, n)).max(axis=1).mean() for n in ns]
    kls = [best_of_n_kl(n) for n in ns]
    assert np.all(np.diff(kept) > 0)
    # the largest of N normals approaches sqrt(2 log N) from below
    ratios = [k / np.sqrt(2 * np.log(n)) for k, n in zip(kept, ns)]
    assert np.all(np.diff(ratios) > 0) and ratios[-1] < 1
    # per sqrt(nat), the reward stays within a narrow band while the KL grows 4-fold and more
    per_sqrt_kl = np.array(kept) / np.sqrt(kls)
    assert kls[-1] / kls[0] > 4 and per_sqrt_kl.max() / per_sqrt_kl.min() < 1.3
