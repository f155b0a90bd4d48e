"""Advantage estimators: how much better than expected was each response (or token)?

The on-policy trainers share one rollout and differ in how they turn its
rewards into advantages. Three estimators, each a small pure function beside
a slow, obviously correct loop that the tests compare it with:

* ``gae_advantages`` (PPO; Schulman et al. 2016, Eq. 11-16): per-token
  rewards and a learned value V(s_t) at every response token; GAE over the
  response with its mask, then the advantages whitened over the whole batch
  (mean 0, std 1 over the real tokens; Ziegler et al. 2019's and TRL's
  ``masked_whiten``). The value targets are the un-whitened
  ``returns = advantages + values``.

* ``group_advantages`` (GRPO; Shao et al. 2024, DeepSeekMath, Sec. 4.1.2):
  no value model. Each prompt is sampled G times; the baseline is the mean
  reward of its group and the scale its standard deviation,

      A_i = (r_i - mean(r_group)) / std(r_group).

  Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training") drops the
  division (``scale=False``): dividing by the std up-weights groups whose
  rewards barely differ (too easy or too hard prompts), a difficulty bias.
  The std is the sample std (ddof = 1), as TRL's ``GRPOTrainer`` computes it.
  A group whose rewards are all equal carries no signal: its advantages are
  exactly 0 (tested with ``max == min``, so floating-point noise in the mean of
  equal numbers is never divided by a ~1e-17 std; no epsilon is needed).

* ``leave_one_out_advantages`` (RLOO; Kool et al. 2019, "Buy 4 REINFORCE
  samples, get a baseline for free!"; Ahmadian et al. 2024, "Back to
  Basics", Eq. 5): k samples per prompt, each baselined by the mean of the
  OTHER k - 1, which does not depend on the sample itself, so the estimate
  stays unbiased:

      A_i = r_i - (1 / (k - 1)) sum_{j != i} r_j = (k / (k - 1)) (r_i - mean(r_group)).

Group layout: rows ``[g * G, (g + 1) * G)`` are the G samples of prompt g
(each prompt repeated G times in a row, as TRL's ``repeat_interleave``).

A NaN (a diverged policy's KL term in RLOO's reward) propagates to the
advantages of its group: visible, never turned into a number; the trainers'
NaN guard then stops the step.

Shapes: B rows, N response tokens, G (or k) samples per prompt.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module, to_numpy
from ..checks import check_bool, check_int
from .gae import compute_gae, compute_gae_reference, whiten

__all__ = [
    "gae_advantages",
    "gae_advantages_reference",
    "group_advantages",
    "group_advantages_reference",
    "leave_one_out_advantages",
    "leave_one_out_advantages_reference",
]


# --------------------------------------------------------------------------- GAE (PPO)
def gae_advantages(rewards, values, mask, gamma=1.0, lam=0.95, whiten_advantages=True):
    """Per-token GAE over each response, whitened over the batch (PPO for RLHF).

    rewards: (B, N) per-token rewards (the KL penalty at every token, the
        score added at each response's last token).
    values:  (B, N) the value model's V(s_t) at rollout time.
    mask:    (B, N) of 0/1: 1 on response tokens (right padding after the end).
    gamma, lam: GAE's discount and lambda in [0, 1] (RLHF: gamma = 1).
    whiten_advantages: normalise the advantages to mean 0, std 1 over the
        masked-in tokens of the whole batch (``rl/gae.whiten``).

    Returns (advantages, returns), both (B, N): advantages whitened (0 at
    padding), returns = un-whitened advantages + values (0 at padding), the
    value model's regression targets.
    """
    check_bool("whiten_advantages", whiten_advantages)
    advantages, returns = compute_gae(rewards, values, gamma=gamma, lam=lam, last_value=0.0, mask=mask)
    if whiten_advantages:
        advantages = whiten(advantages, mask=mask)
    return advantages, returns


def gae_advantages_reference(rewards, values, mask, gamma=1.0, lam=0.95, whiten_advantages=True):
    """``gae_advantages`` as loops over Python floats (the GAE double loop, then a whitening loop)."""
    adv, ret = compute_gae_reference(rewards, values, gamma=gamma, lam=lam, last_value=0.0, mask=mask)
    m = to_numpy(mask).astype(bool)
    if whiten_advantages:
        counted = [float(adv[b, t]) for b in range(m.shape[0]) for t in range(m.shape[1]) if m[b, t]]
        n = len(counted)
        mean = sum(counted) / n
        var = sum((a - mean) ** 2 for a in counted) / (n - 1)  # unbiased, as whiten
        std = math.sqrt(var + 1e-8)  # whiten's guard, the same number
        out = np.zeros(adv.shape)
        for b in range(m.shape[0]):
            for t in range(m.shape[1]):
                if m[b, t]:
                    out[b, t] = (adv[b, t] - mean) / std
        adv = out
    return adv, ret


# --------------------------------------------------------------------------- group (GRPO)
def _check_groups(rewards, group_size, low, name):
    xp = get_array_module(rewards)
    rewards = xp.asarray(rewards)
    if rewards.ndim != 1 or rewards.dtype.kind != "f":
        raise ValueError(f"rewards: expected a (B,) float array, got shape {tuple(rewards.shape)} "
                         f"dtype {rewards.dtype}")
    g = check_int(name, group_size, low=low)
    if rewards.shape[0] == 0 or rewards.shape[0] % g:
        raise ValueError(f"rewards: expected a length that is a positive multiple of {name}={g} "
                         f"(G rows per prompt), got {rewards.shape[0]}")
    return xp, rewards, g


def group_advantages(rewards, group_size: int, scale: bool = True):
    """GRPO's group-normalised advantages (Shao et al. 2024), one per response.

    rewards: (B,) float, B = n_prompts * G, the G samples of a prompt in consecutive rows.
    group_size: G >= 2.
    scale: divide by the group's sample std (GRPO); False keeps r - mean (Dr. GRPO).

    Returns (B,) in the rewards' dtype; 0 for every row of a group whose
    rewards are all equal.
    """
    xp, rewards, g = _check_groups(rewards, group_size, 2, "group_size")
    check_bool("scale", scale)
    r = rewards.reshape(-1, g)  # (B / G, G)
    centred = r - r.mean(axis=1, keepdims=True)
    equal = r.max(axis=1, keepdims=True) == r.min(axis=1, keepdims=True)  # (B / G, 1): no signal
    centred = xp.where(equal, 0, centred)
    if scale:
        std = xp.sqrt((centred * centred).sum(axis=1, keepdims=True) / (g - 1))  # ddof = 1
        centred = centred / xp.where(equal, 1, std)  # equal groups: 0 / 1 = 0
    return centred.reshape(-1).astype(rewards.dtype, copy=False)


def group_advantages_reference(rewards, group_size: int, scale: bool = True):
    """``group_advantages`` one group at a time, with Python floats."""
    r = [float(x) for x in to_numpy(rewards)]
    out = []
    for start in range(0, len(r), group_size):
        group = r[start : start + group_size]
        mean = sum(group) / group_size
        if max(group) == min(group):
            out.extend([0.0] * group_size)
            continue
        std = math.sqrt(sum((x - mean) ** 2 for x in group) / (group_size - 1))
        out.extend([(x - mean) / std if scale else x - mean for x in group])
    return np.array(out)


# --------------------------------------------------------------------------- leave-one-out (RLOO)
def leave_one_out_advantages(rewards, k: int):
    """RLOO's advantages (Ahmadian et al. 2024, Eq. 5): each reward minus the mean of the other k - 1.

    rewards: (B,) float, B = n_prompts * k, the k samples of a prompt in consecutive rows.
    k: samples per prompt, >= 2 (a single sample has no "others").
    Returns (B,) in the rewards' dtype. Each group's advantages sum to 0.
    """
    xp, rewards, k = _check_groups(rewards, k, 2, "k")
    r = rewards.reshape(-1, k)
    baseline = (r.sum(axis=1, keepdims=True) - r) / (k - 1)  # mean of the others
    return (r - baseline).reshape(-1).astype(rewards.dtype, copy=False)


def leave_one_out_advantages_reference(rewards, k: int):
    """``leave_one_out_advantages`` with an explicit loop over the others."""
    r = [float(x) for x in to_numpy(rewards)]
    out = []
    for start in range(0, len(r), k):
        group = r[start : start + k]
        for i, x in enumerate(group):
            others = [y for j, y in enumerate(group) if j != i]
            out.append(x - sum(others) / len(others))
    return np.array(out)
