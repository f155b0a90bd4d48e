"""Optimisers, gradient clipping and the learning-rate schedule.

Every optimiser reads ``Parameter.grad`` and updates ``Parameter.data`` in
place; ``zero_grad()`` clears the gradients for the next step. State (momentum,
Adam's moments, the step count) is plain arrays reachable through
``state_dict()`` so that a checkpoint can save it and training resumes exactly.

Multi-tensor steps. A GPT has dozens of parameter arrays; updating them one
by one costs a dozen NumPy calls per array per step, a fixed cost that
dominates a small model's optimiser step. So an optimiser lays its
parameters out in ONE contiguous buffer (``FlatParameters``): each
``Parameter.data`` and ``Parameter.grad`` becomes a view into a flat
``data`` and a flat ``grad`` array (still the same shape, still usable as
before), the optimiser's own state (Adam's m and v) is flat too, and a step
is a handful of whole-array operations, whatever the number of parameters.
The decayed parameters come first in the buffer, so weight decay is one
operation on a prefix. Whole-array operations over millions of numbers are
bound by memory bandwidth, so the step runs them chunk by chunk
(``CHUNK`` numbers at a time, a few hundred KiB per array): each chunk stays
in the CPU cache through all the operations of the update. The numbers are
exactly those of the per-parameter loop: the same operations in the same
order on every element.

If someone replaces a parameter's array (``p.data = ...``, ``Module.to``,
a second optimiser over the same parameters), the optimiser notices at its
next step and lays the parameters out again, copying their current values:
the flat buffer is a layout, never a second copy of the truth.
"""

from __future__ import annotations

import math
import weakref
from typing import Iterable

import numpy as np

from .backend import get_array_module, to_numpy
from .checks import check_bool, check_float, check_int
from .functional import parallel
from .functional.workspace import empty
from .nn.module import Parameter

CHUNK = 1 << 15  # numbers per chunk of an optimiser step: 128 KiB of float32 per array

# id of a flat gradient buffer -> its FlatParameters, so that clip_grad_norm can recognise it
_LAYOUTS: "weakref.WeakValueDictionary[int, FlatParameters]" = weakref.WeakValueDictionary()


def _unique(params: Iterable[Parameter]) -> list[Parameter]:
    """Parameters in order, each once: a tied weight (wte) must not step twice."""
    params = list(params)
    if not params:
        raise ValueError("params: expected at least one Parameter, got an empty list")
    seen, out = set(), []
    for p in params:
        if not isinstance(p, Parameter):
            raise TypeError(f"params: expected Parameter objects, got {type(p).__name__}")
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _check_lr(lr) -> float:
    return check_float("lr", lr, 0.0)


class FlatParameters:
    """Parameters laid out in one contiguous ``data`` buffer and one ``grad`` buffer.

    params: unique Parameters of one array module and dtype, in the order
    they should take in the buffers. After construction ``p.data`` and
    ``p.grad`` are views of ``self.data`` and ``self.grad`` (values copied
    in), so code that reads or writes them in place works as before.
    ``slices[i]`` is parameter i's range in the flat buffers.
    ``intact()`` says whether every parameter still uses its views.
    """

    def __init__(self, params: list[Parameter]):
        self.params = params
        xp = get_array_module(params[0].data)
        dtype = params[0].data.dtype
        sizes = [int(p.data.size) for p in params]
        offsets = np.concatenate(([0], np.cumsum(sizes))).astype(int)
        self.size = int(offsets[-1])
        self.data = xp.empty(self.size, dtype=dtype)
        self.grad = xp.empty(self.size, dtype=dtype)
        self.slices = [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]
        self._views = []
        for p, sl in zip(params, self.slices):
            data = self.data[sl].reshape(p.data.shape)
            grad = self.grad[sl].reshape(p.data.shape)
            data[...] = p.data
            grad[...] = p.grad
            p.data, p.grad = data, grad
            self._views.append((data, grad))
        self.ids = frozenset(id(p) for p in params)
        _LAYOUTS[id(self.grad)] = self

    @staticmethod
    def can_hold(params: list[Parameter]) -> bool:
        """True when the parameters share one array module and one floating dtype."""
        first = params[0].data
        xp = get_array_module(first)
        return first.dtype.kind == "f" and all(
            get_array_module(p.data) is xp and p.data.dtype == first.dtype
            and get_array_module(p.grad) is xp and p.grad.dtype == first.dtype
            for p in params
        )

    def intact(self) -> bool:
        return all(p.data is d and p.grad is g for p, (d, g) in zip(self.params, self._views))


