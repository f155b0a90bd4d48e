"""Generalized Advantage Estimation (GAE) and advantage whitening.

How much better than expected was action ``a_t``? GAE answers with an
exponentially weighted sum of one-step TD residuals (Schulman et al. 2016,
"High-Dimensional Continuous Control Using Generalized Advantage Estimation",
Eq. 11-16):

    delta_t = r_t + gamma * (1 - done_t) * V_{t+1} - V_t              (Eq. 11)
    A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1},  A_T = 0 (Eq. 16)

read backwards in time. ``lam = 0`` gives the one-step TD residual (low
variance, biased by V); ``lam = 1`` gives the discounted return minus V
(unbiased, high variance). ``returns = advantages + values`` are the targets of
the value head (the "lambda-returns").

Shapes: time is the LAST axis. T steps of one trajectory are ``(T,)``; B
trajectories (B environments, or B sampled responses in RLHF) are ``(B, T)``.

Episode ends and padding
------------------------
``dones[t] = 1`` means the episode ended AT step t: r_t was its last reward, so
neither V_{t+1} nor A_{t+1} (which belong to the next episode) flow back into
step t.

``mask`` is for per-token RLHF, where responses of different lengths are padded
on the right to a common T: ``mask[b, t] = 1`` on real response tokens and 0 on
padding. The convention, exactly:

* a masked-out position has advantage 0 and return 0; its reward and value are
  ignored (they may hold anything, even nan);
* it does not propagate: a masked-in step followed by a masked-out step is
  treated as terminal (no V_{t+1}, no A_{t+1} from the padding);
* a masked-in step at t = T-1 bootstraps from ``last_value`` as usual.

For right padding this is what TRL's PPO trainer computes when it
``masked_fill``s rewards and values at padding with 0, runs the recursion and
masks the advantages to 0 (TRL keeps one extra value slot, ``padding_mask_p1``,
because it writes the score one token later; here the caller puts the score on
the last real token). A mask with a hole in the middle cuts the trajectory at
the hole.

Non-finite numbers
------------------
``compute_gae`` and ``whiten`` run inside every on-policy training step, so a
NaN in a counted entry (a diverged model's value or reward) propagates
visibly: the advantages of its episode (for ``whiten``, of the whole batch)
are NaN, never 0, and the trainer's NaN guard stops the step and names it.
Padding may hold anything. An advantage whose true value does not fit the
dtype (rewards of 3e38 in float32) overflows to inf, visibly, and an episode
end stops it from flowing back (``where``, never ``0 * inf = nan``).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..backend import get_array_module, to_numpy
from ..checks import check_bool, check_float_array, check_mask


def _check_unit_interval(name: str, value) -> float:
    """``value`` as a float in [0, 1], or a TypeError / ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1], got {type(value).__name__} {value!r}")
    if not 0.0 <= float(value) <= 1.0:  # also rejects nan
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return float(value)


def _check_gae_inputs(rewards, values, gamma, lam, last_value, dones, mask):
    """Validate and convert the arguments of ``compute_gae`` (public boundary)."""
    xp = get_array_module(rewards, values, last_value, dones, mask)
    rewards = check_float_array("rewards", rewards, xp, integers=True)
    values = check_float_array("values", values, xp, integers=True)
    if rewards.ndim not in (1, 2):
        raise ValueError(
            f"rewards must have shape (T,) or (B, T), got shape {tuple(rewards.shape)}"
        )
    if values.shape != rewards.shape:
        raise ValueError(
            f"values must have shape {tuple(rewards.shape)} like rewards, got {tuple(values.shape)}"
        )
    if rewards.shape[-1] == 0:
        raise ValueError(f"rewards must have at least one time step, got shape {tuple(rewards.shape)}")
    gamma = _check_unit_interval("gamma", gamma)
    lam = _check_unit_interval("lam", lam)
    # Integers (e.g. sparse 0/1 rewards) compute in float64; floats keep their dtype.
    dtype = xp.result_type(rewards.dtype, values.dtype, 0.0)

    last_value = check_float_array("last_value", last_value, xp, integers=True).astype(dtype, copy=False)
    batch_shape = rewards.shape[:-1]  # () or (B,)
    if last_value.shape not in ((), batch_shape):
        raise ValueError(
            f"last_value must be a scalar or have shape {tuple(batch_shape)} (one per row of rewards), "
            f"got shape {tuple(last_value.shape)}"
        )
    dones = check_mask("dones", dones, rewards.shape, xp, like="rewards")
    mask = check_mask("mask", mask, rewards.shape, xp, like="rewards")
    return xp, rewards, values, gamma, lam, last_value, dones, mask, dtype


