"""Synthetic preference data with a known answer, to train and test a reward model.

Real preference data hides the "true" reward inside human heads. Here we
write it down: a fixed random nonlinear function of a feature vector

    r*(x) = scale * v . tanh(U x / sqrt(D) + c) / s          x ~ N(0, I_D)

(U (K, D), c (K,), v (K,) drawn once from the seed; s normalises r* to unit
standard deviation over the feature distribution). Each pair draws two
responses a and b and a simulated rater prefers a with the Bradley-Terry
probability

    P(a preferred over b) = sigmoid(r*(a) - r*(b))            (Bradley & Terry 1952)

so the labels are noisy in exactly the way the loss assumes. No model can
beat the *Bayes-optimal* accuracy: how often the true reward agrees with the
label, ``mean(r*(chosen) > r*(rejected))``. A trained reward model's accuracy
should be compared with that ceiling, not with 100%; its expected value,
``mean(sigmoid(|r*(a) - r*(b)|))``, is returned too. ``reward_scale`` sets how
easy the task is: larger means fewer coin-flip labels and a higher ceiling.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import to_device
from ..checks import check_float, check_float_dtype, check_nonneg_int, check_positive_int

__all__ = ["SyntheticPreferences", "make_preference_features", "true_reward"]

# Size of the fixed reference sample used to normalise r* to unit standard
# deviation: it depends on the seed only, never on n_pairs, so the same seed
# gives the same reward function whatever the dataset size.
_NORMALISATION_SAMPLES = 8192


class SyntheticPreferences(NamedTuple):
    """Synthetic pairs; arrays live on the active backend, float32 by default.

    x_chosen: (N, D) features of the preferred response of each pair.
    x_rejected: (N, D) features of the other one.
    reward_chosen: (N,) true reward r*(x_chosen).
    reward_rejected: (N,) true reward r*(x_rejected).
    bayes_accuracy: fraction of pairs where r* agrees with the label; no
        model can do better on these pairs except by luck.
    expected_bayes_accuracy: mean(sigmoid(|r*_c - r*_r|)), the same ceiling
        in expectation over the labelling noise (less noisy for small N).
    teacher: dict of the NumPy arrays defining r* (U, c, v, scale) for
        ``true_reward``.
    """

    x_chosen: object
    x_rejected: object
    reward_chosen: object
    reward_rejected: object
    bayes_accuracy: float
    expected_bayes_accuracy: float
    teacher: dict


def true_reward(x, teacher: dict) -> np.ndarray:
    """r*(x) for features x (N, D) as NumPy float64 (N,); ``teacher`` from ``SyntheticPreferences``."""
    x = np.asarray(x, dtype=np.float64)
    U, c, v, scale = teacher["U"], teacher["c"], teacher["v"], teacher["scale"]
    return scale * (np.tanh(x @ U.T / np.sqrt(U.shape[1]) + c) @ v)


def _sigmoid(z):
    # exp(-logaddexp(0, -z)): never overflows (see functional/stable.py).
    return np.exp(-np.logaddexp(0.0, -z))


def make_preference_features(
    n_pairs: int,
    dim: int,
    seed: int = 0,
    *,
    hidden: int = 16,
    reward_scale: float = 3.0,
    dtype=np.float32,
) -> SyntheticPreferences:
    """Draw ``n_pairs`` labelled pairs of ``dim``-dimensional response features.

    n_pairs: N, the number of pairs (>= 1).
    dim: D, the feature width (>= 1).
    seed: int >= 0; the whole dataset (reward function, features, labels)
        is a deterministic function of it. The reward function depends on
        the seed (and D, K) only, not on n_pairs; to evaluate on held-out
        pairs, split one draw into a training and a test part.
    hidden: K, the number of tanh units of the true reward.
    reward_scale: standard deviation of r*; the reward *difference* of a
        pair then has standard deviation ``reward_scale * sqrt(2)``.
    dtype: of the returned features (float32 for training).

    Data are drawn with NumPy's generator (identical on every backend) and
    then placed on the active backend, like a data loader would.
    """
    n_pairs = check_positive_int("n_pairs", n_pairs)
    dim = check_positive_int("dim", dim)
    hidden = check_positive_int("hidden", hidden)
    seed = check_nonneg_int("seed", seed)
    reward_scale = check_float("reward_scale", reward_scale, 0.0, low_open=True)
    dtype = check_float_dtype("dtype", dtype)

    teacher_rng = np.random.default_rng([seed, 0])  # the reward function
    data_rng = np.random.default_rng([seed, 1])  # features and labels
    U = teacher_rng.standard_normal((hidden, dim))
    c = 0.5 * teacher_rng.standard_normal(hidden)
    v = teacher_rng.standard_normal(hidden)
    unit = {"U": U, "c": c, "v": v, "scale": 1.0}
    reference = teacher_rng.standard_normal((_NORMALISATION_SAMPLES, dim))
    teacher = {**unit, "scale": float(reward_scale) / float(np.std(true_reward(reference, unit)))}

    a = data_rng.standard_normal((n_pairs, dim))
    b = data_rng.standard_normal((n_pairs, dim))
    r_a, r_b = true_reward(a, teacher), true_reward(b, teacher)
    # The simulated rater: a wins with probability sigmoid(r*(a) - r*(b)).
    a_wins = data_rng.random(n_pairs) < _sigmoid(r_a - r_b)
    x_chosen = np.where(a_wins[:, None], a, b)
    x_rejected = np.where(a_wins[:, None], b, a)
    reward_chosen = np.where(a_wins, r_a, r_b)
    reward_rejected = np.where(a_wins, r_b, r_a)

    return SyntheticPreferences(
        x_chosen=to_device(x_chosen.astype(dtype)),
        x_rejected=to_device(x_rejected.astype(dtype)),
        reward_chosen=to_device(reward_chosen.astype(dtype)),
        reward_rejected=to_device(reward_rejected.astype(dtype)),
        bayes_accuracy=float(np.mean(reward_chosen > reward_rejected)),
        expected_bayes_accuracy=float(np.mean(_sigmoid(np.abs(r_a - r_b)))),
        teacher=teacher,
    )
