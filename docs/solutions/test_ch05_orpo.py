"""Chapter 5, exercise 4: ORPO's odds-ratio term (Hong et al. 2024, Eqs. 6-7), with its gradient.

On length-normalised log-probs l (the mean token log-prob, l < 0):
    odds(y) = P / (1 - P) with P = exp(l)
    log odds = l - log(1 - e^l) = l - log(-expm1(l))     (expm1: exact for l near 0)
    d log odds / dl = 1 + e^l / (1 - e^l) = 1 / (1 - e^l) = -1 / expm1(l)
The preference term is -log sigmoid(log odds(y_w) - log odds(y_l)); the full
ORPO loss adds the SFT term -l_w:  loss = -l_w + lam * (-log sigmoid(d)).
"""

import numpy as np
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays

from alignment_np.functional.stable import logsigmoid, sigmoid
from alignment_np.gradcheck import check_gradients


def log_odds(l):
    return l - np.log(-np.expm1(l))


def orpo_loss(avg_chosen, avg_rejected, lam=0.1):
    """Mean ORPO loss over B pairs and its gradients.

    avg_chosen, avg_rejected: (B,) mean token log-probs of y_w and y_l (each < 0).
    Returns (loss, grad_chosen (B,), grad_rejected (B,)), gradients of the mean.
    """
    B = avg_chosen.shape[0]
    d = log_odds(avg_chosen) - log_odds(avg_rejected)  # (B,)
    losses = -avg_chosen - lam * logsigmoid(d)
    pull = lam * sigmoid(-d)  # d/dd of -lam logsigmoid(d) is -lam sigmoid(-d)
    grad_chosen = (-1.0 - pull * (-1.0 / np.expm1(avg_chosen))) / B
    grad_rejected = (pull * (-1.0 / np.expm1(avg_rejected))) / B
    return losses.mean(), grad_chosen, grad_rejected


avg_logps = st.floats(-10.0, -0.01)  # away from l = 0, where the odds blow up


@given(
    st.integers(1, 6).flatmap(
        lambda B: st.tuples(arrays(np.float64, B, elements=avg_logps), arrays(np.float64, B, elements=avg_logps))
    ),
    st.floats(0.01, 2.0),
)
def test_orpo_gradient_matches_finite_differences(pairs, lam):
    chosen, rejected = pairs
    _, g_c, g_r = orpo_loss(chosen, rejected, lam)
    check_gradients(lambda c, r: orpo_loss(c, r, lam)[0], [chosen, rejected], [g_c, g_r],
                    names=["avg_chosen", "avg_rejected"])


def test_log_odds_is_stable_where_the_naive_formula_is_not():
    l = np.array([-1e-6, -1e-3, -1.0, -1e4], dtype=np.float32)
    stable = log_odds(l)
    assert stable.dtype == np.float32 and np.isfinite(stable).all()
    assert stable[-1] == np.float32(-1e4)  # odds ~ P when P is tiny
    # Near l = 0 the naive 1 - exp(l) loses every digit in float32.
    naive = l[0] - np.log(np.float32(1) - np.exp(l[0]))
    exact = -1e-6 - np.log(-np.expm1(-1e-6))  # float64 reference
    assert abs(stable[0] - exact) < 1e-5 * abs(exact) < abs(naive - exact)


def test_orpo_is_finite_at_float32_extremes():
    chosen = np.array([-1e-6, -1e4], dtype=np.float32)
    rejected = np.array([-1e4, -1e-6], dtype=np.float32)
    loss, g_c, g_r = orpo_loss(chosen, rejected)
    assert np.isfinite(loss) and np.isfinite(g_c).all() and np.isfinite(g_r).all()


def test_orpo_prefers_the_chosen_response():
    chosen, rejected = np.array([-1.0]), np.array([-1.0])
    loss_tie, _, _ = orpo_loss(chosen, rejected)
    loss_better, _, _ = orpo_loss(chosen, np.array([-3.0]))
    assert loss_better < loss_tie
