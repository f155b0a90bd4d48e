#!/usr/bin/env python
"""Where does a NumPy step spend its time? A per-function profile of the benchmark's work.

    python benchmarks/profile_gpt.py --config medium --work train --steps 5
    python benchmarks/profile_gpt.py --config medium --work generate --threads 1

Runs the same workload as ``bench_gpt.py`` (same configs, same code path)
under ``cProfile`` after a warm-up call and prints, per function, the time
spent in the function itself (``tottime``: for a kernel, its NumPy calls;
BLAS runs inside ``numpy.matmul``, which cProfile charges to the kernel that
called it) as a share of the step, plus the number of calls per step. It
also prints page faults and system time per step (memory returned to the OS
and faulted back costs system time, not user time).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_gpt  # noqa: E402

import argparse  # noqa: E402
import cProfile  # noqa: E402
import pstats  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="medium", choices=list(bench_gpt.CONFIGS))
    p.add_argument("--work", default="train", choices=list(bench_gpt.WORKLOADS))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--threads", type=int, default=0, help="OpenBLAS threads and alignment_np's own (default: their own defaults)")
    p.add_argument("--malloc", choices=["keep", "default"], default="default",
                   help="default: glibc's own settings, as a learner runs the package; keep: call "
                        "alignment_np.backend.keep_freed_memory() first (bench_gpt.py's best path)")
    args = p.parse_args(argv)
    import numpy  # noqa: F401  (loads OpenBLAS, whose threads are set next)

    if args.threads:
        bench_gpt.set_blas_threads(args.threads)
        from alignment_np.functional import parallel

        parallel.set_num_threads(args.threads)
    if args.malloc == "keep":
        from alignment_np.backend import keep_freed_memory

        keep_freed_memory()
    side = bench_gpt.NumpySide(bench_gpt.CONFIGS[args.config])
    fn = getattr(side, args.work)
    fn()  # warm up

    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(args.steps):
        fn()
    wall = (time.perf_counter() - t0) / args.steps
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(args.steps):
        fn()
    profile.disable()

    blas = bench_gpt.blas_info()
    print(f"{args.config} {args.work}: {wall * 1e3:.1f} ms per call ({blas['corename']}, "
          f"{blas['threads']} BLAS threads, malloc {args.malloc}; load {os.getloadavg()[0]:.2f})")
    print(f"per call: {(r1.ru_minflt - r0.ru_minflt) / args.steps:.0f} minor page faults, "
          f"user {(r1.ru_utime - r0.ru_utime) / args.steps * 1e3:.1f} ms, "
          f"system {(r1.ru_stime - r0.ru_stime) / args.steps * 1e3:.1f} ms")
    stats = pstats.Stats(profile).stats
    total = sum(v[2] for v in stats.values())
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[: args.top]
    print(f"{'share':>6} {'ms/call':>8} {'calls':>6}  function")
    for (path, line, name), (_, ncalls, tottime, _, _) in rows:
        where = f"{os.path.relpath(path)}:{line}" if path != "~" else "builtin"
        print(f"{100 * tottime / total:5.1f}% {tottime / args.steps * 1e3:8.2f} {ncalls / args.steps:6.0f}  "
              f"{name} ({where})")


if __name__ == "__main__":
    main()