class Optimizer:
    """Shared plumbing: the parameter list, ``zero_grad`` and state (de)serialisation.

    A subclass that sets ``self.flat_order`` (the order of the parameters in
    the flat buffer, a permutation of ``range(len(params))``) gets its
    parameters laid out by ``_flatten`` and its per-parameter state as views
    of flat arrays (``_flat_state``).
    """

    def __init__(self, params, lr: float):
        self.params = _unique(params)
        self.lr = _check_lr(lr)
        self.t = 0  # number of steps taken
        self.state: dict[str, list] = {}  # buffer name -> one array per parameter
        self.flat: FlatParameters | None = None
        self.flat_state: dict[str, object] = {}  # buffer name -> its flat array

    def zero_grad(self) -> None:
        if self.flat is not None and self.flat.intact():
            self.flat.grad.fill(0)  # every gradient at once
            return
        for p in self.params:
            p.zero_grad()

    # ---------------------------------------------------------- flat layout

    def _flatten(self, order: list[int]) -> bool:
        """Lay the parameters out in one buffer, in ``order``; False if they cannot share one."""
        params = [self.params[i] for i in order]
        if not FlatParameters.can_hold(params):
            self.flat = None
            return False
        self.flat = FlatParameters(params)
        self._order = order
        return True

    def _flat_state(self, names) -> None:
        """Zeroed flat state arrays (e.g. Adam's m and v) and their per-parameter views."""
        xp = get_array_module(self.flat.data)
        per_param = {name: [None] * len(self.params) for name in names}
        for name in names:
            buffer = xp.zeros(self.flat.size, dtype=self.flat.data.dtype)
            self.flat_state[name] = buffer
            for i, sl in zip(self._order, self.flat.slices):
                per_param[name][i] = buffer[sl].reshape(self.params[i].data.shape)
        self.state = per_param

    def _relayout(self) -> None:
        """Parameters replaced since the layout: lay them out again, keeping the state's values."""
        saved = {name: [to_numpy(b).copy() for b in buffers] for name, buffers in self.state.items()}
        if self._flatten(self._order):
            self._flat_state(list(saved))
            for name, buffers in self.state.items():
                for b, value in zip(buffers, saved[name]):
                    b[...] = get_array_module(b).asarray(value)
        else:  # mixed devices or dtypes now: one state array per parameter
            self.state = {
                name: [get_array_module(p.data).asarray(v, dtype=p.data.dtype)
                       for p, v in zip(self.params, values)]
                for name, values in saved.items()
            }

    def _flat_ready(self) -> bool:
        """True when a step can run on the flat buffers (laying them out again if needed)."""
        if self.flat is None:
            return False
        if not self.flat.intact():
            self._relayout()
        return self.flat is not None

    # ---------------------------------------------------------- state

    def state_dict(self) -> dict:
        """Flat dict: ``t``, ``lr`` and ``<buffer>/<i>`` NumPy arrays (one per parameter)."""
        out = {"t": np.asarray(self.t), "lr": np.asarray(self.lr)}
        for name, buffers in self.state.items():
            for i, b in enumerate(buffers):
                out[f"{name}/{i}"] = to_numpy(b).copy()
        return out

    def load_state_dict(self, state: dict) -> None:
        self._flat_ready()  # write into the arrays the next step will read
        self.t = int(state["t"])
        self.lr = float(state["lr"])
        for name, buffers in self.state.items():
            for i, b in enumerate(buffers):
                key = f"{name}/{i}"
                if key not in state:
                    raise ValueError(f"optimizer state is missing {key!r}")
                value = state[key]
                if tuple(value.shape) != tuple(b.shape):
                    raise ValueError(
                        f"optimizer state {key!r}: expected shape {tuple(b.shape)}, got {tuple(value.shape)}"
                    )
                b[...] = get_array_module(b).asarray(value, dtype=b.dtype)


