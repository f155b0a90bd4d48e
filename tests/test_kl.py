"""KL divergence over a vocabulary and the per-token k1/k2/k3 estimators."""

from __future__ import annotations

import math
import warnings

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.backend import to_numpy
from alignment_np.functional.stable import log_softmax, log_softmax_backward
from alignment_np.gradcheck import check_gradients, numerical_gradient, relative_error
from alignment_np.losses.kl import (
    kl_divergence,
    kl_divergence_backward,
    kl_divergence_forward,
    kl_estimate,
    kl_penalty_reward,
)

LOGITS = st.floats(-6.0, 6.0)
LEADING = st.one_of(st.tuples(), st.tuples(st.integers(1, 3)), st.tuples(st.integers(1, 2), st.integers(1, 3)))


@st.composite
def distribution_pairs(draw):
    """log P and log Q of shape (..., V), from random logits."""
    shape = draw(LEADING) + (draw(st.integers(1, 6)),)
    log_p = log_softmax(draw(hnp.arrays(np.float64, shape, elements=LOGITS)))
    log_q = log_softmax(draw(hnp.arrays(np.float64, shape, elements=LOGITS)))
    return log_p, log_q


def kl_loop(log_p, log_q):
    """sum_v p_v (log p_v - log q_v), one row at a time, skipping p_v = 0."""
    rows_p = np.reshape(log_p, (-1, np.shape(log_p)[-1]))
    rows_q = np.reshape(log_q, rows_p.shape)
    out = []
    for lp_row, lq_row in zip(rows_p, rows_q):
        total = 0.0
        for lp, lq in zip(lp_row, lq_row):
            if lp == -math.inf:
                continue
            total += math.exp(lp) * (lp - lq)
        out.append(total)
    return np.array(out).reshape(np.shape(log_p)[:-1])


# ----------------------------------------------------------------------------- full KL


@given(pair=distribution_pairs())
def test_kl_is_non_negative_and_matches_the_loop(pair):
    log_p, log_q = pair
    kl = kl_divergence(log_p, log_q)
    assert kl.shape == log_p.shape[:-1]
    np.testing.assert_allclose(kl, kl_loop(log_p, log_q), rtol=1e-12, atol=1e-14)
    assert np.all(kl >= -1e-15)


@given(pair=distribution_pairs())
def test_kl_of_a_distribution_with_itself_is_zero(pair):
    log_p, _ = pair
    np.testing.assert_array_equal(kl_divergence(log_p, log_p.copy()), np.zeros(log_p.shape[:-1]))


@given(pair=distribution_pairs(), data=st.data())
def test_kl_gradients_match_finite_differences(pair, data):
    log_p, log_q = pair
    dout = data.draw(hnp.arrays(np.float64, log_p.shape[:-1], elements=st.floats(-2.0, 2.0)), label="dout")
    kl, cache = kl_divergence_forward(log_p, log_q)
    grad_p, grad_q = kl_divergence_backward(dout, cache)
    f = lambda lp, lq: kl_divergence_forward(lp, lq)[0]
    check_gradients(f, [log_p, log_q], [grad_p, grad_q], dout=dout, tol=1e-6, names=["log_probs_p", "log_probs_q"])
    _, grad_sum = kl_divergence(log_p, log_q, return_grad=True)
    np.testing.assert_array_equal(grad_sum, kl_divergence_backward(np.ones(kl.shape), cache)[0])


