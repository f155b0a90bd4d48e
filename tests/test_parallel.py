"""The library's own threads (functional/parallel.py): the same numbers on one thread or several.

The suite runs on one thread (conftest.py); each test here switches to several
for its own duration and compares every kernel that cuts its work into blocks
with the same kernel on one thread. Elementwise blocks (GELU) must agree bit
for bit: each number is computed by the same operations on the same inputs,
only on another thread. Where a block calls BLAS on its rows (products,
LayerNorm's row sums) the numbers may differ in their last bits, because
OpenBLAS picks its kernel by the size of a product; those are compared in
float64 to 1e-12 relative to the largest entry, i.e. rounding and nothing
more. The shapes are large enough to be cut (``MIN_ELEMENTS``,
``MIN_MATMUL``); ``test_the_shapes_here_are_cut`` checks that.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest

from alignment_np.functional import parallel, workspace
from alignment_np.functional.activations import gelu_backward, gelu_forward, gelu_recompute
from alignment_np.functional.attention import (
    attention_backward,
    attention_bias,
    attention_forward,
    attention_tiles,
)
from alignment_np.functional.cross_entropy import cross_entropy_backward, cross_entropy_forward
from alignment_np.functional.layernorm import layernorm_backward, layernorm_forward
from alignment_np.functional.linear import linear_backward, linear_forward
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.optim import AdamW


@pytest.fixture
def threads():
    """Run a test's body with n threads: threads(n) sets it; the suite's count is restored after."""
    old = parallel.num_threads()
    yield parallel.set_num_threads
    parallel.set_num_threads(old)


def on(n, fn, *args):
    """fn(*args) with n threads; every array in the result copied out of the workspace."""
    parallel.set_num_threads(n)

    def copy(x):
        if isinstance(x, np.ndarray):
            return x.copy()
        if isinstance(x, (tuple, list)):
            return type(x)(copy(v) for v in x)
        if isinstance(x, dict):
            return {k: copy(v) for k, v in x.items()}
        return x

    return copy(fn(*args))


def assert_same(a, b, rounding=False):
    """Equal arrays (bit for bit), or with rounding=True equal to 1e-12 of each array's largest entry."""
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y, rounding)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k], rounding)
    elif isinstance(a, np.ndarray) and rounding:
        assert a.dtype == b.dtype == np.float64
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * max(1.0, float(np.abs(a).max())))
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


RNG = np.random.default_rng(0)
N, D = 512, 256  # 2^17 numbers: cut in two


def randn(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


def test_the_shapes_here_are_cut():
    assert len(parallel.blocks(N, D, n_threads=2)) == 2
    assert len(parallel.blocks(N * D, 1, n_threads=4)) == 2  # no block under MIN_ELEMENTS
    assert len(parallel.blocks(N, 4 * D * D, n_threads=2, min_size=parallel.MIN_MATMUL)) == 2
    assert len(parallel.blocks(8, 4 * D * D, n_threads=2, min_size=parallel.MIN_MATMUL)) == 1
    assert len(attention_tiles(8, 4, 128, n_groups=2)) == 2 * len(attention_tiles(8, 4, 128, 1))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 100])
@pytest.mark.parametrize("n_threads", [1, 2, 3, 8])
def test_blocks_cover_the_range_once_in_order(n, n_threads):
    parts = parallel.blocks(n, parallel.MIN_ELEMENTS, n_threads=n_threads)
    assert 1 <= len(parts) <= max(1, min(n_threads, n))
    covered = [i for part in parts for i in range(n)[part]]
    assert covered == list(range(n))


@pytest.mark.parametrize("n, chunk", [(1, 1), (7, 1), (7, 3), (100, 7), (100, 100), (100, 1000)])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_chunks_cover_every_index_once_and_in_order_within_a_block(threads, n, chunk, n_threads):
    calls, lock = [], threading.Lock()

    def fn(part):
        with lock:
            calls.append((threading.get_ident(), part))

    parallel.set_num_threads(n_threads)
    parallel.for_blocks(fn, n, parallel.MIN_ELEMENTS, np, chunk=chunk)
    assert all(part.stop - part.start <= chunk for _, part in calls)
    assert sorted(i for _, part in calls for i in range(n)[part]) == list(range(n))
    for ident in {ident for ident, _ in calls}:  # each thread walks its block forwards, without gaps
        parts = [part for i, part in calls if i == ident]
        assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_in_chunks_is_gelu_in_one_pass_bit_for_bit(threads, monkeypatch, dtype):
    # 2 * MIN_ELEMENTS + 1001 numbers: two blocks on two threads, each walked in chunks of
    # 10,007 numbers and a shorter rest
    n = 2 * parallel.MIN_ELEMENTS + 1001
    x, dout = randn(n, dtype=dtype), randn(n, dtype=dtype)
    run = lambda: (lambda out, cache: (out, cache[1], gelu_backward(dout, cache)))(*gelu_forward(x))
    monkeypatch.setattr(parallel, "CACHE_ELEMENTS", 1 << 40)
    whole = on(1, run)
    assert len(parallel.blocks(n, 1, n_threads=2)) == 2
    monkeypatch.setattr(parallel, "CACHE_ELEMENTS", 10_007)
    for n_threads in (1, 2):
        poison_free_buffers((n,), dtype)  # a number no chunk wrote would stay NaN
        assert_same(whole, on(n_threads, run))


