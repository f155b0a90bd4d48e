"""Which array module runs the code: NumPy (default) or CuPy (a GPU).

The backend is chosen once, here, and the rest of the library never imports
NumPy or CuPy to *decide* where data lives. Two rules, as in chainer and thinc:

* kernels dispatch on their inputs: ``xp = get_array_module(x)`` at the top of
  every kernel, so the data's device decides and nothing is copied implicitly;
* code that *creates* arrays from nothing (initialising parameters, sampling)
  asks for the active module with ``xp_active()``.

Choose CuPy with ``ALIGNMENT_NP_BACKEND=cupy`` in the environment or with
``set_backend("cupy")``. Asking for CuPy where it is not installed or no GPU is
visible raises ``RuntimeError`` with a one-line message, not an obscure error
later. The environment's choice is applied at first use (the first
``get_backend()`` / ``xp_active()``), never at import, so ``import
alignment_np`` works on any machine and a command line can catch the error
and print it as one line; ``apply_env_backend()`` applies it on request. An
explicit ``set_backend`` overrides the environment.
"""

from __future__ import annotations

import os
import types

import numpy as np

BACKENDS = ("numpy", "cupy")
ENV_VAR = "ALIGNMENT_NP_BACKEND"

try:  # guarded import: CuPy is an optional extra (``pip install alignment_np[gpu]``)
    import cupy as _cupy  # type: ignore
except Exception:  # ImportError, or a CUDA library that fails to load
    _cupy = None

_active = "numpy"
_env_pending = True  # the environment's choice is applied at first use (apply_env_backend)


def has_cupy() -> bool:
    """True when the ``cupy`` package imports."""
    return _cupy is not None


def has_cupy_gpu() -> bool:
    """True when CuPy imports *and* sees at least one CUDA device."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _require_cupy() -> types.ModuleType:
    if _cupy is None:
        raise RuntimeError(
            "backend 'cupy' was requested but CuPy is not installed; "
            "install it with `pip install alignment_np[gpu]` (cupy-cuda12x) "
            "or use the 'numpy' backend"
        )
    if not has_cupy_gpu():
        raise RuntimeError(
            "backend 'cupy' was requested but CuPy sees no CUDA device "
            "(cupy.cuda.runtime.getDeviceCount() == 0 or the driver failed); "
            "use the 'numpy' backend on this machine"
        )
    return _cupy


def _checked_name(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {list(BACKENDS)}")
    if key == "cupy":
        _require_cupy()
    return key


def set_backend(name: str) -> None:
    """Make ``name`` ('numpy' or 'cupy') the module used to create new arrays.

    An explicit choice: it overrides ``ALIGNMENT_NP_BACKEND``. A failed
    switch (unknown name, CuPy without a GPU) changes nothing.
    """
    global _active, _env_pending
    _active = _checked_name(name)
    _env_pending = False


def apply_env_backend() -> str:
    """Apply ``ALIGNMENT_NP_BACKEND`` (if set and not yet applied); return the active backend.

    Raises ``RuntimeError`` with a one-line message when the variable names an
    unknown backend or CuPy cannot run here (the same message as
    ``set_backend``, plus where the request came from), for a command line to
    print as one line and exit. It keeps raising at every use until the
    variable is fixed or ``set_backend`` makes an explicit choice: a request
    for the GPU is never silently run on the CPU.
    """
    global _active, _env_pending
    if _env_pending:
        requested = os.environ.get(ENV_VAR, "")
        if requested.strip():
            try:
                _active = _checked_name(requested)
            except (ValueError, RuntimeError) as err:
                raise RuntimeError(f"{err} (requested by {ENV_VAR}={requested})") from None
        _env_pending = False
    return _active


def get_backend() -> str:
    """The active backend's name: 'numpy' or 'cupy' (applies the environment's choice first)."""
    return apply_env_backend()


def xp_active() -> types.ModuleType:
    """The active array module, for creating new arrays (parameters, noise)."""
    return _cupy if apply_env_backend() == "cupy" else np


def get_array_module(*arrays) -> types.ModuleType:
    """The array module that owns ``arrays``: CuPy if any of them is a CuPy array.

    Like ``cupy.get_array_module``; scalars and NumPy arrays give NumPy.
    """
    if _cupy is not None:
        for a in arrays:
            if isinstance(a, _cupy.ndarray):
                return _cupy
    return np


def as_array_of(xp: types.ModuleType, x, name: str):
    """``x`` as an array of module ``xp`` (a model's backend), for public boundaries.

    A list or scalar becomes an array of ``xp``; an array of the other backend
    raises ``TypeError`` naming ``name``: moving data between devices is never
    implicit (``to_device`` does it on request).
    """
    if not hasattr(x, "shape"):
        return xp.asarray(x)
    if get_array_module(x) is not xp:
        raise TypeError(
            f"{name}: expected a {xp.__name__} array (the model's backend), got "
            f"{type(x).__module__}.{type(x).__name__}; move it with to_device"
        )
    return x


def is_cupy_array(x) -> bool:
    return _cupy is not None and isinstance(x, _cupy.ndarray)


def to_numpy(x):
    """A NumPy array with the values of ``x`` (copied from the GPU if needed)."""
    if is_cupy_array(x):
        return _cupy.asnumpy(x)
    return np.asarray(x)


def to_device(x, backend: str | None = None):
    """``x`` as an array of ``backend`` (default: the active one).

    Moving between devices is always explicit: kernels never call this.
    """
    target = get_backend() if backend is None else backend
    if target not in BACKENDS:
        raise ValueError(f"unknown backend {target!r}; choose one of {list(BACKENDS)}")
    if target == "cupy":
        return _require_cupy().asarray(x)
    return to_numpy(x)


def available_backends() -> list[str]:
    """Backends that work on this machine ('numpy' always, 'cupy' with a GPU)."""
    return ["numpy", "cupy"] if has_cupy_gpu() else ["numpy"]


def keep_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed memory instead of returning it to the OS.

    No longer needed for speed: the kernels take their large arrays from the
    workspace (``functional/workspace.py``), which keeps and reuses them
    itself, so a training step stops faulting pages back in without any
    process-wide setting (``benchmarks/bench_gpt.py`` measures both paths;
    see docs/performance.md). Kept for code that allocates large arrays of
    its own every step.

    What it does: by default glibc serves blocks above 128 KiB with ``mmap``
    and hands them back with ``munmap`` when freed, so a loop that allocates
    and frees the same large arrays faults the same pages in again. Raising
    the mmap and trim thresholds keeps the memory in the process for reuse.
    Opt-in, because it changes the whole process. Returns True where it took
    effect (Linux with glibc), False elsewhere.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1
        ok = libc.mallopt(m_trim_threshold, 1 << 30) == 1 and ok
        return bool(ok)
    except (OSError, AttributeError):
        return False

