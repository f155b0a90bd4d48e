"""Tests for GRPO's loss (``alignment_np/losses/grpo.py``): finite differences, a slow loop, torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.gradcheck import check_gradients
from alignment_np.losses.grpo import LOSS_TYPES, grpo_loss, k3_per_token
from alignment_np.losses.ppo import ppo_loss


def make_inputs(seed, b, n, epsilon, per_token_advantages=False):
    """Inputs built away from the kinks: every log-ratio at least 0.05 from log(1 +- eps),
    every advantage at least 0.1 from 0; padding holds NaN (it must be ignored)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, n + 1, b)
    mask = (np.arange(n)[None, :] < lengths[:, None]).astype(np.int64)
    old = -rng.uniform(0.1, 3.0, (b, n))
    edges = np.log([1 - epsilon, 1 + epsilon])
    region = rng.integers(0, 3, (b, n))
    offset = rng.uniform(0.05, 0.4, (b, n))
    inside = rng.uniform(edges[0] + 0.05, edges[1] - 0.05, (b, n))
    log_ratio = np.select([region == 0, region == 1, region == 2], [edges[0] - offset, inside, edges[1] + offset])
    logps = old + log_ratio
    ref = logps + rng.normal(0, 0.7, (b, n))
    shape = (b, n) if per_token_advantages else (b,)
    adv = rng.choice([-1.0, 1.0], shape) * rng.uniform(0.1, 2.0, shape)
    for a in (logps, old, ref):
        a[mask == 0] = np.nan
    return logps, old, ref, adv, mask


def loss_loop(logps, old, ref, adv, mask, beta, eps, loss_type, max_length):
    """The loss one token at a time, with Python floats (DeepSeekMath Eq. 3 and its variants)."""
    b, n = mask.shape
    per_row, total, count = [], 0.0, 0
    for i in range(b):
        row = 0.0
        tokens = [t for t in range(n) if mask[i, t]]
        for t in tokens:
            a = float(adv[i] if np.ndim(adv) == 1 else adv[i, t])
            r = math.exp(logps[i, t] - old[i, t])
            surrogate = min(r * a, min(max(r, 1 - eps), 1 + eps) * a)
            d = ref[i, t] - logps[i, t]
            kl = math.exp(d) - d - 1
            row += -surrogate + beta * kl
        per_row.append(row / len(tokens))
        total += row
        count += len(tokens)
    if loss_type == "grpo":
        return sum(per_row) / b
    if loss_type == "dapo":
        return total / count
    return total / (b * max_length)


params_st = dict(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 4),
    n=st.integers(1, 6),
    beta=st.sampled_from([0.0, 0.04, 0.3]),
    epsilon=st.sampled_from([0.1, 0.2, 0.3]),
    loss_type=st.sampled_from(LOSS_TYPES),
    extra_length=st.integers(0, 4),
    per_token_advantages=st.booleans(),
)


@given(**params_st)
def test_gradient_matches_finite_differences(seed, b, n, beta, epsilon, loss_type, extra_length,
                                             per_token_advantages):
    logps, old, ref, adv, mask = make_inputs(seed, b, n, epsilon, per_token_advantages)
    kwargs = dict(beta=beta, epsilon=epsilon, loss_type=loss_type, max_length=n + extra_length)
    loss, d_logps, _ = grpo_loss(logps, old, ref, adv, mask, **kwargs)
    assert np.all(d_logps[mask == 0] == 0) and np.all(np.isfinite(d_logps))
    check_gradients(lambda lp: grpo_loss(lp, old, ref, adv, mask, **kwargs)[0], [logps], [d_logps],
                    names=[f"logps ({loss_type})"])


