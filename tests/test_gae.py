"""GAE (Schulman et al. 2016) and whitening: the vectorised kernel against a
hand-checkable loop, and the properties the math promises."""

from __future__ import annotations

import warnings

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.backend import to_numpy
from alignment_np.rl.gae import compute_gae, compute_gae_reference, whiten

FLOATS = st.floats(-5.0, 5.0, allow_nan=False, allow_infinity=False)
UNIT = st.floats(0.0, 1.0)


@st.composite
def trajectories(draw, batched=None, with_dones=False, with_mask=False):
    """rewards, values, last_value and optionally dones / a right-padding mask."""
    if batched is None:
        batched = draw(st.booleans())
    B = draw(st.integers(1, 4))
    T = draw(st.integers(1, 8))
    shape = (B, T) if batched else (T,)
    case = {
        "rewards": draw(hnp.arrays(np.float64, shape, elements=FLOATS)),
        "values": draw(hnp.arrays(np.float64, shape, elements=FLOATS)),
    }
    if batched and draw(st.booleans()):
        case["last_value"] = draw(hnp.arrays(np.float64, (B,), elements=FLOATS))
    else:
        case["last_value"] = draw(FLOATS)
    if with_dones:
        case["dones"] = draw(hnp.arrays(np.bool_, shape))
    if with_mask:
        lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B)) if batched else [draw(st.integers(1, T))]
        mask = np.arange(T)[None, :] < np.array(lengths)[:, None]
        case["mask"] = mask if batched else mask[0]
    return case


def discounted_returns_loop(rewards, gamma, last_value):
    """G_t = r_t + gamma * G_{t+1}, G_T = last_value, one row at a time."""
    rows = np.atleast_2d(rewards)
    last = np.broadcast_to(last_value, (rows.shape[0],))
    out = np.zeros(rows.shape)
    for b in range(rows.shape[0]):
        G = float(last[b])
        for t in reversed(range(rows.shape[1])):
            G = rows[b, t] + gamma * G
            out[b, t] = G
    return out.reshape(np.shape(rewards))


# ----------------------------------------------------------------------------- against the loop


@given(case=trajectories(with_dones=True, with_mask=True), gamma=UNIT, lam=UNIT)
def test_vectorised_matches_reference_loop(case, gamma, lam):
    adv, ret = compute_gae(gamma=gamma, lam=lam, **case)
    adv_ref, ret_ref = compute_gae_reference(gamma=gamma, lam=lam, **case)
    np.testing.assert_allclose(adv, adv_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ret, ret_ref, rtol=1e-12, atol=1e-12)


@given(case=trajectories(batched=True, with_dones=True), gamma=UNIT, lam=UNIT)
def test_batched_rows_equal_single_trajectories(case, gamma, lam):
    adv, ret = compute_gae(gamma=gamma, lam=lam, **case)
    last = np.broadcast_to(case["last_value"], (case["rewards"].shape[0],))
    for b in range(case["rewards"].shape[0]):
        adv_b, ret_b = compute_gae(
            case["rewards"][b], case["values"][b], gamma, lam, last_value=float(last[b]), dones=case["dones"][b]
        )
        np.testing.assert_allclose(adv[b], adv_b, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ret[b], ret_b, rtol=1e-12, atol=1e-12)


def test_pinned_example_by_hand():
    # Two steps, gamma = 0.5, lam = 0.5, V = 0, last_value = 0:
    # delta = r, A_1 = r_1 = 2, A_0 = r_0 + 0.25 * A_1 = 1 + 0.5 = 1.5.
    adv, ret = compute_gae(np.array([1.0, 2.0]), np.zeros(2), gamma=0.5, lam=0.5)
    np.testing.assert_allclose(adv, [1.5, 2.0])
    np.testing.assert_allclose(ret, [1.5, 2.0])


# ----------------------------------------------------------------------------- properties