def poison_free_buffers(shape, dtype, count=8):
    """Fill the workspace's free buffers of this size with NaN (they go back to the pool after)."""
    held = [workspace.empty(shape, dtype) for _ in range(count)]
    for buf in held:
        buf.fill(np.nan)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu(threads, dtype):
    x, dout = randn(N, 4 * D // 4, 4, dtype=dtype), randn(N, 4 * D // 4, 4, dtype=dtype)
    run = lambda: (lambda out, cache: (out, gelu_recompute(cache), gelu_backward(dout, cache)))(
        *gelu_forward(x))
    assert_same(on(1, run), on(2, run))


def test_layernorm(threads):
    x, dout = randn(4, N // 4, D), randn(4, N // 4, D)
    gamma, beta = randn(D), randn(D)
    run = lambda: (lambda out, cache: (out, cache, layernorm_backward(dout, cache)))(
        *layernorm_forward(x, gamma, beta))
    assert_same(on(1, run), on(3, run), rounding=True)


@pytest.mark.parametrize("bias", [True, False])
def test_linear(threads, bias):
    x, w, b = randn(N, D), randn(D, 3 * D), randn(3 * D) if bias else None
    dout = randn(N, 3 * D)
    run = lambda: (lambda out, cache: (out, linear_backward(dout, cache)))(*linear_forward(x, w, b))
    assert_same(on(1, run), on(2, run), rounding=True)
    assert_same(on(1, run), on(4, run), rounding=True)


@pytest.mark.parametrize("mask", [None, "left"])
def test_attention(threads, mask):
    b, t, d, h = 8, 128, 64, 4
    qkv, dout = randn(b, t, 3 * d), randn(b, t, d)
    attention_mask = None
    if mask == "left":
        attention_mask = np.ones((b, t), dtype=np.int64)
        attention_mask[::2, :17] = 0

    def run():
        bias = None if attention_mask is None else attention_bias(t, t, attention_mask, qkv.dtype)
        out, cache = attention_forward(qkv, h, attention_mask, bias)
        return out, cache["inv_sums"], attention_backward(dout, cache)

    assert_same(on(1, run), on(2, run), rounding=True)


def test_a_train_step_of_the_model_and_adamw(threads):
    """Forward, cross-entropy, backward and AdamW, three steps: the same weights on 1 and 2 threads."""
    config = GPTConfig(vocab_size=96, block_size=128, n_layer=2, n_head=4, d_model=128, dtype="float64")
    rng = np.random.default_rng(3)
    idx, targets = rng.integers(0, 96, (8, 128)), rng.integers(0, 96, (8, 128))

    def run():
        model = TinyGPT(config, seed=0)
        opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        for _ in range(3):
            outputs, cache = model.forward(idx)
            loss, ce_cache = cross_entropy_forward(outputs["logits"], targets)
            model.backward({"logits": cross_entropy_backward(1.0, ce_cache)}, cache)
            opt.step()
            opt.zero_grad()
        return np.float64(loss), [p.data for p in model.parameters()]

    one, two = on(1, run), on(2, run)
    assert abs(one[0] - two[0]) < 1e-12
    assert_same(one[1], two[1], rounding=True)


def test_generation_with_a_cut_prompt_forward(threads):
    """generate's prompt forward (many tokens: cut into blocks) and its one-token steps
    (not cut): the same tokens and, to rounding, the same log-probs on 1 and 2 threads."""
    from alignment_np.rl.generate import generate

    config = GPTConfig(vocab_size=64, block_size=128, n_layer=2, n_head=4, d_model=128, dtype="float64")
    model = TinyGPT(config, seed=2)
    prompt = np.random.default_rng(2).integers(0, 64, (16, 64))
    run = lambda: generate(model, prompt, 32, temperature=1.0, seed=5)
    one, two = on(1, run), on(2, run)
    np.testing.assert_array_equal(one["tokens"], two["tokens"])
    assert_same(one["logprobs"], two["logprobs"], rounding=True)


def test_an_error_in_any_block_is_raised_after_every_block_ended(threads):
    threads(2)
    done = []

    def fn(part):
        done.append(part)
        if part.start > 0:
            raise ValueError("from the worker")

    with pytest.raises(ValueError, match="from the worker"):
        parallel.for_blocks(fn, 4, parallel.MIN_ELEMENTS)
    assert len(done) == 2
    parallel.for_blocks(lambda part: done.append(part), 4, parallel.MIN_ELEMENTS)  # still works
    assert len(done) == 4


def test_callers_on_several_threads_of_their_own_get_their_own_results(threads):
    """Two threads of the user's run the model at once while the library uses its workers:
    each gets the numbers of a one-thread run (the second caller runs its blocks itself)."""
    config = GPTConfig(vocab_size=32, block_size=64, n_layer=2, n_head=4, d_model=128, dtype="float64")
    model = TinyGPT(config, seed=1)
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 32, (16, 64)) for _ in range(3)]
    threads(1)
    expected = [model.forward(b)[0]["logits"].copy() for b in batches]
    threads(2)
    results = [[] for _ in batches]

    def run(i):
        for _ in range(4):
            results[i].append(model.forward(batches[i])[0]["logits"].copy())

    callers = [threading.Thread(target=run, args=(i,)) for i in range(len(batches))]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    for got, want in zip(results, expected):
        assert len(got) == 4
        for logits in got:
            assert_same(logits, want, rounding=True)


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
def test_a_ctrl_c_while_waiting_is_raised_only_after_every_block_ended(threads):
    """A KeyboardInterrupt that arrives while the caller waits for a worker's block is
    raised once that block has ended, and the next for_blocks waits for its own blocks."""
    threads(2)
    ended = []

    def slow_worker_block(part):
        if part.start > 0:  # the worker's block
            time.sleep(0.3)
            ended.append(part)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)  # while the caller waits for the worker
        with pytest.raises(KeyboardInterrupt):
            parallel.for_blocks(slow_worker_block, 2, parallel.MIN_ELEMENTS)
        assert len(ended) == 1  # the worker's block had ended when the interrupt was raised
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    parallel.for_blocks(slow_worker_block, 2, parallel.MIN_ELEMENTS)
    assert len(ended) == 2  # waited for its own block, not answered by a stale lock


