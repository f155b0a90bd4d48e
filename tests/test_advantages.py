"""Tests for the advantage estimators (``alignment_np/rl/advantages.py``): each against its slow loop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.backend import to_numpy
from alignment_np.rl.advantages import (
    gae_advantages,
    gae_advantages_reference,
    group_advantages,
    group_advantages_reference,
    leave_one_out_advantages,
    leave_one_out_advantages_reference,
)


def right_padded_mask(rng, b, n):
    """(B, N) 0/1 with each row 1 on its first 1..N tokens; at least 2 tokens in all (whitening)."""
    lengths = rng.integers(1, n + 1, b)
    if lengths.sum() < 2:
        lengths[0] = 2 if n >= 2 else lengths[0]
    return (np.arange(n)[None, :] < lengths[:, None]).astype(np.int64)


# --------------------------------------------------------------------------- GAE
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 5), n=st.integers(2, 8),
       gamma=st.floats(0.5, 1.0), lam=st.floats(0.0, 1.0), whiten_advantages=st.booleans())
def test_gae_advantages_match_the_loop(seed, b, n, gamma, lam, whiten_advantages):
    rng = np.random.default_rng(seed)
    mask = right_padded_mask(rng, b, n)
    rewards, values = rng.normal(size=(2, b, n))
    rewards[mask == 0] = np.nan  # padding may hold anything
    adv, ret = gae_advantages(rewards, values, mask, gamma, lam, whiten_advantages)
    ref_adv, ref_ret = gae_advantages_reference(rewards, values, mask, gamma, lam, whiten_advantages)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ret, ref_ret, rtol=1e-9, atol=1e-12)
    assert np.all(adv[mask == 0] == 0) and np.all(ret[mask == 0] == 0)


def test_gae_advantages_are_whitened_over_the_batch_and_returns_are_not(rng):
    mask = right_padded_mask(rng, 6, 7)
    rewards, values = rng.normal(size=(2, 6, 7)) * 3
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.95)
    raw, raw_ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=0.95, whiten_advantages=False)
    counted = adv[mask == 1]
    assert abs(counted.mean()) < 1e-12 and counted.std(ddof=1) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(ret, raw_ret)  # value targets are the un-whitened returns
    np.testing.assert_allclose(raw_ret[mask == 1], (raw + values)[mask == 1])


def test_gae_with_the_score_on_the_last_token_and_lambda_one_is_score_minus_value():
    """gamma = lam = 1, zero KL: every token's advantage is the score minus that token's value."""
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]])
    values = np.array([[0.1, 0.2, 0.3, 9.0], [0.0, -0.5, 0.5, 1.0]])
    rewards = np.zeros((2, 4))
    rewards[0, 2], rewards[1, 3] = 2.0, -1.0  # the scores at each row's last real token
    adv, ret = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0, whiten_advantages=False)
    np.testing.assert_allclose(adv[0, :3], 2.0 - values[0, :3])
    np.testing.assert_allclose(adv[1], -1.0 - values[1])
    np.testing.assert_allclose(ret[mask == 1], np.array([2.0, 2.0, 2.0, -1.0, -1.0, -1.0, -1.0]))


# --------------------------------------------------------------------------- group (GRPO)


@given(seed=st.integers(0, 2**31 - 1), n_groups=st.integers(1, 5), g=st.integers(2, 6), scale=st.booleans(),
       discrete=st.booleans())
def test_group_advantages_match_the_loop(seed, n_groups, g, scale, discrete):
    rng = np.random.default_rng(seed)
    r = rng.integers(-2, 3, n_groups * g).astype(float) if discrete else rng.normal(size=n_groups * g)
    np.testing.assert_allclose(group_advantages(r, g, scale), group_advantages_reference(r, g, scale),
                               rtol=1e-12, atol=1e-12)


def test_group_advantages_are_normalised_within_each_group(rng):
    r = np.concatenate([rng.normal(0, 1, 4), rng.normal(10, 5, 4)])
    a = group_advantages(r, 4).reshape(2, 4)
    np.testing.assert_allclose(a.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(a.std(axis=1, ddof=1), 1, rtol=1e-12)
    unscaled = group_advantages(r, 4, scale=False).reshape(2, 4)
    np.testing.assert_allclose(unscaled, r.reshape(2, 4) - r.reshape(2, 4).mean(axis=1, keepdims=True))


def test_a_group_of_equal_rewards_has_zero_advantage_even_when_its_mean_rounds():
    """0.1 * 3 / 3 != 0.1 in floating point: r - mean is ~1e-17, not 0; the advantage must still be 0."""
    r = np.array([0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 0.0, 1.0, 2.0])
    assert r[:3].mean() != 0.1  # the rounding this test is about
    a = group_advantages(r, 3)
    assert np.all(a[:6] == 0)
    np.testing.assert_allclose(a[6:], [-1, 0, 1])
    r32 = r.astype(np.float32)
    assert group_advantages(r32, 3).dtype == np.float32


# --------------------------------------------------------------------------- leave-one-out (RLOO)
@given(seed=st.integers(0, 2**31 - 1), n_groups=st.integers(1, 5), k=st.integers(2, 6))
def test_leave_one_out_matches_the_loop_and_its_closed_form(seed, n_groups, k):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=n_groups * k)
    a = leave_one_out_advantages(r, k)
    np.testing.assert_allclose(a, leave_one_out_advantages_reference(r, k), rtol=1e-12, atol=1e-12)
    groups = r.reshape(-1, k)
    closed = k / (k - 1) * (groups - groups.mean(axis=1, keepdims=True))  # Ahmadian et al. 2024
    np.testing.assert_allclose(a.reshape(-1, k), closed, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.reshape(-1, k).sum(axis=1), 0, atol=1e-10)


def test_leave_one_out_baseline_does_not_depend_on_the_sample_itself():
    """Changing sample 0's reward changes its own advantage one for one, and the others' by -1/(k-1)."""
    r = np.array([1.0, 2.0, 4.0, 8.0])
    a = leave_one_out_advantages(r, 4)
    moved = leave_one_out_advantages(r + np.array([3.0, 0, 0, 0]), 4)
    np.testing.assert_allclose(moved - a, [3.0, -1.0, -1.0, -1.0])


def test_estimators_run_on_the_active_backend(xp):
    r = xp.asarray(np.array([0.0, 1.0, 3.0, 2.0]))
    assert type(group_advantages(r, 2)) is type(r)
    np.testing.assert_allclose(to_numpy(leave_one_out_advantages(r, 2)), [-1, 1, 1, -1])


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "fn, args, match",
    [
        (group_advantages, (np.ones(6), 4), "rewards: expected a length that is a positive multiple of group_size=4"),
        (group_advantages, (np.ones(6), 1), "group_size: expected an int >= 2"),
        (group_advantages, (np.ones((2, 3)), 3), r"rewards: expected a \(B,\) float array"),
        (leave_one_out_advantages, (np.ones(4), 1), "k: expected an int >= 2"),
        (leave_one_out_advantages, (np.arange(4), 2), r"rewards: expected a \(B,\) float array"),
    ],
)
def test_bad_arguments_raise_naming_them(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


@pytest.mark.parametrize("fn", [group_advantages, leave_one_out_advantages])
def test_a_nan_reward_propagates_to_its_group_only(fn):
    a = fn(np.array([1.0, np.nan, 0.0, 2.0]), 2)
    assert np.all(np.isnan(a[:2])) and np.all(np.isfinite(a[2:]))


def test_scale_must_be_a_bool():
    with pytest.raises(TypeError, match="scale: expected a bool"):
        group_advantages(np.ones(4), 2, scale=1)
