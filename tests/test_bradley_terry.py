"""The Bradley-Terry reward-model loss: gradients, the math it promises, numerics, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from alignment_np.backend import get_array_module, to_numpy
from alignment_np.gradcheck import check_gradients
from alignment_np.losses.bradley_terry import reward_accuracy, reward_model_loss

finite = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False)


@st.composite
def reward_pairs(draw, with_margin=None):
    """(reward_chosen, reward_rejected, margin) in float64, shaped (B,) or (B, 1).

    with_margin: None draws any kind; False gives no margin; True a scalar or per-pair one.
    """
    B = draw(st.integers(1, 6))
    shape = draw(st.sampled_from([(B,), (B, 1)]))
    r_c = draw(hnp.arrays(np.float64, shape, elements=finite))
    r_r = draw(hnp.arrays(np.float64, shape, elements=finite))
    kinds = {None: ["none", "scalar", "flat", "same"], False: ["none"], True: ["scalar", "flat", "same"]}
    kind = draw(st.sampled_from(kinds[with_margin]))
    margin_el = st.floats(0.0, 3.0, allow_nan=False)
    margin = {
        "none": None,
        "scalar": draw(margin_el) if kind == "scalar" else None,
        "flat": draw(hnp.arrays(np.float64, (B,), elements=margin_el)) if kind == "flat" else None,
        "same": draw(hnp.arrays(np.float64, shape, elements=margin_el)) if kind == "same" else None,
    }[kind]
    return r_c, r_r, margin


def slow_loss(r_c, r_r, margin=None):
    """One pair at a time with the math module: -log sigmoid(d) = max(-d, 0) + log1p(exp(-|d|))."""
    r_c, r_r = np.ravel(r_c), np.ravel(r_r)
    B = r_c.size
    m = np.zeros(B) if margin is None else np.broadcast_to(np.ravel(margin), (B,))
    loss, grad_c = 0.0, []
    for i in range(B):
        d = float(r_c[i]) - float(r_r[i]) - float(m[i])
        loss += max(-d, 0.0) + math.log1p(math.exp(-abs(d)))
        # d/dd of -log sigmoid(d) is -(1 - sigmoid(d)) = -1 / (1 + exp(d))
        grad_c.append(-(math.exp(-d) / (1.0 + math.exp(-d)) if d >= 0 else 1.0 / (1.0 + math.exp(d))) / B)
    return loss / B, np.array(grad_c)


# -- gradients ---------------------------------------------------------------------


@given(reward_pairs(with_margin=False))
def test_gradients_match_finite_differences_without_margin(pairs):
    r_c, r_r, _ = pairs
    _, g_c, g_r = reward_model_loss(r_c, r_r)
    check_gradients(
        lambda a, b: reward_model_loss(a, b)[0], [r_c, r_r], [g_c, g_r], tol=1e-7, names=["chosen", "rejected"]
    )


@given(reward_pairs(with_margin=True))
def test_gradients_match_finite_differences_with_margin(pairs):
    r_c, r_r, margin = pairs
    _, g_c, g_r = reward_model_loss(r_c, r_r, margin=margin)
    check_gradients(
        lambda a, b: reward_model_loss(a, b, margin=margin)[0],
        [r_c, r_r],
        [g_c, g_r],
        tol=1e-7,
        names=["chosen", "rejected"],
    )


@given(reward_pairs())
def test_matches_slow_loop(pairs):
    r_c, r_r, margin = pairs
    loss, g_c, g_r = reward_model_loss(r_c, r_r, margin=margin)
    loss_slow, g_slow = slow_loss(r_c, r_r, margin)
    assert loss == pytest.approx(loss_slow, rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(g_c.ravel(), g_slow, rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(g_r.ravel(), -g_slow, rtol=1e-12, atol=1e-18)


# -- what the math promises ----------------------------------------------------------


@given(reward_pairs())
def test_shapes_signs_and_bounds(pairs):
    r_c, r_r, margin = pairs
    loss, g_c, g_r = reward_model_loss(r_c, r_r, margin=margin)
    B = r_c.shape[0]
    assert isinstance(loss, float) and loss >= 0.0
    assert g_c.shape == r_c.shape and g_r.shape == r_r.shape
    # Raising the chosen reward never hurts; each pair pulls with weight at most 1/B.
    assert np.all(g_c <= 0) and np.all(g_c >= -1.0 / B)
    np.testing.assert_array_equal(g_r, -g_c)


@given(reward_pairs(with_margin=False))
def test_swapping_chosen_and_rejected(pairs):
    # softplus(-d) - softplus(d) = -d: the two labellings differ by the mean difference.
    r_c, r_r, _ = pairs
    forward, _, _ = reward_model_loss(r_c, r_r)
    swapped, _, _ = reward_model_loss(r_r, r_c)
    assert forward - swapped == pytest.approx(-float(np.mean(r_c - r_r)), rel=1e-9, abs=1e-9)


@given(reward_pairs(with_margin=True), st.floats(-100.0, 100.0))
def test_margin_is_a_shift_and_rewards_are_translation_invariant(pairs, shift):
    r_c, r_r, margin = pairs
    loss, _, _ = reward_model_loss(r_c, r_r, margin=margin)
    m = np.asarray(margin).reshape(r_c.shape) if np.ndim(margin) else margin
    # The Llama 2 margin is the same as lowering each chosen reward by it ...
    assert loss == pytest.approx(reward_model_loss(r_c - m, r_r)[0], rel=1e-12)
    # ... and only differences of rewards matter (Bradley-Terry identifies r up to a constant).
    assert loss == pytest.approx(reward_model_loss(r_c + shift, r_r + shift, margin=margin)[0], rel=1e-9, abs=1e-12)


def test_single_pair_loss_is_minus_log_bradley_terry_probability():
    # Bradley & Terry 1952: P(chosen beats rejected) = p_c / (p_c + p_r) with p = exp(r).
    r_c, r_r = np.array([1.3]), np.array([0.4])
    loss, _, _ = reward_model_loss(r_c, r_r)
    p_c, p_r = math.exp(1.3), math.exp(0.4)
    assert loss == pytest.approx(-math.log(p_c / (p_c + p_r)), rel=1e-12)


def test_equal_rewards_give_log_two():
    loss, g_c, _ = reward_model_loss(np.zeros(4), np.zeros(4))
    assert loss == pytest.approx(math.log(2.0), rel=1e-15)
    np.testing.assert_allclose(g_c, -0.5 / 4)


def test_dtype_and_device_follow_inputs(xp):
    r_c = xp.asarray([0.5, -1.0, 2.0], dtype=xp.float32)
    r_r = xp.asarray([0.0, 1.0, 2.0], dtype=xp.float32)
    loss, g_c, g_r = reward_model_loss(r_c, r_r, margin=0.25)
    assert isinstance(loss, float)
    for g in (g_c, g_r):
        assert g.dtype == xp.float32 and get_array_module(g) is xp
    loss64, _, _ = reward_model_loss(r_c.astype(xp.float64), r_r.astype(xp.float64), margin=0.25)
    assert loss == pytest.approx(loss64, rel=1e-6)
    assert reward_accuracy(r_c, r_r) == pytest.approx(1 / 3)


def test_does_not_mutate_or_alias_inputs(rng):
    r_c, r_r, margin = rng.standard_normal((3, 5, 1))
    copies = [a.copy() for a in (r_c, r_r, margin)]
    _, g_c, g_r = reward_model_loss(r_c, r_r, margin=margin)
    for a, c in zip((r_c, r_r, margin), copies):
        np.testing.assert_array_equal(a, c)
        assert not np.shares_memory(g_c, a) and not np.shares_memory(g_r, a)
    assert not np.shares_memory(g_c, g_r)


# -- extreme inputs ------------------------------------------------------------------


def test_extreme_float32_differences_stay_finite(xp):
    r_c = xp.asarray([1e4, -1e4, 0.0, 5e3], dtype=xp.float32)
    r_r = xp.asarray([-1e4, 1e4, 0.0, -5e3], dtype=xp.float32)
    loss, g_c, g_r = reward_model_loss(r_c, r_r)  # any overflow warning fails the test (setup.cfg)
    expected, g_expected = slow_loss(to_numpy(r_c), to_numpy(r_r))
    assert math.isfinite(loss) and loss == pytest.approx(expected, rel=1e-6)
    assert bool(xp.isfinite(g_c).all()) and bool(xp.isfinite(g_r).all())
    np.testing.assert_allclose(to_numpy(g_c), g_expected, rtol=1e-6, atol=1e-30)
    # A margin of 1e4 turns a correct pair into a badly wrong one, still finite.
    loss_m, g_m, _ = reward_model_loss(r_c, r_r, margin=xp.full(4, 1e4, dtype=xp.float32))
    assert math.isfinite(loss_m) and bool(xp.isfinite(g_m).all())
    assert loss_m == pytest.approx(slow_loss(to_numpy(r_c), to_numpy(r_r), np.full(4, 1e4))[0], rel=1e-6)


# -- reward_accuracy -----------------------------------------------------------------


@given(reward_pairs(with_margin=False))
def test_reward_accuracy_matches_loop(pairs):
    r_c, r_r, _ = pairs
    wins = sum(1 for c, r in zip(r_c.ravel(), r_r.ravel()) if c > r)
    assert reward_accuracy(r_c, r_r) == wins / r_c.shape[0]


def test_reward_accuracy_counts_ties_as_wrong():
    assert reward_accuracy(np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 4.0])) == pytest.approx(1 / 3)


# -- bad inputs ----------------------------------------------------------------------


@pytest.mark.parametrize("fn", [reward_model_loss, reward_accuracy])
@pytest.mark.parametrize(
    "r_c, r_r, error, match",
    [
        (np.zeros(3), np.zeros(4), ValueError, r"same shape.*\(3,\) and \(4,\)"),
        (np.zeros((3, 1)), np.zeros(3), ValueError, r"same shape.*\(3, 1\) and \(3,\)"),
        (np.zeros((3, 2)), np.zeros((3, 2)), ValueError, r"reward_chosen: expected shape \(B,\) or \(B, 1\).*\(3, 2\)"),
        (np.zeros(3), np.zeros((3, 1, 1)), ValueError, r"reward_rejected: .*got \(3, 1, 1\)"),
        (np.float64(1.0), np.float64(0.0), ValueError, r"reward_chosen: .*got \(\)"),
        (np.zeros(0), np.zeros(0), ValueError, r"at least one pair.*B = 0"),
        ([1.0, 2.0], np.zeros(2), TypeError, "reward_chosen: expected an array.*got list"),
        (np.zeros(2), np.array([True, False]), TypeError, "reward_rejected: expected a float array of rewards, got dtype bool"),
        (np.array(["a", "b"]), np.zeros(2), TypeError, "reward_chosen: expected a float array of rewards, got dtype <U1"),
    ],
)
def test_rejects_bad_rewards(fn, r_c, r_r, error, match):
    with pytest.raises(error, match=match):
        fn(r_c, r_r)


@pytest.mark.parametrize("fn", [reward_model_loss, reward_accuracy])
@pytest.mark.parametrize("which", ["reward_chosen", "reward_rejected"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_refuses_non_finite_rewards(fn, which, bad):
    # A NaN compares False: the accuracy was 0 and the loss a number. Now: refused.
    rewards = {"reward_chosen": np.array([1.0, 2.0, 3.0], dtype=np.float32), "reward_rejected": np.zeros(3, np.float32)}
    rewards[which][1] = bad
    with pytest.raises(ValueError, match=rf"{which}: expected finite values, got {bad} at index \(1,\)"):
        fn(rewards["reward_chosen"], rewards["reward_rejected"])


@pytest.mark.parametrize(
    "margin, error, match",
    [
        (float("nan"), ValueError, r"margin: expected a finite number, got nan"),
        (np.array([0.0, np.inf, 0.0]), ValueError, r"margin: expected finite values, got inf at index \(1,\)"),
        (np.array(["a", "b", "c"]), TypeError, r"margin: expected a float array, got dtype <U1"),
        (np.zeros(4), ValueError, r"margin: .*shape \(3,\) or \(3, 1\), got \(4,\)"),
        (np.zeros((1, 3)), ValueError, r"margin: .*got \(1, 3\)"),
        ("0.5", TypeError, "margin: expected None, a number or an array.*got str"),
        (True, TypeError, "margin: .*got bool"),
    ],
)
def test_rejects_bad_margin(margin, error, match):
    with pytest.raises(error, match=match):
        reward_model_loss(np.zeros(3), np.ones(3), margin=margin)


# -- PyTorch as an oracle ------------------------------------------------------------


@pytest.mark.torch
@given(reward_pairs())
def test_matches_torch_autograd(pairs):
    torch = pytest.importorskip("torch")
    r_c, r_r, margin = pairs
    loss, g_c, g_r = reward_model_loss(r_c, r_r, margin=margin)
    t_c = torch.tensor(r_c, requires_grad=True)
    t_r = torch.tensor(r_r, requires_grad=True)
    m = 0.0
    if margin is not None:
        m = torch.as_tensor(np.asarray(margin, dtype=np.float64).reshape(r_c.shape) if np.ndim(margin) else margin,
                            dtype=torch.float64)
    t_loss = -torch.nn.functional.logsigmoid(t_c - t_r - m).mean()
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=1e-12, abs=1e-15)
    np.testing.assert_allclose(g_c, t_c.grad.numpy(), rtol=1e-12, atol=1e-18)
    np.testing.assert_allclose(g_r, t_r.grad.numpy(), rtol=1e-12, atol=1e-18)