@given(shape=st.tuples(st.integers(1, 3), st.integers(2, 6)), data=st.data())
def test_gradient_through_log_softmax_drops_the_plus_one(shape, data):
    # KL(softmax(z) || Q) w.r.t. the logits z: chain kl_divergence_backward into
    # log_softmax_backward and compare with finite differences on z.
    # Logits within [-2, 2]: P is never nearly one-hot, where the whole gradient shrinks to ~1e-5 and
    # the central difference's rounding (~eps * KL / h) alone is a relative error above 1e-6.
    z = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-2.0, 2.0)), label="z")
    # Q's logits differ from z by a shift that is NOT constant along a row, so Q != P
    # in every row (at P = Q the gradient is 0 and a relative error means nothing).
    shift = data.draw(hnp.arrays(np.float64, shape, elements=st.floats(-3.0, 3.0)), label="shift")
    gap = data.draw(st.floats(0.5, 3.0), label="gap") * data.draw(st.sampled_from([-1.0, 1.0]), label="sign")
    shift[..., 0] = shift[..., 1] + gap
    log_q = log_softmax(z + shift)
    log_p = log_softmax(z)
    _, cache = kl_divergence_forward(log_p, log_q)
    grad_log_p, _ = kl_divergence_backward(np.ones(shape[:-1]), cache)
    grad_z = log_softmax_backward(grad_log_p, np.exp(log_p))
    numeric = numerical_gradient(lambda zz: kl_divergence(log_softmax(zz), log_q), [z])
    assert relative_error(grad_z, numeric) <= 1e-6
    # The familiar closed form: p * (log p - log q - KL).
    kl = kl_divergence(log_p, log_q)[..., None]
    np.testing.assert_allclose(grad_z, np.exp(log_p) * (log_p - log_q - kl), rtol=1e-10, atol=1e-14)


def test_zero_probability_entries_of_p_contribute_nothing():
    log_p = np.array([np.log(0.5), -np.inf, np.log(0.5), -np.inf])  # p = 0 at entries 1 and 3
    log_q = np.array([np.log(0.25), np.log(0.5), np.log(0.25), -np.inf])  # q = 0 at entry 3 too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kl, cache = kl_divergence_forward(log_p, log_q)
        grad_p, grad_q = kl_divergence_backward(np.float64(1.0), cache)
    np.testing.assert_allclose(kl, kl_divergence(log_p[[0, 2]], log_q[[0, 2]]), rtol=1e-15)
    np.testing.assert_allclose(kl, np.log(2.0), rtol=1e-15)
    assert grad_p[1] == 0 and grad_p[3] == 0 and grad_q[1] == 0 and grad_q[3] == 0


def test_q_zero_where_p_is_not_gives_inf():
    log_p = np.log(np.array([[0.5, 0.5], [0.5, 0.5]]))
    log_q = np.array([[0.0, -np.inf], np.log([0.5, 0.5])])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kl = kl_divergence(log_p, log_q)
    assert kl[0] == np.inf and kl[1] == 0


