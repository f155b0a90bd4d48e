"""Optimisers, gradient clipping and the learning-rate schedule.

Every optimiser reads ``Parameter.grad`` and updates ``Parameter.data`` in
place; ``zero_grad()`` clears the gradients for the next step. State (momentum,
Adam's moments, the step count) is plain arrays reachable through
``state_dict()`` so that a checkpoint can save it and training resumes exactly.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from .backend import get_array_module, to_numpy
from .nn.module import Parameter


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
    if not isinstance(lr, (int, float)) or not lr >= 0 or math.isinf(lr):
        raise ValueError(f"lr: expected a finite number >= 0, got {lr!r}")
    return float(lr)


class Optimizer:
    """Shared plumbing: the parameter list, ``zero_grad`` and state (de)serialisation."""

    def __init__(self, params, lr: float):
        self.params = _unique(params)
        self.lr = _check_lr(lr)
        self.t = 0  # number of steps taken
        self.state: dict[str, list] = {}  # buffer name -> one array per parameter

    def zero_grad(self) -> None:
        for p in self.params:
            p.zero_grad()

    def state_dict(self) -> dict:
        """Flat dict: ``t``, ``lr`` and ``<buffer>/<i>`` NumPy arrays."""
        out = {"t": np.asarray(self.t), "lr": np.asarray(self.lr)}
        for name, buffers in self.state.items():
            for i, b in enumerate(buffers):
                out[f"{name}/{i}"] = to_numpy(b).copy()
        return out

    def load_state_dict(self, state: dict) -> None:
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


class SGD(Optimizer):
    """Stochastic gradient descent with (heavy-ball) momentum.

    v <- momentum * v + g;  w <- w - lr * (v + weight_decay * w)
    """

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum: expected a value in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
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
    ``no_decay`` names (substrings) exempt biases and LayerNorm gains, as GPT-2 does.
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
        b1, b2 = betas
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas: expected two values in [0, 1), got {betas!r}")
        if not eps > 0:
            raise ValueError(f"eps: expected > 0, got {eps!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay: expected >= 0, got {weight_decay!r}")
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        if decay_mask is None:
            # By default decay only matrices (ndim >= 2), not biases or LayerNorm gains.
            decay_mask = [p.data.ndim >= 2 for p in self.params]
        if len(decay_mask) != len(self.params):
            raise ValueError(
                f"decay_mask: expected {len(self.params)} entries (one per unique parameter), got {len(decay_mask)}"
            )
        self.decay_mask = list(decay_mask)
        zeros = [get_array_module(p.data).zeros_like(p.data) for p in self.params]
        self.state = {"m": zeros, "v": [z.copy() for z in zeros]}
        self._scratch = [None] * len(self.params)

    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        # Fold both bias corrections into one step size and one eps:
        # lr * m_hat / (sqrt(v_hat) + eps) = step_size * m / (sqrt(v) + eps_hat).
        c1 = 1.0 - b1**self.t
        c2 = 1.0 - b2**self.t
        step_size = self.lr * math.sqrt(c2) / c1
        eps_hat = self.eps * math.sqrt(c2)
        for i, (p, m, v, decay) in enumerate(zip(self.params, self.state["m"], self.state["v"], self.decay_mask)):
            xp = get_array_module(p.data)
            g = p.grad
            buf = self._scratch[i]
            if buf is None:  # one scratch array per parameter, reused every step
                buf = self._scratch[i] = xp.empty_like(p.data)
            m *= b1
            xp.multiply(g, 1.0 - b1, out=buf)
            m += buf
            v *= b2
            xp.multiply(g, g, out=buf)
            buf *= 1.0 - b2
            v += buf
            if decay and self.weight_decay:
                p.data *= 1.0 - self.lr * self.weight_decay
            xp.sqrt(v, out=buf)
            buf += eps_hat
            xp.divide(m, buf, out=buf)
            buf *= step_size
            p.data -= buf


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping (useful to log). A tied weight counts once.
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm: expected > 0, got {max_norm!r}")
    params = _unique(params)
    total = 0.0
    for p in params:
        xp = get_array_module(p.grad)
        g = p.grad.reshape(-1)
        total += float(xp.dot(g, g))
    norm = math.sqrt(total)
    if norm > max_norm:
        scale = max_norm / norm
        for p in params:
            p.grad *= scale
    return norm


def cosine_schedule(step: int, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 to ``max_lr`` over ``warmup_steps``, then cosine decay to ``min_lr``.

    ``step`` counts from 0. After ``total_steps`` the rate stays at ``min_lr``.
    """
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
