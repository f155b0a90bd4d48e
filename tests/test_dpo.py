"""Tests for the DPO loss family (alignment_np.losses.dpo) and DPOTrainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from alignment_np.backend import to_numpy
from alignment_np.gradcheck import check_gradients
from alignment_np.losses.dpo import LOSS_TYPES, dpo_loss, simpo_loss
from alignment_np.trainers.dpo import DPOTrainer

FINITE = dict(allow_nan=False, allow_infinity=False)
SMOOTHED = ("sigmoid", "robust")  # the variants that use label_smoothing


def logps_arrays(B, low=-50.0, high=0.0):
    return hnp.arrays(np.float64, (B,), elements=st.floats(low, high, **FINITE))


@st.composite
def dpo_inputs(draw, loss_type=None, kink_margin=0.05):
    """(loss_type, pi_c, pi_r, ref_c, ref_r, beta, e), float64 (B,) arrays.

    For the hinge, h is built from a slack s = 1 - beta*h of magnitude >= kink_margin,
    so finite differences never straddle the kink at beta*h = 1.
    """
    if loss_type is None:
        loss_type = draw(st.sampled_from(sorted(LOSS_TYPES)))
    B = draw(st.integers(1, 4))
    beta = draw(st.floats(0.05, 2.0))
    e = draw(st.floats(0.0, 0.45)) if loss_type in SMOOTHED else 0.0
    pi_r, ref_c, ref_r = (draw(logps_arrays(B)) for _ in range(3))
    if loss_type == "hinge":
        magnitude = draw(hnp.arrays(np.float64, (B,), elements=st.floats(kink_margin, 3.0)))
        sign = draw(hnp.arrays(np.float64, (B,), elements=st.sampled_from([-1.0, 1.0])))
        h = (1.0 - sign * magnitude) / beta
        pi_c = ref_c + (pi_r - ref_r) + h
    else:
        pi_c = draw(logps_arrays(B))
    return loss_type, pi_c, pi_r, ref_c, ref_r, beta, e


def softplus(x):
    """log(1 + exp(x)) for one Python float, written out."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def loop_dpo_losses(pi_c, pi_r, ref_c, ref_r, beta, e, loss_type):
    """The per-pair losses one pair at a time, straight from the papers' formulas."""
    out = []
    for i in range(len(pi_c)):
        h = (float(pi_c[i]) - float(ref_c[i])) - (float(pi_r[i]) - float(ref_r[i]))
        z = beta * h
        if loss_type == "sigmoid":  # -logsigmoid(z) = softplus(-z)
            out.append((1 - e) * softplus(-z) + e * softplus(z))
        elif loss_type == "ipo":
            out.append((h - 1 / (2 * beta)) ** 2)
        elif loss_type == "hinge":
            out.append(max(0.0, 1 - z))
        elif loss_type == "robust":
            out.append(((1 - e) * softplus(-z) - e * softplus(z)) / (1 - 2 * e))
    return np.array(out)


# --------------------------------------------------------------------------
# The course's worked example (pinned)
# --------------------------------------------------------------------------


def test_course_worked_example():
    policy_chosen = np.array([-10.0, -10.0])
    policy_rejected = np.array([-15.0, -5.0])
    ref = np.array([-10.0, -10.0])
    losses, _, _, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen, policy_rejected, ref, ref, beta=0.5
    )
    np.testing.assert_array_equal(np.round(losses, 4), [0.0789, 2.5789])
    np.testing.assert_array_equal(chosen_rewards, [0.0, 0.0])
    np.testing.assert_array_equal(rejected_rewards, [-2.5, 2.5])


def test_course_worked_example_through_the_trainer():
    ref = np.array([-10.0, -10.0])
    loss, metrics, _, _ = DPOTrainer(beta=0.5).compute_loss(
        np.array([-10.0, -10.0]), np.array([-15.0, -5.0]), ref, ref
    )
    assert isinstance(loss, float)
    assert round(loss, 4) == 1.3289  # the mean of 0.0789 and 2.5789
    assert metrics["loss"] == loss
    assert metrics["accuracy"] == 0.5  # pair 0 ranked right (0 > -2.5), pair 1 wrong (0 < 2.5)
    assert metrics["chosen_reward"] == 0.0
    assert metrics["rejected_reward"] == 0.0  # the mean of -2.5 and 2.5
    assert metrics["reward_margin"] == 0.0


