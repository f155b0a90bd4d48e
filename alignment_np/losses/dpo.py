"""The DPO loss family: DPO (and conservative DPO), IPO, SLiC hinge, robust DPO, SimPO.

Every loss here is a function of one number per preference pair, the
difference of log-ratios between the policy and the frozen reference,

    h = (logpi(y_c|x) - logref(y_c|x)) - (logpi(y_r|x) - logref(y_r|x))
      = (pi_c - ref_c) - (pi_r - ref_r),

(the ``logits`` of the DPO reference implementation), and ``beta * (pi - ref)``
is the implicit reward of a response (Rafailov et al. 2023, Eq. 5). With the
label-flip rate ``eta = label_smoothing`` (written ``e`` in the code below), the
per-pair losses are

    sigmoid  -(1-eta) logsigmoid(beta h) - eta logsigmoid(-beta h)
             DPO, Rafailov et al. 2023, Eq. 7; eta > 0: conservative DPO (Mitchell 2023)
    ipo      (h - 1/(2 beta))^2
             IPO, Azar et al. 2023, Eq. 17 (their tau is beta)
    hinge    relu(1 - beta h)
             TRL's adaptation of SLiC-HF (Zhao et al. 2023, Sec. 2), whose hinge
             max(0, margin - log pi(y_c) + log pi(y_r)) has no reference model
    robust   ((1-eta)(-logsigmoid(beta h)) - eta(-logsigmoid(-beta h))) / (1 - 2 eta)
             rDPO, Chowdhury et al. 2024

and the batch loss is their mean. Each variant is written as a pair
``(losses, dlosses_dh)``; since dh/dpi_c = 1 and dh/dpi_r = -1, the gradient
of the mean loss is ``dlosses_dh / B`` for the chosen log-probs and its
negative for the rejected ones. The reference is frozen: it gets no gradient.

What each variant does as h grows (the tests check these):
* sigmoid with e = 0, robust, hinge: the loss never rises (hinge is flat, 0,
  once beta h >= 1: SLiC stops pushing a pair that is already separated);
* ipo: falls until h = 1/(2 beta), then rises: IPO regresses h to a target
  margin instead of pushing it to infinity, its remedy for overfitting;
* sigmoid with eta > 0 (cDPO): falls until h = log((1-eta)/eta) / beta, then
  rises; it treats a label as flipped with probability eta.

Derivatives (sigma = sigmoid; d/dx logsigmoid(x) = sigma(-x)):
    sigmoid  dl/dh = beta * (-(1-eta) sigma(-beta h) + eta sigma(beta h))
    ipo      dl/dh = 2 (h - 1/(2 beta))
    hinge    dl/dh = -beta where 1 - beta h > 0, else 0 (0 at the kink itself)
    robust   dl/dh = -beta * ((1-eta) sigma(-beta h) + eta sigma(beta h)) / (1 - 2 eta)

SimPO (Meng et al. 2024, Eq. 6) drops the reference and uses length-normalised
log-probs ``avg = logpi(y|x) / |y|``: ``-logsigmoid(beta (avg_c - avg_r) - mu)``
with the margin mu (the paper's gamma, the argument ``gamma``), which is the
sigmoid loss at ``h = (avg_c - avg_r) - mu / beta``.

Shapes: every log-prob array is (B,), one entry per preference pair.

Non-finite inputs: ``dpo_loss`` and ``simpo_loss`` refuse a NaN or an
infinite log-prob with a ValueError naming the argument and the pair (a
log-prob of -inf means a response the model cannot produce, where every
variant's loss is undefined or infinite). The variants as functions of h
(``sigmoid_loss`` ...) trust their inputs and propagate NaN: a NaN h gives
a NaN loss and a NaN gradient, never 0.
"""

from __future__ import annotations

import math
import numbers

from ..backend import get_array_module
from ..checks import check_finite_array, check_float_array
from ..functional.stable import logsigmoid, sigmoid

__all__ = [
    "LOSS_TYPES",
    "sigmoid_loss",
    "ipo_loss",
    "hinge_loss",
    "robust_loss",
    "dpo_loss",
    "simpo_loss",
    "check_dpo_hyperparameters",
]


# --------------------------------------------------------------------------
# The variants, as functions of h (B,): pure, inputs trusted
# --------------------------------------------------------------------------


