"""Scratch memory that one training step hands on to the next: a small caching allocator.

Why
---
A training step allocates the same large arrays every time: each layer's
activations (kept for the backward), the gradients flowing back, the
attention tiles. By default glibc serves every block above 128 KiB with a
fresh ``mmap`` and gives it back to the operating system with ``munmap`` as
soon as it is freed, so the next step asks for the same memory again and the
kernel faults every 4 KiB page back in, zeroed: thousands of page faults per
step, up to a third of a small model's step time, spent on nothing.

How
---
The kernels ask this module, not NumPy, for their large arrays:
``empty(shape, dtype)``. It keeps every large buffer it ever handed out in a
pool, and hands a buffer out again only when *nothing else refers to it*.
That is read from the buffer's reference count: an array that views a
pooled buffer (the array handed out, any slice, reshape or transpose of it,
however derived) holds a reference to the buffer itself (NumPy's ``.base``),
so the count falls back to the pool's own references exactly when the last
such array is gone. A cache kept for the backward, an output the caller
still holds, a view the caller took of it: each keeps its buffer out of the
pool. Reuse can therefore never make two live arrays share memory, and the
kernels stay pure: what they compute and return is what ``np.empty`` would
give them, only without the page faults.

Requests are rounded up to one of eight size classes per power of two
(less than 12.5% waste; none for the power-of-two-times-small-integer shapes
of a transformer), so arrays of nearby sizes share buffers. Free buffers are
kept up to ``max(64 MiB, the most memory ever in use at once)``; beyond
that, when a new buffer is needed, the free buffers of the size classes
asked for least recently go back to the operating system. A fixed-shape
training loop therefore allocates nothing after its first step, and a loop
whose shapes keep changing (variable-length batches) still holds a bounded
amount.

Small requests (under ``MIN_POOLED_BYTES``) go straight to NumPy: glibc
serves them from its heap without a system call. CuPy has a memory pool of
its own, so on a GPU ``empty`` is ``cupy.empty``.

``stats()`` says what the pool holds; ``clear()`` returns every free buffer
to the operating system (the pool refills on the next step).
"""

from __future__ import annotations

import sys
import threading

import numpy as np

__all__ = ["MIN_POOLED_BYTES", "Workspace", "empty", "zeros", "clear", "stats", "default_workspace"]

MIN_POOLED_BYTES = 1 << 16  # 64 KiB; glibc's mmap threshold starts at 128 KiB
_CLASSES_PER_OCTAVE_LOG2 = 3  # 8 size classes per power of two
_MIN_FREE_LIMIT = 64 << 20  # free bytes the pool may always keep


