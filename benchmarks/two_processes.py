#!/usr/bin/env python
"""Train, DPO and generation cut by rows over two processes, against the course's and PyTorch's.

    python benchmarks/two_processes.py                      # tiny, small, medium; train, DPO, generate; ~7 min
    python benchmarks/two_processes.py --configs tiny --workloads train --repeats 15

Why
---
The library's own threads (``functional/parallel.py``) cut each kernel's rows
over the cores, but two threads of one process must take the GIL back between
any two NumPy calls, and a tiny step is made of many small calls: measured in
docs/performance.md, small products run 1.5-1.7x slower in each of two threads
at once than alone, and hardly slower (4% at most) in each of two processes.
So this script measures the other way to use two cores: data parallelism over
processes, as PyTorch's DistributedDataParallel does over machines. It is a
measurement, not a library feature; the library does not start processes.

What the ``two-processes`` side does, each call
-----------------------------------------------
The main process and one helper process each build ``bench_gpt.NumpySide``
(the public API, the same weights and batch; one library thread and one BLAS
thread each). The main process wakes the helper (one byte through a pipe);
both compute the gradients of their half of the rows at once (train: forward,
cross-entropy, backward, the loss's gradient halved; DPO:
``DPOLMTrainer.compute_gradients`` on half the pairs, halved after the sum);
the helper copies its gradients into a shared memory map and answers (one
byte); the main process adds them to its own, clips (DPO), runs ``AdamW``,
and copies the new parameters into the map, where the helper reads them at
the next step. The two copies and the handoffs are inside the timed step.
Generation (greedy, with the key/value cache, as ``bench_gpt.py``'s): each
process decodes its half of the prompts from start to end (the rows do not
depend on each other), the helper writes its tokens and log-probs into the
map, and the main process joins them to its own. Once per workload the
result is compared with one process's (``diff``: train and DPO, the largest
gradient difference over the largest gradient, float32 rounding since the
sums are grouped differently; generate, the fraction of new tokens that
differ).

The sides, each in a fresh process of its own, take turns repeat after
repeat (in alternating order): ``numpy`` is ``bench_gpt.NumpySide``'s step,
as the course runs it (the library's threads); ``torch`` is
``bench_gpt.TorchSide``'s (PyTorch eager, SDPA, fused AdamW, as many
threads as cores). "vs numpy" and "vs torch" are medians over the repeats of
the other side's time divided by this side's in the same repeat (> 1: this
side is faster). The ``two-processes`` side sets ``OPENBLAS_NUM_THREADS=1``
for its helper and one BLAS thread in its main process.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_gpt  # noqa: E402

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

SCRIPT = Path(__file__).resolve()
SIDES = ("numpy", "two-processes", "torch")
WORKLOADS = ("train", "dpo", "generate")


@contextlib.contextmanager
def one_thread():
    """One library thread and one BLAS thread in this process inside; the old counts restored after."""
    from alignment_np.functional import parallel

    blas = bench_gpt.blas_info()["threads"]
    bench_gpt.set_blas_threads(1)
    old = parallel.set_num_threads(1)
    try:
        yield
    finally:
        parallel.set_num_threads(old)
        bench_gpt.set_blas_threads(blas)


def _backward_half(model, idx, targets, scale: float) -> None:
    """Forward, cross-entropy and backward on these rows, the loss's gradient scaled by ``scale``."""
    from alignment_np.functional.cross_entropy import cross_entropy_backward, cross_entropy_forward

    outputs, cache = model.forward(idx)
    _, ce_cache = cross_entropy_forward(outputs["logits"], targets)
    model.backward({"logits": cross_entropy_backward(scale, ce_cache)}, cache)


