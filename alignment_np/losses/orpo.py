"""ORPO: preference optimisation without a reference model, as a penalty on the odds ratio.

Hong et al. 2024 ("ORPO: Monolithic Preference Optimization without Reference
Model") fold SFT and preference learning into one loss. With the length-
normalised log-probabilities of the two responses (lbar in the notation page;
their Eq. 3; ``compute_log_probs(average=True)``)

    lbar_w = log pi_theta(y_w | x) / |y_w|        chosen,   lbar_w <= 0
    lbar_l = log pi_theta(y_l | x) / |y_l|        rejected, lbar_l <= 0

read as the log-probability of a "typical token", P = exp(lbar), the odds of
a response are P / (1 - P), and ORPO's per-pair loss (Eq. 6-7) is

    L     = L_SFT + alpha * L_OR                      (alpha is the paper's lambda)
    L_SFT = -lbar_w                                   NLL of the chosen response (Eq. 2)
    L_OR  = -log sigma(z)                             Eq. 7
    z     = log odds(y_w) - log odds(y_l)
          = (lbar_w - log(1 - e^lbar_w)) - (lbar_l - log(1 - e^lbar_l))

so the model is pushed to make the chosen response likely (SFT) and more
likely *relative to its odds* than the rejected one, with no reference model
to run or store. (TRL's ``ORPOTrainer`` calls alpha ``beta`` and averages the
NLL over all the chosen tokens of a batch; here L_SFT is the paper's
per-response average, then the batch mean.)

log(1 - e^x) is computed as ``log1mexp`` (Maechler 2012, "Accurately Computing
log(1 - exp(-|a|))"): ``log(-expm1(x))`` for x > -log 2, where e^x is close to
1 and 1 - e^x would cancel, and ``log1p(-exp(x))`` below, where e^x is small.
No epsilon, no clipping: at x = 0 (a response of probability 1) it is -inf,
the odds are infinite, and the loss says so.

Gradient, written by hand. Write a = lbar_w and c = lbar_l for short. With
s = sigma(-z), d(-log sigma(z))/dz = -s, dz/da = 1 / (1 - e^a) and
dz/dc = -1 / (1 - e^c):

    dL / da = -1 - alpha * s / (1 - e^a)
    dL / dc =      alpha * s / (1 - e^c)

Both quotients are evaluated in log space: s / (1 - e^a) = 1 / D with
log D = logaddexp(log1mexp(a), (a - c) + log1mexp(c)) (because (1 + e^z)(1 - e^a)
= (1 - e^a) + e^(a-c)(1 - e^c)), and s / (1 - e^c) = exp(log1mexp(a) -
log1mexp(c) - log D), so nothing overflows and a = 0 gives the finite limit
instead of inf * 0. The batch loss is the mean over pairs, so each gradient is
divided by B.

Shapes: every array is (B,), one entry per preference pair.
"""

from __future__ import annotations

import math

from ..backend import get_array_module
from ..checks import check_finite_array, check_float
from ..functional.stable import logsigmoid

__all__ = ["log1mexp", "orpo_loss"]

_LOG2 = math.log(2.0)


def log1mexp(x):
    """log(1 - exp(x)) for x <= 0, elementwise and without cancellation (Maechler 2012).

    x: float array, every entry <= 0. Returns an array of the same shape and
    dtype; -inf where x == 0 (no warning), never a NaN for x <= 0.
    """
    xp = get_array_module(x)
    near_zero = x > -_LOG2
    # Feed each branch only the inputs it is accurate (and finite) for; the
    # other entries get a harmless -1, and x == 0 is set to -inf at the end.
    minus_one = -xp.ones_like(x)
    near = xp.where(near_zero & (x < 0), x, minus_one)  # in (-log 2, 0): e^x close to 1
    far = xp.where(near_zero, minus_one, x)  # <= -log 2: e^x <= 1/2
    out = xp.where(near_zero, xp.log(-xp.expm1(near)), xp.log1p(-xp.exp(far)))
    return xp.where(x == 0, -xp.inf * xp.ones_like(x), out)


def orpo_loss(chosen_logps, rejected_logps, alpha=0.1):
    """Per-pair ORPO losses (Hong et al. 2024, Eq. 6), the gradient of their mean, and the parts.

    chosen_logps:   (B,) length-normalised log-prob lbar_w of each chosen response, <= 0.
    rejected_logps: (B,) length-normalised log-prob lbar_l of each rejected response, <= 0.
    alpha: >= 0, the weight of the odds-ratio term (the paper's lambda, TRL's ``beta``; 0.1).

    Returns (losses (B,), grad_chosen (B,), grad_rejected (B,), parts):
      losses = -lbar_w + alpha * (-log sigma(z)); the batch loss is ``losses.mean()``;
      grad_chosen, grad_rejected: d mean(losses) / d lbar_w and / d lbar_l;
      parts: {"nll_loss": -lbar_w, "log_odds_chosen": z, "log_odds_ratio": log sigma(z)},
      each (B,), named as TRL's ORPOTrainer logs their means.
    All arrays in the inputs' dtype.

    Raises ValueError naming the argument for a NaN or infinite input, a
    log-prob above 0, or shapes that differ; alpha must be a finite number >= 0.
    """
    alpha = check_float("alpha", alpha, 0.0)
    for name, x in (("chosen_logps", chosen_logps), ("rejected_logps", rejected_logps)):
        if not hasattr(x, "dtype") or x.dtype.kind != "f" or x.ndim != 1 or x.shape[0] == 0:
            raise ValueError(f"{name}: expected a non-empty (B,) float array, got {getattr(x, 'shape', type(x).__name__)}")
        check_finite_array(name, x)
        if bool((x > 0).any()):
            raise ValueError(f"{name}: expected log-probabilities <= 0, got a maximum of {float(x.max())}")
    if chosen_logps.shape != rejected_logps.shape:
        raise ValueError(
            f"chosen_logps, rejected_logps: expected equal shapes (B,), got {chosen_logps.shape} and {rejected_logps.shape}"
        )
    xp = get_array_module(chosen_logps)
    a, c = chosen_logps, rejected_logps  # lbar_w, lbar_l
    l1a, l1c = log1mexp(a), log1mexp(c)  # log(1 - e^a), log(1 - e^c)
    z = (a - l1a) - (c - l1c)  # (B,) the log odds ratio, Eq. 7's argument
    log_ratio = logsigmoid(z)  # (B,)
    losses = -a - alpha * log_ratio
    # s / (1 - e^a) = exp(-log D) and s / (1 - e^c) = exp(l1a - l1c - log D); see the module docstring.
    log_d = xp.logaddexp(l1a, (a - c) + l1c)
    n = a.shape[0]
    grad_chosen = (-1.0 - alpha * xp.exp(-log_d)) / n
    grad_rejected = (alpha * xp.exp(l1a - l1c - log_d)) / n
    parts = {"nll_loss": -a, "log_odds_chosen": z, "log_odds_ratio": log_ratio}
    return losses, grad_chosen, grad_rejected, parts
