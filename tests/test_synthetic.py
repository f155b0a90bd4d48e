"""Synthetic preference features: determinism, the hidden reward, Bradley-Terry labels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignment_np.backend import get_array_module, to_numpy
from alignment_np.data.synthetic import make_preference_features, true_reward


def sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -z))


def test_shapes_dtypes_and_device(xp):
    data = make_preference_features(50, 6, seed=1)
    for x in (data.x_chosen, data.x_rejected):
        assert x.shape == (50, 6) and x.dtype == np.float32 and get_array_module(x) is xp
    for r in (data.reward_chosen, data.reward_rejected):
        assert r.shape == (50,) and r.dtype == np.float32 and get_array_module(r) is xp
    assert isinstance(data.bayes_accuracy, float) and isinstance(data.expected_bayes_accuracy, float)
    assert make_preference_features(5, 2, dtype=np.float64).x_chosen.dtype == np.float64


def test_deterministic_given_seed():
    a, b, c = (make_preference_features(40, 5, seed=s) for s in (3, 3, 4))
    for field in ("x_chosen", "x_rejected", "reward_chosen", "reward_rejected"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert not np.array_equal(getattr(a, field), getattr(c, field))
    assert a.bayes_accuracy == b.bayes_accuracy


def test_reward_function_depends_on_the_seed_not_the_size():
    small, large = make_preference_features(10, 4, seed=2), make_preference_features(500, 4, seed=2)
    for key in ("U", "c", "v", "scale"):
        np.testing.assert_array_equal(small.teacher[key], large.teacher[key])


def test_returned_rewards_are_the_true_reward_of_the_features():
    data = make_preference_features(200, 5, seed=0)
    for x, r in ((data.x_chosen, data.reward_chosen), (data.x_rejected, data.reward_rejected)):
        np.testing.assert_allclose(true_reward(to_numpy(x), data.teacher), to_numpy(r), rtol=1e-5, atol=1e-5)


def test_true_reward_is_nonlinear():
    # r*(a + b) != r*(a) + r*(b) - r*(0): no linear model can represent it exactly.
    teacher = make_preference_features(1, 4, seed=0).teacher
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 100, 4))
    zero = np.zeros((100, 4))
    gap = true_reward(a + b, teacher) - true_reward(a, teacher) - true_reward(b, teacher) + true_reward(zero, teacher)
    assert np.abs(gap).max() > 0.1 * teacher["scale"]


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_true_reward_has_the_requested_standard_deviation(scale):
    n = 20000
    data = make_preference_features(n // 2, 6, seed=5, reward_scale=scale)
    r = np.concatenate([to_numpy(data.reward_chosen), to_numpy(data.reward_rejected)]).astype(np.float64)
    # The features of all pairs together are an i.i.d. N(0, I) sample (labels only
    # reorder them). The std estimate here and the normalising one in the module
    # (8192 draws) each have relative standard error about 1/sqrt(2 n).
    se = math.sqrt(1 / (2 * n) + 1 / (2 * 8192))
    assert abs(r.std() / scale - 1) < 5 * se


def test_labels_follow_the_bradley_terry_probability():
    # Among pairs whose true rewards differ by about |delta|, the better response
    # must be chosen with probability sigmoid(|delta|): check within bins of |delta|.
    data = make_preference_features(40000, 4, seed=0)
    delta = to_numpy(data.reward_chosen).astype(np.float64) - to_numpy(data.reward_rejected)
    size = np.abs(delta)
    edges = np.quantile(size, [0.0, 0.25, 0.5, 0.75, 1.0])
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (size >= lo) & (size <= hi)
        n = int(in_bin.sum())
        observed = float(np.mean(delta[in_bin] > 0))
        expected = float(np.mean(sigmoid(size[in_bin])))
        # The labels are independent Bernoulli draws: the variance of their mean is
        # mean(p (1 - p)) / n.
        se = math.sqrt(float(np.mean(sigmoid(size[in_bin]) * sigmoid(-size[in_bin]))) / n)
        assert abs(observed - expected) < 5 * se, (lo, hi, observed, expected)


def test_bayes_accuracy_is_the_agreement_of_true_reward_and_label():
    data = make_preference_features(5000, 3, seed=1)
    agree = to_numpy(data.reward_chosen) > to_numpy(data.reward_rejected)
    assert data.bayes_accuracy == pytest.approx(float(agree.mean()))
    # And it is a noisy estimate of its own expectation.
    se = math.sqrt(data.expected_bayes_accuracy * (1 - data.expected_bayes_accuracy) / 5000)
    assert abs(data.bayes_accuracy - data.expected_bayes_accuracy) < 5 * se
    assert 0.5 < data.expected_bayes_accuracy < 1.0


def test_larger_reward_scale_makes_labels_cleaner():
    ceilings = [make_preference_features(2000, 4, seed=0, reward_scale=s).expected_bayes_accuracy for s in (0.5, 2, 8)]
    assert ceilings == sorted(ceilings) and ceilings[0] < ceilings[-1]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_pairs": 0, "dim": 3}, "n_pairs: expected a positive int, got 0"),
        ({"n_pairs": 5, "dim": 2.0}, "dim: expected a positive int, got 2.0"),
        ({"n_pairs": 5, "dim": 3, "hidden": 0}, "hidden: expected a positive int, got 0"),
        ({"n_pairs": 5, "dim": 3, "seed": -1}, "seed: expected an int >= 0, got -1"),
        ({"n_pairs": 5, "dim": 3, "seed": None}, "seed: expected an int >= 0, got None"),
        ({"n_pairs": 5, "dim": 3, "reward_scale": 0.0}, "reward_scale: expected a finite number > 0, got 0.0"),
        ({"n_pairs": 5, "dim": 3, "reward_scale": float("inf")}, "reward_scale: .* got inf"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_preference_features(**kwargs)