def test_p_that_underflows_but_is_not_zero_where_q_is_zero_gives_inf():
    # p_1 = e^-200 underflows float32 to 0, but it is not 0: where q_1 = 0 the
    # true KL is +inf (it was reported as 0). The gradient there is +inf, not nan.
    log_p = np.array([0.0, -200.0], dtype=np.float32)
    log_q = np.array([0.0, -np.inf], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kl, cache = kl_divergence_forward(log_p, log_q)
        grad_p, grad_q = kl_divergence_backward(np.float32(1.0), cache)
        grad_zero_dout, _ = kl_divergence_backward(np.float32(0.0), cache)
    assert kl == np.inf and kl.dtype == np.float32
    assert grad_p[1] == np.inf and grad_p[0] == 1.0 and grad_p.dtype == np.float32
    assert np.all(grad_zero_dout == 0)


@pytest.mark.parametrize("name", ["log_probs_p", "log_probs_q"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_kl_divergence_refuses_nan_and_plus_inf(name, bad):
    args = {"log_probs_p": np.log(np.full((2, 3), 1 / 3)), "log_probs_q": np.log(np.full((2, 3), 1 / 3))}
    args[name][1, 2] = bad
    with pytest.raises(ValueError, match=rf"{name}: expected finite values, got {bad} at index \(1, 2\)"):
        kl_divergence(**args)


def test_kl_extreme_float32_logits():
    z_p = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], dtype=np.float32)
    z_q = np.array([[1e4, 1e4, -1e4], [0.0, -1e4, 1e4]], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kl, grad = kl_divergence(log_softmax(z_p), log_softmax(z_q), return_grad=True)
    assert kl.dtype == np.float32 and grad.dtype == np.float32
    assert np.all(np.isfinite(kl)) and np.all(np.isfinite(grad))
    expected = kl_loop(log_softmax(z_p.astype(np.float64)), log_softmax(z_q.astype(np.float64)))
    # float32 resolves values near 1e4 only to its spacing there.
    np.testing.assert_allclose(kl, expected, rtol=0, atol=2 * np.spacing(np.float32(1e4)))


def test_backward_does_not_mutate_or_alias(rng):
    log_p = log_softmax(rng.normal(size=(2, 5)))
    log_q = log_softmax(rng.normal(size=(2, 5)))
    dout = rng.normal(size=2)
    _, cache = kl_divergence_forward(log_p, log_q)
    saved = [a.copy() for a in (log_p, log_q, dout, *cache)]
    grads = kl_divergence_backward(dout, cache)
    for g in grads:
        assert not any(np.shares_memory(g, a) for a in (log_p, log_q, dout, *cache))
    for a, s in zip((log_p, log_q, dout, *cache), saved):
        np.testing.assert_array_equal(a, s)


def test_kl_both_backends(xp, rng):
    log_p = log_softmax(rng.normal(size=(2, 3, 4)))
    log_q = log_softmax(rng.normal(size=(2, 3, 4)))
    kl, grad = kl_divergence(xp.asarray(log_p), xp.asarray(log_q), return_grad=True)
    assert type(kl) is type(xp.asarray(log_p))
    np.testing.assert_allclose(to_numpy(kl), kl_loop(log_p, log_q), rtol=1e-12)
    np.testing.assert_allclose(to_numpy(grad), np.exp(log_p) * (log_p - log_q + 1), rtol=1e-12)


@pytest.mark.torch
@given(pair=distribution_pairs())
def test_kl_matches_torch(pair):
    torch = pytest.importorskip("torch")
    log_p, log_q = pair
    kl, grad_p = kl_divergence(log_p, log_q, return_grad=True)
    lp = torch.tensor(log_p, requires_grad=True)
    # kl_div(input, target, log_target=True) = exp(target) * (target - input)
    kl_torch = torch.nn.functional.kl_div(torch.tensor(log_q), lp, reduction="none", log_target=True).sum(-1)
    kl_torch.sum().backward()
    np.testing.assert_allclose(kl, kl_torch.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad_p, lp.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "log_p, log_q, exc, match",
    [
        (np.zeros((2, 3)), np.zeros((2, 4)), ValueError, r"log_probs_p and log_probs_q must have the same shape, got \(2, 3\) and \(2, 4\)"),
        (np.zeros(()), np.zeros(()), ValueError, r"log_probs_p must have shape \(\.\.\., V\)"),
        (np.zeros(3, dtype=int), np.zeros(3), TypeError, r"log_probs_p: expected a floating-point array, got dtype int"),
    ],
)
def test_kl_divergence_rejects_bad_inputs(log_p, log_q, exc, match):
    with pytest.raises(exc, match=match):
        kl_divergence(log_p, log_q)


# ----------------------------------------------------------------------------- per-token estimators


@given(pair=distribution_pairs())
def test_k1_and_k3_are_unbiased_exactly(pair):
    # E_{x ~ P}[k(x)] summed over the whole vocabulary with weights p (no sampling).
    log_p, log_q = pair
    p = np.exp(log_p)
    kl = kl_divergence(log_p, log_q)
    for estimator in ("k1", "k3"):
        per_token = kl_estimate(log_p, log_q, estimator)
        np.testing.assert_allclose((p * per_token).sum(-1), kl, rtol=1e-10, atol=1e-12, err_msg=estimator)


@given(
    policy=hnp.arrays(np.float64, st.integers(1, 20), elements=st.floats(-20.0, 0.0)),
    data=st.data(),
)
def test_k2_and_k3_are_non_negative(policy, data):
    # Log-ratios from tiny (where exp(x) - 1 - x would round below 0) to large.
    exponent = data.draw(hnp.arrays(np.float64, policy.shape, elements=st.floats(-12.0, 1.0)), label="exponent")
    sign = data.draw(hnp.arrays(np.float64, policy.shape, elements=st.sampled_from([-1.0, 1.0])), label="sign")
    ref = policy + sign * 10.0**exponent
    for dtype in (np.float64, np.float32):
        for estimator in ("k2", "k3"):
            est = kl_estimate(policy.astype(dtype), ref.astype(dtype), estimator)
            assert est.dtype == dtype
            assert np.all(est >= 0), (estimator, dtype)


def test_k1_can_be_negative_and_estimators_agree_near_p_equals_q():
    policy, ref = np.array([-2.0]), np.array([-1.5])  # the reference likes the token more
    assert kl_estimate(policy, ref, "k1")[0] < 0
    # For tiny log-ratios d: k1 = d, k2 = d^2 / 2, k3 ~ d^2 / 2.
    d = 1e-3
    policy, ref = np.array([-1.0]), np.array([-1.0 - d])
    np.testing.assert_allclose(kl_estimate(policy, ref, "k3"), kl_estimate(policy, ref, "k2"), rtol=1e-2)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_penalty_is_minus_coef_times_estimate(estimator, rng):
    policy, ref = rng.normal(size=(3, 5)) - 2, rng.normal(size=(3, 5)) - 2
    penalty = kl_penalty_reward(policy, ref, kl_coef=0.3, estimator=estimator)
    np.testing.assert_array_equal(penalty, -0.3 * kl_estimate(policy, ref, estimator))
    # Sign convention: a token the policy likes more than the reference is penalised.
    more = kl_penalty_reward(np.array([-0.5]), np.array([-3.0]), kl_coef=0.3, estimator=estimator)
    assert more[0] < 0
    assert np.all(kl_penalty_reward(policy, ref, kl_coef=0.0, estimator=estimator) == 0)


def test_estimators_ignore_padding(xp):
    policy = xp.asarray([[-1.0, -2.0, -np.inf], [-0.5, 1.0, np.nan]])
    ref = xp.asarray([[-1.5, -1.0, -np.inf], [-0.7, -np.inf, 3.0]])
    mask = xp.asarray([[1, 1, 0], [1, 0, 0]])
    m = to_numpy(mask) == 1
    for estimator in ("k1", "k2", "k3"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            est = to_numpy(kl_estimate(policy, ref, estimator, mask=mask))
            pen = to_numpy(kl_penalty_reward(policy, ref, 0.1, estimator, mask=mask))
        expected = kl_estimate(to_numpy(policy)[m], to_numpy(ref)[m], estimator)
        np.testing.assert_allclose(est[m], expected, rtol=1e-14)
        assert np.all(est[~m] == 0) and np.all(pen[~m] == 0)
        np.testing.assert_allclose(pen, -0.1 * est, rtol=1e-14)


def test_estimators_extreme_float32():
    policy = np.array([-0.5, -1.0, -5e3], dtype=np.float32)
    ref = np.array([-1e4, -1e4, -1e4], dtype=np.float32)  # log r = log q - log p <= 0: no overflow
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ests = {e: kl_estimate(policy, ref, e) for e in ("k1", "k2", "k3")}
    d = policy.astype(np.float64) - ref.astype(np.float64)  # log p - log q
    expected = {"k1": d, "k2": 0.5 * d * d, "k3": np.expm1(-d) + d}
    for e, est in ests.items():
        assert est.dtype == np.float32 and np.all(np.isfinite(est)), e
        np.testing.assert_allclose(est, expected[e], rtol=1e-6, err_msg=e)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"estimator": "k4"}, ValueError, r"estimator must be one of \['k1', 'k2', 'k3'\], got 'k4'"),
        ({"estimator": None}, ValueError, r"estimator must be one of .*got None"),
        ({"kl_coef": -0.1}, ValueError, r"kl_coef must be >= 0, got -0.1"),
        ({"kl_coef": float("nan")}, ValueError, r"kl_coef must be >= 0, got nan"),
        ({"kl_coef": "0.1"}, TypeError, r"kl_coef must be a real number, got str"),
        ({"ref_log_probs": np.zeros(4)}, ValueError, r"policy_log_probs and ref_log_probs must have the same shape, got \(3,\) and \(4,\)"),
        ({"policy_log_probs": np.zeros(3, dtype=np.int32)}, TypeError, r"policy_log_probs: expected a floating-point array"),
        ({"mask": np.ones(2)}, ValueError, r"mask must have shape \(3,\) like policy_log_probs, got \(2,\)"),
        ({"mask": np.array([0.5, 1, 1])}, ValueError, r"mask must contain only 0 and 1"),
    ],
)
def test_kl_penalty_reward_rejects_bad_inputs(kwargs, exc, match):
    args = {"policy_log_probs": -np.ones(3), "ref_log_probs": -np.ones(3)}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        kl_penalty_reward(**args)
    if "kl_coef" not in kwargs:  # the same checks guard kl_estimate
        args.pop("kl_coef", None)
        with pytest.raises(exc, match=match):
            kl_estimate(**args)


