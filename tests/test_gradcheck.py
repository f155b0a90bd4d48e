import numpy as np
import pytest

from alignment_np.gradcheck import check_gradients, numerical_gradient, relative_error


def test_numerical_gradient_of_a_known_function():
    x = np.array([1.0, -2.0, 3.0])
    g = numerical_gradient(lambda a: a**3, [x])
    np.testing.assert_allclose(g, 3 * x**2, rtol=1e-8)


def test_checker_never_perturbs_the_callers_array():
    x = np.array([[0.5, 1.5], [2.0, -1.0]], dtype=np.float32)
    before = x.copy()
    numerical_gradient(lambda a: np.sin(a), [x])
    np.testing.assert_array_equal(x, before)
    assert x.dtype == np.float32


def test_upstream_gradient_and_second_input():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(4, 2))
    dout = rng.normal(size=(3, 2))
    errs = check_gradients(lambda a, b: a @ b, [a, b], [dout @ b.T, a.T @ dout], dout=dout)
    assert max(errs) < 1e-8


def test_a_wrong_gradient_is_caught_with_its_name():
    x = np.linspace(-1, 1, 5)
    with pytest.raises(AssertionError, match="gradient check failed for x"):
        check_gradients(np.tanh, [x], [np.ones_like(x)], names=["x"])


def test_a_misshapen_gradient_is_caught():
    x = np.ones(3)
    with pytest.raises(AssertionError, match=r"shape \(2,\)"):
        check_gradients(np.exp, [x], [np.ones(2)])


def test_relative_error_properties():
    a = np.array([1.0, 2.0])
    assert relative_error(a, a) == 0.0
    assert relative_error(a, -a) == pytest.approx(1.0)
    assert relative_error(np.zeros(2), np.zeros(2)) == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        relative_error(np.ones(2), np.ones(3))


def test_float32_finite_differences_would_be_too_noisy():
    """Why the checker works in float64: the same check in float32 is off by a lot."""
    x = np.linspace(0.1, 1.0, 8)
    exact = np.cos(x)
    h = 1e-6
    x32 = x.astype(np.float32)
    num32 = (np.sin(x32 + np.float32(h)) - np.sin(x32 - np.float32(h))) / np.float32(2 * h)
    assert relative_error(exact, num32) > 1e-3
    assert relative_error(exact, numerical_gradient(np.sin, [x32])) < 1e-8


def test_an_exactly_zero_gradient_passes_despite_rounding_noise():
    # d/db sum(dout * (x + b)) with dout = [-1, 1] is exactly 0; the central
    # difference returns ~1e-11 of rounding noise, a relative error near 1.
    x = np.array([0.3, 1.7])
    dout = np.array([-1.0, 1.0])
    b = np.array(0.123456789)
    check_gradients(lambda b: x + b, [b], [np.array(0.0)], dout=dout)
    with pytest.raises(AssertionError, match="largest absolute difference"):
        check_gradients(lambda b: x + b, [b], [np.array(1e-4)], dout=dout)