@given(case=trajectories(), gamma=UNIT)
def test_lambda_one_is_discounted_return_minus_values(case, gamma):
    adv, ret = compute_gae(lam=1.0, gamma=gamma, **case)
    G = discounted_returns_loop(case["rewards"], gamma, case["last_value"])
    np.testing.assert_allclose(adv, G - case["values"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ret, G, rtol=1e-10, atol=1e-10)


@given(case=trajectories(), gamma=UNIT)
def test_lambda_zero_is_td_residual(case, gamma):
    adv, _ = compute_gae(lam=0.0, gamma=gamma, **case)
    values = case["values"]
    last = np.broadcast_to(case["last_value"], values.shape[:-1])[..., None]
    next_values = np.concatenate([values[..., 1:], last], axis=-1)
    delta = case["rewards"] + gamma * next_values - values
    np.testing.assert_allclose(adv, delta, rtol=1e-12, atol=1e-12)


@given(case=trajectories(batched=False), gamma=UNIT, lam=UNIT, data=st.data())
def test_done_stops_bootstrapping(case, gamma, lam, data):
    T = case["rewards"].shape[0]
    k = data.draw(st.integers(0, T - 1), label="done at")
    dones = np.zeros(T, dtype=bool)
    dones[k] = True
    adv, _ = compute_gae(gamma=gamma, lam=lam, dones=dones, **case)
    # Change everything after the episode end, including the bootstrap value.
    later = dict(case)
    later["rewards"] = case["rewards"].copy()
    later["values"] = case["values"].copy()
    later["rewards"][k + 1 :] += 3.0
    later["values"][k + 1 :] -= 2.0
    later["last_value"] = case["last_value"] + 7.0
    adv_later, _ = compute_gae(gamma=gamma, lam=lam, dones=dones, **later)
    np.testing.assert_array_equal(adv[: k + 1], adv_later[: k + 1])
    # and the step that ended the episode sees only its own reward
    assert adv[k] == case["rewards"][k] - case["values"][k]


@given(case=trajectories(), gamma=UNIT, lam=UNIT)
def test_returns_are_advantages_plus_values(case, gamma, lam):
    adv, ret = compute_gae(gamma=gamma, lam=lam, **case)
    np.testing.assert_array_equal(ret, adv + case["values"])


@given(case=trajectories(batched=True, with_mask=True), gamma=UNIT, lam=UNIT)
def test_right_padding_equals_truncated_episodes(case, gamma, lam):
    adv, ret = compute_gae(gamma=gamma, lam=lam, **case)
    mask = case["mask"]
    T = mask.shape[1]
    last = np.broadcast_to(case["last_value"], (mask.shape[0],))
    for b, L in enumerate(mask.sum(axis=1)):
        # A response shorter than T ended at its last token: no bootstrap.
        bootstrap = float(last[b]) if L == T else 0.0
        adv_b, ret_b = compute_gae(
            case["rewards"][b, :L], case["values"][b, :L], gamma, lam, last_value=bootstrap
        )
        np.testing.assert_allclose(adv[b, :L], adv_b, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ret[b, :L], ret_b, rtol=1e-12, atol=1e-12)
        assert np.all(adv[b, L:] == 0) and np.all(ret[b, L:] == 0)


@given(case=trajectories(batched=True, with_mask=True, with_dones=True), gamma=UNIT, lam=UNIT)
def test_padding_contents_are_ignored(case, gamma, lam):
    adv, ret = compute_gae(gamma=gamma, lam=lam, **case)
    garbage = dict(case)
    pad = ~case["mask"]
    garbage["rewards"] = np.where(pad, np.nan, case["rewards"])
    garbage["values"] = np.where(pad, -np.inf, case["values"])
    adv_g, ret_g = compute_gae(gamma=gamma, lam=lam, **garbage)
    np.testing.assert_array_equal(adv, adv_g)
    np.testing.assert_array_equal(ret, ret_g)


def test_hole_in_mask_cuts_the_trajectory():
    rewards = np.array([1.0, 2.0, 3.0, 4.0])
    values = np.array([0.5, 0.5, 0.5, 0.5])
    mask = np.array([1, 0, 1, 1])
    adv, _ = compute_gae(rewards, values, gamma=0.9, lam=0.8, last_value=1.0, mask=mask)
    after, _ = compute_gae(rewards[2:], values[2:], gamma=0.9, lam=0.8, last_value=1.0)
    before, _ = compute_gae(rewards[:1], values[:1], gamma=0.9, lam=0.8, last_value=0.0)
    np.testing.assert_allclose(adv, np.concatenate([before, [0.0], after]))


# ----------------------------------------------------------------------------- dtypes, purity, backends


def test_float32_in_float32_out_and_ints_promote():
    r = np.ones((2, 3), dtype=np.float32)
    adv, ret = compute_gae(r, np.zeros((2, 3), np.float32), last_value=np.ones(2, np.float32))
    assert adv.dtype == np.float32 and ret.dtype == np.float32
    adv_i, _ = compute_gae(np.array([0, 0, 1]), np.zeros(3, dtype=np.float64))
    assert adv_i.dtype == np.float64


def test_extreme_float32_magnitudes_stay_finite():
    rng = np.random.default_rng(1)
    r = (rng.choice([-1.0, 1.0], size=(3, 16)) * 1e4).astype(np.float32)
    v = (rng.choice([-1.0, 1.0], size=(3, 16)) * 1e4).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adv, _ = compute_gae(r, v, gamma=1.0, lam=1.0, last_value=np.float32(1e4))
    ref, _ = compute_gae_reference(r, v, gamma=1.0, lam=1.0, last_value=1e4)
    assert np.all(np.isfinite(adv))
    np.testing.assert_allclose(adv, ref, rtol=1e-5, atol=1e-5 * 1e4 * 16)


@pytest.mark.parametrize("cut", ["dones", "mask"])
def test_an_overflow_in_the_next_episode_does_not_turn_into_nan(cut):
    # Steps 2-3 form an episode whose advantage at step 2 is 3e38 + 3e38: it
    # overflows float32 to inf (the true value does not fit). Step 1 ended the
    # previous episode (a done there, or padding after it), so nothing of it
    # flows back: its advantage is exactly 0 (it was 0 * inf = nan).
    r = np.array([0.0, 0.0, 3e38, 3e38], dtype=np.float32)
    v = np.zeros(4, dtype=np.float32)
    kwargs = {"dones": np.array([0, 1, 0, 0])} if cut == "dones" else {"mask": np.array([1, 1, 0, 0])}
    if cut == "mask":  # padding must not be counted: put the big episode in a second row
        r, v = np.stack([np.zeros(4, np.float32), r]), np.stack([v, v])
        kwargs = {"mask": np.array([[1, 1, 0, 0], [1, 1, 1, 1]]), "dones": np.array([[0, 0, 0, 0], [0, 1, 0, 0]])}
    with np.errstate(over="ignore", invalid="raise"):  # a 0 * inf would raise here
        adv, _ = compute_gae(r, v, gamma=1.0, lam=1.0, **kwargs)
    adv = np.atleast_2d(adv)[-1]
    assert adv.dtype == np.float32
    assert adv[0] == 0 and adv[1] == 0 and adv[2] == np.inf and adv[3] == np.float32(3e38)


@pytest.mark.parametrize("name", ["rewards", "values"])
def test_a_nan_reward_or_value_propagates_through_its_episode_only(name):
    args = {"rewards": np.zeros((2, 4)), "values": np.zeros((2, 4))}
    args[name][1, 2] = np.nan
    adv, ret = compute_gae(**args, dones=np.array([[0, 0, 0, 0], [1, 0, 0, 0]]))
    # Row 1's second episode (steps 1-3) reads the NaN at or before step 2; row 0 and step 1,0 do not.
    assert np.all(np.isfinite(adv[0])) and np.isfinite(adv[1, 0])
    assert np.all(np.isnan(adv[1, 1:3]))
    adv, _ = compute_gae(**args, mask=np.array([[1, 1, 1, 1], [1, 1, 0, 0]]))  # padding may hold it
    assert np.all(np.isfinite(adv))
    adv, _ = compute_gae(np.zeros(3), np.zeros(3), last_value=float("nan"))
    assert np.all(np.isnan(adv))


def test_one_trajectory_in_float32_stays_float32():
    # (T,) inputs index to 0-d arrays, where NumPy 1.x promoted float32 * gamma to float64.
    r = np.array([1.0, 0.5, 2.0], dtype=np.float32)
    adv, ret = compute_gae(r, np.zeros(3, np.float32), gamma=0.9, lam=0.8, last_value=np.float32(1.0))
    assert adv.dtype == np.float32 and ret.dtype == np.float32
    ref, _ = compute_gae_reference(r, np.zeros(3), gamma=0.9, lam=0.8, last_value=1.0)
    np.testing.assert_allclose(adv, ref, rtol=1e-6)


def test_inputs_not_mutated_and_outputs_not_views(rng):
    r, v = rng.normal(size=(2, 5)), rng.normal(size=(2, 5))
    dones = np.zeros((2, 5), dtype=bool)
    mask = np.ones((2, 5), dtype=bool)
    copies = [a.copy() for a in (r, v, dones, mask)]
    for kwargs in ({}, {"dones": dones, "mask": mask}):
        adv, ret = compute_gae(r, v, last_value=np.ones(2), **kwargs)
        for out in (adv, ret):
            for inp in (r, v):
                assert not np.shares_memory(out, inp)
    for a, c in zip((r, v, dones, mask), copies):
        np.testing.assert_array_equal(a, c)


def test_both_backends_match_reference(xp):
    rng = np.random.default_rng(3)
    r, v = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    dones = rng.random((3, 7)) < 0.3
    mask = np.arange(7)[None, :] < np.array([[7], [4], [1]])
    adv, ret = compute_gae(
        xp.asarray(r), xp.asarray(v), 0.95, 0.9, last_value=xp.asarray([1.0, 2.0, 3.0]),
        dones=xp.asarray(dones), mask=xp.asarray(mask),
    )
    assert type(adv) is type(xp.asarray(r))
    adv_ref, ret_ref = compute_gae_reference(r, v, 0.95, 0.9, np.array([1.0, 2.0, 3.0]), dones, mask)
    np.testing.assert_allclose(to_numpy(adv), adv_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_numpy(ret), ret_ref, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- whiten


@given(
    x=hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 8)), elements=FLOATS),
    data=st.data(),
)
def test_whiten_matches_masked_statistics(x, data):
    mask = data.draw(hnp.arrays(np.bool_, x.shape), label="mask")
    counted = x[mask]
    if counted.size < 2 or np.ptp(counted) < 1.0:  # a spread, so that eps is negligible
        mask = np.ones_like(mask)
        x = x + 20.0 * np.arange(x.size).reshape(x.shape)  # neighbours differ by >= 10
        counted = x[mask]
    out = whiten(x, mask)
    expected = (counted - counted.mean()) / np.sqrt(counted.var(ddof=1) + 1e-8)
    np.testing.assert_allclose(out[mask], expected, rtol=1e-10, atol=1e-12)
    assert np.all(out[~mask] == 0)
    np.testing.assert_allclose(out[mask].mean(), 0.0, atol=1e-10)
    np.testing.assert_allclose(out[mask].std(ddof=1), 1.0, rtol=1e-6)