@given(**params_st)
def test_loss_matches_a_slow_loop(seed, b, n, beta, epsilon, loss_type, extra_length, per_token_advantages):
    logps, old, ref, adv, mask = make_inputs(seed, b, n, epsilon, per_token_advantages)
    loss, _, _ = grpo_loss(logps, old, ref, adv, mask, beta, epsilon, loss_type, n + extra_length)
    expected = loss_loop(logps, old, ref, adv, mask, beta, epsilon, loss_type, n + extra_length)
    assert loss == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_kl_gradient_is_one_minus_the_ratio_to_the_reference():
    """d k3 / d log pi = 1 - pi_ref / pi: 0 at pi = pi_ref, pushes log pi down where the policy likes a token more."""
    logps = np.array([-1.0, -1.0, -2.0])
    ref = np.array([-1.0, -2.0, -1.0])
    kl, d = k3_per_token(logps, ref)
    np.testing.assert_allclose(kl, np.exp(ref - logps) - (ref - logps) - 1)
    np.testing.assert_allclose(d, 1 - np.exp(ref - logps))
    assert d[0] == 0 and d[1] > 0 and d[2] < 0


def test_beta_zero_and_token_mean_is_ppos_clipped_surrogate():
    """With no KL term and the token-level mean, GRPO's loss is ppo_loss with per-token advantages."""
    logps, old, ref, adv, mask = make_inputs(3, 4, 5, 0.2)
    loss, grad, metrics = grpo_loss(logps, old, ref, adv, mask, beta=0.0, epsilon=0.2, loss_type="dapo")
    tokens_adv = np.broadcast_to(adv[:, None], mask.shape)
    ppo, ppo_grad, ppo_metrics = ppo_loss(logps, old, tokens_adv, 0.2, mask=mask, return_metrics=True)
    assert loss == pytest.approx(float(ppo), rel=1e-12)
    np.testing.assert_allclose(grad, ppo_grad, rtol=1e-12, atol=1e-15)
    assert metrics["clip_ratio/region_mean"] == pytest.approx(ppo_metrics["clip_fraction"])


def test_aggregations_weigh_tokens_as_documented():
    """A long and a short response with the same per-token loss: "grpo" weighs the short one's tokens
    more (the length bias), "dapo" and "dr_grpo" weigh every token alike."""
    mask = np.array([[1, 1, 1, 1], [1, 0, 0, 0]])
    logps = old = ref = np.full((2, 4), -1.0)
    adv = np.array([1.0, 1.0])
    grads = {t: grpo_loss(logps, old, ref, adv, mask, loss_type=t, max_length=8)[1] for t in LOSS_TYPES}
    np.testing.assert_allclose(grads["grpo"][0, 0] * 4, grads["grpo"][1, 0])  # 1/(2*4) vs 1/(2*1)
    np.testing.assert_allclose(grads["dapo"][mask == 1], -1.0 / 5)
    np.testing.assert_allclose(grads["dr_grpo"][mask == 1], -1.0 / (2 * 8))


def test_metrics_count_the_clipped_tokens():
    mask = np.array([[1, 1, 1, 0]])
    old = np.zeros((1, 4))
    logps = np.array([[np.log(1.5), np.log(0.5), 0.0, 7.0]])  # above, below, inside, padding
    ref = np.zeros((1, 4))
    for adv, low, high in ((1.0, 0.0, 1 / 3), (-1.0, 1 / 3, 0.0)):
        _, _, m = grpo_loss(logps, old, ref, np.array([adv]), mask, beta=0.1)
        assert m["clip_ratio/low_mean"] == pytest.approx(low) and m["clip_ratio/high_mean"] == pytest.approx(high)
        assert m["clip_ratio/region_mean"] == pytest.approx(low + high)
        expected_kl = np.mean([np.expm1(-x) + x for x in logps[0, :3]])
        assert m["kl"] == pytest.approx(expected_kl)


