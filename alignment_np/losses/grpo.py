"""GRPO's loss: a clipped surrogate per token, a k3 KL to the reference, three ways to average.

Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", Eq. 3)
maximises, for G responses o_1..o_G to a prompt q with advantages A_i
(``rl/advantages.group_advantages``, the same A_i at every token of o_i),

    J = E[ 1/G sum_i 1/|o_i| sum_t { min(r_it A_i, clip(r_it, 1 - eps, 1 + eps) A_i)
                                     - beta * KL_it } ],

with the probability ratio r_it = pi(o_it) / pi_old(o_it) (PPO's, Schulman et
al. 2017, Eq. 7) and the KL to the frozen reference estimated per token with
Schulman's k3 (2020, "Approximating KL Divergence"; DeepSeekMath Eq. 4):

    KL_it = pi_ref / pi - log(pi_ref / pi) - 1 = exp(d) - d - 1,   d = log pi_ref - log pi  (>= 0).

Unlike PPO for RLHF, the KL is a LOSS term, differentiated directly, not a
penalty in the reward. Its gradient with respect to the policy's log-prob is
written by hand:

    d KL_it / d log pi_it = d/d logp [exp(ref - logp) - (ref - logp) - 1] = 1 - exp(d),

zero where pi = pi_ref, positive (push log pi down) where the policy likes a
token more than the reference, negative where less.

The loss is ``-J`` per token, l_it = -min(...) + beta * KL_it, and how the
tokens are averaged is a choice with consequences (``loss_type``):

``"grpo"`` (the paper): each response's mean over its own tokens, then the
    mean over responses: w_it = 1 / (B |o_i|). A token of a short response
    weighs more than one of a long response, so for a positive advantage short
    answers are favoured and for a negative one long wrong answers are
    penalised less per token: a length bias (Liu et al. 2025; Yu et al. 2025).
``"dapo"`` (DAPO, Yu et al. 2025, "token-level policy gradient loss"; TRL's
    ``"dapo"``/``"bnpo"``): every token of the batch weighs the same,
    w_it = 1 / sum_i |o_i|. No per-response length bias; the normaliser still
    changes with the batch's total length.
``"dr_grpo"`` (Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-Like
    Training"): a constant normaliser, w_it = 1 / (B * L) with L the maximum
    response length (``max_length``); no length bias and no dependence on the
    batch's lengths. Dr. GRPO also drops the division by the group's std in the
    advantages (the difficulty bias; ``group_advantages(..., scale=False)``).

Each function returns ``(loss, d loss / d logps, metrics)``: the gradient has
the shape of ``logps`` (B, N), 0 at padding, and flows into the model through
``trainers/lm_logprobs.response_backward``.

Shapes: B responses (prompts x G), N response tokens (right padded).
"""

from __future__ import annotations

from ..backend import get_array_module
from ..checks import check_choice, check_float, check_positive_int

__all__ = ["LOSS_TYPES", "clipped_surrogate_per_token", "k3_per_token", "aggregation_weights", "grpo_loss"]

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


# --------------------------------------------------------------------------- kernels (inputs trusted)
def clipped_surrogate_per_token(logps, old_logps, advantages, epsilon):
    """PPO's clipped surrogate at every token, and its derivative (Schulman et al. 2017, Eq. 7).

    logps, old_logps, advantages: (B, N) (advantages already broadcast to tokens).
    Returns (surrogate (B, N), d surrogate / d logps (B, N), clipped (B, N) bool):
    surrogate = min(r A, clip(r, 1 - eps, 1 + eps) A); its derivative is r A where
    the unclipped term is the minimum and 0 where the clipped one is (the four
    regions of ``losses/ppo.py``).
    """
    xp = get_array_module(logps)
    ratio = xp.exp(logps - old_logps)
    unclipped = ratio * advantages
    clipped_term = xp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon) * advantages
    surrogate = xp.minimum(unclipped, clipped_term)
    clipped = ((advantages > 0) & (ratio > 1.0 + epsilon)) | ((advantages < 0) & (ratio < 1.0 - epsilon))
    d_surrogate = xp.where(clipped, 0, unclipped)  # d(r A)/d logp = r A
    return surrogate, d_surrogate, clipped


def k3_per_token(logps, ref_logps):
    """Schulman's k3 estimate of KL(pi || pi_ref) at each sampled token, and d k3 / d logps.

    logps, ref_logps: (B, N). With d = ref_logps - logps:
    k3 = exp(d) - d - 1 = expm1(d) - d (>= 0, exact 0 at d = 0: expm1 keeps
    tiny d accurate where exp(d) - 1 would round to 0), d k3 / d logps = -expm1(d).
    """
    xp = get_array_module(logps)
    d = ref_logps - logps
    em1 = xp.expm1(d)
    return em1 - d, -em1