# --------------------------------------------------------------------------
# What the math promises
# --------------------------------------------------------------------------


@given(
    st.integers(1, 5).flatmap(lambda B: st.tuples(logps_arrays(B), logps_arrays(B))),
    st.floats(0.01, 10.0),
    st.floats(0.0, 0.45),
    st.sampled_from(SMOOTHED),
)
def test_loss_is_log2_when_policy_equals_reference(logps, beta, e, loss_type):
    chosen, rejected = logps
    losses, _, _, chosen_rewards, rejected_rewards = dpo_loss(
        chosen, rejected, chosen.copy(), rejected.copy(), beta, e, loss_type
    )
    np.testing.assert_allclose(losses, math.log(2.0), rtol=1e-14)
    np.testing.assert_array_equal(chosen_rewards, 0.0)
    np.testing.assert_array_equal(rejected_rewards, 0.0)


def _optimum(loss_type, beta, e):
    """The h at which the per-pair loss is smallest (inf where it only keeps falling)."""
    if loss_type == "ipo":
        return 1.0 / (2.0 * beta)  # the target margin
    if loss_type == "sigmoid" and e > 0:
        return math.log((1.0 - e) / e) / beta  # cDPO: (1-e) sigma(-beta h) = e sigma(beta h)
    return math.inf


@given(
    st.sampled_from(sorted(LOSS_TYPES)),
    st.integers(1, 4).flatmap(lambda B: st.tuples(*(logps_arrays(B) for _ in range(3)))),
    st.floats(0.05, 2.0),
    st.floats(0.01, 0.45),
    st.floats(-40.0, 40.0),
    st.floats(0.01, 5.0),
    st.booleans(),
)
def test_loss_falls_as_the_chosen_log_ratio_rises(loss_type, refs, beta, e, h1, delta, below):
    """Raising pi_c by delta raises h by delta: the loss falls while h is below the optimum.

    sigmoid (e = 0), robust and hinge keep falling (hinge: flat once beta*h >= 1);
    ipo and cDPO (sigmoid, e > 0) have a finite optimum beyond which they rise again.
    """
    pi_r, ref_c, ref_r = refs
    e = e if loss_type in SMOOTHED else 0.0
    if loss_type == "sigmoid" and not below:
        e = 0.0  # plain DPO: no optimum, always falling
    h_star = _optimum(loss_type, beta, e)
    if math.isfinite(h_star):
        # put both points on one side of the optimum
        h1 = h_star - abs(h1) - delta if below else h_star + abs(h1)
    pi_c = ref_c + (pi_r - ref_r) + h1
    before, grad_before, _, _, _ = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta, e, loss_type)
    after, grad_after, _, _, _ = dpo_loss(pi_c + delta, pi_r, ref_c, ref_r, beta, e, loss_type)
    if math.isfinite(h_star) and not below:
        assert np.all(after > before)  # past the optimum the loss rises again
        assert np.all(grad_after > 0)  # h_star + |h1| + delta: strictly past the optimum
        return
    assert np.all(after <= before)
    assert np.all(grad_before <= 0)
    if loss_type == "hinge":
        h = (pi_c - ref_c) - (pi_r - ref_r)  # the h dpo_loss sees, rounding included
        slack = 1.0 - beta * h  # strictly falling only where the hinge is active
        assert np.all((after < before) | (slack <= 0))
        assert np.all((after == before) == (slack <= 0))
    else:
        assert np.all(after < before)


@given(st.floats(0.05, 2.0), st.floats(0.0, 0.45), st.floats(-20.0, 20.0))
def test_robust_loss_is_unbiased_under_label_flips(beta, e, h):
    """Chowdhury et al. 2024: E over flips with rate e of the robust loss is the clean DPO loss."""
    ref = np.zeros(1)
    right, _, _, _, _ = dpo_loss(np.array([h]), ref, ref, ref, beta, e, "robust")
    flipped, _, _, _, _ = dpo_loss(ref, np.array([h]), ref, ref, beta, e, "robust")
    clean, _, _, _, _ = dpo_loss(np.array([h]), ref, ref, ref, beta, 0.0, "sigmoid")
    np.testing.assert_allclose((1 - e) * right + e * flipped, clean, rtol=1e-9, atol=1e-12)


