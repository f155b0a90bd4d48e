"""PPO losses: clipped surrogate, clipped value loss, entropy bonus.

Every gradient is checked against finite differences in float64 on inputs built
away from the kinks (clip edges, ties between the two terms), and every
vectorised loss against a slow per-element loop."""

from __future__ import annotations

import math
import warnings

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.backend import to_numpy
from alignment_np.gradcheck import check_gradients
from alignment_np.losses.ppo import entropy_from_logits, ppo_loss, value_loss

MARGIN = 0.02  # distance kept from every kink; finite differences move inputs by 1e-6
SHAPES = st.one_of(
    st.tuples(st.integers(1, 12)),
    st.tuples(st.integers(1, 3), st.integers(1, 5)),
)


def signed(draw, shape, low, high):
    """magnitude in [low, high] times a random sign: never within ``low`` of 0."""
    magnitude = draw(hnp.arrays(np.float64, shape, elements=st.floats(low, high)))
    sign = draw(hnp.arrays(np.float64, shape, elements=st.sampled_from([-1.0, 1.0])))
    return magnitude * sign


def draw_mask(draw, shape):
    mask = draw(hnp.arrays(np.bool_, shape))
    mask.flat[draw(st.integers(0, mask.size - 1))] = True  # at least one counted entry
    return mask


@st.composite
def ppo_cases(draw, masked=False):
    """Ratios in the three bands below / inside / above [1 - eps, 1 + eps], never
    within MARGIN of an edge; advantages at least 0.1 away from 0."""
    shape = draw(SHAPES)
    eps = draw(st.floats(0.1, 0.3))
    bands = st.one_of(
        st.floats(0.3, 1.0 - eps - MARGIN),
        st.floats(1.0 - eps + MARGIN, 1.0 + eps - MARGIN),
        st.floats(1.0 + eps + MARGIN, 2.5),
    )
    ratio = draw(hnp.arrays(np.float64, shape, elements=bands))
    old = draw(hnp.arrays(np.float64, shape, elements=st.floats(-6.0, -0.05)))
    case = {
        "new_log_probs": old + np.log(ratio),
        "old_log_probs": old,
        "advantages": signed(draw, shape, 0.1, 3.0),
        "clip_ratio": eps,
    }
    if masked:
        case["mask"] = draw_mask(draw, shape)
    return case


def ppo_loss_loop(new_log_probs, old_log_probs, advantages, clip_ratio, mask=None):
    """One entry at a time, in Python floats: the min of the two terms and the
    chain rule through whichever term is smaller."""
    new, old, adv = (np.ravel(a) for a in (new_log_probs, old_log_probs, advantages))
    keep = np.ones(new.size, bool) if mask is None else np.ravel(mask).astype(bool)
    N = int(keep.sum())
    total, grad = 0.0, np.zeros(new.size)
    clipped_count, approx_kl, ratio_sum = 0, 0.0, 0.0
    for i in range(new.size):
        if not keep[i]:
            continue
        r = math.exp(new[i] - old[i])
        A = adv[i]
        clipped_r = min(max(r, 1 - clip_ratio), 1 + clip_ratio)
        unclipped_term, clipped_term = r * A, clipped_r * A
        total += min(unclipped_term, clipped_term)
        if unclipped_term <= clipped_term:
            d_term = r * A  # d(r A)/d new_log_prob, since dr/dlogp = r
        else:
            inside = 1 - clip_ratio < r < 1 + clip_ratio
            d_term = (r if inside else 0.0) * A  # d(clip(r) A)/d new_log_prob
            clipped_count += 1
        grad[i] = -d_term / N
        approx_kl += (r - 1) - math.log(r)
        ratio_sum += r
    metrics = {"clip_fraction": clipped_count / N, "approx_kl": approx_kl / N, "ratio_mean": ratio_sum / N}
    return -total / N, grad.reshape(np.shape(new_log_probs)), metrics


# ----------------------------------------------------------------------------- ppo_loss: gradients


