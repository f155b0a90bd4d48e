"""Chapter 1, exercise 2: the finite-difference step that minimises the error.

error(Delta) ~ C Delta^2 (truncation) + eps_mach |L| / Delta (rounding): smallest
near Delta ~ eps_mach^(1/3). ``numerical_gradient`` takes the step as ``h``.
"""

import numpy as np

from alignment_np.functional.stable import log_softmax, log_softmax_backward
from alignment_np.gradcheck import numerical_gradient, relative_error

STEPS = 10.0 ** -np.arange(1, 11)  # 1e-1 ... 1e-10


def errors_by_step(forward):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5))
    dout = rng.normal(size=(3, 5))
    analytic = log_softmax_backward(dout, np.exp(log_softmax(x)))
    return np.array(
        [relative_error(analytic, numerical_gradient(forward, [x], dout=dout, h=h)) for h in STEPS]
    )


def test_float64_error_is_smallest_near_cube_root_of_eps():
    errors = errors_by_step(log_softmax)
    best_h = STEPS[np.argmin(errors)]
    predicted = np.finfo(np.float64).eps ** (1 / 3)  # ~6e-6
    assert predicted / 100 <= best_h <= predicted * 100
    assert errors.min() < 1e-9
    # Both sides of the trade-off are visible: a big step truncates, a tiny one rounds.
    assert errors[0] > 100 * errors.min()  # Delta = 1e-1
    assert errors[-1] > 100 * errors.min()  # Delta = 1e-10


def test_float32_forward_is_never_accurate():
    errors = errors_by_step(lambda x: log_softmax(x.astype(np.float32)))
    best_h = STEPS[np.argmin(errors)]
    predicted = np.finfo(np.float32).eps ** (1 / 3)  # ~5e-3
    assert predicted / 100 <= best_h <= predicted * 100
    # Even at its best step, float32 cannot certify a gradient to 1e-6: the
    # rounding floor eps32^(2/3) ~ 2.5e-5 is far above the checker's tolerance.
    assert errors.min() > 1e-6
    assert errors.min() > 1000 * errors_by_step(log_softmax).min()