def _chunks(start: int, stop: int):
    """Slices of at most CHUNK numbers covering [start, stop)."""
    return [slice(i, min(i + CHUNK, stop)) for i in range(start, stop, CHUNK)]


class SGD(Optimizer):
    """Stochastic gradient descent with (heavy-ball) momentum.

    v <- momentum * v + g;  w <- w - lr * (v + weight_decay * w)
    """

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.momentum = check_float("momentum", momentum, 0.0, 1.0, high_open=True)
        self.weight_decay = check_float("weight_decay", weight_decay, 0.0)
        self.state = {"velocity": [get_array_module(p.data).zeros_like(p.data) for p in self.params]}

    def step(self) -> None:
        self.t += 1
        for p, v in zip(self.params, self.state["velocity"]):
            if self.momentum:
                v *= self.momentum
                v += p.grad
                update = v
            else:
                update = p.grad
            if self.weight_decay:
                p.data -= self.lr * self.weight_decay * p.data
            p.data -= self.lr * update


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019, Algorithm 2).

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
    m_hat = m / (1 - b1^t);  v_hat = v / (1 - b2^t)          (bias correction)
    w <- w - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * w)

    The decay multiplies the weight directly instead of being added to the
    gradient (which Adam would rescale per coordinate): that is the "W".
    ``decay_mask`` (one bool per unique parameter) says which parameters
    decay; by default the matrices do and the biases and LayerNorm gains do
    not, as GPT-2 does.

    The parameters live in one flat buffer, decayed ones first (see the
    module docstring), and a step is whole-array operations on it, chunk by
    chunk; ``state["m"][i]`` and ``state["v"][i]`` are views of the flat
    moments, one per parameter, as ``state_dict`` saves them.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        decay_mask: list[bool] | None = None,
    ):
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas: expected two values in [0, 1), got {betas!r}")
        try:
            b1, b2 = (check_float("betas", b, 0.0, 1.0, high_open=True) for b in betas)
        except ValueError:
            raise ValueError(f"betas: expected two values in [0, 1), got {betas!r}") from None
        self.betas = (b1, b2)
        self.eps = check_float("eps", eps, 0.0, low_open=True)
        self.weight_decay = check_float("weight_decay", weight_decay, 0.0)
        if decay_mask is None:
            # By default decay only matrices (ndim >= 2), not biases or LayerNorm gains.
            decay_mask = [p.data.ndim >= 2 for p in self.params]
        if not isinstance(decay_mask, (list, tuple)) or len(decay_mask) != len(self.params):
            raise ValueError(
                f"decay_mask: expected {len(self.params)} entries (one per unique parameter), "
                f"got {len(decay_mask) if isinstance(decay_mask, (list, tuple)) else decay_mask!r}"
            )
        self.decay_mask = [check_bool(f"decay_mask[{i}]", d) for i, d in enumerate(decay_mask)]
        # Flat layout: the decayed parameters first, so the decay is one prefix of the buffer.
        order = [i for i, d in enumerate(self.decay_mask) if d] + [i for i, d in enumerate(self.decay_mask) if not d]
        if self._flatten(order):
            self._flat_state(["m", "v"])
            self._n_decay = sum(self.params[i].data.size for i in order if self.decay_mask[i])
            xp = get_array_module(self.flat.data)
            self._scratch = xp.empty(min(CHUNK, self.flat.size), dtype=self.flat.data.dtype)
        else:  # parameters on several devices or of several dtypes: one array per parameter
            zeros = [get_array_module(p.data).zeros_like(p.data) for p in self.params]
            self.state = {"m": zeros, "v": [z.copy() for z in zeros]}

    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        # Fold both bias corrections into one step size and one eps:
        # lr * m_hat / (sqrt(v_hat) + eps) = step_size * m / (sqrt(v) + eps_hat).
        c1 = 1.0 - b1**self.t
        c2 = 1.0 - b2**self.t
        step_size = self.lr * math.sqrt(c2) / c1
        eps_hat = self.eps * math.sqrt(c2)
        decay = 1.0 - self.lr * self.weight_decay if self.weight_decay else None
        if self._flat_ready():
            flat = self.flat
            m, v = self.flat_state["m"], self.flat_state["v"]
            n_decay = self._n_decay
            chunks = _chunks(0, n_decay) + _chunks(n_decay, flat.size)
            xp = get_array_module(flat.data)

            def update(i):  # chunks i, on one thread (functional/parallel.py), with scratch of its own
                scratch = self._scratch if i.start == 0 else empty(self._scratch.shape, self._scratch.dtype, xp)
                for sl in chunks[i]:
                    _adamw_update(flat.data[sl], flat.grad[sl], m[sl], v[sl], scratch[: sl.stop - sl.start],
                                  b1, b2, step_size, eps_hat, decay if sl.start < n_decay else None)

            parallel.for_blocks(update, len(chunks), CHUNK, xp)
            return
        for p, m, v, decays in zip(self.params, self.state["m"], self.state["v"], self.decay_mask):
            buf = get_array_module(p.data).empty_like(p.data)
            _adamw_update(p.data, p.grad, m, v, buf, b1, b2, step_size, eps_hat, decay if decays else None)