@given(case=ppo_cases())
def test_ppo_loss_gradient_matches_finite_differences(case):
    loss, grad = ppo_loss(**case)
    f = lambda new: ppo_loss(new, case["old_log_probs"], case["advantages"], case["clip_ratio"])[0]
    check_gradients(f, [case["new_log_probs"]], [grad], tol=1e-6, names=["new_log_probs"])


@given(case=ppo_cases(masked=True))
def test_ppo_loss_masked_gradient_matches_finite_differences(case):
    loss, grad = ppo_loss(**case)
    f = lambda new: ppo_loss(
        new, case["old_log_probs"], case["advantages"], case["clip_ratio"], mask=case["mask"]
    )[0]
    check_gradients(f, [case["new_log_probs"]], [grad], tol=1e-6, names=["new_log_probs"])
    assert np.all(grad[~case["mask"]] == 0)


@given(case=ppo_cases(masked=True))
def test_ppo_loss_matches_the_loop(case):
    loss, grad, metrics = ppo_loss(**case, return_metrics=True)
    loss_ref, grad_ref, metrics_ref = ppo_loss_loop(**case)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-12, atol=1e-14)
    for key in ("clip_fraction", "approx_kl", "ratio_mean"):
        assert metrics[key] == pytest.approx(metrics_ref[key], rel=1e-10, abs=1e-12), key


def test_gradient_regions():
    eps = 0.2
    # (advantage, ratio) in each region; N = 6 entries share the 1/N.
    A = np.array([+1.0, +1.0, +1.0, -1.0, -1.0, -1.0])
    r = np.array([0.5, 1.1, 1.5, 1.5, 0.9, 0.5])
    old = np.full(6, -1.0)
    loss, grad = ppo_loss(old + np.log(r), old, A, clip_ratio=eps)
    expected_unclipped = -r * A / 6
    # A > 0, r < 1 - eps: the unclipped term is the minimum -> NON-zero gradient.
    assert grad[0] != 0 and grad[0] == pytest.approx(expected_unclipped[0])
    assert grad[1] == pytest.approx(expected_unclipped[1])  # inside the range
    assert grad[2] == 0  # A > 0, r > 1 + eps: clipped term active
    # A < 0, r > 1 + eps: the unclipped term is the minimum -> NON-zero gradient.
    assert grad[3] != 0 and grad[3] == pytest.approx(expected_unclipped[3])
    assert grad[4] == pytest.approx(expected_unclipped[4])  # inside the range
    assert grad[5] == 0  # A < 0, r < 1 - eps: clipped term active
    _, _, metrics = ppo_loss(old + np.log(r), old, A, clip_ratio=eps, return_metrics=True)
    assert metrics["clip_fraction"] == pytest.approx(2 / 6)


