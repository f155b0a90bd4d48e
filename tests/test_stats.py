"""Statistics with error bars (alignment_np/stats.py), each against a slow, obvious loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.stats import Estimate, mean_se, paired_difference, rankdata, spearman, win_rate

# Small integers make ties common, which is where rank code goes wrong.
values = st.lists(st.integers(-5, 5).map(float) | st.floats(-1e3, 1e3), min_size=1, max_size=30)


def paired(min_size=1):
    return st.integers(min_size, 30).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(-3, 3).map(float) | st.floats(-10, 10), min_size=n, max_size=n),
            st.lists(st.integers(-3, 3).map(float) | st.floats(-10, 10), min_size=n, max_size=n),
        )
    )


# ---------------------------------------------------------------- slow, obvious versions


def slow_mean_se(x):
    n = len(x)
    mean = sum(x) / n
    if n < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in x) / (n - 1)
    return mean, math.sqrt(var / n)


def slow_ranks(x):
    """rank_i = 1 + (number of values below x_i) + (number of other values equal to x_i) / 2."""
    return [1 + sum(v < xi for v in x) + (sum(v == xi for v in x) - 1) / 2 for xi in x]


def slow_pearson(a, b):
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((p - ma) * (q - mb) for p, q in zip(a, b))
    va = sum((p - ma) ** 2 for p in a)
    vb = sum((q - mb) ** 2 for q in b)
    return cov / math.sqrt(va * vb)


# ---------------------------------------------------------------- against the loops


@given(values)
def test_mean_se_matches_the_loop(x):
    est = mean_se(x)
    mean, se = slow_mean_se(x)
    assert est.n == len(x)
    assert est.mean == pytest.approx(mean, rel=1e-12, abs=1e-12)
    if len(x) < 2:
        assert math.isnan(est.se)
    else:
        assert est.se == pytest.approx(se, rel=1e-9, abs=1e-12)


@given(paired())
def test_paired_difference_is_the_mean_se_of_the_differences(ab):
    a, b = ab
    est = paired_difference(a, b)
    mean, se = slow_mean_se([p - q for p, q in zip(a, b)])
    assert est.mean == pytest.approx(mean, rel=1e-12, abs=1e-12)
    assert (math.isnan(est.se) and math.isnan(se)) or est.se == pytest.approx(se, rel=1e-9, abs=1e-12)


@given(paired())
def test_win_rate_counts_ties_as_half(ab):
    a, b = ab
    outcomes = [1.0 if p > q else 0.5 if p == q else 0.0 for p, q in zip(a, b)]
    est = win_rate(a, b)
    mean, se = slow_mean_se(outcomes)
    assert est.mean == pytest.approx(mean, abs=1e-12)
    assert (math.isnan(est.se) and math.isnan(se)) or est.se == pytest.approx(se, rel=1e-9, abs=1e-12)
    # symmetric: b's win rate against a is the complement
    assert win_rate(b, a).mean == pytest.approx(1.0 - est.mean, abs=1e-12)


@given(values)
def test_rankdata_matches_the_counting_loop(x):
    np.testing.assert_allclose(rankdata(x), slow_ranks(x), rtol=0, atol=1e-12)
    assert rankdata(x).sum() == pytest.approx(len(x) * (len(x) + 1) / 2)  # ranks always sum to this


@given(paired(min_size=2))
def test_spearman_is_pearson_of_the_average_ranks(ab):
    x, y = ab
    rx, ry = slow_ranks(x), slow_ranks(y)
    if len(set(rx)) == 1 or len(set(ry)) == 1:
        assert math.isnan(spearman(x, y))
    else:
        assert spearman(x, y) == pytest.approx(slow_pearson(rx, ry), abs=1e-9)


# ---------------------------------------------------------------- known values


def test_known_values():
    np.testing.assert_array_equal(rankdata([10, 20, 20, 5]), [2, 3.5, 3.5, 1])
    est = mean_se([1.0, 2.0, 3.0, 4.0])
    assert est.mean == 2.5 and est.n == 4
    assert est.se == pytest.approx(math.sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3 / 4), rel=1e-12)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)  # only the order counts
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert win_rate([1, 2, 3], [1, 0, 5]).mean == pytest.approx(0.5)  # tie, win, loss
    assert paired_difference([3, 5], [1, 2]).mean == 2.5
    assert str(Estimate(0.123456, 0.01, 10)) == "0.1235 ± 0.01 (n=10)"
    assert Estimate(0.5, 0.1, 3).as_dict("win_rate") == {"win_rate": 0.5, "win_rate_se": 0.1}
    assert mean_se([0.5]).as_dict("kl") == {"kl": 0.5, "kl_se": None}  # JSON has no NaN


def test_undefined_quantities_are_nan_not_zero():
    assert math.isnan(mean_se([3.0]).se)
    assert math.isnan(spearman([1.0], [2.0]))
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert mean_se([2.0, 2.0]).se == 0.0  # defined: no spread at all


def test_se_shrinks_like_one_over_root_n():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(40_000)
    se_small, se_big = mean_se(x[:10_000]).se, mean_se(x).se
    assert se_small / se_big == pytest.approx(2.0, rel=0.05)
    assert abs(mean_se(x).mean) < 3 * se_big  # the true mean 0 is within 3 SE


def test_paired_se_is_smaller_when_pairs_share_a_prompt_effect():
    rng = np.random.default_rng(1)
    prompt_effect = rng.standard_normal(500) * 3.0  # large, shared by both members of a pair
    a = prompt_effect + 0.2 + rng.standard_normal(500) * 0.5
    b = prompt_effect + rng.standard_normal(500) * 0.5
    paired = paired_difference(a, b)
    unpaired = math.hypot(mean_se(a).se, mean_se(b).se)
    assert paired.se < unpaired / 3
    assert paired.mean > 2 * paired.se  # the 0.2 improvement is visible paired


# ---------------------------------------------------------------- scipy, when present


def test_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(2)
    x = rng.integers(0, 6, 200).astype(float)
    y = x + rng.integers(-3, 4, 200)
    np.testing.assert_allclose(rankdata(x), stats.rankdata(x))
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert mean_se(y).se == pytest.approx(stats.sem(y), rel=1e-12)


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: mean_se([1.0, math.nan]), ValueError, r"x: expected finite values, got nan at index \(1,\)"),
        (lambda: win_rate([1.0, 2.0], [math.inf, 0.0]), ValueError, r"b: expected finite values, got inf at index \(0,\)"),
        (lambda: spearman([1.0], [math.nan]), ValueError, "y: expected finite values"),
        (lambda: mean_se([]), ValueError, "x: expected at least one value, got none"),
        (lambda: mean_se([[1.0, 2.0]]), ValueError, r"x: expected a 1-D sequence, got shape \(1, 2\)"),
        (lambda: mean_se(["a", "b"]), TypeError, "x: expected numbers, got dtype <U1"),
        (lambda: mean_se("12"), TypeError, "x: expected a 1-D sequence of numbers, got str"),
        (lambda: paired_difference([1.0, 2.0], [1.0]), ValueError, "a, b: expected one value each per pair .* got 2 and 1"),
        (lambda: spearman([1.0, 2.0], [1.0]), ValueError, "x, y: expected one value each per pair"),
    ],
)
def test_bad_inputs_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
