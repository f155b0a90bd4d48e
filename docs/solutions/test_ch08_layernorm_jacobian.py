"""Chapter 8, exercise 1: LayerNorm's full Jacobian, J_ij = s (delta_ij - 1/D - xhat_i xhat_j / D)."""

import numpy as np
import pytest

from alignment_np.functional.layernorm import layernorm_backward, layernorm_forward
from alignment_np.gradcheck import numerical_gradient


def normalise(x, eps):
    """x_hat of one row (D,), the same computation as the kernel with gamma = 1, beta = 0."""
    D = x.shape[0]
    return layernorm_forward(x[None], np.ones(D), np.zeros(D), eps)[0][0]


def jacobian_by_formula(x, eps):
    D = x.shape[0]
    s = 1.0 / np.sqrt(x.var() + eps)
    x_hat = (x - x.mean()) * s
    return s * (np.eye(D) - 1.0 / D - np.outer(x_hat, x_hat) / D), x_hat


@pytest.mark.parametrize("eps", [1e-5, 0.0])
def test_jacobian_formula(eps):
    rng = np.random.default_rng(0)
    D = 6
    x = rng.normal(size=D) * 2.0 + 0.5
    J, x_hat = jacobian_by_formula(x, eps)

    # Row i of J against finite differences of x_hat_i.
    for i in range(D):
        num = numerical_gradient(lambda v: normalise(v, eps)[i], [x])
        np.testing.assert_allclose(J[i], num, rtol=1e-6, atol=1e-9)

    np.testing.assert_allclose(J, J.T)
    np.testing.assert_allclose(J @ np.ones(D), 0.0, atol=1e-12)
    if eps == 0.0:
        np.testing.assert_allclose(J @ x_hat, 0.0, atol=1e-12)
    else:
        assert np.abs(J @ x_hat).max() > 1e-8  # eps breaks the scale invariance, slightly


def test_vjp_with_the_jacobian_is_the_kernels_backward():
    rng = np.random.default_rng(1)
    D = 6
    x = rng.normal(size=D)
    gamma, beta = rng.normal(size=D), rng.normal(size=D)
    dout = rng.normal(size=D)
    _, cache = layernorm_forward(x[None], gamma, beta)
    dx = layernorm_backward(dout[None], cache)[0][0]
    J, _ = jacobian_by_formula(x, 1e-5)  # the kernel's default eps
    np.testing.assert_allclose(J.T @ (dout * gamma), dx, rtol=1e-10)
