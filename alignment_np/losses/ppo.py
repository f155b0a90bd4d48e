"""PPO losses: the clipped surrogate, the clipped value loss and the entropy bonus.

Each function takes arrays, returns ``(loss, gradient)`` with the gradient
written out by hand, and is checked against finite differences in the tests.
``loss`` is a scalar of the inputs' dtype on their device (a NumPy scalar or
a 0-d CuPy array; ``float(loss)`` gives a Python number); gradients have the shape and dtype of the input they
belong to.

Shapes: the per-action arrays may have any shape, all the same: (N,) for N
sampled actions, or (B, T) for B responses of T tokens in RLHF. ``mask`` (same
shape, 1 = real token, 0 = padding) restricts every mean to the masked-in
entries: N below is their count. Masked-out entries may hold anything (TRL
writes 1.0 into padded log-probs, others write -inf): they are replaced by 0
before any arithmetic, get gradient 0 and never produce a nan.

Non-finite inputs propagate, visibly: a NaN in a counted entry of any input
makes the loss NaN and that entry's gradient NaN (never 0, never a finite
loss), so the trainers' NaN guard (``checks.check_finite_metrics``) stops the
step before the optimiser and names it. These losses run inside training
steps, where a NaN means a diverged model, not a caller's mistake. An
infinity gives the true limit where there is one (the clipped term of an
infinite ratio) and inf or NaN otherwise. A -inf logit in
``entropy_from_logits`` is a banned token (probability 0). Wrong types (None,
strings, ragged lists, integer arrays) raise TypeError naming the argument.

References: Schulman et al. 2017, "Proximal Policy Optimization Algorithms"
(arXiv:1707.06347), Eq. 7 (clipped surrogate) and Eq. 9 (value loss and
entropy bonus); the value-clipping form of OpenAI baselines' PPO2.
"""

from __future__ import annotations

import math
import numbers

from ..backend import get_array_module
from ..checks import check_bool, check_float_array, check_mask
from ..functional.stable import log_softmax

# ----------------------------------------------------------------------------- validation


def _float_arrays(xp, **arrays):
    """The named inputs as floating-point arrays of ``xp`` (TypeError naming the bad one)."""
    return [check_float_array(name, x, xp) for name, x in arrays.items()]


def _check_same_shape(first: str, shape, **arrays) -> None:
    for name, arr in arrays.items():
        if arr.shape != shape:
            raise ValueError(f"{name} must have shape {tuple(shape)} like {first}, got {tuple(arr.shape)}")


def _mask_and_count(mask, shape, xp, what: str = "the first argument"):
    """(boolean mask or None, N = number of counted entries), validated."""
    if mask is None:
        n = 1
        for s in shape:
            n *= s
        if n == 0:
            raise ValueError(f"cannot average over an empty array: {what} has shape {tuple(shape)}")
        return None, n
    m = check_mask("mask", mask, shape, xp, like=what)
    n = int(m.sum())
    if n == 0:
        raise ValueError("mask selects no entries (its sum is 0): there is nothing to average")
    return m, n