def sigmoid_loss(h, beta, label_smoothing=0.0):
    """DPO (Rafailov et al. 2023, Eq. 7); with label_smoothing eta > 0, conservative DPO.

    h: (B,) log-ratio differences. Returns (losses (B,), dlosses_dh (B,)).
    """
    e = label_smoothing
    z = beta * h
    losses = -(1.0 - e) * logsigmoid(z) - e * logsigmoid(-z)
    # sigma(-z) is d(-logsigmoid(z))/dz up to sign; exp(logsigmoid) never overflows.
    dlosses_dh = beta * (-(1.0 - e) * sigmoid(-z) + e * sigmoid(z))
    return losses, dlosses_dh


def ipo_loss(h, beta, label_smoothing=0.0):
    """IPO (Azar et al. 2023, Eq. 17): squared distance of h from the target 1/(2 beta).

    h: (B,). Returns (losses (B,), dlosses_dh (B,)). label_smoothing is unused
    (``dpo_loss`` refuses a nonzero one). Azar et al. write h with whole-sequence
    log-probs; TRL feeds IPO length-averaged ones (``compute_log_probs(average=True)``),
    a convention of its implementation, not the paper's.
    """
    gap = h - 1.0 / (2.0 * beta)
    return gap * gap, 2.0 * gap


def hinge_loss(h, beta, label_smoothing=0.0):
    """The hinge relu(1 - beta h): TRL's adaptation of SLiC-HF (Zhao et al. 2023).

    SLiC-HF's calibration loss is max(0, margin - log pi(y_c) + log pi(y_r)) on
    the policy's own log-probs, without a reference; TRL applies the hinge to
    the reference-normalised h instead, with the margin 1 / beta.

    h: (B,). Returns (losses (B,), dlosses_dh (B,)); at the kink 1 - beta h = 0
    the subgradient 0 is used. label_smoothing is unused.
    A NaN h gives a NaN loss and gradient: ``maximum`` and ``heaviside``
    propagate it, where a comparison (NaN > 0 is False) would give 0.
    """
    xp = get_array_module(h)
    slack = 1.0 - beta * h
    losses = xp.maximum(slack, 0)
    dlosses_dh = -beta * xp.heaviside(slack, 0)  # 1 where slack > 0, 0 where <= 0, nan where nan
    return losses, dlosses_dh


