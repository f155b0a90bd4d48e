"""Chapter 7, exercise 1: the adaptive KL controller fed noisy k1 estimates.

The policy for a KL coefficient beta is the closed-form optimum of chapter 5,
pi_beta = softmax(log pi_ref + reward / beta). Each update the controller sees
the k1 estimate of KL(pi_beta || pi_ref) from 64 tokens sampled by pi_beta.
"""

import numpy as np

from alignment_np.functional.stable import log_softmax
from alignment_np.losses.kl import kl_divergence, kl_estimate
from alignment_np.rl.kl_control import AdaptiveKLController

V, TARGET, N_TOKENS = 50, 0.2, 64
_rng = np.random.default_rng(0)
LOG_REF = log_softmax(_rng.normal(size=V))
REWARD = _rng.normal(size=V)


def policy(kl_coef):
    return log_softmax(LOG_REF + REWARD / kl_coef)


def test_controller_settles_on_the_target_from_noisy_estimates():
    rng = np.random.default_rng(1)
    controller = AdaptiveKLController(init_kl_coef=0.05, target=TARGET, horizon=10_000)
    exact_history = []
    for _ in range(1500):
        log_pi = policy(controller.value)
        x = rng.choice(V, size=N_TOKENS, p=np.exp(log_pi))
        noisy_kl = float(kl_estimate(log_pi[x], LOG_REF[x], estimator="k1").mean())
        exact_history.append(float(kl_divergence(log_pi, LOG_REF)))
        controller.update(noisy_kl, n_steps=N_TOKENS * 10)  # K_beta = 0.064 per update
    settled = np.mean(exact_history[-500:])
    assert exact_history[0] > 3 * TARGET
    assert abs(settled - TARGET) < 0.1 * TARGET


def test_one_outlier_moves_beta_by_at_most_the_clipped_step():
    controller = AdaptiveKLController(init_kl_coef=0.1, target=TARGET, horizon=10_000)
    n_steps = 1_000
    before = controller.value
    controller.update(1e6, n_steps=n_steps)  # a wildly wrong KL measurement
    assert controller.value / before <= 1 + 0.2 * n_steps / 10_000 + 1e-15
    before = controller.value
    controller.update(-1e6, n_steps=n_steps)  # k1 means can even be negative
    assert controller.value / before >= 1 - 0.2 * n_steps / 10_000 - 1e-15
