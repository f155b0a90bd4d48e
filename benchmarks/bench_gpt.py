#!/usr/bin/env python
"""TinyGPT in NumPy against the same model in PyTorch (CPU, eager), side by side.

    python benchmarks/bench_gpt.py                          # tiny, small, medium; 5 repeats
    python benchmarks/bench_gpt.py --configs tiny --quick   # a smoke run (~1 s)

For each config it builds the model once in NumPy (``alignment_np``) and once
in PyTorch (``benchmarks/torch_gpt.py``, the same weights), checks that both
compute the same logits, and measures in one run, alternating the two sides
and taking medians over ``--repeats``:

* train step (forward, cross-entropy, backward, AdamW), float32, tokens/s;
* DPO step (ONE forward and ONE backward over the concatenated chosen and
  rejected rows, reference log-probs precomputed once, grad clip, AdamW):
  B rows of T tokens = B/2 pairs, the same tokens as a train step, tokens/s;
* generation with the KV cache (greedy, prompt T/2, T/2 new tokens), new tokens/s;
* peak memory, each side in a subprocess of its own (see ``memory_probe``);
* the float32 matmul throughput of the machine and the train step's model
  FLOPs / time as a fraction of it.

Both sides run in this one process, with the same number of threads
(``torch.set_num_threads`` = OpenBLAS's threads) and the same allocator
setting (``--malloc keep`` by default: see ``keep_freed_memory``). The torch
side is skipped when torch is not installed.

Timings are distorted by anything else running on the machine. Each
measurement is preceded by a short pause (``--settle``: the other side's
spinning worker threads go idle) and repeated (``--retries``) while other
processes used more than ``--max-noise`` of the CPUs (read from /proc/stat);
the report says how much the machine was disturbed, and docs/performance.md
keeps a table taken when it was quiet.
"""

# -- OpenBLAS core type: must be decided BEFORE numpy (and its OpenBLAS) is loaded --
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_machine, torch_gpt

from bench_machine import choose_openblas_coretype  # noqa: E402  (imports no numpy)

CORETYPE_NOTE = choose_openblas_coretype()

import argparse  # noqa: E402  (after the environment is set)
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(1, str(HERE.parent))  # the repository: alignment_np without installing it

from alignment_np.data.tokenizer import CharTokenizer  # noqa: E402
from alignment_np.functional.cross_entropy import cross_entropy_backward, cross_entropy_forward  # noqa: E402
from alignment_np.nn.gpt import GPTConfig, TinyGPT  # noqa: E402
from alignment_np.optim import AdamW  # noqa: E402
from alignment_np.rl.generate import generate  # noqa: E402
from alignment_np.trainers.dpo_lm import DPOConfig, DPOLMTrainer  # noqa: E402
from bench_machine import (  # noqa: E402
    blas_info,
    cpu_model,
    cpu_snapshot,
    keep_freed_memory,
    others_fraction,
    others_share,
    set_blas_threads,
    status_mib,
)

torch = None  # imported by main() unless --no-torch (it takes a second or two)


def _import_torch() -> bool:
    """Import torch into this module's globals; False when it is not installed."""
    global torch
    try:
        import torch as _torch
    except ImportError:  # the NumPy side runs alone
        return False
    torch = _torch
    return True

# The configs: V vocab, T sequence length, D width, L layers, H heads, B batch rows.
CONFIGS = {
    "tiny": dict(V=64, T=64, D=64, L=2, H=4, B=16),
    "small": dict(V=96, T=128, D=128, L=4, H=4, B=16),
    "medium": dict(V=256, T=256, D=256, L=4, H=8, B=8),
}
WORKLOADS = ("train", "dpo", "generate")
BETA, LR, WEIGHT_DECAY, GRAD_CLIP = 0.1, 1e-4, 0.01, 1.0


# ---------------------------------------------------------------- the machine