def test_a_for_blocks_inside_a_block_runs_inline(threads):
    threads(2)
    seen = []

    def inner(part):
        seen.append(part)

    parallel.for_blocks(lambda part: parallel.for_blocks(inner, 4, parallel.MIN_ELEMENTS), 2,
                        parallel.MIN_ELEMENTS)
    assert sorted((p.start, p.stop) for p in seen) == [(0, 4), (0, 4)]  # each inner: one block


def test_blas_threads_are_restored_after_a_region(threads):
    calls = parallel._openblas_calls()
    if not calls:
        pytest.skip("NumPy's BLAS is not an OpenBLAS this module can reach")
    get, set_ = calls
    old = get()
    try:
        set_(2)
        threads(2)
        with parallel.blas_single_threaded():
            assert get() == 1
            with parallel.blas_single_threaded():  # nested: the outer one restores
                assert get() == 1
            assert get() == 1
        assert get() == 2
        threads(1)  # one thread: BLAS is left alone
        with parallel.blas_single_threaded():
            assert get() == 2
    finally:
        set_(old)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_set_num_threads_refuses_non_positive_ints(value):
    with pytest.raises(ValueError, match="n: expected a positive int"):
        parallel.set_num_threads(value)


@pytest.mark.parametrize(
    "env, expected",
    [({"ALIGNMENT_NP_NUM_THREADS": "3"}, "3"), ({"OMP_NUM_THREADS": "1"}, "1"),
     ({"ALIGNMENT_NP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "1"}, "2"),
     ({"ALIGNMENT_NP_NUM_THREADS": "zero"}, "ValueError: ALIGNMENT_NP_NUM_THREADS: expected a positive int")],
)
def test_the_thread_count_comes_from_the_environment(env, expected):
    clean = {k: v for k, v in os.environ.items()
             if k not in ("ALIGNMENT_NP_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    code = ("from alignment_np.functional import parallel\n"
            "try:\n    print(parallel.num_threads())\n"
            "except ValueError as e:\n    print('ValueError:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip().startswith(expected)


def test_a_steady_threaded_step_allocates_nothing_large(threads):
    """As on one thread (test_workspace.py): the blocks' arrays come from the pool too.

    One difference: the blocks on two threads take and free buffers in an order
    that varies from step to step, so the most buffers alive at once can grow by
    one when an interleaving comes up for the first time. So this asserts that
    NumPy itself allocates little during a step, and that three more steps add
    at most one buffer to the pool, rather than none."""
    threads(2)
    config = GPTConfig(vocab_size=64, block_size=64, n_layer=2, n_head=4, d_model=64)
    model = TinyGPT(config, seed=0)
    opt = AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 64, (16, 64)), rng.integers(0, 64, (16, 64))

    def step():
        outputs, cache = model.forward(idx)
        _, ce_cache = cross_entropy_forward(outputs["logits"], targets)
        model.backward({"logits": cross_entropy_backward(1.0, ce_cache)}, cache)
        opt.step()
        opt.zero_grad()

    for _ in range(4):
        step()
    pooled = workspace.stats()
    tracemalloc.start()
    try:
        for _ in range(3):
            step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    after = workspace.stats()
    assert pooled["buffers"] <= after["buffers"] <= pooled["buffers"] + 1
    assert peak < pooled["bytes"] / 20