def compute_gae(rewards, values, gamma=0.99, lam=0.95, last_value=0.0, dones=None, mask=None):
    """Advantages and returns by GAE (Schulman et al. 2016, Eq. 11-16).

    rewards:    (T,) or (B, T) reward r_t received after action a_t.
    values:     same shape, the critic's V(s_t).
    gamma:      discount in [0, 1].
    lam:        GAE lambda in [0, 1]: 0 = one-step TD, 1 = Monte Carlo.
    last_value: scalar or (B,), V(s_T) of the state after the last step, used to
                bootstrap a trajectory that was cut off rather than finished.
    dones:      optional, same shape, 1 where the episode ended at step t.
    mask:       optional, same shape, 1 on real tokens and 0 on padding (see the
                module docstring for the exact convention).

    Returns ``(advantages, returns)``, both shaped like ``rewards`` with
    ``returns = advantages + values`` (0 at masked-out positions).

    The loop runs over T (the recursion is sequential in time) and is
    vectorised over B. ``compute_gae_reference`` is the same computation
    written as a slow double loop to check this one by hand.
    """
    xp, rewards, values, gamma, lam, last_value, dones, mask, dtype = _check_gae_inputs(
        rewards, values, gamma, lam, last_value, dones, mask
    )
    not_done = xp.ones(rewards.shape, dtype=bool)  # may V_{t+1} and A_{t+1} flow into step t?
    if dones is not None:
        not_done = ~dones
    if mask is not None:
        m = mask
        # Padding's reward and value are ignored (``where``, not ``*``: 0 * nan is nan).
        rewards = xp.where(m, rewards, 0).astype(dtype)
        values = xp.where(m, values, 0).astype(dtype)
        # A step followed by padding is terminal. The step after T-1 is "real"
        # so that a full-length row bootstraps from last_value.
        next_is_real = xp.concatenate([m[..., 1:], xp.ones(m.shape[:-1] + (1,), dtype=bool)], axis=-1)
        not_done = not_done & next_is_real
    else:
        rewards = rewards.astype(dtype, copy=False)
        values = values.astype(dtype, copy=False)

    # The discounts as scalars of the data's dtype: a Python float times a 0-d
    # float32 array is float64 under NumPy 1.x.
    gamma, gamma_lam, zero = dtype.type(gamma), dtype.type(gamma * lam), dtype.type(0)
    T = rewards.shape[-1]
    advantages = xp.zeros(rewards.shape, dtype=dtype)
    next_value = last_value  # V_{t+1}; scalar or (B,)
    next_advantage = xp.zeros(rewards.shape[:-1], dtype=dtype)  # A_{t+1}, A_T = 0
    for t in range(T - 1, -1, -1):
        # At an episode end the future is cut with ``where``, not ``* 0``: an
        # advantage that overflowed to inf in the next episode must not turn into nan here.
        nd = not_done[..., t]
        delta = rewards[..., t] + xp.where(nd, gamma * next_value, zero) - values[..., t]  # Eq. 11
        adv_t = delta + xp.where(nd, gamma_lam * next_advantage, zero)  # Eq. 16, backwards
        if mask is not None:
            adv_t = xp.where(m[..., t], adv_t, zero)
        advantages[..., t] = adv_t
        next_value = values[..., t]
        next_advantage = adv_t
    returns = advantages + values
    return advantages, returns


def compute_gae_reference(rewards, values, gamma=0.99, lam=0.95, last_value=0.0, dones=None, mask=None):
    """The same as ``compute_gae``, as a slow double loop over Python floats.

    Written to be checked by hand (as in CleanRL's ``ppo.py``), not to be fast:
    every row is walked backwards one step at a time. Takes the same arguments
    (no validation) and returns NumPy float64 arrays ``(advantages, returns)``:
    the reference runs on the host whatever the inputs' device.
    """
    r = to_numpy(rewards).astype(np.float64)
    one_d = r.ndim == 1
    r = r.reshape(-1, r.shape[-1])
    v = to_numpy(values).astype(np.float64).reshape(r.shape)
    d = np.zeros(r.shape) if dones is None else to_numpy(dones).astype(np.float64).reshape(r.shape)
    m = np.ones(r.shape) if mask is None else to_numpy(mask).astype(np.float64).reshape(r.shape)
    lv = np.broadcast_to(to_numpy(last_value).astype(np.float64), (r.shape[0],))
    B, T = r.shape

    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        next_value = float(lv[b])  # V(s_T)
        next_adv = 0.0  # A_T
        for t in reversed(range(T)):
            if m[b, t] == 0:  # padding: no advantage, and nothing flows through it
                adv[b][t] = 0.0
                next_value, next_adv = 0.0, 0.0
                continue
            nonterminal = 1.0 - d[b, t]
            delta = r[b, t] + gamma * nonterminal * next_value - v[b, t]
            adv[b][t] = delta + gamma * lam * nonterminal * next_adv
            next_value, next_adv = v[b, t], adv[b][t]

    advantages = np.array(adv)
    returns = advantages + np.where(m == 1, v, 0.0)
    if one_d:
        return advantages[0], returns[0]
    return advantages, returns


