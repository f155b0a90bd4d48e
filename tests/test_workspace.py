"""The workspace: large buffers reused once nothing refers to them, and never before."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

from alignment_np.functional import workspace
from alignment_np.functional.cross_entropy import cross_entropy_backward, cross_entropy_forward
from alignment_np.functional.workspace import MIN_POOLED_BYTES, Workspace
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.optim import AdamW

BIG = (256, 1024)  # 1 MiB of float32: pooled


def address(a) -> int:
    return a.__array_interface__["data"][0]


def test_a_freed_buffer_is_handed_out_again():
    ws = Workspace()
    a = ws.empty(BIG, np.float32)
    where = address(a)
    del a
    b = ws.empty(BIG, np.float32)
    assert address(b) == where
    assert ws.stats()["buffers"] == 1


def test_a_buffer_still_referenced_is_never_handed_out():
    ws = Workspace()
    a = ws.empty(BIG, np.float32)
    a[...] = 1.0
    b = ws.empty(BIG, np.float32)  # a is alive
    assert not np.shares_memory(a, b)
    # a view derived from a view keeps the buffer too, after the original is gone
    view = a.reshape(-1)[10:].reshape(-1, 2).T
    del a
    c = ws.empty(BIG, np.float32)
    assert not np.shares_memory(c, view) and not np.shares_memory(c, b)
    c[...] = 2.0
    assert np.all(view == 1.0)  # nothing wrote into the memory the view sees
    assert ws.stats() == {"buffers": 3, "bytes": 3 << 20, "bytes_in_use": 3 << 20, "bytes_free": 0}


def test_arrays_are_what_numpy_empty_gives():
    ws = Workspace()
    for shape, dtype in [(BIG, np.float32), ((3, 100, 300), np.float64), (70_000, np.int64)]:
        a = ws.empty(shape, dtype)
        expected = np.empty(shape, dtype)
        assert a.shape == expected.shape and a.dtype == expected.dtype
        assert a.flags.c_contiguous and a.flags.writeable
        z = ws.zeros(shape, dtype)
        assert not np.any(z)


def test_small_arrays_bypass_the_pool_and_nearby_sizes_share_a_class():
    ws = Workspace()
    small = ws.empty(MIN_POOLED_BYTES // 8 - 1, np.float64)
    assert small.base is None and ws.stats()["buffers"] == 0
    a = ws.empty((1000, 100), np.float32)  # 400,000 bytes
    where = address(a)
    del a
    b = ws.empty((1010, 100), np.float32)  # 404,000 bytes: the same size class (< 12.5% apart)
    assert address(b) == where and ws.stats()["buffers"] == 1


def test_free_memory_stays_bounded_when_shapes_keep_changing():
    ws = Workspace(min_free_limit=8 << 20)
    for rows in range(100, 4000, 97):  # ~40 different sizes, up to 4 MiB each
        a = ws.empty((rows, 256), np.float32)
        a[...] = 0
        del a
        assert ws.stats()["bytes_free"] <= (8 << 20) + rows * 1024 * 9 // 8
    assert ws.stats()["bytes_in_use"] == 0


def test_clear_drops_free_buffers_and_keeps_those_in_use():
    ws = Workspace()
    keep = ws.empty(BIG, np.float32)
    ws.empty((512, 1024), np.float32)  # dropped at once: free
    assert ws.stats()["buffers"] == 2
    ws.clear()
    assert ws.stats() == {"buffers": 1, "bytes": 1 << 20, "bytes_in_use": 1 << 20, "bytes_free": 0}
    del keep
    assert ws.stats()["bytes_free"] == 1 << 20


def test_threads_never_share_a_buffer():
    ws = Workspace()
    errors = []

    def worker(k):
        for _ in range(200):
            a = ws.empty(BIG, np.float32)
            a.fill(k)
            if not np.all(a == k):  # another thread wrote into our buffer
                errors.append(k)
            del a

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def train_step(model, opt, idx, targets):
    opt.zero_grad()
    outputs, cache = model.forward(idx)
    _, ce_cache = cross_entropy_forward(outputs["logits"], targets)
    model.backward({"logits": cross_entropy_backward(1.0, ce_cache)}, cache)
    opt.step()


def test_a_steady_training_step_allocates_nothing_large():
    """After the first step, every large array of a step comes from the pool: NumPy's own
    allocations during a step (tracemalloc sees them all) stay a small fraction of it."""
    config = GPTConfig(vocab_size=64, block_size=64, n_layer=2, n_head=4, d_model=64)
    model = TinyGPT(config, seed=0)
    opt = AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 64, (16, 64)), rng.integers(0, 64, (16, 64))
    for _ in range(2):
        train_step(model, opt, idx, targets)
    pooled = workspace.stats()
    tracemalloc.start()
    try:
        train_step(model, opt, idx, targets)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    after = workspace.stats()
    assert after["buffers"] == pooled["buffers"] and after["bytes"] == pooled["bytes"]
    assert pooled["bytes"] > 8 << 20  # the step's activations live in the pool...
    assert peak < pooled["bytes"] / 20  # ...and what NumPy allocates besides is small
    assert peak < 2 * MIN_POOLED_BYTES * 8


@pytest.mark.parametrize("n_threads", [2])
def test_kernels_called_from_threads_give_the_results_of_one_thread(n_threads):
    config = GPTConfig(vocab_size=32, block_size=32, n_layer=2, n_head=2, d_model=64, dtype="float64")
    model = TinyGPT(config, seed=1)
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 32, (8, 32)) for _ in range(n_threads)]
    expected = [model.forward(b)[0]["logits"].copy() for b in batches]
    results = [None] * n_threads

    def worker(i):
        for _ in range(5):
            results[i] = model.forward(batches[i])[0]["logits"]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)
