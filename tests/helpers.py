"""Helpers shared by several test files."""

from __future__ import annotations

import numpy as np


def make_parameters_generic(model, seed: int):
    """Give a model's LayerNorm gains and biases generic values, in place, and return it.

    At initialisation gamma = 1 and every bias = 0; a gradient check there
    cannot see a backward that confuses gamma with 1 or drops a bias term.
    Gains are drawn from U(0.5, 1.5) and biases from N(0, 0.2^2), with a
    generator seeded by ``seed + 1000``.
    """
    rng = np.random.default_rng(seed + 1000)
    for name, p in model.named_parameters():
        if name.endswith("gamma"):
            p.data[...] = rng.uniform(0.5, 1.5, p.shape)
        elif name.split(".")[-1] in ("beta", "b", "b_qkv", "b_proj"):
            p.data[...] = rng.standard_normal(p.shape) * 0.2
    return model