def matmul_gflops(n: int, repeats: int, with_torch: bool = True) -> dict:
    """float32 (n x n) @ (n x n) throughput, GFLOP/s (median of ``repeats``), per side."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    out = np.empty((n, n), dtype=np.float32)
    flops = 2.0 * n**3
    result = {"numpy": flops / _median_time(lambda: np.matmul(a, b, out=out), repeats) / 1e9}
    if with_torch:
        ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
        result["torch"] = flops / _median_time(lambda: torch.mm(ta, tb, out=tout), repeats) / 1e9
    return result


def _median_time(fn, repeats: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_flops(c: dict) -> float:
    """Model FLOPs of one train step (forward + backward = 3x forward; PaLM, Chowdhery et al.
    2022, App. B): per token, per layer 24 D^2 (qkv, proj, MLP) + 4 T D (q k^T and P v over
    all T keys), plus the tied LM head 2 D V. Elementwise work is not counted."""
    per_token = c["L"] * (24 * c["D"] ** 2 + 4 * c["T"] * c["D"]) + 2 * c["D"] * c["V"]
    return 3.0 * per_token * c["B"] * c["T"]


# ---------------------------------------------------------------- the work, per side


def random_pairs(c: dict, tokenizer: CharTokenizer, rng) -> list:
    """B/2 preference pairs whose rows are exactly T model inputs: prompt T/4, responses the rest."""
    chars = np.array(tokenizer.chars)
    n_prompt = c["T"] // 4
    n_response = c["T"] - 1 - n_prompt  # <bos> + prompt + response = T inputs (<eos> is a target)
    return [
        tuple("".join(rng.choice(chars, n)) for n in (n_prompt, n_response, n_response))
        for _ in range(c["B"] // 2)
    ]


class NumpySide:
    name = "numpy"

    def __init__(self, c: dict, seed: int = 0):
        self.c = c
        config = GPTConfig(vocab_size=c["V"], block_size=c["T"], n_layer=c["L"], n_head=c["H"],
                           d_model=c["D"], dtype="float32")
        rng = np.random.default_rng(seed)
        self.model = TinyGPT(config, seed=seed)
        self.opt = AdamW(self.model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.idx = rng.integers(0, c["V"], (c["B"], c["T"]))
        self.targets = rng.integers(0, c["V"], (c["B"], c["T"]))
        # DPO: its own policy; the reference is run once, in prepare(), never per step.
        tokenizer = CharTokenizer([chr(0x4E00 + i) for i in range(c["V"] - 3)])  # V ids in all
        self.policy, self.reference = TinyGPT(config, seed=seed), TinyGPT(config, seed=seed)
        self.trainer = DPOLMTrainer(
            self.policy, self.reference, tokenizer,
            DPOConfig(beta=BETA, lr=LR, weight_decay=WEIGHT_DECAY, grad_clip=GRAD_CLIP),
        )
        self.pairs = random_pairs(c, tokenizer, rng)
        data = self.trainer.prepare(self.pairs)
        self.dpo_batch = data.batch(np.arange(len(self.pairs)))
        self.prompt = self.idx[:, : c["T"] // 2]

    def logits(self, idx):
        return self.model.forward(idx)[0]["logits"]

    def train(self):
        self.opt.zero_grad()
        outputs, cache = self.model.forward(self.idx)
        _, ce_cache = cross_entropy_forward(outputs["logits"], self.targets)
        self.model.backward({"logits": cross_entropy_backward(1.0, ce_cache)}, cache)
        self.opt.step()

    def dpo(self):
        self.trainer.train_step(self.dpo_batch)

    def generate(self):
        return generate(self.model, self.prompt, self.c["T"] - self.prompt.shape[1], temperature=0.0)["new_tokens"]


class TorchSide:
    name = "torch"

    def __init__(self, c: dict, numpy_side: NumpySide):
        from torch_gpt import TorchGPT, torch_generate

        self.c, self._generate = c, torch_generate
        self.model = TorchGPT.from_numpy(numpy_side.model)
        self.opt = _torch_adamw(self.model)
        self.idx = torch.from_numpy(numpy_side.idx)
        self.targets = torch.from_numpy(numpy_side.targets)
        self.policy = TorchGPT.from_numpy(numpy_side.policy)
        self.policy_opt = _torch_adamw(self.policy)
        batch = numpy_side.dpo_batch
        self.dpo_ids = torch.from_numpy(batch["input_ids"])
        self.dpo_targets = torch.from_numpy(batch["targets"])
        self.dpo_mask = torch.from_numpy(batch["loss_mask"]).float()
        reference = TorchGPT.from_numpy(numpy_side.reference)
        with torch.no_grad():  # the reference, once
            self.ref_logps = self._logps(reference, self.dpo_ids)
        self.prompt = torch.from_numpy(numpy_side.prompt)

    def logits(self, idx):
        with torch.no_grad():
            return self.model(torch.from_numpy(idx)).numpy()

    def train(self):
        logits = self.model(self.idx)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, self.c["V"]), self.targets.view(-1))
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def _logps(self, model, ids):
        logp = torch.log_softmax(model(ids), dim=-1)
        return (logp.gather(-1, self.dpo_targets[..., None])[..., 0] * self.dpo_mask).sum(-1)

    def dpo(self):
        logps = self._logps(self.policy, self.dpo_ids)  # (2B',) chosen rows, then rejected
        b = logps.shape[0] // 2
        h = (logps[:b] - self.ref_logps[:b]) - (logps[b:] - self.ref_logps[b:])
        loss = -torch.nn.functional.logsigmoid(BETA * h).mean()  # DPO, Rafailov et al. 2023, Eq. 7
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), GRAD_CLIP)
        self.policy_opt.step()
        self.policy_opt.zero_grad(set_to_none=True)

    def generate(self):
        return self._generate(self.model, self.prompt, self.c["T"] - self.prompt.shape[1])[0]


def _torch_adamw(model):
    """AdamW(fused=True) with weight decay on matrices only, as alignment_np's AdamW."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=LR, fused=True)


