"""Chapter 6, exercise 3: the clipping bug freezes exactly the update that repairs a mistake.

The batch was sampled by pi_old. Since then a bad update pushed the best arm's
log-probability down by 0.5, below log(1 - eps): its ratio rho < 1 - eps while
its advantage is positive. The correct PPO gradient still pushes it up (the
unclipped term rho A is the minimum); the buggy one, zero wherever rho lies
outside [1 - eps, 1 + eps], does nothing.
"""

import numpy as np

from alignment_np.functional.stable import log_softmax
from alignment_np.losses.ppo import ppo_loss

EPS, BEST = 0.2, 2


def buggy_ppo_gradient(new_log_probs, old_log_probs, advantages, clip_ratio):
    ratio = np.exp(new_log_probs - old_log_probs)
    inside = np.abs(ratio - 1.0) <= clip_ratio
    return -(ratio * advantages) * inside / new_log_probs.shape[0]


def correct_ppo_gradient(new_log_probs, old_log_probs, advantages, clip_ratio):
    return ppo_loss(new_log_probs, old_log_probs, advantages, clip_ratio=clip_ratio)[1]


def run(gradient, epochs=20, lr=0.5):
    rng = np.random.default_rng(0)
    old_logits = np.zeros(5)
    log_pi_old = log_softmax(old_logits)
    actions = rng.choice(5, size=256, p=np.exp(log_pi_old))
    advantages = np.where(actions == BEST, 1.0, 0.0)  # only the best arm did better than expected

    logits = old_logits.copy()
    logits[BEST] -= 0.5  # the bad update, made after the batch was sampled
    assert np.exp(log_softmax(logits)[BEST] - log_pi_old[BEST]) < 1 - EPS

    for _ in range(epochs):
        log_pi = log_softmax(logits)
        g = gradient(log_pi[actions], log_pi_old[actions], advantages, EPS)
        dlogits = np.bincount(actions, weights=g, minlength=5) - np.exp(log_pi) * g.sum()
        logits = logits - lr * dlogits
    return np.exp(log_softmax(logits)[BEST] - log_pi_old[BEST])  # the final ratio of the best arm


def test_correct_gradient_repairs_the_bad_update():
    ratio = run(correct_ppo_gradient)
    assert ratio > 1 - EPS  # back inside the trust region (and possibly beyond, up to 1 + eps)


def test_buggy_gradient_leaves_it_stuck():
    ratio = run(buggy_ppo_gradient)
    assert ratio < 1 - EPS
    assert ratio == run(buggy_ppo_gradient, epochs=0)  # not a single step moved it