@pytest.mark.parametrize("name", ["policy_log_probs", "ref_log_probs"])
@pytest.mark.parametrize("kl_coef", [0.1, 0.0])
def test_estimators_propagate_a_nan_visibly(name, kl_coef):
    # Inside a rollout a NaN log-prob is a diverged model: the estimate and the
    # penalised reward are NaN there (also with the penalty off), never 0.
    args = {"policy_log_probs": -np.ones(3), "ref_log_probs": -np.ones(3)}
    args[name][0] = np.nan
    for estimator in ("k1", "k2", "k3"):
        est = kl_estimate(**args, estimator=estimator)
        pen = kl_penalty_reward(**args, kl_coef=kl_coef, estimator=estimator)
        assert np.isnan(est[0]) and np.isnan(pen[0]) and np.all(est[1:] == 0) and np.all(pen[1:] == 0)
    assert kl_penalty_reward(**args, mask=np.array([0, 1, 1]))[0] == 0  # padding may hold it


def test_a_reference_log_prob_of_minus_inf_gives_the_true_infinite_estimate():
    policy, ref = np.array([-1.0, -1.0]), np.array([-np.inf, -1.0])
    with np.errstate(over="ignore"):
        assert kl_estimate(policy, ref, "k1")[0] == np.inf
        assert kl_estimate(policy, ref, "k2")[0] == np.inf
        assert kl_estimate(policy, ref, "k3")[0] == np.inf  # expm1(-inf) + inf


