"""The ORPO loss and its hand-written gradient (alignment_np/losses/orpo.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.gradcheck import check_gradients
from alignment_np.losses.orpo import log1mexp, orpo_loss


def avg_logps(min_size=1, max_size=8):
    """Length-averaged log-probs, built away from 0 (where log odds diverge): -(magnitude), magnitude >= 1e-3."""
    return st.lists(st.floats(1e-3, 6.0), min_size=min_size, max_size=max_size).map(lambda m: -np.array(m))


def slow_orpo(a, b, alpha):
    """One pair at a time, straight from Hong et al. 2024, Eq. 2, 6, 7 (math, float64)."""
    out = []
    for x, y in zip(a, b):
        log_odds = lambda p: p - math.log(1.0 - math.exp(p))  # log(P / (1 - P)), P = e^p
        z = log_odds(x) - log_odds(y)
        out.append(-x - alpha * -math.log1p(math.exp(-z)))  # L_SFT + alpha * L_OR, -log sigmoid z = log(1 + e^-z)
    return np.array(out)


# ---------------------------------------------------------------- values


@given(st.integers(1, 6).flatmap(lambda n: st.tuples(avg_logps(n, n), avg_logps(n, n))), st.floats(0.0, 2.0))
def test_loss_matches_the_pair_by_pair_formula(ab, alpha):
    a, b = ab
    losses, _, _, parts = orpo_loss(a, b, alpha)
    np.testing.assert_allclose(losses, slow_orpo(a, b, alpha), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(parts["nll_loss"], -a)
    np.testing.assert_allclose(parts["log_odds_ratio"], -np.log1p(np.exp(-parts["log_odds_chosen"])), rtol=1e-10)


def test_log1mexp_is_accurate_where_the_naive_formula_cancels():
    x = np.array([-1e-10, -1e-5, -0.3, -math.log(2.0), -1.0, -30.0])
    # near 0: 1 - e^x = -x (1 + x/2 + x^2/6 + ...), so log(1 - e^x) = log(-x) + log1p(x/2 + x^2/6)
    series = np.log(-x[:2]) + np.log1p(x[:2] / 2 + x[:2] ** 2 / 6)
    np.testing.assert_allclose(log1mexp(x[:2]), series, rtol=1e-14)
    naive = np.log(1.0 - np.exp(x[:2]))
    assert abs(naive[0] - series[0]) / abs(series[0]) > 1e-10  # the cancellation log1mexp avoids
    np.testing.assert_allclose(log1mexp(x[2:5]), [math.log(1 - math.exp(v)) for v in x[2:5]], rtol=1e-14)
    # far from 0: log(1 - e^x) = -e^x - e^(2x)/2 - ..., where 1 - e^x would round
    assert log1mexp(x[5:])[0] == pytest.approx(-math.exp(-30.0) - math.exp(-60.0) / 2, rel=1e-14)


def test_log1mexp_at_the_extremes_in_float32():
    x = np.array([0.0, -1e-30, -1e-7, -1e4, -np.inf], dtype=np.float32)
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        out = log1mexp(x)
    assert out.dtype == np.float32
    assert out[0] == -np.inf  # P = 1: infinite odds, said so
    assert np.isfinite(out[1:4]).all() and out[4] == 0.0
    assert out[1] == pytest.approx(math.log(1e-30), rel=1e-6)


# ---------------------------------------------------------------- gradient


@given(st.integers(1, 6).flatmap(lambda n: st.tuples(avg_logps(n, n), avg_logps(n, n))), st.floats(0.0, 2.0))
def test_gradient_matches_finite_differences(ab, alpha):
    a, b = ab
    _, grad_a, grad_b, _ = orpo_loss(a, b, alpha)
    mean_loss = lambda x, y: orpo_loss(x, y, alpha)[0].mean()
    # the finite-difference step must not cross 0: keep it well inside the negative side
    check_gradients(mean_loss, [a, b], [grad_a, grad_b], h=1e-7, tol=1e-6, names=["chosen", "rejected"])


@pytest.mark.torch
def test_loss_and_gradient_match_torch_autograd():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    a = -rng.uniform(1e-3, 5.0, 16)
    b = -rng.uniform(1e-3, 5.0, 16)
    alpha = 0.3
    losses, grad_a, grad_b, parts = orpo_loss(a, b, alpha)
    ta, tb = (torch.tensor(x, requires_grad=True) for x in (a, b))
    # TRL's ORPOTrainer.odds_ratio_loss, written with log1p(-exp(.)), plus the per-response NLL
    log_odds = (ta - tb) - (torch.log1p(-torch.exp(ta)) - torch.log1p(-torch.exp(tb)))
    t_losses = -ta - alpha * torch.nn.functional.logsigmoid(log_odds)
    t_losses.mean().backward()
    np.testing.assert_allclose(losses, t_losses.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(parts["log_odds_chosen"], log_odds.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(grad_a, ta.grad.numpy(), rtol=1e-9)
    np.testing.assert_allclose(grad_b, tb.grad.numpy(), rtol=1e-9)


# ---------------------------------------------------------------- extremes


def test_extreme_inputs_give_finite_limits_not_nan():
    # a = 0 (the chosen response has probability 1): infinite odds, zero odds-ratio loss,
    # and the gradient's finite limit -1 - alpha * e^(b - a) / (1 - e^b), not inf * 0.
    a = np.array([0.0, -1e-3, -0.1, -80.0], dtype=np.float32)
    b = np.array([-0.5, -1e4, -90.0, -1e-3], dtype=np.float32)
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        losses, grad_a, grad_b, parts = orpo_loss(a, b, 0.1)
    for x in (losses, grad_a, grad_b):
        assert x.dtype == np.float32 and np.isfinite(x).all()
    assert parts["log_odds_chosen"][0] == np.inf and losses[0] == 0.0
    assert grad_a[0] == pytest.approx((-1 - 0.1 * math.exp(-0.5) / (1 - math.exp(-0.5))) / 4, rel=1e-6)
    assert grad_b[0] == 0.0
    # the rejected response far less likely than the chosen: the odds term is satisfied
    assert grad_a[1] == pytest.approx(-1 / 4, rel=1e-6) and losses[1] == pytest.approx(1e-3, rel=1e-3)
    # a lost pair pulls hard, as it should
    assert losses[3] > 7.0


def test_a_rejected_response_of_probability_one_gives_an_infinite_loss_not_a_finite_one():
    losses, _, grad_b, _ = orpo_loss(np.array([-0.5]), np.array([0.0]), 0.1)
    assert losses[0] == np.inf and grad_b[0] == np.inf


def test_dtype_follows_the_inputs():
    a, b = -np.full(3, 0.4, np.float32), -np.full(3, 1.2, np.float32)
    for x in orpo_loss(a, b, 0.1)[:3]:
        assert x.dtype == np.float32


@pytest.mark.parametrize(
    "a, b, alpha, match",
    [
        (np.array([-0.1, np.nan]), np.array([-0.1, -0.2]), 0.1, r"chosen_logps: expected finite values, got nan at index \(1,\)"),
        (np.array([-0.1]), np.array([0.5]), 0.1, "rejected_logps: expected log-probabilities <= 0, got a maximum of 0.5"),
        (np.array([-0.1]), np.array([-0.1, -0.2]), 0.1, r"expected equal shapes \(B,\), got \(1,\) and \(2,\)"),
        (np.array([[-0.1]]), np.array([[-0.1]]), 0.1, r"chosen_logps: expected a non-empty \(B,\) float array"),
        (np.array([-1, -2]), np.array([-1.0, -2.0]), 0.1, r"chosen_logps: expected a non-empty \(B,\) float array"),
        (np.array([-0.1]), np.array([-0.2]), -1.0, "alpha: expected a finite number >= 0, got -1.0"),
    ],
)
def test_bad_inputs_name_the_argument(a, b, alpha, match):
    with pytest.raises(ValueError, match=match):
        orpo_loss(a, b, alpha)