def test_float32_extremes_stay_finite_and_keep_their_dtype():
    logps = np.array([[0.0, -80.0, -1e-7]], dtype=np.float32)
    old = np.array([[-80.0, 0.0, 0.0]], dtype=np.float32)
    ref = np.array([[-60.0, -20.0, 0.0]], dtype=np.float32)
    loss, grad, _ = grpo_loss(logps, old, ref, np.array([1.0]), np.ones((1, 3)))
    assert np.isfinite(loss) and grad.dtype == np.float32 and np.all(np.isfinite(grad))
    kl, _ = k3_per_token(logps, logps)
    assert np.all(kl == 0)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(logps=np.zeros(3)), ValueError, r"logps: expected a \(B, N\) float array"),
        (dict(old_logps=np.zeros((2, 2))), ValueError, r"old_logps: expected shape \(2, 3\)"),
        (dict(advantages=np.zeros(3)), ValueError, r"advantages: expected shape \(2,\)"),
        (dict(mask=np.array([[1, 1, 0], [0, 0, 0]])), ValueError, r"rows \[1\] count none"),
        (dict(mask=np.full((2, 3), 2)), ValueError, "mask: expected only 0/1"),
        (dict(beta=-0.1), ValueError, "beta: expected a finite number >= 0"),
        (dict(epsilon=1.0), ValueError, "epsilon: expected a number in"),
        (dict(loss_type="bnpo"), ValueError, "loss_type: expected one of"),
        (dict(loss_type="dr_grpo", max_length=None), ValueError, "max_length: expected a positive int"),
        (dict(loss_type="dr_grpo", max_length=2), ValueError, "max_length: expected >= N=3"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(change, error, match):
    args = dict(logps=np.full((2, 3), -1.0), old_logps=np.full((2, 3), -1.0), ref_logps=np.full((2, 3), -1.0),
                advantages=np.ones(2), mask=np.ones((2, 3)))
    args.update(change)
    with pytest.raises(error, match=match):
        grpo_loss(**args)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("where", ["logps", "old_logps", "ref_logps", "advantages"])
def test_a_counted_nan_propagates_to_the_loss_and_padding_never_does(where, loss_type):
    args = dict(logps=np.full((2, 3), -1.0), old_logps=np.full((2, 3), -1.2), ref_logps=np.full((2, 3), -0.8),
                advantages=np.array([1.0, -1.0]), mask=np.array([[1, 1, 1], [1, 1, 0]]))
    assert np.isfinite(grpo_loss(**args, loss_type=loss_type, max_length=3)[0])
    if where == "advantages":
        args[where] = np.array([1.0, np.nan])
    else:
        args[where] = args[where].copy()
        args[where][1, 2] = np.nan  # padding: ignored
        assert np.isfinite(grpo_loss(**args, loss_type=loss_type, max_length=3)[0])
        args[where][0, 1] = np.nan  # counted: visible
    loss, grad, _ = grpo_loss(**args, loss_type=loss_type, max_length=3)
    assert np.isnan(loss) and np.isnan(grad).any()


@pytest.mark.torch
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_torch_autograd(loss_type):
    torch = pytest.importorskip("torch")
    logps, old, ref, adv, mask = make_inputs(11, 4, 6, 0.2)
    beta, eps, max_length = 0.1, 0.2, 9
    loss, grad, _ = grpo_loss(logps, old, ref, adv, mask, beta, eps, loss_type, max_length)

    m = torch.from_numpy(mask).double()
    lp = torch.from_numpy(np.nan_to_num(logps)).requires_grad_(True)  # TRL-style, written independently
    o, rf = torch.from_numpy(np.nan_to_num(old)), torch.from_numpy(np.nan_to_num(ref))
    a = torch.from_numpy(adv)[:, None]
    coef_1 = torch.exp(lp - o)
    coef_2 = torch.clamp(coef_1, 1 - eps, 1 + eps)
    per_token = -torch.min(coef_1 * a, coef_2 * a) + beta * (torch.exp(rf - lp) - (rf - lp) - 1)
    if loss_type == "grpo":
        t_loss = ((per_token * m).sum(-1) / m.sum(-1)).mean()
    elif loss_type == "dapo":
        t_loss = (per_token * m).sum() / m.sum()
    else:
        t_loss = (per_token * m).sum() / (m.shape[0] * max_length)
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    np.testing.assert_allclose(grad, lp.grad.numpy() * mask, rtol=1e-10, atol=1e-15)