@given(st.floats(0.05, 2.0), st.floats(0.0, 0.45), st.floats(-20.0, 20.0))
def test_conservative_dpo_is_the_expected_loss_under_label_flips(beta, e, h):
    """Conservative DPO (Mitchell 2023): DPO's loss averaged over a label flipped with rate e."""
    ref = np.zeros(1)
    smoothed, _, _, _, _ = dpo_loss(np.array([h]), ref, ref, ref, beta, e, "sigmoid")
    right, _, _, _, _ = dpo_loss(np.array([h]), ref, ref, ref, beta, 0.0, "sigmoid")
    flipped, _, _, _, _ = dpo_loss(ref, np.array([h]), ref, ref, beta, 0.0, "sigmoid")
    np.testing.assert_allclose(smoothed, (1 - e) * right + e * flipped, rtol=1e-12, atol=1e-14)


def test_hinge_at_and_beside_its_kink():
    """relu(1 - beta*h): active (slope -beta) just below beta*h = 1, flat at and above it."""
    beta = 0.5
    h = np.array([2.0 - 2e-8, 2.0, 2.0 + 2e-8])  # beta*h = 1 - 1e-8, 1, 1 + 1e-8
    zeros = np.zeros(3)
    losses, grad_c, _, _, _ = dpo_loss(h, zeros, zeros, zeros, beta, 0.0, "hinge")
    np.testing.assert_allclose(losses, [1.0 - beta * h[0], 0.0, 0.0], rtol=1e-6, atol=0)
    assert losses[0] > 0
    np.testing.assert_array_equal(grad_c, [-beta / 3, 0.0, 0.0])  # subgradient 0 at the kink


@given(dpo_inputs())
def test_rewards_and_gradient_structure(inputs):
    loss_type, pi_c, pi_r, ref_c, ref_r, beta, e = inputs
    _, grad_c, grad_r, chosen_rewards, rejected_rewards = dpo_loss(
        pi_c, pi_r, ref_c, ref_r, beta, e, loss_type
    )
    np.testing.assert_allclose(chosen_rewards, beta * (pi_c - ref_c), rtol=1e-15)
    np.testing.assert_allclose(rejected_rewards, beta * (pi_r - ref_r), rtol=1e-15)
    # h depends on pi_c - pi_r only: the two gradients are equal and opposite.
    np.testing.assert_array_equal(grad_r, -grad_c)


# --------------------------------------------------------------------------
# Gradients against finite differences (float64)
# --------------------------------------------------------------------------


@given(dpo_inputs())
def test_dpo_gradients_of_the_mean_loss(inputs):
    loss_type, pi_c, pi_r, ref_c, ref_r, beta, e = inputs
    _, grad_c, grad_r, _, _ = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta, e, loss_type)

    def mean_loss(a, b, c, d):
        return dpo_loss(a, b, c, d, beta, e, loss_type)[0].mean()

    check_gradients(
        mean_loss,
        [pi_c, pi_r, ref_c, ref_r],
        [grad_c, grad_r],
        wrt=[0, 1],
        tol=1e-6,
        names=["policy_chosen_logps", "policy_rejected_logps"],
    )


@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
@given(data=st.data())
def test_each_variant_dlosses_dh(loss_type, data):
    """Each variant's (losses, dlosses_dh) pair, per example, with a random upstream gradient."""
    _, pi_c, pi_r, ref_c, ref_r, beta, e = data.draw(dpo_inputs(loss_type))
    h = (pi_c - ref_c) - (pi_r - ref_r)
    dout = data.draw(hnp.arrays(np.float64, h.shape, elements=st.floats(-2, 2, **FINITE)))
    _, dlosses_dh = LOSS_TYPES[loss_type](h, beta, e)
    check_gradients(
        lambda x: LOSS_TYPES[loss_type](x, beta, e)[0], [h], [dlosses_dh * dout], dout=dout
    )


@given(
    st.integers(1, 4).flatmap(lambda B: st.tuples(logps_arrays(B, -5, 0), logps_arrays(B, -5, 0))),
    st.floats(0.5, 3.0),
    st.floats(0.0, 2.0),
    st.floats(0.0, 0.45),
)
def test_simpo_gradients(avgs, beta, gamma, e):
    avg_c, avg_r = avgs
    _, grad_c, grad_r, _, _ = simpo_loss(avg_c, avg_r, beta, gamma, e)
    check_gradients(
        lambda a, b: simpo_loss(a, b, beta, gamma, e)[0].mean(),
        [avg_c, avg_r],
        [grad_c, grad_r],
        names=["policy_chosen_logps", "policy_rejected_logps"],
    )


