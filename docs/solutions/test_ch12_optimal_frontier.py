"""Chapter 12, exercise 1: the optimal reward-KL frontier, and three policies below it.

For a reward r on a finite set of responses, the highest expected reward at
a KL budget, F(KL), is reached by pi*_beta ~ pi_ref exp(r / beta) for the beta
whose KL is the budget (the Lagrangian of the constrained problem is the
KL-regularised objective). Along the frontier d E[r] / d KL = beta, and beta
falls as the KL grows: F is concave.

Three other ways to move away from the reference, each brought to a KL of 1
nat by bisection on its own knob, and compared with F(1):

* best-of-N by the true reward: on a finite space sorted by reward it keeps y
  with probability Pi(y)^N - (Pi(y) - pi_ref(y))^N, a distribution for any
  real N >= 1;
* a mixture (1 - a) pi_ref + a e_best that sometimes answers the single best
  response;
* the optimum pi*_beta of a *proxy*, the reward plus independent noise: the
  best policy for the wrong reward (section 12.3).

Best-of-N comes closest: within a tenth of F. The proxy's optimum
loses what the proxy gets wrong. The mixture is far below: it spends its
whole KL on one response.
"""

import numpy as np
import pytest

from alignment_np.functional.stable import log_softmax

M = 2000  # responses
RNG = np.random.default_rng(12)
LOG_REF = log_softmax(RNG.normal(size=M))
REF = np.exp(LOG_REF)
REWARD = RNG.normal(size=M)
PROXY = REWARD + RNG.normal(size=M)  # the reward seen through noise of the same size


def kl_and_value(p):
    """KL(p || pi_ref) and the expected true reward under p."""
    keep = p > 0
    return float(np.sum(p[keep] * np.log(p[keep] / REF[keep]))), float(p @ REWARD)


def tilted(beta, reward=REWARD):
    """pi*_beta for ``reward``: proportional to pi_ref exp(reward / beta)."""
    return np.exp(log_softmax(LOG_REF + reward / beta))


def best_of(n):
    """The exact best-of-n distribution by the true reward (no ties)."""
    order = np.argsort(REWARD)
    below = np.concatenate([[0.0], np.cumsum(REF[order])[:-1]])
    p = np.empty(M)
    p[order] = (below + REF[order]) ** n - below ** n
    return p


def mixture(a):
    p = (1 - a) * REF
    p[np.argmax(REWARD)] += a
    return p


def at_kl(policy, target, low, high, increasing=True):
    """policy(knob) whose KL is ``target``, by bisection of the knob on [low, high]."""
    for _ in range(200):
        middle = (low + high) / 2
        above = kl_and_value(policy(middle))[0] > target
        if above == increasing:
            high = middle
        else:
            low = middle
    return policy((low + high) / 2)


def frontier(target):
    """F(target): the optimum's expected true reward at that KL (beta: KL falls as beta grows)."""
    return kl_and_value(at_kl(tilted, target, 1e-3, 1e3, increasing=False))[1]


def test_the_frontier_has_slope_beta_and_is_concave():
    betas = np.geomspace(0.2, 5.0, 200)
    kl, value = np.array([kl_and_value(tilted(b)) for b in betas]).T
    assert np.all(np.diff(kl) < 0) and np.all(np.diff(value) < 0)  # larger beta: less KL, less reward
    slope = np.gradient(value, kl)
    np.testing.assert_allclose(slope[1:-1], betas[1:-1], rtol=1e-3)
    # Concave: as the KL grows (beta falls), the slope falls.
    order = np.argsort(kl)
    assert np.all(np.diff(slope[order][1:-1]) < 0)
    # The envelope theorem: V(beta) = E[r] - beta KL has V'(beta) = -KL.
    V = value - betas * kl
    np.testing.assert_allclose(np.gradient(V, betas)[1:-1], -kl[1:-1], rtol=1e-3)


def test_every_other_policy_lies_below_the_frontier_and_best_of_n_closest():
    target = 1.0
    best = frontier(target)
    candidates = {
        "best-of-N": at_kl(best_of, target, 1.0, 50.0),
        "mixture": at_kl(mixture, target, 0.0, 1.0),
        "proxy optimum": at_kl(lambda b: tilted(b, PROXY), target, 1e-3, 1e3, increasing=False),
    }
    values = {}
    for name, p in candidates.items():
        kl, value = kl_and_value(p)
        assert kl == pytest.approx(target, abs=1e-6)
        assert value < best, name
        values[name] = value
    assert best - values["best-of-N"] < 0.1 * best  # nearly on the frontier, with no training
    assert values["best-of-N"] > values["proxy optimum"] > values["mixture"]
    # The mixture spends its KL on one response: far below.
    assert values["mixture"] < 0.6 * best
    # A KL budget of 1 nat lifts the true reward by more than one standard deviation at best.
    assert best - REF @ REWARD > REWARD.std()


def test_the_proxys_own_frontier_is_above_what_it_delivers():
    """The proxy's optimum is on the proxy's frontier: measured by the proxy, nothing is lost."""
    p = at_kl(lambda b: tilted(b, PROXY), 1.0, 1e-3, 1e3, increasing=False)
    proxy_value = float(p @ PROXY)
    for b in np.geomspace(0.05, 20.0, 50):  # no policy beats it on the proxy at a KL no larger
        q = tilted(b, PROXY)
        kl, _ = kl_and_value(q)
        if kl <= 1.0:
            assert float(q @ PROXY) <= proxy_value + 1e-9
    assert proxy_value - REF @ PROXY > p @ REWARD - REF @ REWARD  # the proxy sees more gain than there is
