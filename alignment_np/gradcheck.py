"""Checking hand-written gradients against finite differences.

A backward pass is a claim: "this is dL/du" (u a kernel's input, ``x`` in the
code). The computer can check the claim with nothing but the forward pass.
For a scalar ``L(u) = sum(f(u) * dout)`` (a random upstream gradient ``dout``
makes every output element count, as llm.c's ``fakeloss`` does), the central
difference with the step h (Delta in the course's notation, where h is DPO's
log-ratio difference)

    dL/du_i  ~=  (L(u + h e_i) - L(u - h e_i)) / (2 h)       e_i: the i-th unit vector

has error O(h^2). In float64 with h = 1e-6 the truncation error is about
1e-12 and the rounding error about 1e-16 / 1e-6 = 1e-10, so a correct
gradient agrees to ~1e-8 relative error. In float32 (unit roundoff ~ 6e-8)
the rounding error alone would be ~1e-1 for the same h: always check in
float64.

The checker never perturbs the caller's arrays: it works on float64 copies.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .backend import get_array_module, to_numpy


def relative_error(analytic, numeric) -> float:
    """||a - n|| / max(||a|| + ||n||, tiny): 0 when equal, 1 when opposite.

    A norm-wise error rather than an element-wise one, so that a gradient entry
    that is truly zero (and numerically 1e-11) does not read as a 100% error.
    """
    a = to_numpy(analytic).astype(np.float64).ravel()
    n = to_numpy(numeric).astype(np.float64).ravel()
    if a.shape != n.shape:
        raise ValueError(f"shapes differ: analytic {a.shape} vs numeric {n.shape}")
    denom = max(np.linalg.norm(a) + np.linalg.norm(n), 1e-30)
    return float(np.linalg.norm(a - n) / denom)


def numerical_gradient(f: Callable, inputs: Sequence, dout=None, wrt: int = 0, h: float = 1e-6):
    """Central-difference gradient of ``sum(f(*inputs) * dout)`` w.r.t. ``inputs[wrt]``.

    f: callable taking the inputs positionally and returning an array or scalar.
    inputs: the arguments; each array is copied to float64 before perturbing.
    dout: the upstream gradient, shape of f's output (None: ones, i.e. sum).
    Returns an array shaped like ``inputs[wrt]`` in float64, on its device.
    """
    args = list(inputs)
    x0 = args[wrt]
    xp = get_array_module(x0)
    x = xp.array(x0, dtype=xp.float64, copy=True)
    args[wrt] = x
    dout_arr = None if dout is None else xp.asarray(dout, dtype=xp.float64)

    def scalar() -> float:
        out = xp.asarray(f(*args), dtype=xp.float64)
        return float(out.sum() if dout_arr is None else (out * dout_arr).sum())

    grad = xp.zeros_like(x)
    flat_x = x.reshape(-1)  # a view: writing into it perturbs x
    flat_g = grad.reshape(-1)
    for i in range(flat_x.size):
        old = float(flat_x[i])
        flat_x[i] = old + h
        plus = scalar()
        flat_x[i] = old - h
        minus = scalar()
        flat_x[i] = old
        flat_g[i] = (plus - minus) / (2.0 * h)
    return grad


def check_gradients(
    f: Callable,
    inputs: Sequence,
    analytic: Sequence,
    dout=None,
    wrt: Sequence[int] | None = None,
    h: float = 1e-6,
    tol: float = 1e-6,
    names: Sequence[str] | None = None,
    atol: float = 1e-8,
) -> list[float]:
    """Compare analytic gradients with central differences; raise if any differ.

    f, inputs, dout: as in ``numerical_gradient``.
    analytic: the claimed gradients, one per index in ``wrt`` (default: all inputs).
    Returns the relative errors. Raises ``AssertionError`` naming the first
    input whose relative error exceeds ``tol`` *and* whose largest absolute
    difference exceeds ``atol``. The absolute floor is for gradients that are
    exactly zero (a bias gradient ``sum(dout)`` with ``dout = [-1, 1]``): there
    the relative error compares 0 with finite-difference rounding noise of
    ~1e-10 and reads 1.0 however right the zero is.
    """
    idx = list(range(len(inputs))) if wrt is None else list(wrt)
    if len(analytic) != len(idx):
        raise ValueError(f"got {len(analytic)} analytic gradients for {len(idx)} inputs")
    labels = list(names) if names is not None else [f"input {i}" for i in idx]
    errors = []
    for label, i, a in zip(labels, idx, analytic):
        num = numerical_gradient(f, inputs, dout=dout, wrt=i, h=h)
        if tuple(a.shape) != tuple(num.shape):
            raise AssertionError(
                f"gradient for {label} has shape {tuple(a.shape)}, input has {tuple(num.shape)}"
            )
        err = relative_error(a, num)
        errors.append(err)
        if not err <= tol:
            diff = float(np.max(np.abs(to_numpy(a).astype(np.float64) - to_numpy(num)), initial=0.0))
            if not diff <= atol:
                raise AssertionError(
                    f"gradient check failed for {label}: relative error {err:.3e} > tol {tol:.1e} "
                    f"(largest absolute difference {diff:.3e} > atol {atol:.1e})"
                )
    return errors