# --------------------------------------------------------------------------
# The vectorised losses against the one-pair-at-a-time loop
# --------------------------------------------------------------------------


@given(dpo_inputs(kink_margin=1e-9))  # no finite differences here: go right up to the hinge
def test_vectorised_matches_loop(inputs):
    loss_type, pi_c, pi_r, ref_c, ref_r, beta, e = inputs
    losses, _, _, _, _ = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta, e, loss_type)
    expected = loop_dpo_losses(pi_c, pi_r, ref_c, ref_r, beta, e, loss_type)
    np.testing.assert_allclose(losses, expected, rtol=1e-12, atol=1e-12)


@given(
    st.integers(1, 4).flatmap(lambda B: st.tuples(logps_arrays(B, -5, 0), logps_arrays(B, -5, 0))),
    st.floats(0.5, 3.0),
    st.floats(0.0, 2.0),
)
def test_simpo_matches_its_formula(avgs, beta, gamma):
    avg_c, avg_r = avgs
    losses, _, _, chosen_rewards, rejected_rewards = simpo_loss(avg_c, avg_r, beta, gamma)
    expected = [softplus(-(beta * (c - r) - gamma)) for c, r in zip(avg_c, avg_r)]
    np.testing.assert_allclose(losses, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(chosen_rewards, beta * avg_c, rtol=1e-15)
    np.testing.assert_allclose(rejected_rewards, beta * avg_r, rtol=1e-15)


# --------------------------------------------------------------------------
# Extreme inputs
# --------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0])
def test_extreme_float32_logps_are_finite(xp, rng, loss_type, beta):
    e = 0.2 if loss_type in SMOOTHED else 0.0
    arrays = [xp.asarray((rng.choice([-1.0, 1.0], size=8) * 1e4).astype(np.float32)) for _ in range(4)]
    outputs = dpo_loss(*arrays, beta=beta, label_smoothing=e, loss_type=loss_type)
    for out in outputs:
        assert out.dtype == xp.float32
        assert bool(xp.all(xp.isfinite(out)))
    # the float32 result agrees with the float64 loop on the same (float32-rounded) numbers
    as64 = [to_numpy(a).astype(np.float64) for a in arrays]
    expected = loop_dpo_losses(*as64, beta, e, loss_type)
    np.testing.assert_allclose(to_numpy(outputs[0]), expected, rtol=1e-5)


def test_extreme_simpo_is_finite():
    rng = np.random.default_rng(1)
    avg_c, avg_r = (-(rng.random(6) * 1e4).astype(np.float32) for _ in range(2))
    for out in simpo_loss(avg_c, avg_r, beta=2.5, gamma=1.0):
        assert out.dtype == np.float32 and np.all(np.isfinite(out))


# --------------------------------------------------------------------------
# Backends, dtypes, purity
# --------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
def test_backends_agree_with_the_loop(xp, rng, loss_type):
    e = 0.1 if loss_type in SMOOTHED else 0.0
    logps = [-rng.random(5) * 20 for _ in range(4)]
    outputs = dpo_loss(*(xp.asarray(a) for a in logps), beta=0.3, label_smoothing=e, loss_type=loss_type)
    assert all(type(out) is type(xp.asarray(logps[0])) for out in outputs)
    expected = loop_dpo_losses(*logps, 0.3, e, loss_type)
    np.testing.assert_allclose(to_numpy(outputs[0]), expected, rtol=1e-12)


def test_trainer_on_each_backend(xp, rng):
    logps = [xp.asarray(-rng.random(6).astype(np.float32) * 10) for _ in range(4)]
    loss, metrics, grad_c, grad_r = DPOTrainer(beta=0.2).compute_loss(*logps)
    assert isinstance(loss, float) and all(isinstance(v, float) for v in metrics.values())
    assert grad_c.dtype == xp.float32 and type(grad_c) is type(logps[0])
    assert type(grad_r) is type(logps[0])


@given(dpo_inputs())
def test_dpo_loss_does_not_mutate_or_alias(inputs):
    loss_type, *arrays, beta, e = inputs
    saved = [a.copy() for a in arrays]
    outputs = dpo_loss(*arrays, beta, e, loss_type)
    for a, s in zip(arrays, saved):
        np.testing.assert_array_equal(a, s)
    for i, out in enumerate(outputs):
        for a in arrays:
            assert not np.shares_memory(out, a)
        for other in outputs[i + 1 :]:
            assert not np.shares_memory(out, other)


# --------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------


@given(dpo_inputs())
def test_trainer_metrics_match_their_definitions(inputs):
    loss_type, pi_c, pi_r, ref_c, ref_r, beta, e = inputs
    trainer = DPOTrainer(beta=beta, label_smoothing=e, loss_type=loss_type)
    loss, metrics, grad_c, grad_r = trainer.compute_loss(pi_c, pi_r, ref_c, ref_r)
    losses, exp_grad_c, exp_grad_r, _, _ = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta, e, loss_type)
    assert set(metrics) == {"loss", "accuracy", "chosen_reward", "rejected_reward", "reward_margin"}
    assert loss == metrics["loss"] == float(losses.mean())
    np.testing.assert_array_equal(grad_c, exp_grad_c)
    np.testing.assert_array_equal(grad_r, exp_grad_r)
    # one pair at a time
    chosen = [beta * (pi_c[i] - ref_c[i]) for i in range(len(pi_c))]
    rejected = [beta * (pi_r[i] - ref_r[i]) for i in range(len(pi_c))]
    right = sum(c > r for c, r in zip(chosen, rejected))
    assert metrics["accuracy"] == right / len(pi_c)
    assert metrics["chosen_reward"] == pytest.approx(np.mean(chosen), rel=1e-12, abs=1e-12)
    assert metrics["rejected_reward"] == pytest.approx(np.mean(rejected), rel=1e-12, abs=1e-12)
    margin = np.mean([c - r for c, r in zip(chosen, rejected)])
    assert metrics["reward_margin"] == pytest.approx(margin, rel=1e-12, abs=1e-12)