def _adamw_update(w, g, m, v, buf, b1, b2, step_size, eps_hat, decay) -> None:
    """One AdamW update of the arrays w, m, v (in place) from the gradient g; buf is scratch.

    decay: the factor 1 - lr * weight_decay, or None for no decay.
    """
    xp = get_array_module(w)
    m *= b1
    xp.multiply(g, 1.0 - b1, out=buf)
    m += buf  # m = b1 m + (1 - b1) g
    v *= b2
    xp.multiply(g, g, out=buf)
    buf *= 1.0 - b2
    v += buf  # v = b2 v + (1 - b2) g^2
    if decay is not None:
        w *= decay
    xp.sqrt(v, out=buf)
    buf += eps_hat
    xp.divide(m, buf, out=buf)
    buf *= step_size
    w -= buf


def _covering_buffer(params: list[Parameter]):
    """The flat gradient buffer that exactly the params' gradients fill (an optimiser's), or None.

    With it, the global norm is one dot product and the clipping one scaling,
    instead of one of each per parameter.
    """
    layout = _LAYOUTS.get(id(params[0].grad.base))
    if layout is None or layout.grad is not params[0].grad.base or len(params) != len(layout.params):
        return None
    if {id(p) for p in params} != layout.ids or not layout.intact():
        return None
    return layout.grad


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping (useful to log). A tied weight counts once.
    ``max_norm`` may be ``math.inf``: the norm is measured, nothing is scaled.
    """
    if not (isinstance(max_norm, (int, float, np.floating, np.integer)) and not isinstance(max_norm, bool)
            and max_norm > 0):  # NaN fails "> 0"
        raise ValueError(f"max_norm: expected a number > 0 (math.inf: measure only), got {max_norm!r}")
    params = _unique(params)
    total = 0.0
    for p in params:  # one dot per parameter, summed in float64: the norm does not depend on the layout
        g = p.grad.reshape(-1)
        total += float(get_array_module(g).dot(g, g))
    norm = math.sqrt(total)
    if norm > max_norm:
        scale = max_norm / norm
        flat = _covering_buffer(params) if get_array_module(params[0].grad) is np else None
        for g in [flat] if flat is not None else [p.grad for p in params]:
            g *= scale  # one scaling of the flat buffer when the params fill it exactly
    return norm


def cosine_schedule(step: int, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 to ``max_lr`` over ``warmup_steps``, then cosine decay to ``min_lr``.

    ``step`` counts from 0. After ``total_steps`` the rate stays at ``min_lr``.
    """
    step = check_int("step", step, low=0)
    max_lr = check_float("max_lr", max_lr, 0.0)
    min_lr = check_float("min_lr", min_lr, 0.0)
    warmup_steps = check_int("warmup_steps", warmup_steps)
    total_steps = check_int("total_steps", total_steps)
    if warmup_steps < 0 or total_steps <= 0 or warmup_steps > total_steps:
        raise ValueError(
            f"expected 0 <= warmup_steps <= total_steps and total_steps > 0, got "
            f"warmup_steps={warmup_steps}, total_steps={total_steps}"
        )
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))