@given(case=ppo_cases())
def test_ppo_loss_at_the_old_policy(case):
    # r = 1 everywhere: loss = -mean(A), gradient -A/N, nothing clipped, approx_kl 0.
    old = case["old_log_probs"]
    A = case["advantages"]
    loss, grad, metrics = ppo_loss(old.copy(), old, A, return_metrics=True)
    np.testing.assert_allclose(loss, -A.mean(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grad, -A / A.size, rtol=1e-12)
    assert metrics == {"clip_fraction": 0.0, "approx_kl": 0.0, "ratio_mean": 1.0}


@given(case=ppo_cases(masked=True))
def test_approx_kl_is_non_negative(case):
    _, _, metrics = ppo_loss(**case, return_metrics=True)
    assert metrics["approx_kl"] >= 0
    assert 0.0 <= metrics["clip_fraction"] <= 1.0


@pytest.mark.torch
@given(case=ppo_cases(masked=True))
def test_ppo_loss_gradient_matches_torch_autograd(case):
    torch = pytest.importorskip("torch")
    _, grad = ppo_loss(**case)
    new = torch.tensor(case["new_log_probs"], requires_grad=True)
    old = torch.tensor(case["old_log_probs"])
    A = torch.tensor(case["advantages"])
    mask = torch.tensor(case["mask"], dtype=torch.float64)
    eps = case["clip_ratio"]
    ratio = torch.exp(new - old)
    surrogate = torch.min(ratio * A, torch.clamp(ratio, 1 - eps, 1 + eps) * A)
    loss = -(surrogate * mask).sum() / mask.sum()
    loss.backward()
    np.testing.assert_allclose(grad, new.grad.numpy(), rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- ppo_loss: padding, extremes, purity


def test_padding_contents_are_ignored_without_warnings(rng):
    new, old, A = rng.normal(size=(3, 4)) - 2, rng.normal(size=(3, 4)) - 2, rng.normal(size=(3, 4))
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=bool)
    garbage_new = np.where(mask, new, -np.inf)
    garbage_old = np.where(mask, old, -np.inf)  # -inf - -inf would be nan if it were used
    garbage_A = np.where(mask, A, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, grad, metrics = ppo_loss(garbage_new, garbage_old, garbage_A, mask=mask, return_metrics=True)
    loss_ref, grad_ref, metrics_ref = ppo_loss(new[mask], old[mask], A[mask], return_metrics=True)
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-12)
    np.testing.assert_allclose(grad[mask], grad_ref, rtol=1e-12)
    assert np.all(grad[~mask] == 0)
    assert metrics == pytest.approx(metrics_ref, rel=1e-12)


def test_ppo_loss_float32_extreme_magnitudes(rng):
    # log-probs around -1e4 (a long sequence's sum) with small differences, and
    # advantages of magnitude 1e4: finite, float32, close to the float64 answer.
    old64 = -1e4 + rng.normal(size=(4, 8))
    new64 = old64 + rng.normal(scale=0.3, size=(4, 8))
    A64 = rng.choice([-1.0, 1.0], size=(4, 8)) * 1e4
    new32, old32, A32 = (a.astype(np.float32) for a in (new64, old64, A64))
    loss, grad = ppo_loss(new32, old32, A32)
    assert loss.dtype == np.float32 and grad.dtype == np.float32
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    # Compare with float64 on the same (rounded) float32 inputs.
    loss64, grad64 = ppo_loss(*(a.astype(np.float64) for a in (new32, old32, A32)))
    np.testing.assert_allclose(loss, loss64, rtol=1e-4)
    np.testing.assert_allclose(grad, grad64, rtol=1e-4, atol=1e-4 * np.abs(grad64).max())


@pytest.mark.parametrize("dtype, far", [(np.float32, 100.0), (np.float64, 1000.0)])
def test_ppo_loss_overflowing_ratio_where_it_is_not_used_gives_exact_zero(dtype, far):
    # log r = +far overflows exp (float32 at ~88, float64 at ~709). Entry 0: A > 0
    # and r far above 1 + eps, the clipped term is the minimum: the true gradient
    # is exactly 0 (it was nan: inf * 0). Entry 1: A = 0, r * A = 0. Entry 2: A < 0
    # and r = e^-far underflows to 0: clipped (1 - eps) A, gradient 0.
    new = np.array([0.0, 0.0, -far], dtype=dtype)
    old = np.array([-far, -far, 0.0], dtype=dtype)
    A = np.array([1.0, 0.0, -1.0], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow happens: exp never sees log r = far
        loss, grad = ppo_loss(new, old, A, clip_ratio=0.2)
    assert loss.dtype == dtype and grad.dtype == dtype
    assert np.all(grad == 0)
    assert loss == pytest.approx(-(1.2 * 1.0 + 0.0 + 0.8 * -1.0) / 3, rel=1e-6)


def test_ppo_loss_metrics_of_an_overflowing_float32_ratio_are_exact_in_float64():
    new, old, A = (np.array([v], dtype=np.float32) for v in (0.0, -100.0, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, _, metrics = ppo_loss(new, old, A, return_metrics=True)
    assert metrics["clip_fraction"] == 1.0
    assert metrics["ratio_mean"] == pytest.approx(math.exp(100.0), rel=1e-12)
    assert metrics["approx_kl"] == pytest.approx(math.exp(100.0) - 1.0 - 100.0, rel=1e-12)


def test_ppo_loss_a_real_overflow_is_inf_and_loud_never_nan():
    # A < 0 and r = e^100: the unclipped term r * A IS the minimum, and its true
    # value (-2.7e43) does not fit float32. The loss is +inf, the gradient +inf,
    # and NumPy warns: visible, not a finite number and not nan.
    new, old, A = (np.array([v], dtype=np.float32) for v in (0.0, -100.0, -1.0))
    with pytest.warns(RuntimeWarning, match="overflow"):
        loss, grad = ppo_loss(new, old, A)
    assert loss == np.inf and grad[0] == np.inf


@pytest.mark.parametrize("name", ["new_log_probs", "old_log_probs", "advantages"])
@pytest.mark.parametrize("advantage", [1.0, -1.0, 0.0])
def test_ppo_loss_propagates_a_nan_visibly(name, advantage):
    # A NaN (a diverged model) makes the loss NaN and its entry's gradient NaN:
    # never hidden by the clipped branch or by A = 0, so the trainer's guard sees it.
    args = {"new_log_probs": -np.ones(3), "old_log_probs": -np.ones(3), "advantages": np.array([1.0, advantage, 1.0])}
    args[name] = args[name].copy()
    args[name][1] = np.nan
    loss, grad, metrics = ppo_loss(**args, return_metrics=True)
    assert np.isnan(loss) and np.isnan(grad[1]) and np.all(np.isfinite(grad[[0, 2]]))
    # The same value in a masked-out entry is padding: ignored.
    loss, grad = ppo_loss(**args, mask=np.array([1, 0, 1]))
    assert np.isfinite(loss) and grad[1] == 0


def test_ppo_loss_does_not_mutate_or_alias(rng):
    new, old, A = rng.normal(size=(2, 5)), rng.normal(size=(2, 5)), rng.normal(size=(2, 5))
    mask = np.ones((2, 5), dtype=bool)
    inputs = (new, old, A, mask)
    copies = [a.copy() for a in inputs]
    for m in (None, mask):
        _, grad = ppo_loss(new, old, A, mask=m)
        assert not any(np.shares_memory(grad, a) for a in inputs)
    for a, c in zip(inputs, copies):
        np.testing.assert_array_equal(a, c)


def test_ppo_loss_both_backends(xp, rng):
    new, old, A = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    mask = rng.random((3, 4)) < 0.7
    mask[0, 0] = True
    loss, grad, metrics = ppo_loss(xp.asarray(new), xp.asarray(old), xp.asarray(A), mask=xp.asarray(mask), return_metrics=True)
    assert type(grad) is type(xp.asarray(new))
    loss_ref, grad_ref, metrics_ref = ppo_loss_loop(new, old, A, 0.2, mask)
    np.testing.assert_allclose(float(loss), loss_ref, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(grad), grad_ref, rtol=1e-12, atol=1e-15)
    assert metrics == pytest.approx(metrics_ref, rel=1e-10)


@pytest.mark.parametrize(
    "override, exc, match",
    [
        ({"old_log_probs": np.zeros(4)}, ValueError, r"old_log_probs must have shape \(3,\) like new_log_probs, got \(4,\)"),
        ({"advantages": np.zeros((3, 1))}, ValueError, r"advantages must have shape \(3,\).*got \(3, 1\)"),
        ({"new_log_probs": np.array([-1, -2, -3])}, TypeError, r"new_log_probs: expected a floating-point array, got dtype int"),
        ({"clip_ratio": 0.0}, ValueError, r"clip_ratio must lie strictly between 0.0 and 1.0, got 0.0"),
        ({"clip_ratio": 1.0}, ValueError, r"clip_ratio must lie strictly between 0.0 and 1.0, got 1.0"),
        ({"clip_ratio": float("nan")}, ValueError, r"clip_ratio must lie strictly between"),
        ({"clip_ratio": "0.2"}, TypeError, r"clip_ratio must be a real number, got str"),
        ({"mask": np.ones(2)}, ValueError, r"mask must have shape \(3,\) like new_log_probs, got \(2,\)"),
        ({"mask": np.array([1, 0, 3])}, ValueError, r"mask must contain only 0 and 1"),
        ({"mask": np.zeros(3)}, ValueError, r"mask selects no entries"),
        (
            {"new_log_probs": np.zeros(0), "old_log_probs": np.zeros(0), "advantages": np.zeros(0)},
            ValueError,
            r"cannot average over an empty array: new_log_probs has shape \(0,\)",
        ),
    ],
)
def test_ppo_loss_rejects_bad_inputs(override, exc, match):
    args = {"new_log_probs": -np.ones(3), "old_log_probs": -np.ones(3), "advantages": np.ones(3)}
    args.update(override)
    with pytest.raises(exc, match=match):
        ppo_loss(**args)


# ----------------------------------------------------------------------------- value_loss


@st.composite
def value_cases(draw, masked=False):
    """|V - V_old| kept MARGIN away from c, and R kept MARGIN away from the
    midpoint of V and V_clip (where both squared terms are equal)."""
    shape = draw(SHAPES)
    c = draw(st.floats(0.1, 0.5))
    old = draw(hnp.arrays(np.float64, shape, elements=st.floats(-3.0, 3.0)))
    change = draw(
        hnp.arrays(
            np.float64,
            shape,
            elements=st.one_of(st.floats(-c + MARGIN, c - MARGIN), st.floats(c + MARGIN, 2.0), st.floats(-2.0, -c - MARGIN)),
        )
    )
    values = old + change
    values_clipped = old + np.clip(change, -c, c)
    returns = (values + values_clipped) / 2 + signed(draw, shape, MARGIN, 3.0)
    case = {"values": values, "old_values": old, "returns": returns, "clip_range": c}
    if masked:
        case["mask"] = draw_mask(draw, shape)
    return case


def value_loss_loop(values, old_values, returns, clip_range, mask=None):
    V, V_old, R = (np.ravel(a) for a in (values, old_values, returns))
    keep = np.ones(V.size, bool) if mask is None else np.ravel(mask).astype(bool)
    N = int(keep.sum())
    total, grad = 0.0, np.zeros(V.size)
    for i in range(V.size):
        if not keep[i]:
            continue
        unclipped = (V[i] - R[i]) ** 2
        if clip_range is None:
            total += 0.5 * unclipped
            grad[i] = (V[i] - R[i]) / N
            continue
        V_clip = V_old[i] + min(max(V[i] - V_old[i], -clip_range), clip_range)
        clipped = (V_clip - R[i]) ** 2
        total += 0.5 * max(unclipped, clipped)
        if unclipped >= clipped:
            grad[i] = (V[i] - R[i]) / N
        else:
            slope = 1.0 if abs(V[i] - V_old[i]) < clip_range else 0.0  # dV_clip / dV
            grad[i] = (V_clip - R[i]) * slope / N
    return total / N, grad.reshape(np.shape(values))


@given(case=value_cases(masked=True), use_mask=st.booleans(), clipped=st.booleans())
def test_value_loss_gradient_matches_finite_differences(case, use_mask, clipped):
    mask = case["mask"] if use_mask else None
    c = case["clip_range"] if clipped else None
    loss, grad = value_loss(case["values"], case["old_values"], case["returns"], clip_range=c, mask=mask)
    f = lambda V: value_loss(V, case["old_values"], case["returns"], clip_range=c, mask=mask)[0]
    check_gradients(f, [case["values"]], [grad], tol=1e-6, names=["values"])


@given(case=value_cases(masked=True), clipped=st.booleans())
def test_value_loss_matches_the_loop(case, clipped):
    c = case["clip_range"] if clipped else None
    loss, grad = value_loss(case["values"], case["old_values"], case["returns"], clip_range=c, mask=case["mask"])
    loss_ref, grad_ref = value_loss_loop(case["values"], case["old_values"], case["returns"], c, case["mask"])
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-12, atol=1e-14)


def test_value_loss_regions():
    c = 0.2
    old = np.zeros(3)
    # 0: inside the range; 1: outside, clipped term larger -> 0 gradient;
    # 2: outside, unclipped term larger -> (V - R) / N.
    V = np.array([0.1, 1.0, 1.0])
    R = np.array([0.5, 2.0, -1.0])
    loss, grad, metrics = value_loss(V, old, R, clip_range=c, return_metrics=True)
    assert grad[0] == pytest.approx((V[0] - R[0]) / 3)
    assert grad[1] == 0  # (0.2 - 2)^2 > (1 - 2)^2: the clipped term, flat in V
    assert grad[2] == pytest.approx((V[2] - R[2]) / 3)
    assert metrics["clip_fraction"] == pytest.approx(1 / 3)
    unclipped_loss, unclipped_grad = value_loss(V, old, R, clip_range=None)
    np.testing.assert_allclose(unclipped_loss, 0.5 * np.mean((V - R) ** 2))
    np.testing.assert_allclose(unclipped_grad, (V - R) / 3)


def test_value_loss_clipped_is_never_below_unclipped(rng):
    V, old, R = rng.normal(size=50), rng.normal(size=50), rng.normal(size=50)
    assert value_loss(V, old, R, clip_range=0.2)[0] >= value_loss(V, old, R, clip_range=None)[0]


def test_value_loss_padding_and_purity(rng):
    V, old, R = rng.normal(size=(2, 4)), rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=bool)
    inputs = (V, old, R, mask)
    copies = [a.copy() for a in inputs]
    loss, grad = value_loss(np.where(mask, V, np.nan), old, np.where(mask, R, np.inf), mask=mask)
    loss_ref, grad_ref = value_loss(V[mask], old[mask], R[mask])
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-12)
    np.testing.assert_allclose(grad[mask], grad_ref, rtol=1e-12)
    assert np.all(grad[~mask] == 0)
    for m in (None, mask):
        for c in (None, 0.2):
            _, grad = value_loss(V, old, R, clip_range=c, mask=m)
            assert not any(np.shares_memory(grad, a) for a in inputs)
    for a, c in zip(inputs, copies):
        np.testing.assert_array_equal(a, c)


def test_value_loss_both_backends(xp, rng):
    V, old, R = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    loss, grad = value_loss(xp.asarray(V), xp.asarray(old), xp.asarray(R), clip_range=0.3)
    loss_ref, grad_ref = value_loss_loop(V, old, R, 0.3)
    np.testing.assert_allclose(float(loss), loss_ref, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(grad), grad_ref, rtol=1e-12, atol=1e-15)


def test_value_loss_float32_extreme():
    V = np.array([1e4, -1e4, 3.0], dtype=np.float32)
    old = np.array([-1e4, 1e4, 2.9], dtype=np.float32)
    R = np.array([0.0, 0.0, 3.1], dtype=np.float32)
    loss, grad = value_loss(V, old, R, clip_range=0.2)
    assert loss.dtype == np.float32 and grad.dtype == np.float32
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    loss64, grad64 = value_loss(V.astype(np.float64), old.astype(np.float64), R.astype(np.float64), clip_range=0.2)
    np.testing.assert_allclose(loss, loss64, rtol=1e-6)
    np.testing.assert_allclose(grad, grad64, rtol=1e-6)


def test_value_loss_clipped_out_entry_with_an_overflow_gives_exact_zero():
    # V moved from 3e38 to -3e38: far outside the clip range, so the clipped term
    # (V_clip - R)^2 is the larger one and flat in V: the true gradient is 0. Its
    # error V_clip - R overflows float32 to inf, and inf * 0 was nan.
    V = np.array([-3e38, 1.0], dtype=np.float32)
    old = np.array([3e38, 1.0], dtype=np.float32)
    R = np.array([-3e38, 0.0], dtype=np.float32)
    with np.errstate(over="ignore", invalid="raise"):  # an inf * 0 would raise here
        loss, grad = value_loss(V, old, R, clip_range=0.2)
    assert grad.dtype == np.float32 and grad[0] == 0 and grad[1] == pytest.approx(0.5)
    assert loss == np.inf  # 0.5 * (6e38)^2 / 2 does not fit float32: inf, not nan


@pytest.mark.parametrize("name", ["values", "old_values", "returns"])
@pytest.mark.parametrize("clip_range", [0.2, None])
def test_value_loss_propagates_a_nan_visibly(name, clip_range):
    args = {"values": np.zeros(3), "old_values": np.zeros(3), "returns": np.ones(3)}
    args[name] = args[name].copy()
    args[name][2] = np.nan
    loss, grad = value_loss(**args, clip_range=clip_range)
    if name == "old_values" and clip_range is None:  # the unclipped loss does not read V_old
        assert np.isfinite(loss)
    else:
        assert np.isnan(loss) and np.isnan(grad[2]) and np.all(np.isfinite(grad[:2]))
    loss, _ = value_loss(**args, clip_range=clip_range, mask=np.array([1, 1, 0]))
    assert loss == pytest.approx(0.5)


@pytest.mark.parametrize(
    "override, exc, match",
    [
        ({"old_values": np.zeros(2)}, ValueError, r"old_values must have shape \(3,\) like values, got \(2,\)"),
        ({"returns": np.zeros((3, 3))}, ValueError, r"returns must have shape \(3,\).*got \(3, 3\)"),
        ({"values": np.arange(3)}, TypeError, r"values: expected a floating-point array"),
        ({"clip_range": 0.0}, ValueError, r"clip_range must lie strictly between 0.0 and inf, got 0.0"),
        ({"clip_range": -1.0}, ValueError, r"clip_range must lie strictly between"),
        ({"clip_range": [0.2]}, TypeError, r"clip_range must be a real number, got list"),
        ({"mask": np.ones((1, 3))}, ValueError, r"mask must have shape \(3,\) like values, got \(1, 3\)"),
        ({"mask": [False, False, False]}, ValueError, r"mask selects no entries"),
    ],
)
def test_value_loss_rejects_bad_inputs(override, exc, match):
    args = {"values": np.zeros(3), "old_values": np.zeros(3), "returns": np.ones(3)}
    args.update(override)
    with pytest.raises(exc, match=match):
        value_loss(**args)


# ----------------------------------------------------------------------------- entropy


@st.composite
def logits_cases(draw):
    B, T, V = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 6))
    logits = draw(hnp.arrays(np.float64, (B, T, V), elements=st.floats(-5.0, 5.0)))
    if V >= 2:
        # A spread in every row: at a uniform row the entropy is at its maximum and
        # the true gradient is 0, where a relative error means nothing.
        logits[..., 1] = logits[..., 0] + signed(draw, (B, T), 0.5, 3.0)
    mask = draw_mask(draw, (B, T)) if draw(st.booleans()) else None
    return logits, mask