def test_trainer_stores_its_settings():
    trainer = DPOTrainer(beta=0.25, label_smoothing=0.1, loss_type="robust")
    assert (trainer.beta, trainer.label_smoothing, trainer.loss_type) == (0.25, 0.1, "robust")
    assert "robust" in repr(trainer)


# --------------------------------------------------------------------------
# Validation at the public boundary
# --------------------------------------------------------------------------

GOOD = [np.array([-1.0, -2.0]) for _ in range(4)]


@pytest.mark.parametrize("beta", [0, 0.0, -0.1, float("nan"), float("inf"), "0.1", None, True])
def test_bad_beta(beta):
    with pytest.raises(ValueError, match="beta must be a positive"):
        DPOTrainer(beta=beta)
    with pytest.raises(ValueError, match="beta must be a positive"):
        dpo_loss(*GOOD, beta=beta)
    with pytest.raises(ValueError, match="beta must be a positive"):
        simpo_loss(GOOD[0], GOOD[1], beta=beta)


@pytest.mark.parametrize("label_smoothing", [-0.1, 0.5, 0.7, float("nan"), "0.1", None])
def test_bad_label_smoothing(label_smoothing):
    with pytest.raises(ValueError, match=r"label_smoothing must be .*\[0, 0\.5\), got"):
        DPOTrainer(label_smoothing=label_smoothing)
    with pytest.raises(ValueError, match=r"label_smoothing must be .*\[0, 0\.5\), got"):
        dpo_loss(*GOOD, label_smoothing=label_smoothing)


@pytest.mark.parametrize("loss_type", ["kto", "Sigmoid", "", None, 3])
def test_unknown_loss_type_lists_the_choices(loss_type):
    choices = r"\['hinge', 'ipo', 'robust', 'sigmoid'\]"
    with pytest.raises(ValueError, match=rf"loss_type must be one of {choices}, got {loss_type!r}"):
        DPOTrainer(loss_type=loss_type)
    with pytest.raises(ValueError, match=rf"loss_type must be one of {choices}"):
        dpo_loss(*GOOD, loss_type=loss_type)


@pytest.mark.parametrize("loss_type", ["ipo", "hinge"])
def test_label_smoothing_is_refused_where_it_would_be_ignored(loss_type):
    with pytest.raises(ValueError, match=rf"label_smoothing applies only to .*loss_type='{loss_type}'"):
        DPOTrainer(label_smoothing=0.1, loss_type=loss_type)