def aggregation_weights(mask, loss_type: str, max_length: int | None = None):
    """w (B, N): the weight of each token's loss in the average (module docstring).

    mask: (B, N) of 0/1. "grpo": mask / (B * n_i); "dapo": mask / sum(mask);
    "dr_grpo": mask / (B * max_length). Every response must count >= 1 token.
    """
    xp = get_array_module(mask)
    m = mask.astype(float) if mask.dtype.kind != "f" else mask
    b = m.shape[0]
    if loss_type == "grpo":
        return m / (b * m.sum(axis=1, keepdims=True))
    if loss_type == "dapo":
        return m / m.sum()
    return m / (b * float(max_length))


# --------------------------------------------------------------------------- the public loss
def grpo_loss(logps, old_logps, ref_logps, advantages, mask, beta=0.04, epsilon=0.2, loss_type="grpo",
              max_length=None):
    """GRPO's loss, its gradient with respect to the per-token log-probs, and metrics.

    logps:      (B, N) log pi_theta of the sampled tokens (being trained).
    old_logps:  (B, N) log pi_old at sampling time (the rollout's log-probs).
    ref_logps:  (B, N) log pi_ref of the same tokens (frozen reference).
    advantages: (B,) one per response (broadcast over its tokens), or (B, N).
    mask:       (B, N) of 0/1, 1 on response tokens; every row counts >= 1.
    beta:       the KL coefficient >= 0 (DeepSeekMath: 0.04; 0 switches the term off).
    epsilon:    the clip range in (0, 1).
    loss_type:  "grpo", "dapo" or "dr_grpo" (the module docstring says how each averages).
    max_length: L for "dr_grpo" (the configured maximum response length, >= N);
                ignored otherwise.

    Returns (loss, d_logps, metrics): loss a Python float, d_logps (B, N) in
    the dtype of logps (0 at padding), metrics with TRL's GRPO names:
    "kl" (mean k3 over tokens), "clip_ratio/region_mean" (fraction of tokens
    whose clipped term is the minimum), "clip_ratio/low_mean" (A < 0, r < 1 - eps),
    "clip_ratio/high_mean" (A > 0, r > 1 + eps).
    Entries at padding may hold anything (they are replaced before any
    arithmetic). A NaN or infinity where the mask counts propagates: the loss
    comes out NaN (visibly, never as a finite number), so that a trainer's NaN
    guard stops the run before the optimiser step.
    """
    xp = get_array_module(logps)
    logps, old_logps, ref_logps = (xp.asarray(a) for a in (logps, old_logps, ref_logps))
    if logps.ndim != 2 or logps.dtype.kind != "f":
        raise ValueError(f"logps: expected a (B, N) float array, got shape {tuple(logps.shape)} dtype {logps.dtype}")
    shape = tuple(logps.shape)
    for name, a in (("old_logps", old_logps), ("ref_logps", ref_logps)):
        if tuple(a.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape} like logps, got {tuple(a.shape)}")
    advantages = xp.asarray(advantages)
    if tuple(advantages.shape) == shape[:1]:
        advantages = advantages[:, None]
    elif tuple(advantages.shape) != shape:
        raise ValueError(f"advantages: expected shape {shape[:1]} (one per response) or {shape}, "
                         f"got {tuple(advantages.shape)}")
    mask = xp.asarray(mask)
    if tuple(mask.shape) != shape:
        raise ValueError(f"mask: expected shape {shape} like logps, got {tuple(mask.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask: expected only 0/1 values, got others")
    m = mask.astype(bool)
    empty = ~m.any(axis=1)
    if bool(empty.any()):
        raise ValueError(f"mask: every response must count at least one token; rows "
                         f"{xp.flatnonzero(empty).tolist()} count none")
    beta = check_float("beta", beta, 0.0)
    epsilon = check_float("epsilon", epsilon, 0.0, 1.0, low_open=True, high_open=True)
    check_choice("loss_type", loss_type, LOSS_TYPES)
    if loss_type == "dr_grpo":
        max_length = check_positive_int("max_length", max_length)
        if max_length < shape[1]:
            raise ValueError(f"max_length: expected >= N={shape[1]} (the longest response), got {max_length}")
    # Padding may hold anything: replace it before any arithmetic (0 * nan would be nan).
    logps, old_logps, ref_logps = (xp.where(m, a, 0) for a in (logps, old_logps, ref_logps))
    advantages = xp.where(m, advantages, 0)

    surrogate, d_surrogate, clipped = clipped_surrogate_per_token(logps, old_logps, advantages, epsilon)
    kl, d_kl = k3_per_token(logps, ref_logps)
    w = aggregation_weights(m, loss_type, max_length).astype(logps.dtype, copy=False)  # (B, N), 0 at padding
    per_token_loss = -surrogate + beta * kl
    loss = float((w * per_token_loss).sum())
    d_logps = (w * (-d_surrogate + beta * d_kl)).astype(logps.dtype, copy=False)

    n = int(m.sum())
    low = clipped & (advantages < 0)
    metrics = {
        "kl": float(xp.where(m, kl, 0).sum()) / n,
        "clip_ratio/region_mean": float((clipped & m).sum()) / n,
        "clip_ratio/low_mean": float((low & m).sum()) / n,
        "clip_ratio/high_mean": float((clipped & ~low & m).sum()) / n,
    }
    return loss, d_logps, metrics
