#!/usr/bin/env python
"""Where does generation lose or win against PyTorch? The greedy generation of the benchmark, in parts.

    python benchmarks/generate_parts.py                       # tiny and small, 7 repeats
    python benchmarks/generate_parts.py --configs medium --repeats 5

``bench_gpt.py`` times one whole ``generate`` call (B prompts of T/2 tokens,
T/2 new tokens each, greedy, key/value cache). This script cuts the same work
into the parts that a call is made of, on both sides, with the same weights:

* **prompt**: the forward over the prompts that fills the key/value cache
  (``TinyGPT.forward_incremental`` on the whole prompt; ``TorchGPT.forward_kv``);
* **decode**: the T/2 - 1 forwards of one new token per row against the cache;
* **sample**: picking each token and its log-probability from the logits
  (``alignment_np.rl.generate.sample_tokens`` at temperature 0; argmax and
  ``log_softmax`` on the torch side, as ``torch_gpt.torch_generate`` does);
* **whole call**: ``generate`` and ``torch_generate`` themselves; what the
  parts do not cover is the bookkeeping of the call (validation, masks, eos).

A diagnostic, not the benchmark: both sides run in this one process, their
parts interleaved (NumPy, then torch, repeat after repeat), so that a change
of the machine's speed between repeats hits both alike; the ratio reported is
the median of the per-repeat ratios. Each side rests half a second before
its turn, so that the other side's spinning threads do not slow its first
part down. ``bench_gpt.py``'s numbers, each side in
a fresh process of its own, are the ones to quote. NumPy/PyTorch > 1 means
NumPy is faster. Needs torch (``pip install -e .[crosscheck]``).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_gpt  # noqa: E402

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

PARTS = ("prompt", "decode", "sample", "whole call")
SETTLE = 0.5  # seconds of rest before each side's turn (bench_gpt.py rests too)


class _Clock:
    """Seconds spent per part, summed over the calls of a repeat."""

    def __init__(self):
        self.seconds = dict.fromkeys(PARTS, 0.0)

    def time(self, part, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds[part] += time.perf_counter() - t0
        return out


def numpy_parts(side, clock: _Clock, calls: int):
    """The NumPy side's greedy generation, the way ``generate`` runs it, each part timed.

    Returns the tokens of the last call (B, T/2), for checking that the parts do
    the work of ``generate``.
    """
    import numpy as np

    from alignment_np.rl.generate import generate, sample_tokens

    model, prompt = side.model, side.prompt
    b, p = prompt.shape
    n_new = side.c["T"] - p
    for _ in range(calls):
        cache, new = model.init_kv_cache(b, p + n_new), []
        logits = clock.time("prompt", model.forward_incremental, prompt, cache)[:, -1]
        for i in range(n_new):
            tokens, _ = clock.time("sample", sample_tokens, logits, 0.0)
            new.append(tokens)
            if i + 1 < n_new:
                logits = clock.time("decode", model.forward_incremental, tokens[:, None], cache)[:, -1]
        clock.time("whole call", generate, model, prompt, n_new, temperature=0.0)
    return np.stack(new, axis=1)


def torch_parts(side, clock: _Clock, calls: int):
    """The torch side's greedy generation, as ``torch_gpt.torch_generate`` runs it, each part timed.

    Returns the tokens of the last call (B, T/2).
    """
    import torch

    model = side.model
    prompt = side.prompt
    b, p = prompt.shape
    n_new = side.c["T"] - p
    rows = torch.arange(b)

    def sample(logits):
        tokens = logits.argmax(-1)
        return tokens, torch.log_softmax(logits, dim=-1)[rows, tokens]

    with torch.no_grad():
        for _ in range(calls):
            cache, new = model.init_kv_cache(b, p + n_new), []
            logits = clock.time("prompt", model.forward_kv, prompt, cache, 0)[:, -1]
            for i in range(n_new):
                tokens, _ = clock.time("sample", sample, logits)
                new.append(tokens)
                if i + 1 < n_new:
                    logits = clock.time("decode", model.forward_kv, tokens[:, None], cache, p + i)[:, -1]
            clock.time("whole call", side.generate)
    return torch.stack(new, dim=1)


def measure(name: str, repeats: int, calls: int) -> dict:
    """{part: (NumPy ms per call, torch ms per call, median NumPy/PyTorch speed ratio)}."""
    c = bench_gpt.CONFIGS[name]
    numpy_side = bench_gpt.NumpySide(c)
    torch_side = bench_gpt.TorchSide(c, bench_gpt.NumpySide(c))
    numpy_parts(numpy_side, _Clock(), 1)  # warm-up: the workspace, BLAS, torch's kernels
    torch_parts(torch_side, _Clock(), 1)
    runs = {"numpy": [], "torch": []}
    for _ in range(repeats):
        for label, run, side in (("numpy", numpy_parts, numpy_side), ("torch", torch_parts, torch_side)):
            # Let the other side's threads go idle first: OpenBLAS's and OpenMP's threads
            # spin for a while after their last task, on the cores this side needs.
            time.sleep(SETTLE)
            clock = _Clock()
            run(side, clock, calls)
            runs[label].append({part: s / calls for part, s in clock.seconds.items()})
    result = {}
    for part in PARTS:
        np_s = [r[part] for r in runs["numpy"]]
        torch_s = [r[part] for r in runs["torch"]]
        speed = statistics.median(t / n for n, t in zip(np_s, torch_s))
        result[part] = (1e3 * statistics.median(np_s), 1e3 * statistics.median(torch_s), speed)
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="tiny,small", help="comma-separated: tiny, small, medium")
    p.add_argument("--repeats", type=int, default=7, help="interleaved repeats per config (>= 1)")
    p.add_argument("--calls", type=int, default=2, help="generation calls per repeat and side (>= 1)")
    p.add_argument("--threads", type=int, default=2, help="OpenBLAS, alignment_np and torch threads (>= 1)")
    args = p.parse_args(argv)
    names = bench_gpt.config_names(p, args.configs)
    bench_gpt.require_positive(p, args, "repeats", "calls", "threads")
    bench_gpt.threads_for_both_sides(args.threads)
    print(f"# Greedy generation in parts: {args.threads} threads per side, {args.repeats} interleaved "
          f"repeats of {args.calls} calls, one process (a diagnostic: see the docstring)\n")
    print("| config | part | NumPy ms/call | PyTorch ms/call | NumPy/PyTorch |")
    print("| --- | --- | ---: | ---: | ---: |")
    results = {}
    for name in names:
        results[name] = measure(name, args.repeats, args.calls)
        for part, (np_ms, torch_ms, speed) in results[name].items():
            print(f"| {name} | {part} | {np_ms:.2f} | {torch_ms:.2f} | {speed:.2f}x |", flush=True)
    return results


if __name__ == "__main__":
    main()
