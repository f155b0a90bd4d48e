"""ORPO: preference optimisation without a reference model, as a penalty on the odds ratio.

Hong et al. 2024 ("ORPO: Monolithic Preference Optimization without Reference
Model") fold SFT and preference learning into one loss. With the length-averaged
log-probabilities of a response (their Eq. 3, ``compute_log_probs(average=True)``)

    a = (1/|y_w|) sum_t log pi(y_w,t | x, y_w,<t)        chosen,   a < 0
    b = (1/|y_l|) sum_t log pi(y_l,t | x, y_l,<t)        rejected, b < 0

read as the probability P = exp(a) of a "typical token", the odds of a
response are P / (1 - P), and ORPO's per-pair loss (Eq. 6-7) is

    loss = L_SFT + lambda * L_OR
    L_SFT = -a                                            NLL of the chosen response (Eq. 2)
    L_OR  = -log sigmoid(z)                               Eq. 7
    z     = log odds(y_w) - log odds(y_l)
          = (a - log(1 - e^a)) - (b - log(1 - e^b))       log odds(y) = log P - log(1 - P)

so the model is pushed to make the chosen response likely (SFT) and more
likely *relative to its odds* than the rejected one, with no reference model
to run or store. (TRL's ``ORPOTrainer`` calls lambda ``beta`` and averages
the NLL over all the chosen tokens of a batch; here L_SFT is the paper's
per-response average, then the batch mean.)

log(1 - e^x) is computed as ``log1mexp`` (Maechler 2012, "Accurately Computing
log(1 - exp(-|a|))"): ``log(-expm1(x))`` for x > -log 2, where e^x is close to
1 and 1 - e^x would cancel, and ``log1p(-exp(x))`` below, where e^x is small.
No epsilon, no clipping: at x = 0 (a response of probability 1) it is -inf,
the odds are infinite, and the loss says so.

Gradient, written by hand. With s = sigmoid(-z), d(-log sigmoid z)/dz = -s,
dz/da = 1 / (1 - e^a) and dz/db = -1 / (1 - e^b):

    d loss / da = -1 - lambda * s / (1 - e^a)
    d loss / db =      lambda * s / (1 - e^b)

Both quotients are evaluated in log space, s / (1 - e^a) = 1 / D with
log D = logaddexp(log1mexp(a), (a - b) + log1mexp(b)) (because (1 + e^z)(1 - e^a)
= (1 - e^a) + e^(a-b)(1 - e^b)), so nothing overflows and a = 0 gives the
finite limit instead of inf * 0. The batch loss is the mean over pairs, so
each gradient is divided by B.

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


def orpo_loss(chosen_logps, rejected_logps, lam=0.1):
    """Per-pair ORPO losses (Hong et al. 2024, Eq. 6), the gradient of their mean, and the parts.

    chosen_logps:   (B,) length-averaged log-prob a of each chosen response, <= 0.
    rejected_logps: (B,) length-averaged log-prob b of each rejected response, <= 0.
    lam: lambda >= 0, the weight of the odds-ratio term (TRL's ``beta``, 0.1 by default).

    Returns (losses (B,), grad_chosen (B,), grad_rejected (B,), parts):
      losses = -a + lam * (-log sigmoid(z)); the batch loss is ``losses.mean()``;
      grad_chosen, grad_rejected: d mean(losses) / d a and / d b;
      parts: {"nll_loss": -a, "log_odds_chosen": z, "log_odds_ratio": log sigmoid(z)},
      each (B,), named as TRL's ORPOTrainer logs their means.
    All arrays in the inputs' dtype.

    Raises ValueError naming the argument for a NaN or infinite input, a
    log-prob above 0, or shapes that differ; lam must be a finite number >= 0.
    """
    lam = check_float("lam", lam, 0.0)
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
    a, b = chosen_logps, rejected_logps
    l1a, l1b = log1mexp(a), log1mexp(b)  # log(1 - e^a), log(1 - e^b)
    z = (a - l1a) - (b - l1b)  # (B,) log odds ratio, Eq. 7's argument
    log_ratio = logsigmoid(z)  # (B,)
    losses = -a - lam * log_ratio
    # s / (1 - e^a) = exp(-log D) and s / (1 - e^b) = exp(l1a - l1b - log D); see the module docstring.
    log_d = xp.logaddexp(l1a, (a - b) + l1b)
    n = a.shape[0]
    grad_chosen = (-1.0 - lam * xp.exp(-log_d)) / n
    grad_rejected = (lam * xp.exp(l1a - l1b - log_d)) / n
    parts = {"nll_loss": -a, "log_odds_chosen": z, "log_odds_ratio": log_ratio}
    return losses, grad_chosen, grad_rejected, parts
