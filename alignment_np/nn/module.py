"""Parameters and modules: the containers that own weights and their gradients.

The contract every module follows (see DESIGN.md, "Module contract"):

* ``forward(*inputs) -> (out, cache)``: the cache is plain data (arrays,
  tuples) that a learner can print; the module keeps no hidden state, so it
  can be called twice (chosen, rejected) before either backward.
* ``backward(dout, cache) -> dx``: returns the input gradient(s) and
  *accumulates* (``+=``) the parameter gradients into ``Parameter.grad``.
  Backward never mutates ``dout`` or the cache and never returns a view of them.
* ``zero_grad()`` clears every gradient; an optimizer step reads ``.grad``.
* ``named_parameters()`` walks the module tree with dotted names
  (``blocks.0.attn.w_qkv``), so an optimizer, a checkpoint and a test can
  reach every array by name.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..backend import get_array_module, to_device, to_numpy


class Parameter:
    """A trainable array ``data`` with its gradient ``grad`` (same shape, dtype, device)."""

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = data
        self.grad = get_array_module(data).zeros_like(data)

    @property
    def shape(self):
        return self.data.shape

    def zero_grad(self) -> None:
        self.grad[...] = 0

    def __repr__(self) -> str:
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


class Module:
    """Base class: finds Parameters and sub-Modules among the attributes."""

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for name, value in vars(self).items():
            full = f"{prefix}{name}"
            if isinstance(value, Parameter):
                yield full, value
            elif isinstance(value, Module):
                yield from value.named_parameters(full + ".")
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield from item.named_parameters(f"{full}.{i}.")
                    elif isinstance(item, Parameter):
                        yield f"{full}.{i}", item

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        """Number of scalars over distinct parameters (a tied weight counts once)."""
        seen, total = set(), 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += int(p.data.size)
        return total

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.zero_grad()

    def state_dict(self) -> dict[str, np.ndarray]:
        """Name -> NumPy copy of each parameter's data."""
        return {name: to_numpy(p.data).copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict) -> None:
        """Copy arrays into the parameters; any missing, extra or misshapen entry raises ValueError."""
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state))
        extra = sorted(set(state) - set(params))
        if missing or extra:
            raise ValueError(f"state dict mismatch: missing {missing}, unexpected {extra}")
        for name, p in params.items():
            value = state[name]
            if tuple(value.shape) != tuple(p.data.shape):
                raise ValueError(
                    f"state dict entry {name!r}: expected shape {tuple(p.data.shape)}, "
                    f"got {tuple(value.shape)}"
                )
            xp = get_array_module(p.data)
            p.data[...] = xp.asarray(value, dtype=p.data.dtype)

    def to(self, backend: str) -> "Module":
        """Move every parameter (and its gradient) to ``backend`` ('numpy' or 'cupy')."""
        for p in self.parameters():
            p.data = to_device(p.data, backend)
            p.grad = to_device(p.grad, backend)
        return self

    def forward(self, *inputs):  # pragma: no cover - interface
        raise NotImplementedError

    def backward(self, dout, cache):  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, *inputs, **kwargs):
        return self.forward(*inputs, **kwargs)
