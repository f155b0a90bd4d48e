"""The data order of the offline trainers (alignment_np/trainers/epoch_order.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.trainers.epoch_order import EpochOrder


@given(n=st.integers(1, 30), batch_size=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_every_example_once_per_epoch_and_full_batches(n, batch_size, seed):
    order = EpochOrder(n, batch_size, seed)
    b = min(batch_size, n)
    drawn = np.concatenate([order.next() for _ in range(3 * n)])  # 3 * n batches of b: exactly 3 * b epochs
    assert drawn.size == 3 * n * b
    for epoch in drawn.reshape(3 * b, n):
        assert sorted(epoch.tolist()) == list(range(n))
    assert order.epoch == 3 * b


@given(n=st.integers(1, 20), batch_size=st.integers(1, 8), k=st.integers(0, 12), seed=st.integers(0, 99))
def test_state_round_trips_through_json_and_continues_exactly(n, batch_size, k, seed):
    straight, stopped = EpochOrder(n, batch_size, seed), EpochOrder(n, batch_size, seed)
    expected = [straight.next().tolist() for _ in range(k + 5)]
    for _ in range(k):
        stopped.next()
    resumed = EpochOrder.from_state(json.loads(json.dumps(stopped.state())))
    assert [resumed.next().tolist() for _ in range(5)] == expected[k:]
    assert resumed.epoch == straight.epoch


def test_bad_arguments():
    with pytest.raises(ValueError, match="n: expected a positive int, got 0"):
        EpochOrder(0, 4)
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        EpochOrder(3, 0)
    with pytest.raises(ValueError, match="state: expected a dict from EpochOrder.state"):
        EpochOrder.from_state({"n": 3})
