"""Chapter 11, exercise 2: GRPO's per-response mean prefers short correct answers.

A tabular "policy" over eight responses of 1 to 8 tokens (response k is k + 1
repetitions of one token; each of its tokens carries log pi(y) / |y|, so that
the tokens' log-probs add up to the response's). Every response is correct
(reward 1) except the one of four tokens (reward 0). All correct responses
are equally good, so an unbiased policy gradient raises them together and
keeps their proportions (for a softmax, the exact gradient
pi (R - E[R]) raises every correct logit by the same amount).

Groups of G = 4 samples, GRPO's group advantages, and ``grpo_loss`` with each
aggregation. With ``"grpo"`` every response's tokens share 1 / (B |y|): the
update is that of the reward A / |y|, and among correct answers the short
ones win. ``"dapo"`` (every token the same) and ``"dr_grpo"`` (a constant)
keep the correct responses' proportions.
"""

import numpy as np
import pytest

from alignment_np.functional.stable import log_softmax, log_softmax_backward
from alignment_np.losses.grpo import grpo_loss
from alignment_np.rl.advantages import group_advantages

LENGTHS = np.arange(1, 9)
REWARD = np.ones(8)
REWARD[3] = 0.0  # the response of four tokens is the wrong one
G, GROUPS = 4, 64


def train(loss_type, steps=300, lr=0.5, seed=0):
    """The policy after ``steps`` sampled GRPO updates (plain gradient descent on the logits)."""
    rng = np.random.default_rng(seed)
    theta = np.zeros(8)
    for _ in range(steps):
        log_pi = log_softmax(theta)
        y = rng.choice(8, size=G * GROUPS, p=np.exp(log_pi))
        advantages = group_advantages(REWARD[y], G, scale=loss_type != "dr_grpo")
        n = LENGTHS[y]
        mask = (np.arange(8) < n[:, None]).astype(float)
        logps = (log_pi[y] / n)[:, None] * mask  # each token: log pi(y) / |y|
        _, d_logps, _ = grpo_loss(logps, logps, logps, advantages, mask, beta=0.0, loss_type=loss_type,
                                  max_length=8)
        d_log_pi = np.bincount(y, weights=d_logps.sum(axis=1) / n, minlength=8)
        theta -= lr * log_softmax_backward(d_log_pi, np.exp(log_pi))
    return np.exp(log_softmax(theta))


@pytest.fixture(scope="module")
def policies():
    return {loss_type: train(loss_type) for loss_type in ("grpo", "dapo", "dr_grpo")}


def test_every_aggregation_learns_to_avoid_the_wrong_answer(policies):
    for pi in policies.values():
        assert pi[3] < 0.5 / 8


def test_only_the_per_response_mean_moves_mass_to_short_answers(policies):
    uniform_share = 1 / 7
    for loss_type, pi in policies.items():
        correct = pi[REWARD == 1] / pi[REWARD == 1].sum()
        mean_length = correct @ LENGTHS[REWARD == 1]
        if loss_type == "grpo":
            assert correct[0] > 2 * uniform_share  # the one-token answer takes the lead
            assert np.all(np.diff(correct) < 0)  # shorter is always preferred
            assert mean_length < 4.0
        else:
            np.testing.assert_allclose(correct, uniform_share, atol=0.02)
            assert mean_length == pytest.approx(LENGTHS[REWARD == 1].mean(), abs=0.1)
