"""The order in which a trainer visits its examples: a fresh permutation each epoch, resumable exactly.

Every offline trainer (SFT, the reward model, the DPO family) draws its
batches the same way: shuffle the N examples, take them B at a time, and when
the permutation runs out top the batch up from the next one, so each example
is seen once per epoch and every batch has exactly B entries. The whole state
is four plain values (the generator's state, the current permutation, the
position in it, the epoch count), so a checkpoint can store it and a resumed
run draws exactly the batches the uninterrupted run would have drawn.

    order = EpochOrder(n=10, batch_size=4, seed=0)
    order.next()            # (4,) int64 indices into the examples
    state = order.state()   # JSON-ready
    EpochOrder.from_state(state).next() == order.next()
"""

from __future__ import annotations

import numpy as np

from ..checkpoint import rng_from_state
from ..checks import check_int, check_nonneg_int, check_positive_int

__all__ = ["EpochOrder", "begin_epochs"]


class EpochOrder:
    """Batches of indices in [0, n): one permutation per epoch, drawn from a seeded generator.

    n: the number of examples (> 0). batch_size: B; a batch never holds
    more than n indices (B is capped at n). seed: an int >= 0.
    Attributes: ``epoch`` (permutations drawn so far), ``rng``.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0):
        self.n = check_positive_int("n", n)
        self.batch_size = min(check_positive_int("batch_size", batch_size), self.n)
        self.rng = np.random.default_rng(check_int("seed", seed, low=0))
        self.epoch = 0
        self._order: np.ndarray | None = None  # this epoch's permutation
        self._cursor = 0  # how many of its entries were used

    def next(self) -> np.ndarray:
        """The next batch (B,) of int64 indices."""
        out: list[int] = []
        while len(out) < self.batch_size:
            if self._order is None or self._cursor == self.n:
                self._order = self.rng.permutation(self.n)
                self._cursor = 0
                self.epoch += 1
            take = min(self.batch_size - len(out), self.n - self._cursor)
            out.extend(self._order[self._cursor : self._cursor + take].tolist())
            self._cursor += take
        return np.asarray(out, dtype=np.int64)

    def state(self) -> dict:
        """Everything needed to continue exactly, as JSON-ready values."""
        return {
            "n": self.n,
            "batch_size": self.batch_size,
            "epoch": self.epoch,
            "order": None if self._order is None else self._order.tolist(),
            "cursor": self._cursor,
            "rng": self.rng.bit_generator.state,
        }

    @classmethod
    def from_state(cls, state: dict) -> "EpochOrder":
        """The order that ``state()`` described, continuing where it stopped."""
        if not isinstance(state, dict) or not {"n", "batch_size", "epoch", "order", "cursor", "rng"} <= set(state):
            raise ValueError(f"state: expected a dict from EpochOrder.state(), got {state!r:.100}")
        out = cls(state["n"], state["batch_size"])
        out.rng = rng_from_state(state["rng"])
        out.epoch = int(state["epoch"])
        out._order = None if state["order"] is None else np.asarray(state["order"], dtype=np.int64)
        out._cursor = int(state["cursor"])
        return out


def begin_epochs(order: "EpochOrder | None", n_pairs: int, batch_size: int, seed: int,
                 planned: int, done: int, steps, callback) -> tuple["EpochOrder", int]:
    """What a pair trainer's ``train`` checks before its first step: (the order, the steps to run).

    order: the trainer's order so far (None before its first step); a trainer
    keeps one order for one dataset of ``n_pairs`` pairs, so a different size
    is refused. steps: None runs the config's ``planned`` steps less the
    ``done`` ones; else a count >= 0. callback: None or a callable.
    """
    steps = max(planned - done, 0) if steps is None else check_nonneg_int("steps", steps)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable(step, metrics), got {type(callback).__name__}")
    if order is None:
        return EpochOrder(n_pairs, batch_size, seed), steps
    if order.n != n_pairs:
        raise ValueError(
            f"data: this trainer's epoch order covers {order.n} pairs, got {n_pairs}; "
            "train on the same data throughout (or build a new trainer)"
        )
    return order, steps
