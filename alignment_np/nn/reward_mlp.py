"""The reward model of the course: a two-layer ReLU MLP from features to a score.

    a = x @ W1 + b1          (B, F)   pre-activations (u^(1) in the course)
    h = relu(a)              (B, F)   activations (u^(2) in the course)
    r = h @ W2 + b2          (B, 1)   one scalar reward per row

F is the hidden width (``hidden_dim``). In RLHF the input would be the last
hidden state of a language model at the response's final token, and the layer
on top a *reward head* (one scalar per response; InstructGPT's reward model,
Ouyang et al. 2022, Sec. 3.5), not a value head, which is PPO's critic and
predicts a return at every token. Here the input is a feature vector, so the
whole model fits on a page and every gradient can be checked by finite
differences.

Backward, one line per rule (chain rule from the output back):

    dW2 = h.T @ dr           (F, 1)
    db2 = sum_B dr           (1,)
    dh  = dr @ W2.T          (B, F)
    da  = dh * (a > 0)       (B, F)   relu passes the gradient where it was active
    dW1 = x.T @ da           (D, F)
    db1 = sum_B da           (F,)
    dx  = da @ W1.T          (B, D)

The pure kernels ``reward_mlp_forward`` / ``reward_mlp_backward`` do the
work; ``RewardModel`` is a thin stateful wrapper with the course's interface
(``forward(x) -> r``, ``backward(grad_reward) -> grad_x``, arrays ``W1`` ...
and a ``grads`` dict) on top of ``Parameter``s, so optimizers and checkpoints
can walk it like any other module.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module, xp_active
from ..checks import check_float_dtype, check_nonneg_int, check_positive_int
from .module import Module, Parameter

__all__ = ["reward_mlp_forward", "reward_mlp_backward", "RewardModel"]

_PARAM_NAMES = ("W1", "b1", "W2", "b2")


def reward_mlp_forward(x, W1, b1, W2, b2):
    """Score each row of ``x``: r = relu(x @ W1 + b1) @ W2 + b2.

    x: (B, D) features. W1: (D, H). b1: (H,). W2: (H, 1). b2: (1,).
    Returns r: (B, 1) and the cache (a dict of the arrays backward needs).
    """
    xp = get_array_module(x)
    a = x @ W1 + b1  # (B, H)
    h = xp.maximum(a, 0)  # (B, H); a fresh array, a stays intact for the mask
    r = h @ W2 + b2  # (B, 1)
    cache = {"x": x, "W1": W1, "W2": W2, "a": a, "h": h}
    return r, cache


def reward_mlp_backward(dr, cache):
    """Gradients of the loss with respect to x and the four parameters.

    dr: (B, 1) upstream gradient dL/dr. cache: from ``reward_mlp_forward``.
    Returns (dx (B, D), dW1 (D, H), db1 (H,), dW2 (H, 1), db2 (1,)), all new
    arrays; neither ``dr`` nor the cache is modified.
    """
    xp = get_array_module(dr)
    x, W1, W2, a, h = cache["x"], cache["W1"], cache["W2"], cache["a"], cache["h"]
    dW2 = h.T @ dr  # (H, 1)
    db2 = xp.sum(dr, axis=0)  # (1,)
    dh = dr @ W2.T  # (B, H)
    # At a == 0 relu has no derivative; we take 0 there (the usual subgradient).
    da = dh * (a > 0)  # (B, H); a new array, dh is ours anyway
    dW1 = x.T @ da  # (D, H)
    db1 = xp.sum(da, axis=0)  # (H,)
    dx = da @ W1.T  # (B, D)
    return dx, dW1, db1, dW2, db2


def _param_property(name: str, shape_doc: str):
    def fget(self):
        return self._params[name].data

    def fset(self, value):
        p = self._params[name]
        if tuple(getattr(value, "shape", ())) != tuple(p.data.shape):
            raise ValueError(
                f"RewardModel.{name}: expected an array of shape {tuple(p.data.shape)}, "
                f"got {tuple(getattr(value, 'shape', ()))}"
            )
        # Write into the existing array: an optimizer holding this Parameter keeps working.
        p.data[...] = get_array_module(p.data).asarray(value, dtype=p.data.dtype)

    return property(fget, fset, doc=f"The {name} array, {shape_doc} (the Parameter's ``.data``).")


class RewardModel(Module):
    """Two-layer ReLU MLP reward model: r = relu(x @ W1 + b1) @ W2 + b2.

    input_dim: D, the width of a feature vector.
    hidden_dim: H, the number of hidden units.
    seed: seeds the initialisation (None: fresh randomness each time).
    dtype: of the parameters; float32 for training, float64 for gradient checks.

    Attributes (the course's interface): ``W1`` (D, H), ``b1`` (H,), ``W2``
    (H, 1), ``b2`` (1,) are the parameters' arrays; ``grads`` maps the same
    names to their accumulated gradients. ``parameters()`` /
    ``named_parameters()`` give the ``Parameter`` objects for optimizers.

    Two ways to run it:

    * the course's stateful way: ``r = model.forward(x)`` then
      ``model.backward(grad_reward)``. The model remembers the pending
      forward; scoring chosen and rejected in two separate forward calls
      and then calling backward would be ambiguous, so it raises instead of
      silently using the wrong activations. Concatenate chosen and rejected
      into one batch of 2B rows (also faster: one GEMM instead of two).
    * the explicit way: ``r, cache = model.score(x)`` then
      ``model.backward(grad_reward, cache)``, which allows any number of
      calls in any order, each backpropagated with its own cache.

    ``predict(x)`` scores without remembering anything (for evaluation).
    """

    def __init__(self, input_dim: int, hidden_dim: int = 256, seed: int | None = None, dtype=None):
        input_dim = check_positive_int("input_dim", input_dim)
        hidden_dim = check_positive_int("hidden_dim", hidden_dim)
        if seed is not None:
            seed = check_nonneg_int("seed", seed)
        dtype = check_float_dtype("dtype", dtype)  # NumPy dtypes serve CuPy too
        xp = xp_active()
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        # Drawn with NumPy's generator, then moved: the same seed gives the same
        # model on every backend (as TinyGPT's initialisation does).
        gen = np.random.default_rng(seed)
        # He et al. 2015 ("Delving Deep into Rectifiers", Eq. 10): Var(w) = 2 / fan_in
        # keeps the variance of activations steady through a ReLU layer.
        W1 = xp.asarray(gen.standard_normal((input_dim, hidden_dim), dtype=dtype) * dtype.type(math.sqrt(2.0 / input_dim)))
        W2 = xp.asarray(gen.standard_normal((hidden_dim, 1), dtype=dtype) * dtype.type(math.sqrt(2.0 / hidden_dim)))
        self._params = {
            "W1": Parameter(W1),
            "b1": Parameter(xp.zeros((hidden_dim,), dtype=dtype)),
            "W2": Parameter(W2),
            "b2": Parameter(xp.zeros((1,), dtype=dtype)),
        }
        self._pending = None  # cache of the last stateful forward not yet backpropagated
        self._n_pending = 0  # how many stateful forwards are waiting for a backward

    W1 = _param_property("W1", "(D, H)")
    b1 = _param_property("b1", "(H,)")
    W2 = _param_property("W2", "(H, 1)")
    b2 = _param_property("b2", "(1,)")

    def named_parameters(self, prefix: str = ""):
        # The Parameters live in a dict so that the course's names (W1 ...) can
        # be the arrays themselves; report them under those names.
        for name in _PARAM_NAMES:
            yield f"{prefix}{name}", self._params[name]

    @property
    def grads(self) -> dict:
        """{'W1', 'b1', 'W2', 'b2'} -> the accumulated gradient arrays (Parameter ``.grad``)."""
        return {name: self._params[name].grad for name in _PARAM_NAMES}

    # -- scoring -------------------------------------------------------------

    def _check_input(self, x):
        if not hasattr(x, "shape") or not hasattr(x, "ndim"):
            raise TypeError(f"x: expected an array of shape (B, {self.input_dim}), got {type(x).__name__}")
        if getattr(x, "dtype", None) is None or x.dtype.kind != "f":
            # An integer x would silently compute in float64 (int @ float32 promotes).
            raise TypeError(f"x: expected a floating-point array, got dtype {getattr(x, 'dtype', None)}")
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(
                f"x: expected shape (B, {self.input_dim}) (a batch of feature rows), got {tuple(x.shape)}"
            )
        if get_array_module(x) is not get_array_module(self.W1):
            raise TypeError(
                f"x is a {type(x).__module__} array but the model's parameters are "
                f"{type(self.W1).__module__} arrays; move one of them (alignment_np.to_device, model.to)"
            )

    def score(self, x):
        """r, cache for ``x`` (B, D): r is (B, 1). Pass the cache to ``backward``."""
        self._check_input(x)
        return reward_mlp_forward(x, self.W1, self.b1, self.W2, self.b2)

    def predict(self, x):
        """Rewards (B, 1) for ``x`` (B, D) without keeping anything for backward."""
        return self.score(x)[0]

    def forward(self, x):
        """Rewards (B, 1) for ``x`` (B, D); remembers the activations for ``backward``."""
        r, cache = self.score(x)
        self._pending = cache
        self._n_pending += 1
        return r

    def clear_pending(self) -> None:
        """Forget forward calls that will not be backpropagated (e.g. evaluation)."""
        self._pending = None
        self._n_pending = 0

    def backward(self, grad_reward, cache=None):
        """Backpropagate dL/dr; accumulate (+=) parameter gradients; return dL/dx (B, D).

        grad_reward: (B, 1) or (B,), the gradient of the loss w.r.t. the rewards.
        cache: from ``score``; None uses the one pending ``forward`` call.
        """
        if cache is None:
            if self._n_pending == 0:
                raise ValueError(
                    "backward() without a cache needs a pending forward(x) call, and there is none "
                    "(each forward can be backpropagated once); call forward(x) first, or pass the "
                    "cache returned by score(x)"
                )
            if self._n_pending > 1:
                n = self._n_pending
                self.clear_pending()
                raise ValueError(
                    f"backward() is ambiguous: {n} forward() calls are pending, and only the last "
                    "one's activations are kept, so its gradients would be wrong for the others. "
                    "Score chosen and rejected in ONE forward on xp.concatenate([x_chosen, x_rejected]) "
                    "and backpropagate the concatenated gradient, or use the explicit form "
                    "r, cache = model.score(x); model.backward(grad_reward, cache) for each call. "
                    "(The pending forwards have been discarded; use predict(x) for scoring that "
                    "needs no backward.)"
                )
            cache = self._pending
            self.clear_pending()
        elif not isinstance(cache, dict) or not {"x", "W1", "W2", "a", "h"} <= set(cache):
            raise TypeError(
                f"cache: expected the dict returned by score(x) (keys x, W1, W2, a, h), got {type(cache).__name__}"
            )
        elif cache is self._pending:  # the pending forward's cache, passed explicitly
            self.clear_pending()

        B = cache["x"].shape[0]
        shape = tuple(getattr(grad_reward, "shape", ()))
        if shape not in ((B, 1), (B,)):
            raise ValueError(
                f"grad_reward: expected shape ({B}, 1) or ({B},) to match the forward batch, got {shape}"
            )
        if len(shape) == 1:
            grad_reward = grad_reward.reshape(B, 1)  # a view; the kernel does not write to it
        dx, dW1, db1, dW2, db2 = reward_mlp_backward(grad_reward, cache)
        for name, g in zip(_PARAM_NAMES, (dW1, db1, dW2, db2)):
            self._params[name].grad += g
        return dx

    def __repr__(self) -> str:
        return f"RewardModel(input_dim={self.input_dim}, hidden_dim={self.hidden_dim}, dtype={self.W1.dtype})"
