"""KL divergence: exactly over a vocabulary, and estimated from sampled tokens.

Two different objects share the name "KL" in RLHF:

* the full divergence between two distributions over V tokens, computable when
  both are known at a position (``kl_divergence``):

      KL(P || Q) = sum_v p_v (log p_v - log q_v)  >= 0, and 0 iff P = Q;

* a per-token estimate from the ONE token v the policy sampled at a position
  (``kl_estimate``), which is what PPO for RLHF puts into the reward because it
  costs a single gather instead of V terms. Schulman, "Approximating KL
  Divergence" (2020, http://joschu.net/blog/kl-approx.html), with p = the policy
  pi (which sampled v), q = the reference pi_ref and the ratio
  omega = q(v) / p(v) (Schulman's r; in this package r is a reward and rho
  PPO's ratio):

      k1 = log p(v) - log q(v) = -log omega      unbiased, can be negative
      k2 = 0.5 * (log p(v) - log q(v))^2          >= 0, biased (low bias near p = q)
      k3 = (omega - 1) - log omega                >= 0 and unbiased

  Each satisfies E_{v ~ p}[k] = KL(p || q) (k2 only approximately). The
  penalised per-token reward is r_t - beta * k_t, beta = ``kl_coef``
  (Ziegler et al. 2019, Section 2.2; Ouyang et al. 2022, Eq. 2).

Non-finite inputs: ``kl_divergence`` (a standalone measurement) refuses a
NaN or +inf log-probability with a ValueError naming the argument and the
index; it accepts -inf (a token with probability 0) and returns the true
value, which is +inf where Q is 0 but P is not. ``kl_estimate`` and
``kl_penalty_reward`` run inside every RLHF rollout: there a NaN (a diverged
model) propagates visibly into the estimate and the penalised reward, also
when ``kl_coef = 0``, so the trainer's NaN guard stops the step and names
it; a reference log-prob of -inf gives the true +inf estimate. Masked-out
entries may hold anything. Values so large that the estimate itself
overflows (k3 for log omega > 88 in float32) give +inf and NumPy's overflow
warning, never nan.
"""

from __future__ import annotations

import numbers

from ..backend import get_array_module
from ..checks import check_bool, check_finite_array, check_float_array, check_mask

ESTIMATORS = ("k1", "k2", "k3")


def _float_pair(name_a: str, a, name_b: str, b, xp, min_ndim: int = 0):
    a = check_float_array(name_a, a, xp)
    b = check_float_array(name_b, b, xp)
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.ndim < min_ndim:
        raise ValueError(f"{name_a} must have shape (..., V) with the vocabulary last, got shape {tuple(a.shape)}")
    return a, b


# ----------------------------------------------------------------------------- full KL


def kl_divergence_forward(log_probs_p, log_probs_q):
    """KL(P || Q) over the last axis; the kernel (trusts its caller).

    log_probs_p, log_probs_q: (..., V) log-probabilities.
    Returns ``(kl, cache)``: kl (...), cache = (p, log_ratio) with
    log_ratio = log p - log q on the support of P (0 off it).
    """
    xp = get_array_module(log_probs_p)
    p = xp.exp(log_probs_p)
    # Off the support of P (log p = -inf, p = 0) the term is 0 * (...) = 0 by
    # convention. Substituting 0 for both logs there BEFORE subtracting avoids
    # -inf - (-inf) = nan when Q is also 0, and 0 * inf = nan when only Q is.
    # The support is decided on log p, not on p: p = exp(-200) underflows to 0
    # in float32 but is not 0, and where Q is 0 its term is +inf, not 0.
    support = log_probs_p > -xp.inf
    log_ratio = xp.where(support, log_probs_p, 0) - xp.where(support, log_probs_q, 0)
    # Where p > 0 but q = 0 (log q = -inf) log_ratio = +inf and so is KL: P puts
    # mass where Q puts none. That is the true value, not an overflow. It is
    # set apart so that an underflowed p never meets it (0 * inf = nan).
    infinite = log_ratio == xp.inf
    finite_ratio = xp.where(infinite, 0, log_ratio)
    kl = (p * finite_ratio).sum(axis=-1)
    kl = xp.where(infinite.any(axis=-1), xp.inf, kl).astype(p.dtype, copy=False)
    return kl, (p, finite_ratio, infinite)


def kl_divergence_backward(dout, cache):
    """Gradients of ``sum(dout * kl)`` w.r.t. log_probs_p and log_probs_q.

    dout: (...) upstream gradient. Returns (grad_p, grad_q), each (..., V):

        d/d log p_v  [p_v (log p_v - log q_v)] = p_v (log p_v - log q_v + 1)
        d/d log q_v  [p_v (log p_v - log q_v)] = -p_v

    Each log p_v is treated as a free coordinate. Through a log-softmax the
    "+ 1" part is removed by ``log_softmax_backward`` (it is p, and
    p - p * sum(p) = 0), so both views agree.

    Where the KL is infinite (q = 0 < p) the gradient w.r.t. that log p_v is
    +inf times the sign of dout (0 where dout is 0).
    """
    p, finite_ratio, infinite = cache
    xp = get_array_module(p)
    g = xp.asarray(dout)[..., None]
    grad_p = g * p * (finite_ratio + 1)
    signed_inf = xp.where(g > 0, xp.inf, -xp.inf)
    grad_p = xp.where(infinite & (g != 0), signed_inf, grad_p).astype(grad_p.dtype, copy=False)
    grad_q = -g * p
    return grad_p, grad_q


