"""The machine under a benchmark: BLAS kernels and threads, the allocator, CPU load.

Nothing here imports NumPy at module level, so the benchmark's driver can
decide the environment of each side's worker process before any of them
loads OpenBLAS (which reads ``OPENBLAS_CORETYPE`` once, at the first
``import numpy``).
"""

import ctypes
import math
import os
import platform
import resource
import subprocess
import sys
import time

# Prints the core type OpenBLAS picks on its own (run in a fresh interpreter, before
# this process loads numpy): the exported name differs between OpenBLAS builds.
_COREPROBE = """
import ctypes, numpy
path = next(l.split()[-1] for l in open('/proc/self/maps') if 'openblas' in l.lower())
lib = ctypes.CDLL(path)
for name in ('openblas_get_corename', 'scipy_openblas_get_corename64_', 'openblas_get_corename64_'):
    if hasattr(lib, name):
        f = getattr(lib, name); f.restype = ctypes.c_char_p; print(f().decode()); break
"""
_AVX512_CORES = ("skylakex", "cooperlake", "sapphirerapids")  # OpenBLAS's AVX-512 kernels


def recommended_coretype() -> tuple:
    """(value, note): the OPENBLAS_CORETYPE that would give this CPU faster kernels, or None.

    OpenBLAS reads the variable once, when the library is loaded (at the first
    ``import numpy``); later changes do nothing, so only a fresh process can
    use it: the benchmark's "best path" worker gets it in its environment,
    the default path never does (a learner's process sets nothing). SkylakeX
    is recommended on an Intel AVX-512 CPU where OpenBLAS would pick AVX2
    kernels on its own. What it picks depends on its version and the CPU
    (older builds give AMD Zen 4 and some Intel parts Haswell kernels), so a
    fresh interpreter is asked first: a CPU already on AVX-512 kernels
    (SkylakeX, or the newer CooperLake and SapphireRapids, which forcing
    SkylakeX would downgrade) needs nothing, and neither does an AMD CPU
    (Zen 4 splits 512-bit work in two; see docs/performance.md). The note
    says which case this is, on every machine.
    """
    if "OPENBLAS_CORETYPE" in os.environ:
        return None, f"OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} set by the caller (every side inherits it)"
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.readlines()
    except OSError:
        return None, "none recommended (no /proc/cpuinfo)"
    flags = next((line for line in lines if line.startswith("flags")), "")
    vendor = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("vendor_id")), "")
    if " avx512f" not in flags:
        return None, "none recommended (the CPU has no avx512f)"
    if vendor == "AuthenticAMD":
        # Zen 4 runs 512-bit instructions as two 256-bit halves: measured on an EPYC
        # (Zen 4), SkylakeX sgemm was no faster than Haswell (195 vs 209 GFLOP/s, n = 2048).
        return None, "none recommended (AMD CPU: AVX-512 kernels measured no faster than AVX2 ones there)"
    probe = subprocess.run([sys.executable, "-c", _COREPROBE], capture_output=True, text=True, check=False)
    default = probe.stdout.strip() or "unknown"
    if default.lower() in _AVX512_CORES:
        return None, f"none recommended (the CPU has avx512f and OpenBLAS already picks {default})"
    return "SkylakeX", f"SkylakeX recommended (the CPU has avx512f; OpenBLAS alone picks {default})"


def _openblas():
    """The loaded OpenBLAS library (ctypes) and its symbol (prefix, suffix), or (None, None)."""
    from alignment_np.functional.parallel import openblas_library

    lib, prefix, suffix = openblas_library()
    return (lib, (prefix, suffix)) if lib is not None else (None, None)


def blas_info() -> dict:
    """OpenBLAS's core type (the kernels it picked) and thread count, as loaded in this process."""
    lib, names = _openblas()
    if lib is None:
        return {"corename": "unknown (not OpenBLAS?)", "threads": os.cpu_count() or 1}
    prefix, suffix = names
    corename = getattr(lib, f"{prefix}get_corename{suffix}")
    corename.restype = ctypes.c_char_p
    threads = getattr(lib, f"{prefix}get_num_threads{suffix}")()
    return {"corename": corename().decode(), "threads": int(threads)}


def keep_freed_memory() -> str:
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the OS.

    By default glibc serves blocks above a (dynamic) threshold with fresh
    ``mmap``s and trims the top of the heap once enough is free: a training
    step that allocates and frees the same activations every step then hands
    them back to the kernel and faults every page in again (zeroed) on the
    next step. Fixed thresholds stop that: blocks up to 32 MiB (the largest
    ``M_MMAP_THRESHOLD`` glibc accepts) come from the heap, and the heap is
    trimmed only when 1 GiB is free. Process-wide: both sides get it.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "default (not glibc)"
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    if mallopt(m_mmap_threshold, 32 << 20) and mallopt(m_trim_threshold, 1 << 30):
        return "keep freed memory (glibc mallopt: mmap threshold 32 MiB, trim threshold 1 GiB)"
    return "default (mallopt refused)"


def set_blas_threads(n: int) -> None:
    lib, names = _openblas()
    if lib is not None:
        prefix, suffix = names
        getattr(lib, f"{prefix}set_num_threads{suffix}")(ctypes.c_int(n))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        return platform.processor() or "?"


def cpu_snapshot():
    """(machine busy CPU-seconds, this process's and its children's CPU-seconds, wall time)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / hz  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        busy = float("nan")
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return busy, own, time.perf_counter()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def others_fraction(start, end) -> float:
    """Fraction of the machine's CPU time that other processes used between two snapshots."""
    busy, own, wall = (e - s for s, e in zip(start, end))
    if not math.isfinite(busy) or wall <= 0:
        return 0.0
    return max(busy - own, 0.0) / (_cores() * wall)


def others_share(start, end) -> str:
    """How much of the machine other processes used between two cpu_snapshot()s, in words."""
    wall = end[2] - start[2]
    if not math.isfinite(end[0] - start[0]):
        return "unknown"
    frac = others_fraction(start, end)
    return f"{frac * _cores() * wall:.1f} CPU-s of {_cores() * wall:.1f} ({100 * frac:.0f}% of the machine)"


def status_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")
