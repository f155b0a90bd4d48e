"""Chapter 5, exercise 5: RPO's negative log-likelihood term stops the chosen log-prob from falling.

The toy of section 5.5: a log-linear policy over four one-token responses
(logits = Phi theta), the chosen and the rejected response similar. Plain DPO
raises the margin while BOTH log-probs fall; adding alpha * (-logps_c) (RPO,
Pang et al. 2024) makes the chosen log-prob rise while the margin still grows.
"""

import numpy as np

from alignment_np.functional.logprobs import SequenceLogProbs
from alignment_np.functional.stable import log_softmax
from alignment_np.trainers.dpo import DPOTrainer

PHI = np.array([[1.0, 0.0], [1.0, 0.3], [0.0, -2.0], [0.5, 0.5]])
TOKENS = np.array([[0], [1]])  # row 0: the chosen response, row 1: the rejected one


def train(alpha, steps=300, lr=1.0):
    theta = np.zeros(2)
    scorer, trainer = SequenceLogProbs(), DPOTrainer(beta=0.1)
    ref_logps = log_softmax(PHI @ theta)[[0, 1]]
    first = None
    for _ in range(steps):
        logps, cache = scorer.forward(np.tile(PHI @ theta, (2, 1, 1)), TOKENS)
        _, metrics, g_c, g_r = trainer.compute_loss(logps[:1], logps[1:], ref_logps[:1], ref_logps[1:])
        g_c = g_c - alpha  # d/dlogps_c of alpha * (-logps_c), one pair (B = 1)
        dlogits = scorer.backward(np.concatenate([g_c, g_r]), cache)
        theta = theta - lr * (PHI.T @ dlogits.sum(axis=(0, 1)))
        if first is None:
            first = (logps.copy(), metrics["reward_margin"])
    logps, _ = scorer.forward(np.tile(PHI @ theta, (2, 1, 1)), TOKENS)
    _, metrics, _, _ = trainer.compute_loss(logps[:1], logps[1:], ref_logps[:1], ref_logps[1:])
    return first, (logps, metrics["reward_margin"])


def test_plain_dpo_lowers_both():
    (logps0, margin0), (logps1, margin1) = train(alpha=0.0)
    assert margin1 > margin0
    assert logps1[0] < logps0[0] and logps1[1] < logps0[1]


def test_rpo_raises_the_chosen_log_prob():
    (logps0, margin0), (logps1, margin1) = train(alpha=0.05)
    assert margin1 > margin0
    assert logps1[0] > logps0[0] + 0.5  # the chosen response gained probability
    # The rejected response shares most of its features with the chosen one and
    # may rise too; what DPO asks for is that it rises less, i.e. the margin grows.
    assert logps1[0] - logps0[0] > logps1[1] - logps0[1]
