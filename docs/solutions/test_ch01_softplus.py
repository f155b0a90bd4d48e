"""Chapter 1, exercise 1: the softplus kernel, its backward, and its checks.

softplus(z) = log(1 + e^z).  d/dz softplus(z) = e^z / (1 + e^z) = sigmoid(z).
"""

import numpy as np
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays

from alignment_np.functional.stable import sigmoid, softplus
from alignment_np.gradcheck import check_gradients


def softplus_forward(z):
    """z: any shape -> (softplus(z), cache). Stable: logaddexp(0, z) never overflows."""
    return softplus(z), (z,)


def softplus_backward(dout, cache):
    """dout: like z -> dz = dout * sigmoid(z), a new array."""
    (z,) = cache
    return dout * sigmoid(z)


@given(
    z=arrays(np.float64, st.integers(1, 8), elements=st.floats(-30, 30)),
    seed=st.integers(0, 2**32 - 1),
)
def test_softplus_gradient_matches_finite_differences(z, seed):
    dout = np.random.default_rng(seed).normal(size=z.shape)
    _, cache = softplus_forward(z)
    check_gradients(softplus, [z], [softplus_backward(dout, cache)], dout=dout)


def test_softplus_is_finite_and_right_at_float32_extremes():
    z = np.array([-1e4, -100.0, 0.0, 100.0, 1e4], dtype=np.float32)
    out, cache = softplus_forward(z)
    dz = softplus_backward(np.ones_like(z), cache)
    assert out.dtype == np.float32 and dz.dtype == np.float32
    assert np.isfinite(out).all() and np.isfinite(dz).all()
    # softplus(z) -> 0 for z << 0 and -> z for z >> 0; its slope goes 0 -> 1.
    assert out[0] == 0.0 and out[-1] == np.float32(1e4)
    assert out[2] == np.float32(np.log(2.0))
    assert dz[0] == 0.0 and dz[-1] == 1.0 and dz[2] == 0.5


def test_softplus_backward_neither_mutates_nor_aliases():
    rng = np.random.default_rng(0)
    z = rng.normal(size=5)
    dout = rng.normal(size=5)
    _, cache = softplus_forward(z)
    z_before, dout_before = z.copy(), dout.copy()
    dz = softplus_backward(dout, cache)
    np.testing.assert_array_equal(z, z_before)
    np.testing.assert_array_equal(dout, dout_before)
    assert not np.shares_memory(dz, dout) and not np.shares_memory(dz, z)
