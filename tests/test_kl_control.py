"""KL controllers (Ziegler et al. 2019, Section 2.2): direction, clipping, validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.rl.kl_control import AdaptiveKLController, FixedKLController

POSITIVE = st.floats(1e-3, 1e3)


@given(init=POSITIVE, target=POSITIVE, horizon=st.floats(1e3, 1e5), n_steps=st.integers(1, 256), factor=st.floats(1.01, 100.0))
def test_kl_above_target_raises_and_below_lowers(init, target, horizon, n_steps, factor):
    above = AdaptiveKLController(init, target, horizon)
    assert above.update(target * factor, n_steps) > init
    below = AdaptiveKLController(init, target, horizon)
    assert below.update(target / factor, n_steps) < init
    on_target = AdaptiveKLController(init, target, horizon)
    assert on_target.update(target, n_steps) == pytest.approx(init, rel=1e-12)


@given(init=POSITIVE, target=POSITIVE, horizon=st.floats(1e3, 1e5), n_steps=st.integers(0, 256), kl=st.floats(-1e3, 1e6))
def test_update_is_the_clipped_proportional_rule(init, target, horizon, n_steps, kl):
    controller = AdaptiveKLController(init, target, horizon)
    error = float(np.clip(kl / target - 1.0, -0.2, 0.2))
    expected = init * (1.0 + error * n_steps / horizon)
    assert controller.update(kl, n_steps) == pytest.approx(expected, rel=1e-12)
    assert controller.value == pytest.approx(expected, rel=1e-12)


@given(init=POSITIVE, target=POSITIVE, n_steps=st.integers(1, 100), far=st.floats(1.2, 1e6))
def test_error_is_clipped_at_plus_minus_20_percent(init, target, n_steps, far):
    horizon = 1000.0
    # Any KL at or beyond 1.2x target moves beta exactly as much as 1.2x does.
    high = AdaptiveKLController(init, target, horizon).update(target * far, n_steps)
    assert high == pytest.approx(init * (1 + 0.2 * n_steps / horizon), rel=1e-12)
    # Any KL at or below 0.8x target (even 0 or negative, as k1 can be) moves it as 0.8x does.
    for kl in (0.8 * target, 0.0, -target * far):
        low = AdaptiveKLController(init, target, horizon).update(kl, n_steps)
        assert low == pytest.approx(init * (1 - 0.2 * n_steps / horizon), rel=1e-12)


def test_repeated_updates_converge_towards_target_coefficient():
    # A toy environment where measured KL = 1 / beta: the controller should find beta = 1 / target.
    controller = AdaptiveKLController(init_kl_coef=0.05, target=4.0, horizon=100)
    for _ in range(2000):
        controller.update(1.0 / controller.value, n_steps=10)
    assert controller.value == pytest.approx(1.0 / 4.0, rel=1e-3)


def test_accepts_numpy_scalars_and_zero_d_arrays():
    controller = AdaptiveKLController(0.1, 6.0, 10_000)
    controller.update(np.float32(12.0), np.int64(256))
    controller.update(np.array(3.0), 256)
    expected = 0.1 * (1 + 0.2 * 256 / 10_000) * (1 - 0.2 * 256 / 10_000)
    assert controller.value == pytest.approx(expected, rel=1e-12)


def test_fixed_controller_never_moves():
    controller = FixedKLController(0.2)
    for kl in (0.0, 100.0, -3.0):
        assert controller.update(kl, 64) == 0.2
    assert controller.value == 0.2
    assert FixedKLController(0).value == 0.0


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((0.0, 6.0, 100), ValueError, r"init_kl_coef must be finite and > 0, got 0.0"),
        ((-0.1, 6.0, 100), ValueError, r"init_kl_coef must be finite and > 0, got -0.1"),
        ((0.1, 0.0, 100), ValueError, r"target must be finite and > 0, got 0.0"),
        ((0.1, float("inf"), 100), ValueError, r"target must be finite and > 0, got inf"),
        ((0.1, 6.0, -5), ValueError, r"horizon must be finite and > 0, got -5"),
        ((0.1, 6.0, float("nan")), ValueError, r"horizon must be finite and > 0, got nan"),
        (("0.1", 6.0, 100), TypeError, r"init_kl_coef must be a real number, got str"),
        ((0.1, None, 100), TypeError, r"target must be a real number, got NoneType"),
    ],
)
def test_adaptive_constructor_validates(args, exc, match):
    with pytest.raises(exc, match=match):
        AdaptiveKLController(*args)


@pytest.mark.parametrize(
    "controller", [AdaptiveKLController(0.1, 6.0, 100), FixedKLController(0.1)], ids=["adaptive", "fixed"]
)
@pytest.mark.parametrize(
    "kl, n_steps, exc, match",
    [
        (float("nan"), 10, ValueError, r"current_kl must be finite, got nan"),
        ("high", 10, TypeError, r"current_kl must be a real number"),
        ("0.5", 10, TypeError, r"current_kl must be a real number .*got str '0.5'"),
        (True, 10, TypeError, r"current_kl must be a real number .*got bool True"),
        (np.float64(np.inf), 10, ValueError, r"current_kl must be finite, got inf"),
        (np.ones(3), 10, TypeError, r"current_kl must be a real number"),
        (1.0, -1, ValueError, r"n_steps must be >= 0, got -1"),
        (1.0, 2.5, TypeError, r"n_steps must be an int, got float 2.5"),
    ],
)
def test_update_validates(controller, kl, n_steps, exc, match):
    before = controller.value
    with pytest.raises(exc, match=match):
        controller.update(kl, n_steps)
    assert controller.value == before


def test_update_refuses_to_make_the_coefficient_non_positive():
    controller = AdaptiveKLController(0.1, 6.0, horizon=10)
    with pytest.raises(ValueError, match=r"n_steps=50 is too large for horizon=10.0"):
        controller.update(0.0, 50)  # 1 - 0.2 * 50 / 10 = 0
    assert controller.value == 0.1


def test_fixed_constructor_validates():
    with pytest.raises(ValueError, match=r"kl_coef must be finite and >= 0, got -0.5"):
        FixedKLController(-0.5)
    with pytest.raises(TypeError, match=r"kl_coef must be a real number, got list"):
        FixedKLController([0.1])