def entropy_loop(logits, mask=None):
    rows = np.asarray(logits, dtype=np.float64).reshape(-1, np.shape(logits)[-1])
    keep = np.ones(rows.shape[0], bool) if mask is None else np.ravel(mask).astype(bool)
    total = 0.0
    for row, k in zip(rows, keep):
        if not k:
            continue
        top = max(row)
        weights = [math.exp(z - top) for z in row]
        Z = sum(weights)
        total -= sum(w / Z * math.log(w / Z) for w in weights if w > 0)
    return total / keep.sum()


@given(case=logits_cases())
def test_entropy_gradient_matches_finite_differences(case):
    logits, mask = case
    _, grad = entropy_from_logits(logits, mask)
    check_gradients(lambda z: entropy_from_logits(z, mask)[0], [logits], [grad], tol=1e-6, names=["logits"])


@given(case=logits_cases())
def test_entropy_matches_the_loop_and_bounds(case):
    logits, mask = case
    H, _ = entropy_from_logits(logits, mask)
    np.testing.assert_allclose(H, entropy_loop(logits, mask), rtol=1e-12, atol=1e-12)
    assert -1e-12 <= H <= np.log(logits.shape[-1]) + 1e-12


def test_uniform_logits_give_log_v():
    V = 7
    H, grad = entropy_from_logits(np.full((2, 3, V), 1.5))
    np.testing.assert_allclose(H, np.log(V), rtol=1e-14)
    np.testing.assert_allclose(grad, 0.0, atol=1e-16)  # the maximum: gradient 0