class Half:
    """One process's half of the rows of a ``bench_gpt.NumpySide`` workload (``part`` 0 or 1).

    train, dpo: ``gradients()`` leaves in ``opt.flat.grad`` this half's share
    of the gradient of the whole batch's loss: halved for the train step (each
    half's cross-entropy is a mean over half the tokens), whole for DPO (each
    half's loss is a mean over half the pairs, halved after the sum, in
    ``TwoProcesses``). generate: ``generate()`` decodes this half's prompts
    greedily; the rows do not depend on each other, so each process decodes its
    own from start to end.
    """

    def __init__(self, c: dict, work: str, part: int):
        import numpy as np

        self.side, self.work = bench_gpt.NumpySide(c), work
        rows = slice(part * c["B"] // 2, (part + 1) * c["B"] // 2)
        self.opt = None
        if work == "train":
            self.idx, self.targets = self.side.idx[rows], self.side.targets[rows]
            self.opt = self.side.opt
        elif work == "dpo":  # the pairs cut in two (bench_gpt's rows all have T tokens: no column is dropped)
            n = len(self.side.pairs)
            data = self.side.trainer.prepare(self.side.pairs)
            self.batch = data.batch(np.arange(part * n // 2, (part + 1) * n // 2))
            self.opt = self.side.trainer.optimizer
        else:
            self.prompt = self.side.prompt[rows]
            self.n_new = c["T"] - self.side.prompt.shape[1]

    def layout(self) -> list:
        """(shape, dtype) of each array the two processes share."""
        import numpy as np

        if self.opt is not None:  # the parameters, then the helper's gradients
            return [((self.opt.flat.size,), np.float32)] * 2
        rows = (self.prompt.shape[0], self.n_new)  # the helper's new tokens and their log-probs
        return [(rows, np.int64), (rows, np.float32)]

    def gradients(self) -> None:
        if self.work == "train":
            self.opt.zero_grad()
            _backward_half(self.side.model, self.idx, self.targets, 0.5)
        else:
            self.side.trainer.compute_gradients(self.batch)  # zeroes the gradients first

    def generate(self) -> dict:
        from alignment_np.rl.generate import generate

        return generate(self.side.model, self.prompt, self.n_new, temperature=0.0)


def _shared(path: str, layout: list, mode: str) -> list:
    """One array per (shape, dtype) of ``layout``, one after the other in the memory map at ``path``."""
    import numpy as np

    sizes = [int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in layout]
    buffer = np.memmap(path, dtype=np.uint8, mode=mode, shape=(sum(sizes),))
    offsets = np.cumsum([0] + sizes)
    return [buffer[o: o + n].view(dtype).reshape(shape) for o, n, (shape, dtype) in zip(offsets, sizes, layout)]


def helper(config: str, work: str, path: str) -> None:
    """The helper process: the second half of the rows, step after step, until its stdin closes."""
    with one_thread():
        half = Half(bench_gpt.CONFIGS[config], work, 1)
        first, second = _shared(path, half.layout(), "r+")
        os.write(1, b"r")
        while os.read(0, 1) == b"s":
            if work == "generate":
                out = half.generate()
                first[...], second[...] = out["new_tokens"], out["logprobs"]
            else:
                half.opt.flat.data[...] = first  # the main process's parameters after its last AdamW step
                half.gradients()
                second[...] = half.opt.flat.grad
            os.write(1, b"d")


class TwoProcesses:
    """A ``bench_gpt.NumpySide`` workload with its rows cut over this process and a helper.

    Build and use it inside ``one_thread()``: the two processes share the two cores.
    """

    def __init__(self, c: dict, config: str, work: str):
        self.work = work
        self.half = Half(c, work, 0)
        self.opt = self.half.opt
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, self.path = tempfile.mkstemp(prefix="alignment_np_two_processes_", dir=directory)
        os.close(fd)
        # train, dpo: the parameters and the helper's gradients; generate: its tokens and log-probs
        self.first, self.second = _shared(self.path, self.half.layout(), "w+")
        if self.opt is not None:
            self.first[...] = self.opt.flat.data
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        try:
            self.proc = subprocess.Popen([sys.executable, str(SCRIPT), "--helper", config, work, self.path],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0)
        except BaseException:
            os.unlink(self.path)
            raise
        self._expect(b"r")
        os.unlink(self.path)  # both processes hold the map open; nothing is left behind if either is killed

    def _expect(self, byte: bytes) -> None:
        got = os.read(self.proc.stdout.fileno(), 1)
        if got != byte:
            self.close()
            raise RuntimeError(f"the helper process stopped (exit status {self.proc.returncode})")

    def _start(self) -> None:
        try:
            os.write(self.proc.stdin.fileno(), b"s")
        except BrokenPipeError:
            pass  # the helper is gone: _expect says so

    def gradients(self):
        """The whole batch's gradient (flat; the optimizer's own buffer), both halves at once."""
        self._start()
        self.half.gradients()
        self._expect(b"d")
        grad = self.opt.flat.grad
        grad += self.second
        if self.work == "dpo":
            grad *= 0.5  # the mean of the two halves' means over their pairs
        return grad

    def generate(self) -> dict:
        """Greedy decoding of every prompt: {"new_tokens", "logprobs"} (B, N), both halves at once."""
        import numpy as np

        self._start()
        out = self.half.generate()
        self._expect(b"d")
        return {"new_tokens": np.concatenate([out["new_tokens"], self.first]),
                "logprobs": np.concatenate([out["logprobs"], self.second])}

    def step(self):
        """The whole step: train and DPO, the gradients, then what ``train`` or
        ``DPOLMTrainer.train_step`` does after them; generate, ``generate()``."""
        from alignment_np.optim import clip_grad_norm

        if self.work == "generate":
            return self.generate()
        self.gradients()
        if self.work == "dpo":
            trainer = self.half.side.trainer
            norm = float(clip_grad_norm(self.opt.params, trainer.config.grad_clip))
            if not math.isfinite(norm):  # train_step's guard: a NaN never reaches the weights
                raise FloatingPointError(f"the gradient's norm is {norm}")
            trainer.step += 1
        self.opt.step()
        self.first[...] = self.opt.flat.data  # the parameters, for the helper's next step

    def close(self) -> None:
        if not self.proc.stdin.closed:
            self.proc.stdin.close()  # the helper's loop ends at the end of its input
        self.proc.wait(timeout=60)
        self.proc.stdout.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


def difference(c: dict, config: str, work: str) -> float:
    """How far two processes are from one, on one call.

    train, dpo: max |two-process gradient - one-process gradient| / max |one-process gradient|;
    generate: the fraction of new tokens that differ from one process's decoding of all the rows.
    """
    import numpy as np

    with one_thread():
        side = TwoProcesses(c, config, work)
        try:
            two = side.step() if work == "generate" else side.gradients().copy()
        finally:
            side.close()
        one_side = bench_gpt.NumpySide(c)
        if work == "generate":
            return float(np.mean(two["new_tokens"] != one_side.generate()))
        if work == "train":
            one_side.opt.zero_grad()
            _backward_half(one_side.model, one_side.idx, one_side.targets, 1.0)
            one = one_side.opt.flat.grad
        else:
            one_side.trainer.compute_gradients(one_side.dpo_batch)
            one = one_side.trainer.optimizer.flat.grad
    return float(np.abs(two - one).max() / np.abs(one).max())


def serve(side_name: str, config: str, work: str) -> None:
    """A side's process: "time <seconds>" lines on stdin, one JSON reply per line on stdout."""
    protocol = sys.stdout
    sys.stdout = sys.stderr
    c = bench_gpt.CONFIGS[config]
    with contextlib.ExitStack() as stack:
        if side_name == "two-processes":
            stack.enter_context(one_thread())  # the helper and this process share the cores
            side = TwoProcesses(c, config, work)
            stack.callback(side.close)
            step = side.step
        elif side_name == "torch":
            import torch

            torch.set_num_threads(os.cpu_count() or 1)
            step = getattr(bench_gpt.TorchSide(c, bench_gpt.NumpySide(c)), work)
        else:
            step = getattr(bench_gpt.NumpySide(c), work)
        for _ in range(3):  # warm up: the workspace, the threads, the helper
            step()
        print(json.dumps({"ready": True}), file=protocol, flush=True)
        for line in sys.stdin:
            seconds = bench_gpt.time_per_call(step, float(line.split()[1]))
            print(json.dumps({"seconds": seconds}), file=protocol, flush=True)


class Side:
    """A side's process, asked for one timing at a time."""

    def __init__(self, name: str, config: str, work: str):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), "--serve", name, config, work],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=bench_gpt.worker_env(name, None))
        self._read()

    def _read(self) -> dict:
        return bench_gpt.read_reply(self.proc, f"the {self.name} side")

    def time(self, min_time: float) -> float:
        self.proc.stdin.write(f"time {min_time}\n")
        self.proc.stdin.flush()
        return self._read()["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()  # the side's loop ends at the end of its input
        self.proc.wait(timeout=60)
        self.proc.stdout.close()
        self.proc.stderr.close()


def measure(config: str, work: str, sides: list, repeats: int, min_time: float) -> dict:
    """{side: [seconds per step], one per repeat}, the sides alternating."""
    running = []
    try:
        for name in sides:
            running.append(Side(name, config, work))
        seconds = {name: [] for name in sides}
        for repeat in range(repeats):
            for side in running if repeat % 2 == 0 else running[::-1]:
                seconds[side.name].append(side.time(min_time))
        return seconds
    finally:
        for side in running:
            side.close()


def ratio(seconds: dict, name: str, other: str) -> float:
    """Median over repeats of other's time / name's time (> 1: ``name`` is faster)."""
    return statistics.median(b / a for a, b in zip(seconds[name], seconds[other]))


def _workloads(parser, text: str) -> list:
    works = [w.strip() for w in text.split(",") if w.strip()]
    if not works or any(w not in WORKLOADS for w in works) or len(set(works)) != len(works):
        parser.error(f"--workloads: expected distinct names from {list(WORKLOADS)}, got {text!r}")
    return works


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="tiny,small,medium", help="comma-separated: tiny, small, medium")
    p.add_argument("--workloads", default="train,dpo,generate", help="comma-separated: train, dpo, generate")
    p.add_argument("--repeats", type=int, default=9, help="alternated repeats (>= 1)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per timing (> 0)")
    p.add_argument("--no-torch", action="store_true", help="NumPy sides only")
    p.add_argument("--helper", nargs=3, metavar=("CONFIG", "WORK", "PATH"), help=argparse.SUPPRESS)
    p.add_argument("--serve", nargs=3, metavar=("SIDE", "CONFIG", "WORK"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.helper:
        return helper(*args.helper)
    if args.serve:
        return serve(*args.serve)
    names = bench_gpt.config_names(p, args.configs)
    works = _workloads(p, args.workloads)
    bench_gpt.require_positive(p, args, "repeats")
    bench_gpt.require_positive_time(p, args, "min-time")
    sides = [s for s in SIDES if s != "torch" or not args.no_torch]
    torch_cols = ("torch" in sides) * " vs torch |"
    print(f"# Train, DPO and generation on two processes: median of {args.repeats} alternated repeats, each side in a "
          f"process of its own, {os.cpu_count()} CPUs\n")
    print(f"| config | work | side | ms per call | vs numpy |{torch_cols} diff |")
    print("| --- | --- | --- | ---: | ---: |" + ("torch" in sides) * " ---: |" + " ---: |")
    results = {}
    for name in names:
        c = bench_gpt.CONFIGS[name]
        for work in works:
            diff = difference(c, name, work)
            seconds = measure(name, work, sides, args.repeats, args.min_time)
            results[name, work] = {"diff": diff}
            for side in sides:
                ms = 1e3 * statistics.median(seconds[side])
                vs = {other: ratio(seconds, side, other) for other in sides if other != "two-processes"}
                results[name, work][side] = {"ms": ms, **{f"vs_{k}": v for k, v in vs.items()}}
                row = f"| {name} | {work} | {side} | {ms:.1f} | {vs['numpy']:.2f} |"
                if "torch" in vs:
                    row += f" {vs['torch']:.2f} |"
                row += f" {diff:.1e} |" if side == "two-processes" else " |"
                print(row, flush=True)
    return results


if __name__ == "__main__":
    main()
