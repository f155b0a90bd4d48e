"""RLOO: REINFORCE on the whole response, with a leave-one-out baseline and the KL in the reward.

Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style
Optimization for Learning from Human Feedback in LLMs", treat a whole
response as ONE action (there is no per-token credit assignment: the reward
arrives once, at the end) and go back to REINFORCE (Williams 1992):

    grad J = E[ A(x, y) grad log pi(y | x) ],     log pi(y | x) = sum_t log pi(y_t | x, y_<t).

The reward of a response includes the KL penalty, summed over its tokens
(Ahmadian et al. Eq. 1; the same k1 sum PPO spreads over tokens):

    R(x, y) = score(x, y) - kl_coef * sum_t (log pi(y_t) - log pi_ref(y_t)),

and the advantage of sample i of k is its reward minus the mean reward of the
other k - 1 samples of the same prompt (Eq. 5; ``rl/advantages.
leave_one_out_advantages``). Both R and A are constants of the update: the
KL enters through the reward, like PPO's, not as a loss term like GRPO's.

The loss whose gradient is that estimate (mean over the B responses):

    loss = -(1 / B) sum_i A_i sum_t m_it log pi(y_it),
    d loss / d log pi(y_it) = -A_i m_it / B.

The samples are on-policy (one gradient step per rollout), so no importance
ratio is needed; it is REINFORCE, not PPO.

Shapes: B responses (prompts x k), N response tokens (right padded).
"""

from __future__ import annotations

from ..backend import get_array_module
from ..checks import check_float

__all__ = ["rloo_loss", "kl_penalised_rewards"]


def _check_logps_mask(logps, mask, xp):
    logps = xp.asarray(logps)
    if logps.ndim != 2 or logps.dtype.kind != "f":
        raise ValueError(f"logps: expected a (B, N) float array, got shape {tuple(logps.shape)} dtype {logps.dtype}")
    mask = xp.asarray(mask)
    if tuple(mask.shape) != tuple(logps.shape):
        raise ValueError(f"mask: expected shape {tuple(logps.shape)} like logps, got {tuple(mask.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask: expected only 0/1 values, got others")
    m = mask.astype(bool)
    return xp.where(m, logps, 0), m


def kl_penalised_rewards(scores, logps, ref_logps, mask, kl_coef):
    """R_i = score_i - kl_coef * sum_t m_it (logps_it - ref_logps_it), and the summed KL.

    scores: (B,) the reward function's scores. logps, ref_logps: (B, N) of
    the sampled tokens under the policy and the reference (at the sampling
    temperature). mask: (B, N) of 0/1. kl_coef >= 0.
    Returns (rewards (B,), kl (B,)): kl is the k1 sequence KL estimate
    sum_t (log pi - log pi_ref), whose mean over samples is KL(pi || pi_ref).
    A non-finite counted entry propagates to a non-finite reward (visibly).
    """
    xp = get_array_module(logps)
    logps, m = _check_logps_mask(logps, mask, xp)
    ref_logps = xp.where(m, xp.asarray(ref_logps), 0)
    scores = xp.asarray(scores)
    if tuple(scores.shape) != tuple(logps.shape[:1]):
        raise ValueError(f"scores: expected shape {tuple(logps.shape[:1])} (one per response), "
                         f"got {tuple(scores.shape)}")
    kl_coef = check_float("kl_coef", kl_coef, 0.0)
    kl = (logps - ref_logps).sum(axis=1)  # (B,) k1 summed over the response
    return scores - kl_coef * kl, kl


def rloo_loss(logps, advantages, mask):
    """REINFORCE on the sequence log-prob: the loss, d loss / d per-token logps, metrics.

    logps:      (B, N) log pi_theta of the sampled tokens (being trained).
    advantages: (B,) one per response (leave-one-out; constants here).
    mask:       (B, N) of 0/1, 1 on response tokens.

    Returns (loss, d_logps, metrics): loss = -mean_i(A_i * sum_t m_it logps_it)
    as a Python float; d_logps (B, N) = -A_i m_it / B in the dtype of logps;
    metrics {"seq_logps_mean": mean_i sum_t m_it logps_it}.
    Padding may hold anything; a NaN or infinity where the mask counts
    propagates to a NaN loss (visibly, never a finite number).
    """
    xp = get_array_module(logps)
    logps, m = _check_logps_mask(logps, mask, xp)
    advantages = xp.asarray(advantages)
    b = logps.shape[0]
    if tuple(advantages.shape) != (b,):
        raise ValueError(f"advantages: expected shape ({b},) (one per response), got {tuple(advantages.shape)}")
    seq_logps = logps.sum(axis=1)  # (B,) log pi(y | x)
    loss = -float((advantages * seq_logps).sum()) / b
    d_logps = (-(advantages[:, None] * m) / b).astype(logps.dtype, copy=False)
    return loss, d_logps, {"seq_logps_mean": float(seq_logps.mean())}