def whiten(x, mask=None, shift_mean=True, eps=1e-8, unbiased=True):
    """Normalise ``x`` to mean 0 and standard deviation 1 over its (masked) entries.

    x:          any shape, e.g. advantages (B, T); a NaN among the counted
                entries makes every counted output NaN (visible, never 0).
    mask:       optional, same shape, 1 on entries that count; masked-out entries
                are excluded from the statistics and returned as 0.
    shift_mean: if False, the mean is added back: only the scale changes (TRL
                whitens rewards this way).
    eps:        added to the variance before the square root. When every
                counted entry is equal, the variance is 0 and ``x - mean`` is 0,
                so the result is 0 instead of 0/0 = nan (also with eps = 0); for
                any real spread (variance >> 1e-8) it changes nothing. This is
                the standard guard in the denominator (TRL's ``masked_whiten``
                uses 1e-8).
    unbiased:   use the sample variance (divide by n - 1, Bessel's correction),
                as TRL's ``masked_var`` does; needs at least 2 counted entries.

    Returns ``(x - mean) / sqrt(var + eps)`` (+ mean when ``shift_mean`` is
    False), same shape and dtype as ``x``. The mean and variance are computed
    over all counted entries together (the whole batch), not per row.

    Numerics: the statistics are accumulated in float64 (float32 sums of
    squares overflow at |x| ~ 1e19), by two passes (the mean first, then the
    variance of the centred values: no cancellation), and on x divided by
    s = max |x|, so that neither the sum nor the squares can overflow even in
    float64. With y = x / s: out = (y - mean(y)) / sqrt(var(y) + eps / s^2),
    the same number as the formula above.
    """
    xp = get_array_module(x, mask)
    x = check_float_array("x", x, xp)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 <= eps < math.inf:
        raise ValueError(f"eps must be a non-negative real number, got {eps!r}")
    shift_mean = check_bool("shift_mean", shift_mean)
    unbiased = check_bool("unbiased", unbiased)
    m = check_mask("mask", mask, x.shape, xp, like="x")
    if m is None:
        m = xp.ones(x.shape, dtype=bool)
    n = int(m.sum())
    need = 2 if unbiased else 1
    if n < need:
        why = " for the unbiased variance (n - 1 in the denominator)" if unbiased else ""
        raise ValueError(f"whiten needs at least {need} counted entries in x (the mask sum){why}, got {n}")
    xm = xp.where(m, x, x.dtype.type(0))  # masked-out entries may hold anything
    if not bool(xp.isfinite(xm).all()):  # NaN or inf among the counted entries: no statistics
        return xp.where(m, xp.nan, 0).astype(x.dtype)

    work = xm.astype(xp.float64) if xm.dtype.itemsize < 8 else xm
    s = float(xp.abs(work).max())
    if s == 0:  # every counted entry is 0: mean 0, variance 0
        return xp.zeros(x.shape, dtype=x.dtype)
    y = work / s  # |y| <= 1: sums and squares stay far from overflow
    y_mean = float(y.sum()) / n
    centred = xp.where(m, y - y_mean, 0)  # |centred| <= 2
    var_y = float((centred * centred).sum()) / (n - 1 if unbiased else n)
    if var_y == 0:  # every counted entry equal: x - mean is 0 (not 0/0)
        out = xp.zeros(work.shape, dtype=work.dtype)
    else:
        # sqrt(var(x) + eps) = s * sqrt(var_y + eps / s^2); eps / s^2 may underflow to 0, harmlessly.
        out = centred / math.sqrt(var_y + eps / s / s)
    if not shift_mean:
        out = xp.where(m, out + s * y_mean, 0)
    return out.astype(x.dtype, copy=False)
