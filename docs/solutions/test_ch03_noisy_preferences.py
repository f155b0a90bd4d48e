"""Chapter 3, exercise 1: flipping a fraction eps of labels lowers the ceiling to (1-eps) a + eps (1-a)."""

import numpy as np
import pytest

from alignment_np.data.synthetic import make_preference_features


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.2, 0.3])
def test_flipped_labels_lower_the_agreement_as_predicted(eps):
    N = 20000
    data = make_preference_features(n_pairs=N, dim=6, seed=1)
    clean_agree = data.reward_chosen > data.reward_rejected  # (N,) true reward agrees with label
    a = clean_agree.mean()

    flip = np.random.default_rng(2).random(N) < eps
    # A flipped pair swaps chosen and rejected: agreement turns into disagreement.
    observed_agree = np.where(flip, ~clean_agree, clean_agree)

    predicted = (1 - eps) * a + eps * (1 - a)
    # The flips are Bernoulli(eps): the sampling error of the mean is about sqrt(eps (1-eps) / N).
    tolerance = 4 * np.sqrt(max(eps * (1 - eps), 1e-12) / N) * abs(2 * a - 1) + 1e-12
    assert abs(observed_agree.mean() - predicted) <= tolerance
    if eps > 0:
        assert observed_agree.mean() < a  # noise can only lower the ceiling