def kl_divergence(log_probs_p, log_probs_q, return_grad=False):
    """KL(P || Q) = sum_v p_v (log p_v - log q_v) over the last axis.

    log_probs_p: (..., V) log-probabilities of P (e.g. log_softmax of the
                 policy's logits, (B, T, V)); -inf entries (p = 0) contribute 0.
    log_probs_q: (..., V) log-probabilities of Q. Where Q has -inf (q = 0) but
                 P does not, the result is +inf, the true value.
    return_grad: also return the gradient of ``kl.sum()`` w.r.t. log_probs_p
                 (``kl_divergence_backward`` with dout = 1; use the pair
                 ``kl_divergence_forward/backward`` for other upstream
                 gradients and for the gradient w.r.t. log_probs_q).

    Returns kl of shape (...): the leading axes ((B, T) for (B, T, V) inputs;
    a scalar for (V,)). Rows are assumed to be normalised; nothing here
    checks that they sum to 1.
    """
    xp = get_array_module(log_probs_p, log_probs_q)
    log_probs_p, log_probs_q = _float_pair("log_probs_p", log_probs_p, "log_probs_q", log_probs_q, xp, 1)
    return_grad = check_bool("return_grad", return_grad)
    for name, lp in (("log_probs_p", log_probs_p), ("log_probs_q", log_probs_q)):
        check_finite_array(name, xp.where(lp == -xp.inf, 0, lp))  # -inf is probability 0: allowed
    kl, cache = kl_divergence_forward(log_probs_p, log_probs_q)
    if not return_grad:
        return kl
    grad_p, _ = kl_divergence_backward(xp.ones(kl.shape, dtype=kl.dtype), cache)
    return kl, grad_p


# ----------------------------------------------------------------------------- per-token estimates


def kl_estimate(policy_log_probs, ref_log_probs, estimator="k1", mask=None):
    """Per-token estimate k_t of KL(pi || pi_ref) from the sampled tokens.

    policy_log_probs: any shape, e.g. (B, T): log pi(y_t) of each sampled
                      token y_t under the policy that sampled it.
    ref_log_probs:    same shape: log pi_ref(y_t) of the same tokens.
    estimator:        "k1", "k2" or "k3" (see the module docstring).
    mask:             optional, same shape; masked-out entries are 0 in the
                      output whatever the inputs hold there.

    Returns k_t, same shape. k3 is computed as ``expm1(log omega) - log omega``
    so that it stays >= 0 in floating point for tiny log omega
    (``exp(log omega) - 1`` rounds to 0 there and the difference can come out
    negative); it grows like omega and overflows to inf only when the reference
    likes a token
    e^88 times more than the policy that sampled it (float32).
    """
    xp = get_array_module(policy_log_probs, ref_log_probs, mask)
    policy_log_probs, ref_log_probs = _float_pair(
        "policy_log_probs", policy_log_probs, "ref_log_probs", ref_log_probs, xp
    )
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got {estimator!r}")
    m = check_mask("mask", mask, policy_log_probs.shape, xp, like="policy_log_probs")
    if m is not None:
        # Padding may hold anything (-inf, 1.0): zero it before subtracting.
        policy_log_probs = xp.where(m, policy_log_probs, policy_log_probs.dtype.type(0))
        ref_log_probs = xp.where(m, ref_log_probs, ref_log_probs.dtype.type(0))

    log_ratio = policy_log_probs - ref_log_probs  # log(pi / pi_ref) at the sampled token
    if estimator == "k1":
        kl = log_ratio
    elif estimator == "k2":
        kl = log_ratio * log_ratio * log_ratio.dtype.type(0.5)
    else:  # k3 = (omega - 1) - log omega with log omega = log pi_ref - log pi
        log_omega = -log_ratio
        kl = xp.expm1(log_omega) - log_omega
    return kl  # masked-out entries: log_ratio = 0, so every estimator gives 0


def kl_penalty_reward(policy_log_probs, ref_log_probs, kl_coef=0.1, estimator="k1", mask=None):
    """The KL penalty to ADD to the per-token reward: ``-kl_coef * k_t``.

    policy_log_probs: any shape, e.g. (B, T): log pi(y_t) of the sampled tokens.
    ref_log_probs:    same shape: log pi_ref(y_t).
    kl_coef:          beta >= 0 (a number, e.g. ``AdaptiveKLController.value``).
    estimator:        "k1", "k2" or "k3" (see ``kl_estimate``).
    mask:             optional, same shape; 0 penalty on masked-out entries.

    Sign convention: the result is a reward term, <= 0 where k_t >= 0. Use it as
    ``rewards = kl_penalty_reward(...)`` then add the reward model's score on
    the last token: tokens the policy likes more than the reference does
    (log pi > log pi_ref) are penalised. With k1 a token the policy likes LESS
    than the reference earns a small bonus; its mean over samples is still
    -kl_coef * KL(pi || pi_ref) <= 0.
    """
    if isinstance(kl_coef, bool) or not isinstance(kl_coef, numbers.Real):
        raise TypeError(f"kl_coef must be a real number, got {type(kl_coef).__name__} {kl_coef!r}")
    if not float(kl_coef) >= 0:  # also rejects nan
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef!r}")
    kl = kl_estimate(policy_log_probs, ref_log_probs, estimator=estimator, mask=mask)
    if float(kl_coef) == 0:  # the penalty is off: 0, even where k_t overflowed (0 * inf = nan)
        xp = get_array_module(kl)
        return xp.where(xp.isnan(kl), kl, kl.dtype.type(0))  # but a NaN (a diverged model) stays visible
    return kl * kl.dtype.type(-float(kl_coef))  # a scalar of kl's dtype: no promotion on any NumPy