def test_unequal_shapes_name_all_four():
    expected = (
        r"equal shapes \(B,\), got policy_chosen_logps \(3,\), policy_rejected_logps \(2,\), "
        r"ref_chosen_logps \(3,\), ref_rejected_logps \(3,\)"
    )
    args = [np.zeros(3), np.zeros(2), np.zeros(3), np.zeros(3)]
    with pytest.raises(ValueError, match=expected):
        DPOTrainer().compute_loss(*args)
    with pytest.raises(ValueError, match=expected):
        dpo_loss(*args)


def test_logps_must_be_1d():
    with pytest.raises(ValueError, match=r"must be 1-D, shape \(B,\), got policy_chosen_logps \(2, 1\)"):
        dpo_loss(*(np.zeros((2, 1)) for _ in range(4)))


def test_logps_must_be_float():
    with pytest.raises(TypeError, match="ref_rejected_logps: expected a floating-point array, got dtype int64"):
        dpo_loss(GOOD[0], GOOD[1], GOOD[2], np.array([1, 2]))


def test_empty_batch_is_refused():
    with pytest.raises(ValueError, match=r"empty \(B = 0\)"):
        dpo_loss(*(np.zeros(0) for _ in range(4)))


@pytest.mark.parametrize("gamma", [-0.5, float("nan"), "1", None])
def test_simpo_bad_gamma(gamma):
    with pytest.raises(ValueError, match=r"gamma must be a finite number >= 0, got"):
        simpo_loss(GOOD[0], GOOD[1], gamma=gamma)


ARG_NAMES = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")


@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logps_are_refused_by_every_variant(loss_type, index, bad):
    # The hinge used to turn a NaN into a loss of 0, and the trainer's accuracy
    # into 0: a NaN compares False. Now every entry point names the argument.
    args = [np.array([-1.0, -2.0, -3.0]) for _ in range(4)]
    args[index][2] = bad
    name = ARG_NAMES[index]
    with pytest.raises(ValueError, match=rf"{name}: expected finite values, got {bad} at index \(2,\)"):
        dpo_loss(*args, loss_type=loss_type)
    with pytest.raises(ValueError, match=rf"{name}: expected finite values"):
        DPOTrainer(loss_type=loss_type).compute_loss(*args)
    if index < 2:
        with pytest.raises(ValueError, match=rf"{name}: expected finite values"):
            simpo_loss(args[0], args[1])


@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
def test_each_variant_propagates_a_nan_h(loss_type):
    h = np.array([0.5, np.nan, -0.5])
    with np.errstate(invalid="ignore"):  # NumPy may warn on the nan; the nan is the point
        losses, dlosses_dh = LOSS_TYPES[loss_type](h, 0.5)
    assert np.isnan(losses[1]) and np.isnan(dlosses_dh[1])
    assert np.all(np.isfinite(losses[[0, 2]])) and np.all(np.isfinite(dlosses_dh[[0, 2]]))


def test_simpo_unequal_shapes():
    with pytest.raises(ValueError, match=r"policy_chosen_logps \(2,\), policy_rejected_logps \(3,\)"):
        simpo_loss(np.zeros(2), np.zeros(3))


# --------------------------------------------------------------------------
# PyTorch as an oracle (TRL's formulas, autograd gradients)
# --------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("loss_type", sorted(LOSS_TYPES))
def test_torch_autograd(rng, loss_type):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    beta, e = 0.3, (0.15 if loss_type in SMOOTHED else 0.0)
    pi_c, pi_r, ref_c, ref_r = (-rng.random(16) * 30 for _ in range(4))
    losses, grad_c, grad_r, _, _ = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta, e, loss_type)

    tc = torch.tensor(pi_c, requires_grad=True)
    tr = torch.tensor(pi_r, requires_grad=True)
    h = (tc - torch.tensor(ref_c)) - (tr - torch.tensor(ref_r))
    if loss_type == "sigmoid":
        expected = -F.logsigmoid(beta * h) * (1 - e) - F.logsigmoid(-beta * h) * e
    elif loss_type == "ipo":
        expected = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        expected = torch.relu(1 - beta * h)
    else:
        expected = (-F.logsigmoid(beta * h) * (1 - e) + F.logsigmoid(-beta * h) * e) / (1 - 2 * e)
    expected.mean().backward()
    np.testing.assert_allclose(losses, expected.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad_c, tc.grad.numpy(), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(grad_r, tr.grad.numpy(), rtol=1e-10, atol=1e-15)