def robust_loss(h, beta, label_smoothing=0.0):
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO"): unbiased under label flips.

    h: (B,). Returns (losses (B,), dlosses_dh (B,)). Needs 0 <= eta < 0.5
    (``label_smoothing``), the assumed rate at which preference labels were
    flipped (the paper's epsilon).
    """
    e = label_smoothing
    z = beta * h
    losses = ((1.0 - e) * -logsigmoid(z) - e * -logsigmoid(-z)) / (1.0 - 2.0 * e)
    dlosses_dh = -beta * ((1.0 - e) * sigmoid(-z) + e * sigmoid(z)) / (1.0 - 2.0 * e)
    return losses, dlosses_dh


LOSS_TYPES = {
    "sigmoid": sigmoid_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "robust": robust_loss,
}

# Variants in which label_smoothing means something.
_SMOOTHED = ("sigmoid", "robust")


# --------------------------------------------------------------------------
# Validation shared with the trainer
# --------------------------------------------------------------------------


def _check_positive_number(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{name} must be a positive number, got {value!r} ({type(value).__name__})"
        )
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def check_dpo_hyperparameters(beta, label_smoothing, loss_type):
    """Validate (beta, label_smoothing, loss_type); return them as (float, float, str).

    Raises ValueError for beta <= 0 or not a finite number, label_smoothing
    outside [0, 0.5), an unknown loss_type (listing the choices), or a nonzero
    label_smoothing with a variant that ignores it (ipo, hinge).
    """
    beta = _check_positive_number(beta, "beta")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise ValueError(
            f"label_smoothing must be a number in [0, 0.5), got {label_smoothing!r} "
            f"({type(label_smoothing).__name__})"
        )
    label_smoothing = float(label_smoothing)
    # 0.5 would make every label a coin flip (and divide by zero in robust DPO).
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing!r}")
    if not isinstance(loss_type, str) or loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {sorted(LOSS_TYPES)}, got {loss_type!r}")
    if label_smoothing > 0 and loss_type not in _SMOOTHED:
        raise ValueError(
            f"label_smoothing applies only to loss_type in {list(_SMOOTHED)}; got "
            f"label_smoothing={label_smoothing!r} with loss_type={loss_type!r}"
        )
    return beta, label_smoothing, loss_type


def _check_logps(arrays: dict):
    """The named (B,) float log-prob arrays, as arrays of one module; equal 1-D shapes."""
    xp = get_array_module(*arrays.values())
    out = {name: check_float_array(name, a, xp) for name, a in arrays.items()}
    shapes = {name: tuple(a.shape) for name, a in out.items()}
    listing = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
    if len(set(shapes.values())) != 1:
        raise ValueError(f"the log-prob arrays must have equal shapes (B,), got {listing}")
    shape = next(iter(shapes.values()))
    if len(shape) != 1:
        raise ValueError(f"the log-prob arrays must be 1-D, shape (B,), got {listing}")
    if shape[0] == 0:
        raise ValueError("the log-prob arrays are empty (B = 0): the mean loss is undefined")
    for name, a in out.items():
        check_finite_array(name, a)
    return tuple(out.values())


# --------------------------------------------------------------------------
# Public losses
# --------------------------------------------------------------------------


def dpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    beta=0.1,
    label_smoothing=0.0,
    loss_type="sigmoid",
):
    """Per-pair DPO-family losses, the gradient of their mean, and the implicit rewards.

    policy_chosen_logps:   (B,) log pi(y_c | x) under the policy being trained.
    policy_rejected_logps: (B,) log pi(y_r | x) under the policy.
    ref_chosen_logps:      (B,) log pi_ref(y_c | x) under the frozen reference.
    ref_rejected_logps:    (B,) log pi_ref(y_r | x) under the reference.
    beta: > 0, strength of the implicit KL leash to the reference (Eq. 7).
    label_smoothing: eta in [0, 0.5), assumed rate of flipped labels (sigmoid, robust).
    loss_type: one of "sigmoid", "ipo", "hinge", "robust".

    Returns
      losses (B,): per-pair losses; the batch loss is ``losses.mean()``;
      grad_policy_chosen (B,), grad_policy_rejected (B,): d mean(losses) / d logps;
      chosen_rewards (B,) = beta * (pi_c - ref_c); rejected_rewards (B,) = beta * (pi_r - ref_r).
    All in the inputs' dtype.
    """
    beta, label_smoothing, loss_type = check_dpo_hyperparameters(beta, label_smoothing, loss_type)
    pi_c, pi_r, ref_c, ref_r = _check_logps(
        {
            "policy_chosen_logps": policy_chosen_logps,
            "policy_rejected_logps": policy_rejected_logps,
            "ref_chosen_logps": ref_chosen_logps,
            "ref_rejected_logps": ref_rejected_logps,
        }
    )
    chosen_logratios = pi_c - ref_c  # (B,)
    rejected_logratios = pi_r - ref_r  # (B,)
    h = chosen_logratios - rejected_logratios  # (B,)
    losses, dlosses_dh = LOSS_TYPES[loss_type](h, beta, label_smoothing)
    B = h.shape[0]
    grad_policy_chosen = dlosses_dh / B  # dh/dpi_c = +1, and the mean divides by B
    grad_policy_rejected = -dlosses_dh / B  # dh/dpi_r = -1
    chosen_rewards = beta * chosen_logratios  # implicit reward, Eq. 5
    rejected_rewards = beta * rejected_logratios
    return losses, grad_policy_chosen, grad_policy_rejected, chosen_rewards, rejected_rewards


def simpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    beta=2.0,
    gamma=0.5,
    label_smoothing=0.0,
):
    """SimPO (Meng et al. 2024, Eq. 6): reference-free, length-normalised, with a margin.

    policy_chosen_logps:   (B,) *average* per-token log-prob of y_c
                           (``compute_log_probs(..., average=True)``).
    policy_rejected_logps: (B,) average per-token log-prob of y_r.
    beta: > 0, reward scale (the paper uses 2 to 2.5 and its rewards are
          beta * average log-prob, Eq. 4).
    gamma: >= 0 target reward margin (mu in the course's notation; gamma is
           the paper's name and TRL's ``simpo_gamma``).
    label_smoothing: eta in [0, 0.5), as in conservative DPO.

    Returns (losses (B,), grad_policy_chosen (B,), grad_policy_rejected (B,),
    chosen_rewards (B,), rejected_rewards (B,)), gradients of the mean loss.
    """
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not (
        math.isfinite(float(gamma)) and float(gamma) >= 0
    ):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    gamma = float(gamma)
    beta, label_smoothing, _ = check_dpo_hyperparameters(beta, label_smoothing, "sigmoid")
    avg_c, avg_r = _check_logps(
        {"policy_chosen_logps": policy_chosen_logps, "policy_rejected_logps": policy_rejected_logps}
    )
    # beta * (avg_c - avg_r) - gamma = beta * h with h = (avg_c - avg_r) - gamma / beta.
    h = (avg_c - avg_r) - gamma / beta
    losses, dlosses_dh = sigmoid_loss(h, beta, label_smoothing)
    B = h.shape[0]
    return losses, dlosses_dh / B, -dlosses_dh / B, beta * avg_c, beta * avg_r