def test_k3_overflow_is_inf_and_a_zero_coefficient_still_gives_zero():
    # The reference likes the token e^100 times more than the policy: k3 = e^100
    # - 1 - 100 does not fit float32. The estimate is +inf (NumPy warns), never
    # nan; with kl_coef = 0 (penalty off) the penalty is exactly 0 (0 * inf = nan before).
    policy = np.array([-100.0, -1.0], dtype=np.float32)
    ref = np.array([0.0, -1.0], dtype=np.float32)
    with np.errstate(over="ignore", invalid="raise"):
        k3 = kl_estimate(policy, ref, "k3")
        off = kl_penalty_reward(policy, ref, kl_coef=0.0, estimator="k3")
        on = kl_penalty_reward(policy, ref, kl_coef=0.1, estimator="k3")
    assert k3[0] == np.inf and k3[1] == 0
    assert off.dtype == np.float32 and np.all(off == 0)
    assert on[0] == -np.inf and on[1] == 0


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_estimators_keep_float32_even_for_scalars(estimator):
    # 0-d inputs are where NumPy 1.x promoted float32 * 0.5 to float64.
    p, q = np.float32(-1.0), np.float32(-1.5)
    assert kl_estimate(p, q, estimator).dtype == np.float32
    assert kl_penalty_reward(p, q, kl_coef=0.1, estimator=estimator).dtype == np.float32
    assert kl_penalty_reward(p, q, kl_coef=np.float64(0.1), estimator=estimator).dtype == np.float32