def tokens_per_call(c: dict, workload: str) -> int:
    if workload == "generate":
        return c["B"] * (c["T"] - c["T"] // 2)  # new tokens
    return c["B"] * c["T"]  # train: B rows; DPO: B/2 pairs = B rows


# ---------------------------------------------------------------- timing


def time_per_call(fn, min_time: float) -> float:
    """Seconds per call of fn, calling it until at least min_time has passed (once at least)."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return elapsed / n


def clean_time_per_call(fn, min_time: float, max_noise: float, retries: int, stats: dict,
                        settle: float = 0.2) -> float:
    """``time_per_call``, measured again (after a pause) while other processes took more
    than ``max_noise`` of the machine, up to ``retries`` times; then the least disturbed.

    Two threads per side on a 2-core machine leave no core free: a process that
    wakes up mid-step stalls whichever BLAS thread it displaces, and the other
    waits for it, so a little foreign load costs far more than its share.
    """
    best = None
    for attempt in range(retries + 1):
        # Let the other side's worker threads go idle first: OpenBLAS and OpenMP
        # threads spin for a while after their last task, on the cores we need.
        time.sleep(settle)
        start = cpu_snapshot()
        t = time_per_call(fn, min_time)
        noise = others_fraction(start, cpu_snapshot())
        if best is None or noise < best[1]:
            best = (t, noise)
        if noise <= max_noise:
            break
        time.sleep(0.5 * (attempt + 1))
    stats["measurements"] += 1
    stats["noisy"] += best[1] > max_noise
    stats["worst_kept"] = max(stats["worst_kept"], best[1])
    return best[0]


def check_parity(sides, c: dict) -> float:
    """Max |logits_numpy - logits_torch| on one batch: the two sides must be the same model."""
    idx = np.random.default_rng(1).integers(0, c["V"], (2, c["T"]))
    a, b = (s.logits(idx) for s in sides)
    diff = float(np.abs(a - b).max())
    scale = float(np.abs(a).max())
    if not diff <= 1e-4 * max(1.0, scale):
        raise RuntimeError(f"the NumPy and torch models disagree: max |logits diff| = {diff:.3g}")
    return diff


def bench_config(name: str, c: dict, args) -> dict:
    numpy_side = NumpySide(c)
    sides = [numpy_side] + ([] if args.no_torch else [TorchSide(c, numpy_side)])
    parity = check_parity(sides, c) if len(sides) == 2 else None
    for side in sides:  # warm up: first calls allocate, fault pages in, build caches
        for w in WORKLOADS:
            for _ in range(args.warmup):
                getattr(side, w)()
    times = {(s.name, w): [] for s in sides for w in WORKLOADS}
    for r in range(args.repeats):
        for w in WORKLOADS:
            # alternate which side goes first, so a burst of load hits both alike
            for side in sides if r % 2 == 0 else sides[::-1]:
                times[(side.name, w)].append(clean_time_per_call(
                    getattr(side, w), args.min_time, args.max_noise, args.retries, args.noise_stats,
                    args.settle))
    result = {"config": name, **c, "parity_max_abs_diff": parity, "sides": {}}
    for side in sides:
        per = {}
        for w in WORKLOADS:
            t = statistics.median(times[(side.name, w)])
            per[w] = {"seconds": t, "tokens_per_s": tokens_per_call(c, w) / t}
        per["train"]["gflops"] = train_flops(c) / per["train"]["seconds"] / 1e9
        result["sides"][side.name] = per
    return result


# ---------------------------------------------------------------- memory


def memory_probe(side_name: str, config_name: str) -> dict:
    """Run in a subprocess of its own: resident memory of one side, per workload.

    ``baseline_mib`` is VmRSS once the models are built, before any step (the
    interpreter, the libraries, the weights; NumPy's AdamW moments too, which
    it allocates at construction while torch's AdamW allocates them at its
    first step). Then, per workload in turn (train, dpo, generate), the
    kernel's peak counter VmHWM is reset (``/proc/self/clear_refs``), the
    workload runs three times, and ``peak_mib`` is VmHWM: everything resident
    at its worst moment, including what earlier workloads left (the DPO
    policy's optimiser state, memory the allocator kept). For NumPy,
    ``traced_mib`` is tracemalloc's peak over one more call (NumPy reports
    its array buffers to tracemalloc): the bytes of arrays alive at once,
    whatever the allocator keeps or the OS has not reclaimed.
    """
    c = CONFIGS[config_name]
    numpy_side = NumpySide(c)
    side = numpy_side if side_name == "numpy" else TorchSide(c, numpy_side)
    if side_name != "numpy":  # only the torch models stay
        del numpy_side.model, numpy_side.policy, numpy_side.reference, numpy_side.trainer, numpy_side.opt
    gc.collect()
    out = {"baseline_mib": status_mib("VmRSS")}
    for w in WORKLOADS:
        fn = getattr(side, w)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        for _ in range(3):
            fn()
        out[w] = {"peak_mib": status_mib("VmHWM")}
        if side_name == "numpy":
            tracemalloc.start()
            fn()
            out[w]["traced_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
    return out


def run_memory_probes(config_name: str, sides: list[str], args) -> dict:
    result = {}
    for side in sides:
        # glibc's default thresholds here: kept-for-reuse memory would inflate "base"
        # (the peak is the same either way: the worst moment is resident regardless)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", side, "--configs", config_name,
               "--malloc", "default"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            result[side] = {"error": proc.stderr.strip().splitlines()[-1:]}
            continue
        result[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- report


def print_report(header: dict, results: list[dict], memory: dict, peak: dict) -> None:
    print("## Machine")
    for k, v in header.items():
        if k != "matmul_n":
            print(f"- {k}: {v}")
    ceiling = max(peak.values())
    print(f"- float32 matmul ({header['matmul_n']}^3): "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items())
          + f"; ceiling used below: {ceiling:.0f} GFLOP/s")
    print()
    has_torch = any("torch" in r["sides"] for r in results)
    print("## Throughput (median of repeats; numpy/torch > 1 means NumPy is faster)")
    print()
    print("| config | work | NumPy | PyTorch | NumPy/PyTorch |")
    print("| --- | --- | ---: | ---: | ---: |")
    units = {"train": "train tokens/s", "dpo": "DPO tokens/s", "generate": "generate new tokens/s"}
    for r in results:
        for w in WORKLOADS:
            n = r["sides"]["numpy"][w]["tokens_per_s"]
            t = r["sides"].get("torch", {}).get(w, {}).get("tokens_per_s")
            ratio = f"{n / t:.2f}x" if t else "-"
            print(f"| {r['config']} | {units[w]} | {n:,.0f} | {f'{t:,.0f}' if t else '-'} | {ratio} |")
    print()
    print("## Train step against the matmul ceiling, and DPO step / train step (same tokens)")
    print()
    print("| config | side | model GFLOP/step | achieved GFLOP/s | % of ceiling | DPO step / train step |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        for side, per in r["sides"].items():
            print(f"| {r['config']} | {side} | {train_flops(r) / 1e9:.2f} | {per['train']['gflops']:.1f} | "
                  f"{100 * per['train']['gflops'] / ceiling:.0f}% | "
                  f"{per['dpo']['seconds'] / per['train']['seconds']:.2f}x |")
    if any(r["parity_max_abs_diff"] is not None for r in results):
        print()
        print("Parity (max |logits NumPy - logits PyTorch|, same weights): "
              + ", ".join(f"{r['config']} {r['parity_max_abs_diff']:.1e}" for r in results))
    if memory:
        print()
        print("## Peak memory (MiB, resident; each side in a subprocess of its own)")
        print()
        print("Base: after building the models, before any step. Peak: the most resident during")
        print("three calls of the workload. Arrays: NumPy's tracemalloc peak over one call.")
        print("(glibc's default allocator thresholds in these subprocesses; see memory_probe.)")
        print()
        sides = ["numpy"] + (["torch"] if has_torch else [])
        print("| config | work | " + " | ".join(
            f"{'NumPy' if s == 'numpy' else 'PyTorch'} {col}" for s in sides
            for col in (("base", "peak", "arrays") if s == "numpy" else ("base", "peak"))) + " |")
        print("| --- | --- | " + " | ".join("---:" for _ in range(3 + 2 * has_torch)) + " |")
        for name, per_side in memory.items():
            for w in WORKLOADS:
                cells = []
                for s in sides:
                    m = per_side.get(s, {})
                    if w not in m:
                        cells += ["-"] * (3 if s == "numpy" else 2)
                        continue
                    cells += [f"{m['baseline_mib']:.0f}", f"{m[w]['peak_mib']:.0f}"]
                    if s == "numpy":
                        cells.append(f"{m[w]['traced_mib']:.0f}")
                print(f"| {name} | {w} | " + " | ".join(cells) + " |")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="tiny,small,medium", help="comma-separated: tiny, small, medium")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per workload and side (median)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (numbers not meaningful): 1 repeat, 1 call per measurement and no "
                        "warm-up, a small matmul, no memory probes, 1 thread unless --threads")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds per timed measurement (>= 1 call)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per workload first")
    p.add_argument("--threads", type=int, default=0,
                   help="BLAS threads for NumPy and torch.set_num_threads (default: OpenBLAS's own)")
    p.add_argument("--max-noise", type=float, default=0.05,
                   help="measure again while other processes use more than this fraction of the CPUs")
    p.add_argument("--retries", type=int, default=4, help="re-measurements allowed per measurement")
    p.add_argument("--settle", type=float, default=0.2, help="seconds of pause before each measurement")
    p.add_argument("--malloc", choices=["keep", "default"], default="keep",
                   help="keep: glibc keeps freed memory for the next step (see keep_freed_memory); "
                        "default: glibc's own thresholds, which return activations to the OS every step")
    p.add_argument("--no-torch", action="store_true", help="run the NumPy side only")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--memory-probe", choices=["numpy", "torch"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        p.error(f"--configs: expected names from {list(CONFIGS)}, got {args.configs!r}")
    if args.repeats < 1:
        p.error(f"--repeats: expected >= 1, got {args.repeats}")
    args.names = names
    args.noise_stats = {"measurements": 0, "noisy": 0, "worst_kept": 0.0}
    if args.quick:
        args.repeats, args.min_time, args.warmup, args.no_memory, args.retries, args.settle = 1, 0.0, 0, True, 0, 0.0
        # One thread unless asked: a smoke run only checks that everything works, and
        # two BLAS threads on a busy 2-core machine can run 10x slower than one.
        args.threads = args.threads or 1
    return args


def main(argv=None) -> dict:
    """Run the benchmark; print the report and return the results as a dict.

    Thread settings changed here are restored on return, so that calling
    ``main`` from another program (the tests) leaves that program as it was.
    """
    args = parse_args(argv)
    if args.memory_probe == "numpy":
        args.no_torch = True  # torch's libraries must not count in NumPy's resident memory
    if not args.no_torch and not _import_torch():
        args.no_torch = True
    saved_blas = blas_info()["threads"]
    saved_torch = None if args.no_torch else torch.get_num_threads()
    try:
        return _run(args, argv)
    finally:
        set_blas_threads(saved_blas)
        if saved_torch is not None:
            torch.set_num_threads(saved_torch)


def _run(args, argv) -> dict:
    allocator = keep_freed_memory() if args.malloc == "keep" else "glibc default"
    if args.threads:
        set_blas_threads(args.threads)
    blas = blas_info()
    if not args.no_torch:
        torch.set_num_threads(args.threads or blas["threads"])  # the same cores as NumPy's BLAS
    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.names[0])))
        return {}

    header = {
        "command": "python " + " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "cpu": f"{cpu_model()}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores available",
        "numpy": f"{np.__version__}, OpenBLAS core type {blas['corename']}, {blas['threads']} BLAS threads",
        "openblas_coretype": CORETYPE_NOTE,
        "torch": "not installed or --no-torch" if args.no_torch else
                 f"{torch.__version__}, {torch.get_num_threads()} threads, eager",
        "python": platform.python_version(),
        "allocator": allocator,
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    start = cpu_snapshot()
    header["matmul_n"] = 256 if args.quick else 2048
    peak = matmul_gflops(header["matmul_n"], 1 if args.quick else 7, with_torch=not args.no_torch)
    results = [bench_config(name, CONFIGS[name], args) for name in args.names]
    memory = {}
    if not args.no_memory:
        sides = ["numpy"] + ([] if args.no_torch else ["torch"])
        memory = {name: run_memory_probes(name, sides, args) for name in args.names}
    header["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    header["CPU used by other processes during the run"] = others_share(start, cpu_snapshot())
    ns = args.noise_stats
    header["disturbed measurements"] = (
        f"{ns['noisy']} of {ns['measurements']} kept although other processes used more than "
        f"{100 * args.max_noise:.0f}% of the CPUs (worst {100 * ns['worst_kept']:.0f}%) after "
        f"{args.retries} re-measurements")
    print_report(header, results, memory, peak)
    out = {"header": header, "matmul_gflops": peak, "results": results, "memory": memory}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
