#!/usr/bin/env python
"""Which kernel loses to PyTorch, and by how much per train step? Each kernel of the benchmark's models, side by side.

    python benchmarks/kernels_vs_torch.py                    # tiny and small
    python benchmarks/kernels_vs_torch.py --configs medium --repeats 9

For a config of ``bench_gpt.py`` (B rows of T tokens, width D, H heads,
vocabulary V, L layers) this times the forward and the backward of each
kernel a train step runs, at the shapes the step runs them, on both sides:
the package's kernels (``alignment_np.functional``: as ``TinyGPT`` calls
them, on the library's threads with BLAS single-threaded) and torch's
(``F.layer_norm``, ``F.linear``, ``F.gelu(approximate="tanh")``,
``F.scaled_dot_product_attention(is_causal=True)``, ``F.cross_entropy``,
their backward through autograd). Each row then says how many times a train
step calls the kernel (2L + 1 LayerNorms, L of each linear layer, ...) and
how many milliseconds per step NumPy loses (> 0) or gains (< 0) there. The
rest of a step (embedding, residual additions, AdamW, Python) is not in the
table.

A diagnostic, not the benchmark: both sides run in this one process,
kernel after kernel, NumPy then torch, ``--repeats`` times; each time is the
best of those repeats, the ratio the median of the per-repeat ratios.
``bench_gpt.py``'s numbers, each side in a fresh process, are the ones to
quote. NumPy/PyTorch > 1 means NumPy is faster. Needs torch
(``pip install -e .[crosscheck]``).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_gpt  # noqa: E402

import argparse  # noqa: E402
import statistics  # noqa: E402


def kernels(c: dict, seed: int = 0) -> list:
    """[(name, calls per train step, numpy fn, torch fn)] at the config's shapes.

    Each fn runs one forward or one backward; the forward's cache (NumPy) or
    graph (torch) is built once, outside the timed call. The arguments are
    bound when a row is made (``_bind``): the names are reused for the next kernel.
    """
    import numpy as np
    import torch
    import torch.nn.functional as F

    from alignment_np.functional.activations import gelu_backward, gelu_forward
    from alignment_np.functional.attention import attention_backward, attention_forward
    from alignment_np.functional.cross_entropy import cross_entropy_backward, cross_entropy_forward
    from alignment_np.functional.layernorm import layernorm_backward, layernorm_forward
    from alignment_np.functional.linear import linear_backward, linear_forward

    b, t, d, h, v, n_layer = c["B"], c["T"], c["D"], c["H"], c["V"], c["L"]
    rng = np.random.default_rng(seed)

    def normal(*shape, std=1.0):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def grad(t_out, inputs, t_dout):
        return _bind(torch.autograd.grad, t_out, inputs, t_dout, retain_graph=True)

    def leaf(a):
        return torch.from_numpy(a).requires_grad_()

    rows = []
    # LayerNorm over (B, T, D): ln1 and ln2 of every block, and ln_f
    x, gamma, beta, dy = normal(b, t, d), normal(d), normal(d), normal(b, t, d)
    _, cache = layernorm_forward(x, gamma, beta)
    tx, tg, tb = leaf(x), leaf(gamma), leaf(beta)
    out = F.layer_norm(tx, (d,), tg, tb)
    rows.append(("layernorm forward", 2 * n_layer + 1, _bind(layernorm_forward, x, gamma, beta),
                 _no_grad(_bind(F.layer_norm, tx, (d,), tg, tb))))
    rows.append(("layernorm backward", 2 * n_layer + 1, _bind(layernorm_backward, dy, cache),
                 grad(out, (tx, tg, tb), torch.from_numpy(dy))))
    # the four linear layers of a block: qkv D -> 3D, proj D -> D, fc D -> 4D, proj 4D -> D
    for label, d_in, d_out in (("qkv", d, 3 * d), ("attention proj", d, d), ("fc", d, 4 * d),
                               ("mlp proj", 4 * d, d)):
        x, w, bias, dy = normal(b, t, d_in), normal(d_in, d_out, std=0.02), normal(d_out), normal(b, t, d_out)
        _, cache = linear_forward(x, w, bias)
        tx, tw, tbias = leaf(x), leaf(np.ascontiguousarray(w.T)), leaf(bias)  # torch keeps (out, in)
        out = F.linear(tx, tw, tbias)
        rows.append((f"linear {label} forward", n_layer, _bind(linear_forward, x, w, bias),
                     _no_grad(_bind(F.linear, tx, tw, tbias))))
        rows.append((f"linear {label} backward", n_layer, _bind(linear_backward, dy, cache),
                     grad(out, (tx, tw, tbias), torch.from_numpy(dy))))
    # GELU over (B, T, 4D)
    x, dy = normal(b, t, 4 * d), normal(b, t, 4 * d)
    _, cache = gelu_forward(x)
    tx = leaf(x)
    out = F.gelu(tx, approximate="tanh")
    rows.append(("gelu forward", n_layer, _bind(gelu_forward, x),
                 _no_grad(_bind(F.gelu, tx, approximate="tanh"))))
    rows.append(("gelu backward", n_layer, _bind(gelu_backward, dy, cache),
                 grad(out, (tx,), torch.from_numpy(dy))))
    # causal attention on the fused qkv (B, T, 3D)
    qkv, dy = normal(b, t, 3 * d), normal(b, t, d)
    _, cache = attention_forward(qkv, h)
    tqkv = leaf(qkv)

    def torch_attention():
        q, k, val = (z.view(b, t, h, d // h).transpose(1, 2) for z in tqkv.split(d, dim=2))
        return F.scaled_dot_product_attention(q, k, val, is_causal=True).transpose(1, 2).reshape(b, t, d)

    out = torch_attention()
    rows.append(("attention forward", n_layer, _bind(attention_forward, qkv, h), _no_grad(torch_attention)))
    rows.append(("attention backward", n_layer, _bind(attention_backward, dy, cache),
                 grad(out, (tqkv,), torch.from_numpy(dy))))
    # cross-entropy of the (B, T, V) logits
    logits, targets = normal(b, t, v), rng.integers(0, v, (b, t))
    _, cache = cross_entropy_forward(logits, targets)
    tlogits, ttargets = leaf(logits), torch.from_numpy(targets)
    loss = F.cross_entropy(tlogits.view(-1, v), ttargets.view(-1))
    rows.append(("cross-entropy forward", 1, _bind(cross_entropy_forward, logits, targets),
                 _no_grad(_bind(F.cross_entropy, tlogits.view(-1, v), ttargets.view(-1)))))
    rows.append(("cross-entropy backward", 1, _bind(cross_entropy_backward, 1.0, cache),
                 grad(loss, (tlogits,), None)))
    return rows


def _bind(fn, *args, **kwargs):
    """fn with these arguments, bound now (a bare lambda would read names rebound later)."""
    return lambda: fn(*args, **kwargs)


def _no_grad(fn):
    def run():
        import torch

        with torch.no_grad():
            return fn()

    return run


def measure(name: str, repeats: int, min_time: float) -> list:
    """[(kernel, calls per step, NumPy us, torch us, NumPy/PyTorch speed)] for one config."""
    from alignment_np.functional import parallel

    rows = kernels(bench_gpt.CONFIGS[name])
    result = []
    with parallel.blas_single_threaded():  # as inside TinyGPT.forward and backward
        for kernel, calls, numpy_fn, torch_fn in rows:
            numpy_fn(), torch_fn()  # warm-up: the workspace, torch's kernels
            numpy_s, torch_s = [], []
            for _ in range(repeats):
                numpy_s.append(bench_gpt.time_per_call(numpy_fn, min_time))
                torch_s.append(bench_gpt.time_per_call(torch_fn, min_time))
            speed = statistics.median(t / n for n, t in zip(numpy_s, torch_s))
            result.append((kernel, calls, 1e6 * min(numpy_s), 1e6 * min(torch_s), speed))
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="tiny,small", help="comma-separated: tiny, small, medium")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats per kernel (>= 1)")
    p.add_argument("--min-time", type=float, default=0.05, help="seconds per timing (> 0)")
    p.add_argument("--threads", type=int, default=2, help="alignment_np and torch threads (>= 1)")
    args = p.parse_args(argv)
    names = bench_gpt.config_names(p, args.configs)
    bench_gpt.require_positive(p, args, "repeats", "threads")
    bench_gpt.require_positive_time(p, args, "min-time")
    bench_gpt.threads_for_both_sides(args.threads)
    print(f"# Kernels of a train step: {args.threads} threads per side, best of {args.repeats} interleaved "
          f"repeats, one process (a diagnostic: see the docstring)\n")
    print("| config | kernel | calls/step | NumPy us | PyTorch us | NumPy/PyTorch | NumPy loses ms/step |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    results = {}
    for name in names:
        results[name] = measure(name, args.repeats, args.min_time)
        for kernel, calls, numpy_us, torch_us, speed in results[name]:
            lost = calls * (numpy_us - torch_us) / 1e3
            print(f"| {name} | {kernel} | {calls} | {numpy_us:.0f} | {torch_us:.0f} | {speed:.2f}x | {lost:+.2f} |",
                  flush=True)
        total = sum(calls * (n_us - t_us) for _, calls, n_us, t_us, _ in results[name]) / 1e3
        print(f"| {name} | all of the above | | | | | {total:+.2f} |", flush=True)
    return results


if __name__ == "__main__":
    main()
