"""Chapter 6, exercise 2: GAE's bias falls and its variance rises with lambda.

A random walk on states 0..10 (both ends terminal), start at 5, each step
left or right with probability 1/2, a reward of 1 for reaching 10 plus
N(0, 0.5^2) noise on every step, gamma = 1. The true value is V(s) = s / 10 and
the first action's true Q is V(5 +- 1). The critic is wrong: V_hat = V + a
fixed random error per state.

The Monte Carlo estimator G_0 - V_hat(s_0) has mean Q(s_0, a_0) - V_hat(s_0):
the true advantage shifted by an action-independent amount (a baseline, which
does not bias the policy gradient). "Bias" below is the distance from that
target; lambda = 1 has none, lambda = 0 inherits the critic's error.
"""

from functools import lru_cache

import numpy as np

from alignment_np.rl.gae import compute_gae

N_STATES, START, NOISE, EPISODES = 10, 5, 0.5, 2000
LAMBDAS = (0.0, 0.5, 0.9, 1.0)
V_TRUE = np.arange(N_STATES + 1) / N_STATES
V_HAT = V_TRUE + np.random.default_rng(0).normal(scale=0.3, size=N_STATES + 1)


@lru_cache(maxsize=None)
def first_step_advantages():
    """{lam: {first action: [A_0 of each episode]}}."""
    rng = np.random.default_rng(1)
    out = {lam: {-1: [], 1: []} for lam in LAMBDAS}
    for _ in range(EPISODES):
        s, states, rewards, first = START, [], [], None
        while 0 < s < N_STATES:
            a = int(rng.choice([-1, 1]))
            first = a if first is None else first
            states.append(s)
            s += a
            rewards.append(rng.normal(scale=NOISE) + (1.0 if s == N_STATES else 0.0))
        dones = np.zeros(len(states))
        dones[-1] = 1  # the walk ended at a terminal state: nothing to bootstrap
        for lam in LAMBDAS:
            adv, _ = compute_gae(np.array(rewards), V_HAT[states], gamma=1.0, lam=lam, dones=dones)
            out[lam][first].append(adv[0])
    return out


def bias_and_variance(lam):
    est = first_step_advantages()[lam]
    target = {a: V_TRUE[START + a] - V_HAT[START] for a in (-1, 1)}  # Q(s0, a) - V_hat(s0)
    bias = np.mean([abs(np.mean(est[a]) - target[a]) for a in (-1, 1)])
    variance = np.mean([np.var(est[a]) for a in (-1, 1)])
    standard_error = np.mean([np.std(est[a]) / np.sqrt(len(est[a])) for a in (-1, 1)])
    return bias, variance, standard_error


def test_bias_falls_and_variance_rises_with_lambda():
    stats = {lam: bias_and_variance(lam) for lam in LAMBDAS}
    variances = [stats[lam][1] for lam in LAMBDAS]
    assert all(a < b for a, b in zip(variances, variances[1:]))
    bias_0, _, se_0 = stats[0.0]
    bias_1, _, se_1 = stats[1.0]
    assert bias_1 < 4 * se_1  # Monte Carlo: unbiased up to sampling error
    assert bias_0 > 10 * se_0  # TD(0): the critic's error shows
    assert stats[0.5][0] < bias_0 and stats[0.9][0] < stats[0.5][0] + 2 * stats[0.9][2]
