"""Chapter 3, exercise 3: Bradley-Terry probabilities depend only on reward differences."""

import numpy as np

from alignment_np.functional.stable import sigmoid


def bt_probability(reward_a, reward_b):
    """P(a preferred over b) = sigmoid(r_a - r_b), per pair."""
    return sigmoid(reward_a - reward_b)


def test_prompt_only_shift_changes_nothing():
    rng = np.random.default_rng(0)
    n_prompts, per_prompt = 5, 4
    prompt_of = np.repeat(np.arange(n_prompts), per_prompt)  # which prompt each pair answers
    r_a, r_b = rng.normal(size=(2, n_prompts * per_prompt))
    f = rng.normal(scale=10.0, size=n_prompts)  # any function of the prompt alone

    before = bt_probability(r_a, r_b)
    after = bt_probability(r_a + f[prompt_of], r_b + f[prompt_of])
    np.testing.assert_allclose(after, before, rtol=1e-12, atol=1e-15)


def test_response_dependent_shift_changes_probabilities():
    rng = np.random.default_rng(1)
    r_a, r_b = rng.normal(size=(2, 20))
    g_a, g_b = rng.normal(size=(2, 20))  # depends on the response: different for a and b
    before = bt_probability(r_a, r_b)
    after = bt_probability(r_a + g_a, r_b + g_b)
    assert np.max(np.abs(after - before)) > 0.05
