"""Every core for a step: cut the rows into blocks, one thread per block.

Why
---
A training step has two kinds of work. The matrix products go to BLAS. The
rest (GELU, LayerNorm's passes, attention's softmax tiles, adding a bias) is
NumPy ufuncs, and a ufunc runs on one core: on the small config that is
about half of a step, with the other cores idle. PyTorch runs both kinds on
one pool of threads. This module does the same, in Python.

NumPy releases the GIL while a ufunc or a BLAS call runs over a large array,
so Python threads that each work on their own block of rows really do run
at the same time. ``for_blocks(fn, n)`` cuts ``range(n)`` into one
contiguous block per thread and calls ``fn(block)`` (a ``slice``) on each:
the calling thread takes the first block, a pool of worker threads the
others, and ``for_blocks`` returns when every block is done. ``matmul`` is
the same for a matrix product: each thread multiplies its rows.

Why BLAS is single-threaded inside a block
------------------------------------------
OpenBLAS's own threads do not sleep when a product ends: they spin, waiting
for the next one, for more than 50 ms on this machine (measured here: a GELU
on two threads right after a multi-threaded product ran no faster than on
one, and almost twice as fast once BLAS was single-threaded). Two pools of threads on the
same cores would fight. So while ``for_blocks`` runs several blocks it sets
NumPy's OpenBLAS to one thread per call (every call is then one of ours, and
its threads stay asleep), and restores the previous setting before it
returns. TinyGPT's forward and backward (and a prompt's forward in
generation) run whole inside ``blas_single_threaded``, so no product between
two blocks wakes BLAS's threads during a step either. Outside, the process's
BLAS is as it was. (Setting the count costs under a microsecond. Where the
BLAS is not OpenBLAS, it is left alone.)

The contract for ``fn``
-----------------------
Read anything; write only into *its own rows* of arrays allocated before the
call. Blocks never touch each other's rows, so every number is computed from
the same inputs as in one pass over the whole array: an elementwise kernel
(GELU) gives the same bits on one thread or eight. A block that calls BLAS
on its rows may differ in the last bits (OpenBLAS picks its kernel by the
size of a product), as a product on another number of BLAS threads may;
``tests/test_parallel.py`` checks every kernel that uses this module against
one thread. A reduction *across* rows (LayerNorm's ``dgamma``) is split by
columns instead. A ``for_blocks`` inside a block runs inline, on that
block's thread, and so does one called by another thread of the user's
while the workers serve a first one: nothing waits for a worker.

The pieces must be large for this to pay: handing a block to a thread costs
about 45 microseconds here, so a work below ``MIN_ELEMENTS`` numbers per
block (``MIN_MATMUL`` multiply-adds for a product) runs in one block on the
calling thread. Generation (one
token per row per step) therefore runs as before.

How many threads
----------------
``num_threads()``: ``set_num_threads(n)`` if called; else the environment's
``ALIGNMENT_NP_NUM_THREADS``; else ``OMP_NUM_THREADS`` or
``OPENBLAS_NUM_THREADS`` (the command line sets them to 1 by default, so it
stays on one thread); else the cores this process may run on. On a GPU
(CuPy) every ``for_blocks`` is one call: the device is already parallel.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import _thread
import os
import threading

import numpy as np

from ..backend import get_array_module

__all__ = [
    "CACHE_ELEMENTS", "MIN_ELEMENTS", "MIN_MATMUL", "blas_single_threaded", "blocks", "for_blocks", "matmul",
    "num_threads", "set_num_threads", "single_threaded_blas",
]

ENV_VAR = "ALIGNMENT_NP_NUM_THREADS"
# Below this many numbers per block, one thread. A handoff costs about 45
# microseconds here, one pass over some 160 Ki float32 numbers; a kernel of
# several passes over two blocks of 2^16 numbers saves about that much.
MIN_ELEMENTS = 1 << 16
# A block of a matrix product: at least this many multiply-adds (0.1 to 0.2 ms
# of single-threaded BLAS). Generation's one-token products stay whole.
MIN_MATMUL = 1 << 22
# Numbers per call of a kernel that makes several passes over its arrays
# (``for_blocks(..., chunk=)``): the arrays of a 2^18-number chunk (1 MiB of
# float32 each) stay in cache from one pass to the next, where a whole block
# of a medium model's GELU (4 MiB per array) goes to memory and back at every
# pass. Measured against no chunks, alternated, on two threads and on one:
# GELU's forward x0.89 / x0.88 and backward x0.70 / x0.70 on the medium
# config's (2048, 1024), backward x0.91 / x0.86 on small's (2048, 512),
# forward unchanged there; 2^17 and 2^16 were worse (more calls), and so was
# chunking LayerNorm (x1.0 to x2.1: its blocks already fit). Calls this large
# lose nothing measurable to the GIL (see docs/performance.md).
CACHE_ELEMENTS = 1 << 18

_threads: int | None = None  # set_num_threads; None: from the environment, read at first use
_local = threading.local()  # .inside: this thread is running a block


def _from_environment() -> int:
    for name in (ENV_VAR, "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                n = int(value)
            except ValueError:
                raise ValueError(f"{name}: expected a positive int, got {value!r}") from None
            if n < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
            return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def num_threads() -> int:
    """How many threads ``for_blocks`` uses (see the module docstring)."""
    global _threads
    if _threads is None:
        _threads = _from_environment()
    return _threads


def set_num_threads(n: int) -> int:
    """Use ``n`` threads from now on (1: everything on the calling thread). Returns the old count."""
    global _threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    old = num_threads()
    _threads = n
    return old


def blocks(n: int, size_per_item: int = 1, n_threads: int | None = None,
           min_size: int = MIN_ELEMENTS) -> list:
    """The blocks ``for_blocks`` uses: contiguous slices covering range(n).

    As many as there are threads, but none with less than ``min_size`` work
    (``size_per_item`` per index), and at least one.
    """
    n_threads = num_threads() if n_threads is None else n_threads
    k = max(1, min(n_threads, n, (n * size_per_item) // min_size))
    bounds = [n * i // k for i in range(k + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(k)]


# ---------------------------------------------------------------- NumPy's OpenBLAS
_openblas_found = None  # (library, symbol prefix, suffix) of the loaded OpenBLAS; (None, "", "") if none
_blas_calls = None  # (get_num_threads, set_num_threads) of that library, () if none


def openblas_library() -> tuple:
    """(ctypes library, symbol prefix, symbol suffix) of the OpenBLAS NumPy loaded, or (None, "", "").

    Found in /proc/self/maps (Linux only). NumPy's wheels name their symbols
    ``scipy_openblas_..._64_``; a system OpenBLAS ``openblas_...``.
    """
    global _openblas_found
    if _openblas_found is None:
        _openblas_found = (None, "", "")
        try:
            with open("/proc/self/maps") as f:
                path = next((line.split()[-1] for line in f if "openblas" in line.lower()), None)
            lib = ctypes.CDLL(path) if path else None
        except OSError:
            lib = None
        for prefix, suffix in (("openblas_", ""), ("scipy_openblas_", "64_"), ("openblas_", "64_")):
            if lib is not None and hasattr(lib, f"{prefix}set_num_threads{suffix}"):
                _openblas_found = (lib, prefix, suffix)
                break
    return _openblas_found


def _openblas_calls():
    """ctypes get/set of the thread count of the OpenBLAS NumPy loaded, or ()."""
    global _blas_calls
    if _blas_calls is None:
        lib, prefix, suffix = openblas_library()
        _blas_calls = ()
        if lib is not None:
            get = getattr(lib, f"{prefix}get_num_threads{suffix}")
            set_ = getattr(lib, f"{prefix}set_num_threads{suffix}")
            set_.argtypes = [ctypes.c_int]
            _blas_calls = (get, set_)
    return _blas_calls


_blas_depth = 0  # nesting of blas_single_threaded: only the outermost one sets and restores
_blas_lock = threading.Lock()


@contextlib.contextmanager
def blas_single_threaded():
    """Within: NumPy's OpenBLAS runs each call on one thread (when this module uses several).

    Nestable; the outermost restores the previous count. ``for_blocks`` enters
    it around its blocks, and TinyGPT's forward and backward around a whole
    pass (``single_threaded_blas``), so that no product in between wakes
    OpenBLAS's spinning threads. A no-op with one thread or another BLAS.
    """
    global _blas_depth
    with _blas_lock:
        calls = _openblas_calls() if _blas_depth == 0 and num_threads() > 1 else ()
        old = calls[0]() if calls else 1
        if old > 1:
            calls[1](1)
        _blas_depth += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if old > 1:
                calls[1](old)


def single_threaded_blas(method):
    """Decorator: run ``method`` inside ``blas_single_threaded()`` (a model's whole forward or backward)."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with blas_single_threaded():
            return method(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------- running blocks
class _Worker(threading.Thread):
    """A thread that runs one block at a time: ``start_block`` hands it one, ``wait`` waits for it.

    Two bare locks pass the block back and forth: a ``for_blocks`` of two
    empty blocks took about 45 microseconds here, against about 95 through a
    ``concurrent.futures`` pool.
    """

    def __init__(self):
        super().__init__(daemon=True, name="alignment_np-worker")
        self._go = _thread.allocate_lock()
        self._go.acquire()
        self._done = _thread.allocate_lock()
        self._done.acquire()
        self._task = None
        self._error = None

    def start_block(self, fn, part) -> None:
        self._task, self._error = (fn, part), None
        self._go.release()

    def wait(self):
        """Wait for the block; return the exception it raised, or None."""
        self._done.acquire()
        return self._error

    def run(self) -> None:
        while True:
            self._go.acquire()
            fn, part = self._task
            try:
                _run_block(fn, part)
            except BaseException as error:  # handed to the caller, raised there
                self._error = error
            self._done.release()


_workers: list = []
_workers_lock = threading.Lock()
# Held while a for_blocks uses the workers: a second caller (another thread of
# the user's) runs its blocks itself, one after the other, rather than wait.
_busy = threading.Lock()


def _get_workers(n: int) -> list:
    with _workers_lock:
        while len(_workers) < n:
            worker = _Worker()
            worker.start()
            _workers.append(worker)
        return _workers[:n]


def _forget_workers() -> None:  # in a forked child the threads are gone
    global _workers_lock, _busy, _blas_lock, _blas_depth
    _workers.clear()
    _workers_lock, _busy, _blas_lock = threading.Lock(), threading.Lock(), threading.Lock()
    _blas_depth = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


def _wait_for_all(workers) -> list:
    """Every worker's exception or None, once all have ended: even a Ctrl-C waits for them.

    A block still running after for_blocks returned would write into arrays
    the caller is already reading, and its lock would answer the next call's
    wait too early; so a KeyboardInterrupt while waiting is raised only after
    the last block has ended.
    """
    errors, interrupt = [], None
    for worker in workers:
        while True:
            try:
                errors.append(worker.wait())
                break
            except KeyboardInterrupt as error:
                interrupt = error
    if interrupt is not None:
        raise interrupt
    return errors


def _run_block(fn, part):
    _local.inside = True
    try:
        fn(part)
    finally:
        _local.inside = False


def for_blocks(fn, n: int, size_per_item: int = 1, xp=None, min_size: int = MIN_ELEMENTS,
               chunk: int | None = None) -> None:
    """Call ``fn(block)`` for the blocks of range(n), in parallel; return when all are done.

    fn: takes a ``slice`` of range(n) and writes its results into its own rows
        of arrays allocated before the call (see the module docstring).
    size_per_item: numbers per index (e.g. the width of a row), for the
        ``min_size`` rule (MIN_ELEMENTS numbers per block by default).
    xp: the array module of the data; anything but NumPy runs fn(slice(0, n)).
    chunk: None, or at most this many indices per call of fn: each block is
        then walked in consecutive chunks (``CACHE_ELEMENTS // size_per_item``
        suits a kernel of several passes, whose arrays then stay in cache).
        The same numbers either way: fn's contract makes its rows independent.
    An exception in any block is raised here, after every block has ended (so is
    a Ctrl-C that arrives while the caller waits for the other threads).
    """
    if xp is not None and xp is not np:  # a GPU runs the whole array at once
        fn(slice(0, n))
        return
    if chunk is not None and chunk < n:
        fn = _in_chunks(fn, max(1, int(chunk)))
    n_threads = _threads or num_threads()
    if n_threads == 1 or n < 2 or n * size_per_item < 2 * min_size or getattr(_local, "inside", False):
        fn(slice(0, n))  # too small to cut, one thread, or inside a block: at once
        return
    if not _busy.acquire(blocking=False):  # the workers serve another thread's blocks now
        fn(slice(0, n))
        return
    try:
        parts = blocks(n, size_per_item, n_threads, min_size)
        workers = _get_workers(len(parts) - 1)
        with blas_single_threaded():
            for worker, part in zip(workers, parts[1:]):
                worker.start_block(fn, part)
            try:
                _run_block(fn, parts[0])  # the calling thread does the first block itself
            finally:
                errors = _wait_for_all(workers)
    finally:
        _busy.release()
    for error in errors:
        if error is not None:
            raise error


def _in_chunks(fn, chunk: int):
    """fn called on consecutive slices of at most ``chunk`` indices of its block, in order."""

    def walk(part):
        for start in range(part.start, part.stop, chunk):
            fn(slice(start, min(part.stop, start + chunk)))

    return walk


def matmul(a, b, out):
    """out = a @ b, the rows of out shared among the threads; returns out.

    a (M, K) and b (K, N) with out (M, N): each thread multiplies its block of
    a's rows (a row of the product depends on that row of a only). a may be a
    transposed view (``x.T``), whose rows BLAS reads in place as columns of x.
    a (K,) and b (K, N) with out (N,) (a vector times a matrix: column sums
    when a is ones): each thread takes a block of b's columns.
    Either way each number is computed by one BLAS call, as in a single
    ``matmul`` (up to the last bits: the kernel BLAS picks depends on the size).
    """
    xp = get_array_module(a)
    if a.ndim == 1:
        for_blocks(lambda j: xp.matmul(a, b[:, j], out=out[j]), b.shape[1], b.shape[0], xp,
                   MIN_MATMUL)
    else:
        for_blocks(lambda i: xp.matmul(a[i], b, out=out[i]), a.shape[0], a.shape[1] * b.shape[1], xp,
                   MIN_MATMUL)
    return out