def test_entropy_extreme_float32_logits():
    logits = np.array(
        [[1e4, -1e4, 0.0, 5e3], [1e4, 1e4, -1e4, -1e4], [-1e4, -1e4, -1e4, -1e4]], dtype=np.float32
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        H, grad = entropy_from_logits(logits)
    assert H.dtype == np.float32 and grad.dtype == np.float32
    assert np.isfinite(H) and np.all(np.isfinite(grad))
    # row 0 is one-hot (0), row 1 is two equal tokens (log 2), row 2 uniform (log 4).
    # At magnitude 1e4 float32 resolves log-probs only to its spacing there (~1e-3).
    np.testing.assert_allclose(H, entropy_loop(logits), rtol=0, atol=2 * np.spacing(np.float32(1e4)))


def test_entropy_with_banned_tokens():
    logits = np.array([[0.3, -np.inf, 1.2, -np.inf], [-np.inf, 2.0, -np.inf, -np.inf]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        H, grad = entropy_from_logits(logits)
    H_allowed = entropy_from_logits(np.array([[0.3, 1.2]]))[0]
    np.testing.assert_allclose(H, H_allowed / 2, rtol=1e-14)  # row 1 has one token: entropy 0
    assert np.all(grad[np.isinf(logits)] == 0)


@pytest.mark.parametrize("row", [[0.0, np.nan, 1.0], [0.0, np.inf, 1.0], [-np.inf, -np.inf, -np.inf]])
def test_entropy_of_nan_plus_inf_or_no_token_is_nan_never_a_number(row):
    logits = np.array([[0.0, 1.0, 2.0], row])
    with np.errstate(invalid="ignore", divide="ignore"):
        H, grad = entropy_from_logits(logits)
    assert np.isnan(H) and np.all(np.isfinite(grad[0]))
    H, _ = entropy_from_logits(logits, mask=np.array([1, 0]))  # a padded row may hold anything
    assert np.isfinite(H)


def test_entropy_padding_purity_and_backends(xp, rng):
    logits = rng.normal(size=(2, 3, 5))
    mask = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)
    garbage = np.where(mask[..., None], logits, np.nan)
    H, grad = entropy_from_logits(xp.asarray(garbage), xp.asarray(mask))
    grad = to_numpy(grad)
    np.testing.assert_allclose(float(H), entropy_loop(logits, mask), rtol=1e-12)
    assert np.all(grad[~mask] == 0)
    copy = logits.copy()
    _, grad_np = entropy_from_logits(logits)
    assert not np.shares_memory(grad_np, logits)
    np.testing.assert_array_equal(logits, copy)


@pytest.mark.torch
@given(case=logits_cases())
def test_entropy_matches_torch(case):
    torch = pytest.importorskip("torch")
    logits, mask = case
    H, grad = entropy_from_logits(logits, mask)
    z = torch.tensor(logits, requires_grad=True)
    per_position = torch.distributions.Categorical(logits=z).entropy()
    m = torch.ones(per_position.shape, dtype=torch.float64) if mask is None else torch.tensor(mask, dtype=torch.float64)
    H_torch = (per_position * m).sum() / m.sum()
    H_torch.backward()
    np.testing.assert_allclose(H, H_torch.item(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad, z.grad.numpy(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    "logits, mask, exc, match",
    [
        (np.zeros((2, 3), dtype=np.int64), None, TypeError, r"logits: expected a floating-point array, got dtype int64"),
        (np.zeros(()), None, ValueError, r"logits must have shape \(\.\.\., V\) with V >= 1, got \(\)"),
        (np.zeros((2, 0)), None, ValueError, r"logits must have shape \(\.\.\., V\) with V >= 1, got \(2, 0\)"),
        (np.zeros((2, 3, 4)), np.ones((2, 4)), ValueError, r"mask must have shape \(2, 3\) like logits.shape\[:-1\], got \(2, 4\)"),
        (np.zeros((2, 4)), np.zeros(2), ValueError, r"mask selects no entries"),
    ],
)
def test_entropy_rejects_bad_inputs(logits, mask, exc, match):
    with pytest.raises(exc, match=match):
        entropy_from_logits(logits, mask)