def test_whiten_without_shift_keeps_the_mean(rng):
    x = rng.normal(loc=3.0, size=(4, 6))
    out = whiten(x, shift_mean=False)
    np.testing.assert_allclose(out.mean(), x.mean(), rtol=1e-12)
    np.testing.assert_allclose(out.std(ddof=1), 1.0, rtol=1e-6)
    biased = whiten(x, unbiased=False)
    np.testing.assert_allclose(biased.std(ddof=0), 1.0, rtol=1e-6)


def test_whiten_constant_input_gives_zeros_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = whiten(np.full((3, 4), 2.5, dtype=np.float32), mask=np.ones((3, 4)))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.zeros((3, 4), dtype=np.float32))


def test_whiten_extreme_float32(rng):
    x = (rng.choice([-1.0, 1.0], size=(4, 8)) * 1e4 + rng.normal(size=(4, 8))).astype(np.float32)
    out = whiten(x)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    np.testing.assert_allclose(out.std(ddof=1), 1.0, rtol=1e-4)


@pytest.mark.parametrize("scale", [1e20, 1e30, 3e38])
def test_whiten_huge_float32_values(scale):
    # The variance of x = scale * [-1.5, -0.5, 0.5, 1.5] overflows float32 (it
    # was inf, and every output 0); the statistics are exact in float64 on x / max|x|.
    base = np.array([-1.5, -0.5, 0.5, 1.5])
    x = (base / 1.5 * scale).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = whiten(x)
        kept = whiten(x, shift_mean=False)
    expected = (base - base.mean()) / base.std(ddof=1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_allclose(kept, expected + float(x.astype(np.float64).mean()), rtol=1e-6, atol=1e-6)


def test_whiten_huge_float32_mean_with_a_small_spread():
    # Shifting by the mean first: 1e6 + [0, 1, 2, 3] (float32 keeps integers up to 2^24 exactly).
    x = np.float32(1e6) + np.arange(4, dtype=np.float32)
    out = whiten(x, eps=0.0)
    base = np.arange(4.0)
    np.testing.assert_allclose(out, (base - base.mean()) / base.std(ddof=1), rtol=1e-6)


def test_whiten_huge_and_tiny_float64_values():
    base = np.array([-1.5, -0.5, 0.5, 1.5])
    expected = (base - base.mean()) / np.sqrt(base.var(ddof=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(whiten(base * 1e300), expected, rtol=1e-12)
        # tiny values: the variance (1e-600) is far below eps, so eps decides: ~0
        np.testing.assert_allclose(whiten(base * 1e-300), 0.0, atol=1e-280)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_whiten_of_a_non_finite_counted_entry_is_nan_never_zero(bad):
    x = np.array([1.0, 2.0, bad, 4.0], dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = whiten(x)
        padded = whiten(x, mask=np.array([1, 1, 0, 1]))
    assert out.dtype == np.float32 and np.all(np.isnan(out))
    assert np.all(np.isfinite(padded)) and padded[2] == 0


def test_whiten_ignores_padding_contents(xp):
    x = xp.asarray([[1.0, 2.0, 3.0, np.nan], [4.0, 5.0, np.inf, -np.inf]])
    mask = xp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]])
    out = to_numpy(whiten(x, mask))
    counted = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    expected = (counted - counted.mean()) / np.sqrt(counted.var(ddof=1) + 1e-8)
    np.testing.assert_allclose(out[to_numpy(mask) == 1], expected, rtol=1e-12)
    assert np.all(out[to_numpy(mask) == 0] == 0)


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"rewards": np.zeros((2, 2, 2)), "values": np.zeros((2, 2, 2))}, ValueError, r"rewards must have shape \(T,\) or \(B, T\)"),
        ({"rewards": np.zeros(()), "values": np.zeros(())}, ValueError, r"rewards must have shape"),
        ({"values": np.zeros((2, 4))}, ValueError, r"values must have shape \(2, 3\) like rewards, got \(2, 4\)"),
        ({"rewards": np.zeros((2, 0)), "values": np.zeros((2, 0))}, ValueError, r"at least one time step"),
        ({"gamma": -0.1}, ValueError, r"gamma must lie in \[0, 1\], got -0.1"),
        ({"gamma": 1.5}, ValueError, r"gamma must lie in \[0, 1\]"),
        ({"gamma": float("nan")}, ValueError, r"gamma must lie in \[0, 1\]"),
        ({"gamma": "0.9"}, TypeError, r"gamma must be a real number"),
        ({"lam": 2.0}, ValueError, r"lam must lie in \[0, 1\], got 2.0"),
        ({"last_value": np.zeros(3)}, ValueError, r"last_value must be a scalar or have shape \(2,\).*got shape \(3,\)"),
        ({"dones": np.zeros((3, 2))}, ValueError, r"dones must have shape \(2, 3\) like rewards, got \(3, 2\)"),
        ({"dones": np.full((2, 3), 2)}, ValueError, r"dones must contain only 0 and 1"),
        ({"mask": np.zeros(3)}, ValueError, r"mask must have shape \(2, 3\) like rewards"),
        ({"mask": np.full((2, 3), 0.5)}, ValueError, r"mask must contain only 0 and 1"),
    ],
)
def test_compute_gae_rejects_bad_inputs(kwargs, exc, match):
    args = {"rewards": np.zeros((2, 3)), "values": np.zeros((2, 3))}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        compute_gae(**args)


@pytest.mark.parametrize(
    "x, kwargs, exc, match",
    [
        (np.arange(4), {}, TypeError, r"x: expected a floating-point array, got dtype int"),
        (np.zeros(4), {"mask": np.ones(3)}, ValueError, r"mask must have shape \(4,\) like x, got \(3,\)"),
        (np.zeros(4), {"mask": np.array([1, 0, 0, 0])}, ValueError, r"at least 2 counted entries.*got 1"),
        (np.zeros(4), {"mask": np.zeros(4), "unbiased": False}, ValueError, r"at least 1 counted entries.*got 0"),
        (np.zeros(4), {"mask": np.array([1, 2, 0, 0])}, ValueError, r"mask must contain only 0 and 1"),
        (np.zeros(4), {"eps": -1e-8}, ValueError, r"eps must be a non-negative real number, got -1e-08"),
    ],
)
def test_whiten_rejects_bad_inputs(x, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        whiten(x, **kwargs)