def _check_range(name: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not low < float(value) < high:  # also rejects nan
        raise ValueError(f"{name} must lie strictly between {low} and {high}, got {value!r}")
    return float(value)


def _keep(cond, x, xp):
    """``x`` where ``cond``, else 0, in ``x``'s dtype (a Python 0 would promote a
    0-d float32 array to float64 under NumPy 1.x)."""
    return xp.where(cond, x, x.dtype.type(0))


def _mean(total, n: int):
    """``total / n`` in ``total``'s dtype (a Python int would promote a float32
    scalar to float64 under NumPy 1.x's rules for scalars)."""
    return total / total.dtype.type(n)


def _masked_mean(x, m, n, xp) -> float:
    total = x.sum() if m is None else xp.where(m, x, 0).sum()
    return float(total) / n


# ----------------------------------------------------------------------------- policy loss


def ppo_loss(new_log_probs, old_log_probs, advantages, clip_ratio=0.2, mask=None, return_metrics=False):
    """PPO's clipped surrogate loss and its gradient w.r.t. ``new_log_probs``.

    new_log_probs: (N,) or (B, T), log pi_theta(a_t | s_t) of the sampled actions
                   under the policy being trained.
    old_log_probs: same shape, log pi_old(a_t | s_t) recorded at rollout time.
    advantages:    same shape, A_t (e.g. from ``compute_gae``, often whitened).
    clip_ratio:    epsilon in (0, 1); the ratio is clipped to [1 - eps, 1 + eps].
    mask:          optional, same shape; the mean runs over masked-in entries.
    return_metrics: also return a dict of Python floats:
        ``clip_fraction``: fraction of entries where the clipped term is the
            minimum (so their gradient is 0); TRL's ``clipfrac``.
        ``approx_kl``: mean((rho - 1) - log rho), Schulman's k3 estimator of
            KL(pi_old || pi_theta) from samples of pi_old
            (http://joschu.net/blog/kl-approx.html, as in CleanRL).
        ``ratio_mean``: mean of rho.

    With the probability ratio rho_t = exp(new_log_probs - old_log_probs)
    (Schulman et al. 2017, Eq. 7, where it is called r_t; in this package r_t
    is always a reward):

        loss = -mean( min(rho * A, clip(rho, 1 - eps, 1 + eps) * A) )

    Returns ``(loss, grad_new_log_probs)`` (+ ``metrics``). The gradient is
    ``-rho * A / N`` where the unclipped term is the minimum and exactly 0 where
    the clipped term is (see the six regions in the code).

    Extreme ratios: which term is active is decided on the log-ratio, and rho
    is exponentiated only where rho * A is used, so a clipped-out entry (or
    A = 0) gives exactly 0 however far the policy moved: old log-prob -100 and
    new 0 in float32 (rho = e^100 overflows) give gradient 0 for A > 0, not
    nan. Where the unclipped term is used and rho really overflows (A < 0, a
    run that has already diverged), the loss and that gradient are +inf and
    NumPy warns. The metrics are computed in float64 (finite up to log rho = 709).
    """
    xp = get_array_module(new_log_probs, old_log_probs, advantages, mask)
    new_log_probs, old_log_probs, advantages = _float_arrays(
        xp, new_log_probs=new_log_probs, old_log_probs=old_log_probs, advantages=advantages
    )
    _check_same_shape("new_log_probs", new_log_probs.shape, old_log_probs=old_log_probs, advantages=advantages)
    eps = _check_range("clip_ratio", clip_ratio, 0.0, 1.0)
    return_metrics = check_bool("return_metrics", return_metrics)
    m, n = _mask_and_count(mask, new_log_probs.shape, xp, "new_log_probs")

    if m is not None:  # padding holds anything: zero it before it meets exp or a subtraction
        new_log_probs = _keep(m, new_log_probs, xp)
        old_log_probs = _keep(m, old_log_probs, xp)
        advantages = _keep(m, advantages, xp)  # so padded entries contribute 0 below
    one = advantages.dtype.type(1)

    log_ratio = new_log_probs - old_log_probs  # log rho, rho = pi_theta / pi_old
    # Which term is the minimum decides the gradient. Six regions, by the sign
    # of A and where rho lies (below, inside or above [1 - eps, 1 + eps]):
    #   A > 0, rho <  1 - eps: unclipped rho*A is the minimum -> d/dlogp = rho*A:
    #                          the policy made a good action LESS likely, and
    #                          the gradient still pushes it up.
    #   A > 0, rho inside:     unclipped rho*A -> rho*A.
    #   A > 0, rho >  1 + eps: clipped (1 + eps)*A is the minimum, constant -> 0:
    #                          no incentive to move further in the good direction.
    #   A < 0, rho <  1 - eps: clipped (1 - eps)*A is the minimum, constant -> 0.
    #   A < 0, rho inside:     unclipped rho*A -> rho*A.
    #   A < 0, rho >  1 + eps: unclipped rho*A -> rho*A: a bad action made MORE
    #                          likely is still pushed down.
    # (A = 0 gives rho*A = 0 in every region.) The gradient is zero only where the
    # clipped term is active, NOT wherever rho lies outside [1 - eps, 1 + eps]:
    # that common bug agrees in four of the six regions and freezes the other two.
    # Decided on log rho (rho > 1 + eps <=> log rho > log(1 + eps)): no exp, no overflow.
    clipped_active = ((advantages > 0) & (log_ratio > math.log1p(eps))) | (
        (advantages < 0) & (log_ratio < math.log1p(-eps))
    )
    # rho only where rho * A is used. Elsewhere (clipped-out entries, A = 0) log rho
    # is replaced by 0 BEFORE exp, so an overflowing rho there never meets a 0 (inf * 0 = nan).
    idle = clipped_active | (advantages == 0)
    ratio = xp.exp(_keep(~idle, log_ratio, xp))  # d rho / d(new_log_prob) = rho
    unclipped = ratio * advantages  # rho * A (0 where A = 0)
    # The clipped term where it is the minimum: clip(rho) is 1 + eps (A > 0) or 1 - eps (A < 0).
    clipped = advantages * xp.where(advantages > 0, one + one.dtype.type(eps), one - one.dtype.type(eps))
    # The pessimistic (lower) bound of the two (Eq. 7); padded entries are 0.
    surrogate = xp.where(clipped_active, clipped, unclipped)
    # A NaN (a diverged model) propagates: not hidden by the clipped branch or by A = 0.
    nan_in = xp.isnan(log_ratio) | xp.isnan(advantages)
    surrogate = xp.where(nan_in, xp.nan, surrogate).astype(unclipped.dtype, copy=False)
    loss = -_mean(surrogate.sum(), n)
    grad_new_log_probs = _keep(~clipped_active, -unclipped, xp) / n
    grad_new_log_probs = xp.where(nan_in, xp.nan, grad_new_log_probs).astype(unclipped.dtype, copy=False)

    if not return_metrics:
        return loss, grad_new_log_probs
    # In float64 (Python floats come out anyway): rho = e^100 is finite there.
    log_ratio64 = log_ratio.astype(xp.float64)
    metrics = {
        "clip_fraction": _masked_mean(clipped_active, m, n, xp),
        # k3: each term (rho - 1) - log rho >= 0, and its mean under pi_old is KL(pi_old || pi_theta).
        "approx_kl": _masked_mean(xp.expm1(log_ratio64) - log_ratio64, m, n, xp),
        "ratio_mean": _masked_mean(xp.exp(log_ratio64), m, n, xp),
    }
    return loss, grad_new_log_probs, metrics


# ----------------------------------------------------------------------------- value loss


def value_loss(values, old_values, returns, clip_range=0.2, mask=None, return_metrics=False):
    """Clipped value loss (PPO2 style) and its gradient w.r.t. ``values``.

    values:     (N,) or (B, T), the critic's V(s_t) now (being trained).
    old_values: same shape, V_old(s_t) recorded at rollout time.
    returns:    same shape, the targets: the lambda-returns R^lambda_t = A_t + V(s_t)
                (``compute_gae``'s returns), written R below.
    clip_range: eps_V > 0; V may move at most eps_V away from V_old before the
                clipped term takes over. ``None``: plain 0.5 * mean((V - R)^2).
    mask:       optional, same shape; the mean runs over masked-in entries.
    return_metrics: also return ``{"clip_fraction": ...}``, the fraction of
                entries where the clipped term is strictly larger (TRL's
                ``vf_clipfrac``).

    With V_clip = V_old + clip(V - V_old, -eps_V, eps_V):

        loss = 0.5 * mean( max((V - R)^2, (V_clip - R)^2) )

    The max makes it pessimistic like the policy loss: moving V further than
    eps_V from V_old cannot lower the loss. Returns ``(loss, grad_values)``.
    """
    xp = get_array_module(values, old_values, returns, mask)
    values, old_values, returns = _float_arrays(xp, values=values, old_values=old_values, returns=returns)
    _check_same_shape("values", values.shape, old_values=old_values, returns=returns)
    if clip_range is not None:
        clip_range = _check_range("clip_range", clip_range, 0.0, float("inf"))
    return_metrics = check_bool("return_metrics", return_metrics)
    m, n = _mask_and_count(mask, values.shape, xp, "values")

    if m is not None:  # padded entries become 0 everywhere, so they add 0 below
        values = _keep(m, values, xp)
        old_values = _keep(m, old_values, xp)
        returns = _keep(m, returns, xp)

    error = values - returns
    unclipped = error * error
    if clip_range is None:
        loss = _mean((0.5 * unclipped).sum(), n)
        grad_values = error / n  # d/dV 0.5*(V - R)^2 = V - R
        metrics = {"clip_fraction": 0.0}
    else:
        change = values - old_values
        values_clipped = old_values + xp.clip(change, -clip_range, clip_range)
        clipped_error = values_clipped - returns
        clipped = clipped_error * clipped_error
        loss = _mean((0.5 * xp.maximum(unclipped, clipped)).sum(), n)
        # Gradient of the larger term, by region:
        #   unclipped >= clipped: d/dV 0.5*(V - R)^2 = V - R;
        #   clipped > unclipped:  d/dV 0.5*(V_clip - R)^2 = (V_clip - R) * dV_clip/dV,
        #                         with dV_clip/dV = 1 inside |V - V_old| < c and 0 outside.
        # The clipped term can only be strictly larger outside (inside, V_clip = V
        # and the terms are equal), so that branch is 0; written out as the chain
        # rule so it reads like the derivation. ``where``, not ``* inside``: an
        # overflowing clipped error times 0 would be nan, and the slope is exactly 0.
        inside = xp.abs(change) < clip_range
        grad_values = xp.where(unclipped >= clipped, error, _keep(inside, clipped_error, xp)) / n
        # A NaN anywhere in an entry (maximum propagates it into the loss) is NaN in its gradient too.
        nan_in = xp.isnan(values) | xp.isnan(old_values) | xp.isnan(returns)
        grad_values = xp.where(nan_in, xp.nan, grad_values)
        metrics = {"clip_fraction": _masked_mean(clipped > unclipped, m, n, xp)}

    grad_values = grad_values.astype(values.dtype, copy=False)
    if return_metrics:
        return loss, grad_values, metrics
    return loss, grad_values


# ----------------------------------------------------------------------------- entropy


def entropy_from_logits(logits, mask=None):
    """Mean entropy of softmax(logits) over positions, and its gradient.

    logits: (..., V), e.g. (B, T, V): unnormalised scores over the vocabulary.
            -inf entries (banned tokens) are allowed; a NaN or +inf logit,
            or a row of only -inf (no distribution), gives a NaN entropy.
    mask:   optional, shape (...) = logits.shape[:-1]; the mean runs over
            masked-in positions. Masked-out rows may hold anything.

    Per position, with log p = log_softmax(logits) (max-shifted, stable):

        entropy = -sum_v p_v log p_v            (0 * log 0 = 0)
        d entropy / dlogits_v = -p_v (log p_v + entropy) = -p_v (log p_v - sum_u p_u log p_u)

    Returns ``(entropy, grad_logits)``: entropy = mean over the N counted
    positions (a scalar, like ``loss`` above), grad_logits (..., V) its gradient (1/N included).
    PPO *adds* an entropy bonus to its objective (Schulman et al. 2017, Eq. 9),
    so a trainer subtracts ``entropy_coef * entropy`` from the loss and scales
    this gradient by ``-entropy_coef``.
    """
    xp = get_array_module(logits, mask)
    logits = check_float_array("logits", logits, xp)
    if logits.ndim < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have shape (..., V) with V >= 1, got {tuple(logits.shape)}")
    m, n = _mask_and_count(mask, logits.shape[:-1], xp, "logits.shape[:-1]")
    if m is not None:
        logits = xp.where(m[..., None], logits, 0)  # padded rows become uniform, then excluded

    log_probs = log_softmax(logits, axis=-1)
    probs = xp.exp(log_probs)
    # 0 * log 0 = 0: where p is exactly 0 (a -inf logit, or underflow) use 0 for
    # log p, so that 0 * -inf never produces a nan.
    log_probs = xp.where(probs > 0, log_probs, 0)
    H = -(probs * log_probs).sum(axis=-1)  # (...)
    grad_logits = -probs * (log_probs + H[..., None]) / n
    if m is None:
        entropy = _mean(H.sum(), n)
    else:
        entropy = _mean(xp.where(m, H, 0).sum(), n)
        grad_logits = xp.where(m[..., None], grad_logits, 0)
    return entropy, grad_logits.astype(logits.dtype, copy=False)
