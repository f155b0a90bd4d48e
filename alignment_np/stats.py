"""Numbers with error bars: the few statistics an evaluation needs.

A claim such as "DPO raised the mean sentiment score from 0.21 to 0.35" means
nothing until we know how much the two numbers would move if we drew other
prompts and other samples. Each function here returns the estimate together
with its standard error (SE), the standard deviation of the estimate itself:

    mean_se(x)               mean of x,  SE = s / sqrt(n),  s^2 = sum (x_i - mean)^2 / (n - 1)
    paired_difference(a, b)  mean of d = a - b, SE of that mean (one pair per prompt)
    win_rate(a, b)           fraction of pairs with a_i > b_i, ties counting 1/2, and its SE
    spearman(x, y)           Spearman's rank correlation, ties given their average rank

Why paired: the policy and the reference answer the SAME prompts, and some
prompts are easier to please than others. Differencing within a prompt
removes that shared part, so the SE of the difference is usually much smaller
than sqrt(SE_a^2 + SE_b^2) of two independent means. The win rate is the mean
of the per-pair outcomes w_i in {0, 1/2, 1}, so its SE is that of a mean too.

An improvement is claimed (DESIGN.md, "Evaluation") only when it exceeds two
standard errors: for a normal estimate that happens by chance about 2.3% of
the time (one-sided).

Rules: inputs are 1-D sequences of real numbers (lists, NumPy or CuPy arrays),
computed in float64 on the host; a NaN or infinity is refused with a
ValueError naming the argument and its index (a NaN score must never come out
as a finite mean). Where a quantity is undefined (the SE of a single value,
the correlation of a constant) the result is ``nan``, said in the docstring,
never a made-up 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .backend import to_numpy
from .checks import check_finite_array

__all__ = ["Estimate", "mean_se", "paired_difference", "win_rate", "rankdata", "spearman"]


class Estimate(NamedTuple):
    """An estimate with its standard error.

    mean: the estimate. se: its standard error (nan when n < 2). n: the number
    of values (or pairs) it was computed from.
    """

    mean: float
    se: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {self.se:.2g} (n={self.n})"

    def as_dict(self, name: str) -> dict:
        """``{name: mean, name + "_se": se}``: flat, JSON-ready, for metrics files and reports.

        An undefined SE (nan, from a single value) becomes None: JSON has no NaN.
        """
        return {name: self.mean, f"{name}_se": None if math.isnan(self.se) else self.se}


def _vector(name: str, x) -> np.ndarray:
    """``x`` as a finite 1-D float64 NumPy array with at least one entry."""
    if isinstance(x, (str, bytes, dict)):
        raise TypeError(f"{name}: expected a 1-D sequence of numbers, got {type(x).__name__}")
    try:
        arr = np.asarray(to_numpy(x) if hasattr(x, "shape") else x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name}: expected a 1-D sequence of numbers ({err})") from None
    if arr.dtype.kind not in "iufb":
        raise TypeError(f"{name}: expected numbers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: expected at least one value, got none")
    arr = arr.astype(np.float64)
    check_finite_array(name, arr)
    return arr


def _mean_se(x: np.ndarray) -> tuple[float, float]:
    n = x.size
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan  # one value says nothing about its own spread
    # ddof=1: the unbiased variance; the SE of the mean is s / sqrt(n).
    return mean, float(x.std(ddof=1) / math.sqrt(n))


def mean_se(x) -> Estimate:
    """The mean of ``x`` (N,) with its standard error s / sqrt(N) (nan for N = 1)."""
    x = _vector("x", x)
    return Estimate(*_mean_se(x), x.size)


def _pair(a, b, names=("a", "b")) -> tuple[np.ndarray, np.ndarray]:
    a, b = _vector(names[0], a), _vector(names[1], b)
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]}, {names[1]}: expected one value each per pair (equal lengths), got {a.size} and {b.size}"
        )
    return a, b


def paired_difference(a, b) -> Estimate:
    """The mean of ``a - b`` over N pairs (N,) and its standard error (nan for N = 1).

    a, b: paired values, e.g. the policy's and the reference's score on the
    same prompts. The SE is that of the per-pair differences, so what the
    pairs share cancels.
    """
    a, b = _pair(a, b)
    d = a - b
    return Estimate(*_mean_se(d), d.size)


def win_rate(a, b) -> Estimate:
    """How often ``a`` beats ``b``, pair by pair: mean of w_i = 1 if a_i > b_i, 1/2 if equal, else 0.

    a, b: (N,) paired scores (e.g. the policy's and the reference's rater
    score for the same prompt). Returns the win rate and its SE, the SE of
    the mean of the w_i (nan for N = 1). 0.5 is "no better, no worse".
    """
    a, b = _pair(a, b)
    w = (a > b) + 0.5 * (a == b)  # (N,) float64 in {0, 0.5, 1}
    return Estimate(*_mean_se(w), w.size)


def rankdata(x) -> np.ndarray:
    """Ranks 1..N of ``x`` (N,), ties given the average of the ranks they span (float64).

    [10, 20, 20, 5] -> [2, 3.5, 3.5, 1]: the two 20s share ranks 3 and 4.
    """
    x = _vector("x", x)
    n = x.size
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # A new tie group starts wherever the sorted value changes.
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])  # (G,) first position of each group
    ends = np.r_[starts[1:], n]  # (G,) one past the last position
    average = (starts + 1 + ends) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation of the paired values ``x``, ``y`` (N,) each.

    The Pearson correlation of their ranks (``rankdata``: ties get average
    ranks, as in scipy.stats.spearmanr). In [-1, 1]; 1 means y rises whenever
    x does. nan when it is undefined: N < 2, or either side constant.
    """
    x, y = _pair(x, y, ("x", "y"))
    if x.size < 2:
        return math.nan
    rx, ry = rankdata(x), rankdata(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    if denom == 0.0:
        return math.nan  # a constant has no order to agree with
    return float(np.clip(float(rx @ ry) / denom, -1.0, 1.0))  # rounding may step past +-1
