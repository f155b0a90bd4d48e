#!/usr/bin/env python
"""How many queries per attention tile? ``TILE_QUERIES`` measured rather than guessed.

    python benchmarks/tile_sizes.py                            # 32, 64, 128 queries; tiny, small, medium
    python benchmarks/tile_sizes.py --queries 32,64 --steps    # whole train steps too

``functional/attention.py`` cuts each sequence's queries into blocks of
``TILE_QUERIES`` rows (its docstring derives the tiles). Smaller blocks skip
more of the masked half of the scores; larger ones make fewer, larger matrix
products, and leave the backward fewer partial sums of dk and dv to add up.
Which wins depends on the machine and the shapes, so this script times the
kernel's forward and backward at each config's shapes for each block size,
on the library's threads as ``TinyGPT`` runs them (BLAS single-threaded
inside). The sizes take turns repeat after repeat, in alternating order, in
one process, so that a change of the machine's speed hits them all alike;
``--steps`` also alternates whole train steps (``bench_gpt.NumpySide.train``:
forward, cross-entropy, backward, AdamW). Each time is the median over the
repeats; "vs first" is the median over the repeats of the time divided by
the first size's in the same repeat (< 1: faster than the first). Every
block size computes the same numbers up to rounding (tests/test_attention.py
checks the tiles against the plain formulas). NumPy only.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_gpt  # noqa: E402

import argparse  # noqa: E402
import contextlib  # noqa: E402
import statistics  # noqa: E402


@contextlib.contextmanager
def tile_queries(n: int):
    """attention.TILE_QUERIES = n inside, the old value restored afterwards."""
    from alignment_np.functional import attention

    saved = attention.TILE_QUERIES
    attention.TILE_QUERIES = n
    try:
        yield
    finally:
        attention.TILE_QUERIES = saved


def _turns(sizes: list, repeat: int) -> list:
    """The sizes in order on even repeats, reversed on odd ones."""
    return sizes if repeat % 2 == 0 else sizes[::-1]


def kernel_times(name: str, sizes: list, repeats: int, min_time: float) -> dict:
    """{queries: ([forward s], [backward s])} per call, one of each per repeat, at config ``name``."""
    import numpy as np

    from alignment_np.functional import parallel
    from alignment_np.functional.attention import attention_backward, attention_forward

    c = bench_gpt.CONFIGS[name]
    b, t, d, h = c["B"], c["T"], c["D"], c["H"]
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((b, t, 3 * d)).astype(np.float32)
    dout = rng.standard_normal((b, t, d)).astype(np.float32)
    seconds = {n: ([], []) for n in sizes}
    with parallel.blas_single_threaded():  # as inside TinyGPT.forward and backward
        for repeat in range(repeats + 1):  # the first round warms the workspace up, untimed
            for n in _turns(sizes, repeat):
                with tile_queries(n):
                    cache = attention_forward(qkv, h)[1]  # the backward's cache, at these tiles
                    forward = bench_gpt.time_per_call(lambda: attention_forward(qkv, h), min_time)
                    backward = bench_gpt.time_per_call(lambda: attention_backward(dout, cache), min_time)
                if repeat:
                    seconds[n][0].append(forward)
                    seconds[n][1].append(backward)
    return seconds


def step_times(name: str, sizes: list, repeats: int, min_time: float) -> dict:
    """{queries: [s]} per whole train step, one per repeat, at config ``name``."""
    side = bench_gpt.NumpySide(bench_gpt.CONFIGS[name])
    seconds = {n: [] for n in sizes}
    for repeat in range(repeats + 1):
        for n in _turns(sizes, repeat):
            with tile_queries(n):
                t = bench_gpt.time_per_call(side.train, min_time)
            if repeat:
                seconds[n].append(t)
    return seconds


def summary(seconds: dict, first: int) -> dict:
    """{queries: (median ms, median ratio to ``first`` within a repeat)} of per-repeat times."""
    return {n: (1e3 * statistics.median(s), statistics.median(a / b for a, b in zip(s, seconds[first])))
            for n, s in seconds.items()}


def _sizes(parser, text: str) -> list:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        parser.error(f"--queries: expected distinct ints >= 1, comma-separated, got {text!r}")
    return sizes


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="tiny,small,medium", help="comma-separated: tiny, small, medium")
    p.add_argument("--queries", default="32,64,128", help="comma-separated TILE_QUERIES values; the first is the base")
    p.add_argument("--repeats", type=int, default=9, help="alternated repeats (>= 1)")
    p.add_argument("--min-time", type=float, default=0.05, help="seconds per kernel timing (> 0)")
    p.add_argument("--steps", action="store_true", help="also alternate whole train steps")
    p.add_argument("--step-time", type=float, default=0.5, help="seconds per train-step timing (> 0)")
    p.add_argument("--threads", type=int, default=None,
                   help="alignment_np and BLAS threads (default: the library's own, as the course runs it)")
    args = p.parse_args(argv)
    names = bench_gpt.config_names(p, args.configs)
    sizes = _sizes(p, args.queries)
    bench_gpt.require_positive(p, args, "repeats", *(["threads"] if args.threads is not None else []))
    bench_gpt.require_positive_time(p, args, "min-time", "step-time")
    from alignment_np.functional import parallel

    if args.threads is not None:
        bench_gpt.set_blas_threads(args.threads)
        parallel.set_num_threads(args.threads)
    print(f"# Attention's query blocks: {parallel.num_threads()} threads, median of {args.repeats} "
          f"alternated repeats, one process\n")
    step_cols = " train step ms | vs first |" if args.steps else ""
    print(f"| config | queries | forward ms | vs first | backward ms | vs first |{step_cols}")
    print("| --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if args.steps else ""))
    results = {}
    for name in names:
        times = kernel_times(name, sizes, args.repeats, args.min_time)
        forward = summary({n: f for n, (f, _) in times.items()}, sizes[0])
        backward = summary({n: g for n, (_, g) in times.items()}, sizes[0])
        steps = summary(step_times(name, sizes, args.repeats, args.step_time), sizes[0]) if args.steps else None
        results[name] = {}
        for n in sizes:
            row = (f"| {name} | {n} | {forward[n][0]:.2f} | {forward[n][1]:.2f} | {backward[n][0]:.2f} "
                   f"| {backward[n][1]:.2f} |")
            if steps:
                row += f" {steps[n][0]:.1f} | {steps[n][1]:.2f} |"
            print(row, flush=True)
            results[name][n] = (forward[n], backward[n], steps[n] if steps else None)
    return results


if __name__ == "__main__":
    main()