def _size_class(nbytes: int) -> int:
    """nbytes rounded up to the next of 8 evenly spaced sizes per power of two (>= 4 KiB steps)."""
    step = 1 << max(nbytes.bit_length() - 1 - _CLASSES_PER_OCTAVE_LOG2, 12)
    return -(-nbytes // step) * step


def _free_flags(buffers: list, free: int) -> list:
    """For each buffer, whether its reference count is ``free`` (nothing but the pool holds it)."""
    flags = []
    for buf in buffers:
        flags.append(sys.getrefcount(buf) == free)
    return flags


def _first_free(buffers: list, free: int) -> int:
    """Index of the first buffer whose reference count is ``free``, or -1 (the same test as above)."""
    i = 0
    for buf in buffers:
        if sys.getrefcount(buf) == free:
            return i
        i += 1
    return -1


def _free_refcount() -> int:
    """The reference count a pooled buffer has when nothing else holds it, as the two helpers
    above see it (measured, so that it does not depend on how the interpreter counts its own
    temporaries): a buffer held only by a list."""
    probe = [np.empty(1, dtype=np.uint8)]
    for count in range(1, 16):
        if _first_free(probe, count) == 0 and _free_flags(probe, count) == [True]:
            return count
    raise RuntimeError("workspace: could not measure the reference count of a free buffer")


class Workspace:
    """A pool of large NumPy buffers, reused once nothing refers to them (see the module docstring)."""

    def __init__(self, min_free_limit: int = _MIN_FREE_LIMIT):
        self._pool: dict[int, list] = {}  # size class -> 1-D uint8 buffers of that many bytes
        self._last_asked: dict[int, int] = {}  # size class -> tick of its latest request
        self._sizes: dict = {}  # (shape, dtype) -> (dtype, nbytes, size class): computed once
        self._tick = 0
        self._peak_in_use = 0  # bytes in use at once, the most seen when a buffer was added
        self._min_free_limit = int(min_free_limit)
        self._free = _free_refcount()
        self._lock = threading.Lock()  # a buffer must not be handed to two threads at once

    def _size(self, shape, dtype):
        """(dtype, nbytes, size class) of a request; shape as a tuple."""
        dtype = np.dtype(dtype)
        nbytes = dtype.itemsize
        for n in shape:
            nbytes *= int(n)
        return dtype, nbytes, _size_class(nbytes) if nbytes >= MIN_POOLED_BYTES else 0

    def empty(self, shape, dtype, xp=np):
        """An uninitialised array of ``shape`` and ``dtype``, from the pool when it is large.

        Like ``xp.empty(shape, dtype)``; the array is C-contiguous and shares
        memory with no array that is alive.
        """
        if xp is not np:  # CuPy pools its own device memory
            return xp.empty(shape, dtype=dtype)
        if not isinstance(shape, tuple):
            shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
        key = (shape, dtype)
        try:
            dtype, nbytes, size = self._sizes[key]
        except KeyError:
            if len(self._sizes) > 4096:  # shapes that keep changing: keep the table small
                self._sizes.clear()
            dtype, nbytes, size = self._sizes.setdefault(key, self._size(shape, dtype))
        if not size:  # small: malloc serves it from its heap
            return np.empty(shape, dtype=dtype)
        with self._lock:
            buf = self._take(size)
        return buf[:nbytes].view(dtype).reshape(shape)

    def zeros(self, shape, dtype, xp=np):
        """Like ``xp.zeros``: ``empty`` then filled with 0."""
        out = self.empty(shape, dtype, xp)
        out.fill(0)
        return out

    def _take(self, size: int):
        self._tick += 1
        self._last_asked[size] = self._tick
        buffers = self._pool.get(size)
        if buffers is None:
            buffers = self._pool[size] = []
        i = _first_free(buffers, self._free)
        if i >= 0:
            return buffers[i]
        self._make_room(size)
        buf = np.empty(size, dtype=np.uint8)
        buffers.append(buf)
        return buf

    def _make_room(self, size: int) -> None:
        """Before adding a buffer of ``size`` bytes: release free buffers beyond the limit."""
        free_buffers, in_use = [], 0
        for cls, buffers in self._pool.items():
            for buf, free in zip(buffers, _free_flags(buffers, self._free)):
                if free:
                    free_buffers.append((self._last_asked[cls], cls, buf))
                else:
                    in_use += cls
        self._peak_in_use = max(self._peak_in_use, in_use + size)
        limit = max(self._min_free_limit, self._peak_in_use)
        free_bytes = sum(cls for _, cls, _ in free_buffers)
        if free_bytes + size <= limit:
            return
        free_buffers.sort(key=lambda item: item[0])  # least recently asked-for class first
        for _, cls, buf in free_buffers:
            if free_bytes + size <= limit:
                break
            self._pool[cls] = [b for b in self._pool[cls] if b is not buf]
            free_bytes -= cls

    def clear(self) -> None:
        """Drop every free buffer (memory goes back to the OS); buffers in use stay pooled."""
        with self._lock:
            for cls in list(self._pool):
                buffers = self._pool[cls]
                self._pool[cls] = [b for b, free in zip(buffers, _free_flags(buffers, self._free)) if not free]
                if not self._pool[cls]:
                    del self._pool[cls], self._last_asked[cls]
            self._peak_in_use = 0

    def stats(self) -> dict:
        """{"buffers", "bytes", "bytes_in_use", "bytes_free"}: what the pool holds now."""
        with self._lock:
            total = in_use = count = 0
            for cls, buffers in self._pool.items():
                for free in _free_flags(buffers, self._free):
                    count += 1
                    total += cls
                    in_use += 0 if free else cls
        return {"buffers": count, "bytes": total, "bytes_in_use": in_use, "bytes_free": total - in_use}


_default = Workspace()


def default_workspace() -> Workspace:
    """The process's workspace, shared by every kernel."""
    return _default


def empty(shape, dtype, xp=np):
    """``default_workspace().empty``: an uninitialised array, reused memory when it is large."""
    return _default.empty(shape, dtype, xp)


def zeros(shape, dtype, xp=np):
    """``default_workspace().zeros``."""
    return _default.zeros(shape, dtype, xp)


def clear() -> None:
    """``default_workspace().clear``: return the free buffers to the operating system."""
    _default.clear()


def stats() -> dict:
    """``default_workspace().stats``."""
    return _default.stats()
