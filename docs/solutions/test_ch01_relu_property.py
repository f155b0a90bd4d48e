"""Chapter 1, exercise 3: a property test finds ReLU's kink; a better strategy avoids it.

The fix is in the strategy (magnitude times sign, magnitude >= 1e-2, far beyond the step 1e-6),
never in the tolerance.
"""

import numpy as np
from hypothesis import find, given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from alignment_np.gradcheck import numerical_gradient, relative_error


def relu(x):
    return np.maximum(x, 0.0)


def relu_backward(dout, x):
    return dout * (x > 0)


def gradient_error(x):
    analytic = relu_backward(np.ones_like(x), x)
    return relative_error(analytic, numerical_gradient(relu, [x]))


naive = arrays(np.float64, 4, elements=st.floats(-10, 10))


def test_naive_strategy_finds_the_kink():
    # find() searches for an input on which the check fails and shrinks it.
    failing = find(naive, lambda x: gradient_error(x) > 1e-6, settings=settings(database=None))
    # The shrunk counterexample sits on the kink: some entry within the step of zero.
    assert np.min(np.abs(failing)) <= 1e-6


magnitudes = st.floats(1e-2, 10.0)
signs = st.sampled_from([-1.0, 1.0])


@given(
    mag=arrays(np.float64, 4, elements=magnitudes),
    sign=arrays(np.float64, 4, elements=signs),
)
def test_kink_free_strategy_passes(mag, sign):
    x = mag * sign
    assert gradient_error(x) <= 1e-6
