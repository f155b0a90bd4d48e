"""Chapter 4, exercise 2: the Llama 2 margin loss -log sigmoid(r_c - r_r - mu) and its gradient.

With z = r_c - r_r - mu:  dL/dr_c = -sigmoid(-z) / B,  dL/dr_r = +sigmoid(-z) / B,
so a margin mu > 0 lowers z and raises the pull sigmoid(-z) of every pair
(``m`` and ``d`` in the code below).
"""

import numpy as np
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays

from alignment_np.functional.stable import sigmoid
from alignment_np.gradcheck import check_gradients
from alignment_np.losses.bradley_terry import reward_model_loss

rewards = st.floats(-10.0, 10.0)
margins = st.floats(0.0, 5.0)


@given(
    pairs=st.integers(1, 6).flatmap(
        lambda B: st.tuples(
            arrays(np.float64, B, elements=rewards),
            arrays(np.float64, B, elements=rewards),
            arrays(np.float64, B, elements=margins),
        )
    )
)
def test_margin_gradient_matches_finite_differences(pairs):
    r_c, r_r, m = pairs
    _, g_c, g_r = reward_model_loss(r_c, r_r, margin=m)
    check_gradients(
        lambda c, r: reward_model_loss(c, r, margin=m)[0], [r_c, r_r], [g_c, g_r],
        names=["reward_chosen", "reward_rejected"],
    )
    # The formula derived by hand.
    d = r_c - r_r - m
    np.testing.assert_allclose(g_c, -sigmoid(-d) / r_c.shape[0], rtol=1e-12)


def test_margin_makes_a_correct_but_close_pair_pull_harder():
    r_c, r_r = np.array([1.0]), np.array([0.5])  # ranked correctly, by 0.5
    _, pull_plain, _ = reward_model_loss(r_c, r_r)
    _, pull_margin, _ = reward_model_loss(r_c, r_r, margin=2.0)  # asks for a gap of 2
    assert abs(pull_margin[0]) > abs(pull_plain[0])
    assert abs(pull_margin[0]) > 0.5  # d = -1.5 < 0: treated like a wrongly ranked pair
