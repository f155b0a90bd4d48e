"""Chapter 10, exercise 1: the per-token rewards add up to the sequence's RLHF reward.

With the KL penalty at every token and the score at the last one,

    r_t = -beta (log pi(y_t) - log pi_ref(y_t)) + [t = last] score,

GAE with gamma = lambda = 1 and a value model that predicts 0 is the plain
return-to-go, A_t = sum_{k >= t} r_k (every TD residual is just r_t). At the
first token that is the whole response's reward,

    A_0 = score - beta log(pi(y | x) / pi_ref(y | x)),

the sequence-level quantity that RLOO (chapter 11) uses as its reward: PPO and
RLOO optimise the same objective and differ in how they assign its credit.
"""

import numpy as np

from alignment_np.rl.advantages import gae_advantages
from alignment_np.trainers.ppo import token_rewards


def test_the_first_advantage_is_the_sequence_reward_and_each_is_what_remains():
    rng = np.random.default_rng(0)
    b, n, beta = 5, 9, 0.1
    lengths = rng.integers(1, n + 1, size=b)
    mask = (np.arange(n) < lengths[:, None]).astype(np.int64)
    logprobs = np.log(rng.uniform(0.05, 1.0, size=(b, n))) * mask
    ref_logprobs = np.log(rng.uniform(0.05, 1.0, size=(b, n))) * mask
    scores = rng.normal(size=b)

    rewards, kl = token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=beta)
    advantages, returns = gae_advantages(rewards, np.zeros((b, n)), mask, gamma=1.0, lam=1.0,
                                         whiten_advantages=False)

    sequence_reward = scores - beta * ((logprobs - ref_logprobs) * mask).sum(axis=1)
    np.testing.assert_allclose(advantages[:, 0], sequence_reward, rtol=1e-12)
    still_to_come = np.flip(np.cumsum(np.flip(rewards, axis=1), axis=1), axis=1) * mask
    np.testing.assert_allclose(advantages, still_to_come, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(returns, advantages)  # V = 0: the returns are the advantages
    # The score enters once, at the last real token of each row.
    last = lengths - 1
    np.testing.assert_allclose(rewards[np.arange(b), last] + beta * kl[np.arange(b), last], scores,
                               rtol=1e-12)
