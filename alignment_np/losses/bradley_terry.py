"""The Bradley-Terry preference loss that trains a reward model.

Bradley & Terry (1952, "Rank Analysis of Incomplete Block Designs: I. The
Method of Paired Comparisons", Biometrika 39) model the chance that item i
beats item j as ``p_i / (p_i + p_j)``. Writing ``p = exp(r)`` turns it into a
logistic model of the reward difference:

    P(chosen > rejected) = sigmoid(r_c - r_r)

Maximising the likelihood of the observed preferences is minimising

    loss = -mean( log sigmoid(r_c - r_r) )                    Ouyang et al. 2022, Eq. 1

(InstructGPT; their 1/C(K,2) averages over the K-choose-2 pairs from one
ranking of K responses, G in the course's notation; here we average over the
B pairs in a batch). Llama 2 (Touvron et al. 2023, Eq. 2) subtracts a margin
mu >= 0 (their m) that is larger for pairs the raters called clearly better,
asking the model to separate those by more:

    loss = -mean( log sigmoid(r_c - r_r - mu) )

Gradient, with the logit z = r_c - r_r - mu and d/dz log sigmoid(z) = sigmoid(-z):

    dloss/dr_c = -sigmoid(-z) / B,    dloss/dr_r = +sigmoid(-z) / B

A pair already ranked correctly by a wide margin (z >> 0) gives sigmoid(-z)
~ 0: it stops pulling. A wrongly ranked pair pulls with weight up to 1/B.

Numerics: ``logsigmoid`` goes through ``logaddexp`` and ``sigmoid(-z)``
through ``exp(logsigmoid(-z))``, so in float32 a pair ranked the wrong way
round by 1e4 adds a finite 1e4 / B to the loss, and gradients stay in [0, 1/B].

Non-finite inputs: ``reward_model_loss`` and ``reward_accuracy`` refuse a
NaN or an infinite reward (or margin) with a ValueError naming the argument
and the pair. A comparison with NaN is False, so an accuracy computed on a
NaN reward would quietly count the pair as wrong, and a loss would average
a NaN away into a number that looks like training.
"""

from __future__ import annotations

import math
from numbers import Real

from ..backend import get_array_module
from ..checks import check_finite_array
from ..functional.stable import logsigmoid, sigmoid

__all__ = ["reward_model_loss", "reward_accuracy"]


def _check_rewards(reward_chosen, reward_rejected) -> int:
    """Validate the pair of reward arrays; return B, the number of pairs."""
    for name, r in (("reward_chosen", reward_chosen), ("reward_rejected", reward_rejected)):
        if not hasattr(r, "shape") or not hasattr(r, "ndim"):
            raise TypeError(f"{name}: expected an array of shape (B,) or (B, 1), got {type(r).__name__}")
        if getattr(r, "dtype", None) is None or r.dtype.kind not in "fiu":
            raise TypeError(f"{name}: expected a float array of rewards, got dtype {getattr(r, 'dtype', None)}")
        if not (r.ndim == 1 or (r.ndim == 2 and r.shape[1] == 1)):
            raise ValueError(f"{name}: expected shape (B,) or (B, 1), one reward per pair, got {tuple(r.shape)}")
    if tuple(reward_chosen.shape) != tuple(reward_rejected.shape):
        raise ValueError(
            f"reward_chosen and reward_rejected must have the same shape (one reward each per pair); "
            f"got {tuple(reward_chosen.shape)} and {tuple(reward_rejected.shape)}"
        )
    if get_array_module(reward_chosen) is not get_array_module(reward_rejected):
        raise TypeError("reward_chosen and reward_rejected must live on the same device (both NumPy or both CuPy)")
    B = reward_chosen.shape[0]
    if B == 0:
        raise ValueError("reward_chosen: expected at least one pair, got an empty batch (B = 0)")
    check_finite_array("reward_chosen", reward_chosen)
    check_finite_array("reward_rejected", reward_rejected)
    return B


def _check_margin(margin, shape):
    """None, a scalar, or one margin per pair (B,) / (B, 1); returned broadcastable to ``shape``."""
    if margin is None:
        return 0.0
    if isinstance(margin, Real) and not isinstance(margin, bool):
        if not math.isfinite(float(margin)):
            raise ValueError(f"margin: expected a finite number, got {margin!r}")
        return float(margin)
    if not hasattr(margin, "shape") or getattr(margin, "dtype", None) is None:
        raise TypeError(f"margin: expected None, a number or an array of shape {shape}, got {type(margin).__name__}")
    if margin.dtype.kind not in "fiu":
        raise TypeError(f"margin: expected a float array, got dtype {margin.dtype}")
    check_finite_array("margin", margin)
    if margin.ndim == 0:
        return margin
    B = shape[0]
    if tuple(margin.shape) not in ((B,), (B, 1)):
        raise ValueError(
            f"margin: expected a scalar or one margin per pair, shape ({B},) or ({B}, 1), got {tuple(margin.shape)}"
        )
    return margin.reshape(shape)


def reward_model_loss(reward_chosen, reward_rejected, margin=None):
    """Bradley-Terry loss of a batch of preference pairs, and its gradients.

    reward_chosen: (B,) or (B, 1), r(x, y_w) for each pair's chosen response.
    reward_rejected: same shape, r(x, y_l) for the rejected one.
    margin: optional, a scalar or (B,) / (B, 1) per-pair margins (Llama 2, Eq. 2).

    Returns (loss, grad_chosen, grad_rejected): loss is a Python float,
    ``-mean(logsigmoid(r_c - r_r - margin))``; the gradients are dloss/dr_c
    and dloss/dr_r with the inputs' shape. Their dtype follows the inputs
    (NumPy promotion: a float64 margin array makes float32 rewards' gradients float64).
    """
    B = _check_rewards(reward_chosen, reward_rejected)
    m = _check_margin(margin, tuple(reward_chosen.shape))
    d = reward_chosen - reward_rejected - m  # (B,) or (B, 1)
    loss = -float(logsigmoid(d).mean())
    # d/dd [-logsigmoid(d)] = -sigmoid(-d); the mean contributes 1/B.
    grad_chosen = sigmoid(-d) * (-1.0 / B)
    grad_rejected = -grad_chosen
    return loss, grad_chosen, grad_rejected


def reward_accuracy(reward_chosen, reward_rejected) -> float:
    """Fraction of pairs ranked correctly, r_c > r_r strictly (a tie counts as wrong).

    reward_chosen, reward_rejected: (B,) or (B, 1), the same shape.
    """
    _check_rewards(reward_chosen, reward_rejected)
    return float((reward_chosen > reward_rejected).mean())
