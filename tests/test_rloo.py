"""Tests for RLOO's loss and KL-penalised reward (``alignment_np/losses/rloo.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.gradcheck import check_gradients
from alignment_np.losses.rloo import kl_penalised_rewards, rloo_loss
from alignment_np.rl.advantages import leave_one_out_advantages


def make_inputs(seed, b, n):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, n + 1, b)
    mask = (np.arange(n)[None, :] < lengths[:, None]).astype(np.int64)
    logps = -rng.uniform(0.01, 4.0, (b, n))
    ref = -rng.uniform(0.01, 4.0, (b, n))
    logps[mask == 0] = np.nan  # padding may hold anything
    adv = rng.normal(size=b)
    return logps, ref, adv, mask


@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 5), n=st.integers(1, 6))
def test_gradient_matches_finite_differences(seed, b, n):
    logps, _, adv, mask = make_inputs(seed, b, n)
    loss, d_logps, _ = rloo_loss(logps, adv, mask)
    check_gradients(lambda lp: rloo_loss(lp, adv, mask)[0], [logps], [d_logps], names=["logps"])
    np.testing.assert_allclose(d_logps, -adv[:, None] * mask / b)  # the closed form


@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 5), n=st.integers(1, 6))
def test_loss_is_reinforce_on_the_sequence_log_prob(seed, b, n):
    """A slow loop: -(1/B) sum_i A_i sum_t log pi(y_it)."""
    logps, _, adv, mask = make_inputs(seed, b, n)
    loss, _, metrics = rloo_loss(logps, adv, mask)
    seq = [sum(float(logps[i, t]) for t in range(n) if mask[i, t]) for i in range(b)]
    assert loss == pytest.approx(-sum(a * s for a, s in zip(adv, seq)) / b, rel=1e-12)
    assert metrics["seq_logps_mean"] == pytest.approx(np.mean(seq), rel=1e-12)


def test_kl_penalised_rewards_subtract_the_summed_k1():
    logps, ref, _, mask = make_inputs(2, 4, 5)
    scores = np.array([1.0, -1.0, 0.0, 2.0])
    rewards, kl = kl_penalised_rewards(scores, logps, ref, mask, kl_coef=0.1)
    expected_kl = np.array([np.sum((logps[i] - ref[i])[mask[i] == 1]) for i in range(4)])
    np.testing.assert_allclose(kl, expected_kl)
    np.testing.assert_allclose(rewards, scores - 0.1 * expected_kl)
    rewards0, _ = kl_penalised_rewards(scores, logps, ref, mask, kl_coef=0.0)
    np.testing.assert_array_equal(rewards0, scores)


def test_the_gradient_is_unbiased_on_a_bandit():
    """On a 3-armed softmax bandit with k samples per 'prompt', the RLOO gradient (with the
    leave-one-out baseline) averages to the exact policy gradient sum_a pi(a) r(a) grad log pi(a)."""
    rng = np.random.default_rng(0)
    theta = np.array([0.3, -0.2, 0.1])
    pi = np.exp(theta) / np.exp(theta).sum()
    reward = np.array([1.0, 0.0, 2.5])
    exact = pi * (reward - pi @ reward)  # d E[r] / d theta for a softmax policy
    k, n_prompts = 4, 20000
    actions = rng.choice(3, size=(n_prompts * k), p=pi)
    adv = leave_one_out_advantages(reward[actions], k)
    logps = np.log(pi[actions])[:, None]  # one token per response
    _, d_logps, _ = rloo_loss(logps, adv, np.ones_like(logps))
    # Each sample's ascent direction: -d_logps_i * (onehot(a_i) - pi) (d log pi(a) / d theta = e_a - pi),
    # times B so that it is one sample's estimate; prompts are independent, their k samples are not.
    per_sample = -d_logps * len(actions) * (np.eye(3)[actions] - pi)  # (B, 3)
    per_prompt = per_sample.reshape(n_prompts, k, 3).mean(axis=1)  # (n_prompts, 3), independent
    mean = per_prompt.mean(axis=0)
    se = per_prompt.std(axis=0, ddof=1) / np.sqrt(n_prompts)
    assert np.all(np.abs(mean - exact) < 4 * se), (mean, exact, se)
    assert np.all(se < 0.1 * np.abs(exact))  # the check has power: the errors are small against the gradient


def test_bad_inputs_raise_naming_the_argument():
    logps, ref, adv, mask = make_inputs(0, 3, 4)
    with pytest.raises(ValueError, match=r"advantages: expected shape \(3,\)"):
        rloo_loss(logps, adv[:2], mask)
    with pytest.raises(ValueError, match=r"mask: expected shape \(3, 4\)"):
        rloo_loss(logps, adv, mask[:, :2])
    with pytest.raises(ValueError, match=r"logps: expected a \(B, N\) float array"):
        rloo_loss(logps[0], adv, mask)
    with pytest.raises(ValueError, match=r"scores: expected shape \(3,\)"):
        kl_penalised_rewards(np.ones(2), logps, ref, mask, 0.1)
    with pytest.raises(ValueError, match="kl_coef: expected a finite number >= 0"):
        kl_penalised_rewards(np.ones(3), logps, ref, mask, -1.0)


def test_a_counted_nan_propagates_and_padding_never_does():
    logps, ref, adv, mask = make_inputs(1, 3, 4)  # padding of logps holds NaN already
    assert np.isfinite(rloo_loss(logps, adv, mask)[0])
    assert np.isnan(rloo_loss(logps, np.array([np.nan, 0.0, 0.0]), mask)[0])
    bad = logps.copy()
    bad[0, 0] = np.nan
    assert np.isnan(rloo_loss(bad, adv, mask)[0])
    rewards, _ = kl_penalised_rewards(np.array([np.nan, 1.0, 1.0]), logps, ref, mask, 0.1)
    assert np.isnan(rewards[0]) and np.all(np.isfinite(rewards[1:]))


@pytest.mark.torch
def test_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    logps, _, adv, mask = make_inputs(7, 5, 6)
    loss, grad, _ = rloo_loss(logps, adv, mask)
    lp = torch.from_numpy(np.nan_to_num(logps)).requires_grad_(True)
    m = torch.from_numpy(mask).double()
    t_loss = -(torch.from_numpy(adv) * (lp * m).sum(-1)).mean()
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    np.testing.assert_allclose(grad, lp.grad.numpy(), rtol=1e-12, atol=1e-15)
