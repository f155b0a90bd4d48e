#!/usr/bin/env python
"""TinyGPT in NumPy against the same model in PyTorch (CPU, eager), each side in a fresh process.

    python benchmarks/bench_gpt.py                          # tiny, small, medium; 5 repeats
    python benchmarks/bench_gpt.py --configs tiny --quick   # a smoke run (a few seconds)

Measured the way a learner runs it. Each side runs in a worker process of
its own, started fresh for each config:

* ``numpy``: the package driven through its public API exactly as the course
  does (``TinyGPT``, ``AdamW``, ``cross_entropy_*``, ``DPOLMTrainer``,
  ``generate``), in a process that sets no environment variable and calls
  no allocator function: the library's default path;
* ``numpy-best``: the same, plus whatever a user could still do from outside
  to make it faster: ``backend.keep_freed_memory()`` (glibc keeps freed
  memory) and, on an Intel AVX-512 CPU where OpenBLAS picks AVX2 kernels,
  ``OPENBLAS_CORETYPE=SkylakeX`` (``bench_machine.recommended_coretype``).
  If the two NumPy columns agree, the default path is the best path;
* ``torch``: the same model in PyTorch (``benchmarks/torch_gpt.py``, the
  NumPy model's weights copied in), eager mode, ``F.scaled_dot_product_attention``,
  ``torch.optim.AdamW(fused=True)``, as many threads as NumPy's BLAS.

The driver checks that the sides compute the same logits, then asks the
workers in turn (alternating which goes first) to time each workload, and
reports medians and spreads over ``--repeats``:

* train step (forward, cross-entropy, backward, AdamW), float32, tokens/s;
* DPO step (ONE forward and ONE backward over the concatenated chosen and
  rejected rows, reference log-probs precomputed once, grad clip, AdamW):
  B rows of T tokens = B/2 pairs, the same tokens as a train step, tokens/s;
* generation with the KV cache (greedy, prompt T/2, T/2 new tokens), new tokens/s;
* a full rollout, as every on-policy trainer collects one (``PPOTrainer.rollout``:
  B prompts of T/2 tokens, up to T/2 new tokens sampled at temperature 1 with
  the KV cache until every row has produced eos, a reward on the decoded
  text, then one forward each of the policy, the reference and the value
  model over the whole sequences), new tokens/s;
* a PPO iteration (``PPOTrainer.train_step``: that rollout, per-token KL
  rewards, GAE, then 4 epochs x 4 minibatches of policy and value-model
  forward and backward, grad clip, AdamW), response tokens/s;
* memory, each side in yet another fresh process (``memory_probe``): the
  resident memory a train step (then a DPO step, then generation) adds
  above the built models;
* the float32 matmul throughput of the machine and the train step's model
  FLOPs / time as a fraction of it.

Ratios are NumPy / PyTorch throughput: above 1 means NumPy is faster.

Timings are distorted by anything else running on the machine. Each
measurement is preceded by a short pause (``--settle``: the other side's
spinning worker threads go idle) and repeated (``--retries``) while other
processes used more than ``--max-noise`` of the CPUs (read from /proc/stat);
the report says how much the machine was disturbed.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_machine, torch_gpt

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

from bench_machine import (  # noqa: E402  (imports no numpy)
    blas_info,
    cpu_model,
    cpu_snapshot,
    others_fraction,
    others_share,
    recommended_coretype,
    set_blas_threads,
    status_mib,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# The configs: V vocab, T sequence length, D width, L layers, H heads, B batch rows.
CONFIGS = {
    "tiny": dict(V=64, T=64, D=64, L=2, H=4, B=16),
    "small": dict(V=96, T=128, D=128, L=4, H=4, B=16),
    "medium": dict(V=256, T=256, D=256, L=4, H=8, B=8),
}
WORKLOADS = ("train", "dpo", "generate", "rollout", "ppo")
SIDES = ("numpy", "numpy-best", "torch")
BETA, LR, WEIGHT_DECAY, GRAD_CLIP = 0.1, 1e-4, 0.01, 1.0


def train_flops(c: dict) -> float:
    """Model FLOPs of one train step (forward + backward = 3x forward; PaLM, Chowdhery et al.
    2022, App. B): per token, per layer 24 D^2 (qkv, proj, MLP) + 4 T D (q k^T and P v over
    all T keys), plus the tied LM head 2 D V. Elementwise work is not counted."""
    per_token = c["L"] * (24 * c["D"] ** 2 + 4 * c["T"] * c["D"]) + 2 * c["D"] * c["V"]
    return 3.0 * per_token * c["B"] * c["T"]


def tokens_per_call(c: dict, workload: str) -> int:
    if workload in ("generate", "rollout", "ppo"):
        return c["B"] * (c["T"] - c["T"] // 2)  # new tokens (at most: a rollout stops once every row ended)
    return c["B"] * c["T"]  # train: B rows; DPO: B/2 pairs = B rows


def ppo_settings(c: dict) -> dict:
    """The PPO iteration of both sides: PPOConfig's defaults, the benchmark's lr and weight decay."""
    return dict(batch_size=c["B"], num_mini_batches=4, num_ppo_epochs=4, response_length=c["T"] - c["T"] // 2,
                temperature=1.0, kl_coef=0.05, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0,
                lam=0.95, max_grad_norm=GRAD_CLIP, learning_rate=LR, weight_decay=WEIGHT_DECAY)


def reward_fn(prompts, completions):
    """A cheap reward on the decoded text, the same for both sides: the share of one character."""
    import numpy as np

    return np.array([c.count(chr(0x4E00)) / max(1, len(c)) for c in completions], dtype=np.float64)


# ---------------------------------------------------------------- the work, per side
# (imported inside the workers only: the driver loads neither NumPy's BLAS nor torch)


def random_pairs(c: dict, tokenizer, rng) -> list:
    """B/2 preference pairs whose rows are exactly T model inputs: prompt T/4, responses the rest."""
    import numpy as np

    chars = np.array(tokenizer.chars)
    n_prompt = c["T"] // 4
    n_response = c["T"] - 1 - n_prompt  # <bos> + prompt + response = T inputs (<eos> is a target)
    return [
        tuple("".join(rng.choice(chars, n)) for n in (n_prompt, n_response, n_response))
        for _ in range(c["B"] // 2)
    ]


class NumpySide:
    """The course's code path: public API only."""

    name = "numpy"

    def __init__(self, c: dict, seed: int = 0):
        import numpy as np

        from alignment_np import AdamW, CharTokenizer, GPTConfig, TinyGPT
        from alignment_np.trainers.dpo_lm import DPOConfig, DPOLMTrainer

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
        # PPO: a policy, its frozen reference, a separate value model (PPOTrainer's default: a copy
        # of the reference), B prompts of T/2 - 1 characters (+ <bos> = T/2 columns).
        from alignment_np.trainers.ppo import PPOConfig, PPOTrainer

        self.tokenizer = tokenizer
        self.ppo_policy, self.ppo_reference = TinyGPT(config, seed=seed + 1), TinyGPT(config, seed=seed + 1)
        settings = ppo_settings(c)
        self.ppo_trainer = PPOTrainer(self.ppo_policy, self.ppo_reference, reward_fn, tokenizer,
                              PPOConfig(**settings, seed=seed))
        chars = np.array(tokenizer.chars)
        self.ppo_prompts = ["".join(rng.choice(chars, c["T"] // 2 - 1)) for _ in range(c["B"])]

    def logits(self, idx):
        return self.model.forward(idx)[0]["logits"]

    def train(self):
        from alignment_np.functional.cross_entropy import cross_entropy_backward, cross_entropy_forward

        self.opt.zero_grad()
        outputs, cache = self.model.forward(self.idx)
        _, ce_cache = cross_entropy_forward(outputs["logits"], self.targets)
        self.model.backward({"logits": cross_entropy_backward(1.0, ce_cache)}, cache)
        self.opt.step()

    def dpo(self):
        self.trainer.train_step(self.dpo_batch)

    def generate(self):
        from alignment_np.rl.generate import generate

        return generate(self.model, self.prompt, self.c["T"] - self.prompt.shape[1], temperature=0.0)["new_tokens"]

    def rollout(self):
        return self.ppo_trainer.rollout(self.ppo_prompts)

    def ppo(self):
        return self.ppo_trainer.train_step(self.ppo_prompts)

    def release_models(self):
        del self.model, self.policy, self.reference, self.trainer, self.opt
        del self.ppo_policy, self.ppo_reference, self.ppo_trainer


class TorchSide:
    """The same work in PyTorch eager mode, on a copy of a NumpySide's weights."""

    name = "torch"

    def __init__(self, c: dict, numpy_side: NumpySide):
        import torch
        from torch_gpt import TorchGPT, torch_generate

        self.torch = torch
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
        # PPO: the same three models and prompts; one AdamW over policy and value model (as the
        # NumPy trainer: eps 1e-5, decay on matrices only).
        trainer = numpy_side.ppo_trainer
        self.ppo_policy = TorchGPT.from_numpy(trainer.policy)
        self.ppo_reference = TorchGPT.from_numpy(trainer.reference)
        self.ppo_value = TorchGPT.from_numpy(trainer.value_model, value_head=True)
        self.ppo_opt = _torch_adamw(self.ppo_policy, self.ppo_value, eps=1e-5)
        tok = numpy_side.tokenizer
        ids, _ = tok.encode_batch(numpy_side.ppo_prompts, add_bos=True, padding_side="left")
        self.ppo_prompt = torch.from_numpy(ids.astype("int64"))
        self.ppo_settings = ppo_settings(c)
        self.decode, self.eos_id, self.pad_id = tok.decode, tok.eos_id, tok.pad_id
        self.generator = torch.Generator().manual_seed(0)

    def logits(self, idx):
        with self.torch.no_grad():
            return self.model(self.torch.from_numpy(idx)).numpy()

    def train(self):
        logits = self.model(self.idx)
        loss = self.torch.nn.functional.cross_entropy(logits.view(-1, self.c["V"]), self.targets.view(-1))
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def _logps(self, model, ids):
        logp = self.torch.log_softmax(model(ids), dim=-1)
        return (logp.gather(-1, self.dpo_targets[..., None])[..., 0] * self.dpo_mask).sum(-1)

    def dpo(self):
        torch = self.torch
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

    def rollout(self):
        from torch_gpt import torch_rollout

        s = self.ppo_settings
        return torch_rollout(self.ppo_policy, self.ppo_reference, self.ppo_value, self.ppo_prompt,
                             s["response_length"], self.eos_id, self.pad_id, self.decode, reward_fn,
                             s["temperature"], self.generator)

    def ppo(self):
        from torch_gpt import torch_ppo_iteration

        torch_ppo_iteration(self.ppo_policy, self.ppo_reference, self.ppo_value, self.ppo_opt, self.ppo_prompt,
                            self.ppo_settings, self.decode, reward_fn, self.eos_id, self.pad_id, self.generator)


def _torch_adamw(*models, eps: float = 1e-8):
    """AdamW(fused=True) with weight decay on matrices only, as alignment_np's AdamW."""
    import torch

    params = [p for model in models for p in model.parameters()]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=LR, eps=eps, fused=True)


# ---------------------------------------------------------------- timing (in the workers)


def time_per_call(fn, min_time: float) -> float:
    """Seconds per call of fn, calling it until at least min_time has passed (once at least)."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time:
            return elapsed / n


def clean_time_per_call(fn, min_time: float, max_noise: float, retries: int, settle: float) -> tuple:
    """(seconds per call, noise): ``time_per_call``, measured again (after a pause) while
    other processes took more than ``max_noise`` of the machine, up to ``retries`` times;
    the least disturbed measurement is kept, with its noise (the others' share of the CPUs).

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
    return best


def matmul_gflops(side: str, n: int, repeats: int) -> float:
    """float32 (n x n) @ (n x n) throughput of this side, GFLOP/s (median of ``repeats``)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    out = np.empty((n, n), dtype=np.float32)
    if side == "torch":
        import torch

        ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
        fn = lambda: torch.mm(ta, tb, out=tout)  # noqa: E731
    else:
        fn = lambda: np.matmul(a, b, out=out)  # noqa: E731
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / statistics.median(times) / 1e9


# ---------------------------------------------------------------- the workers


def build_side(side: str, c: dict):
    """The side's object, in this (worker) process. The torch side copies a NumpySide's
    weights and then drops the NumPy models, so only its own models stay resident."""
    numpy_side = NumpySide(c)
    if side != "torch":
        return numpy_side
    torch_side = TorchSide(c, numpy_side)
    numpy_side.release_models()
    return torch_side


def worker_setup(side: str, threads: int) -> dict:
    """What the worker sets up before building anything; returns what it did, for the report."""
    info = {"side": side, "allocator": "glibc default", "threads_asked": threads or None}
    if side == "numpy-best":
        from alignment_np.backend import keep_freed_memory

        info["allocator"] = "keep_freed_memory()" if keep_freed_memory() else "keep_freed_memory() had no effect"
    import numpy as np

    from alignment_np.functional import parallel

    if threads:
        set_blas_threads(threads)
        parallel.set_num_threads(threads)  # the library's own threads (functional/parallel.py) too
    blas = blas_info()
    info.update(numpy=np.__version__, blas_core=blas["corename"], blas_threads=blas["threads"],
                coretype_env=os.environ.get("OPENBLAS_CORETYPE"), numpy_threads=parallel.num_threads())
    if side == "torch":
        import torch

        torch.set_num_threads(threads or blas["threads"])  # the same cores as NumPy's BLAS
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    info["torch_imported"] = "torch" in sys.modules
    return info


def run_worker(args) -> None:
    """A side's worker: JSON commands on stdin, one JSON reply per line on stdout."""
    protocol = sys.stdout
    sys.stdout = sys.stderr  # anything the library prints must not corrupt the protocol
    c = CONFIGS[args.names[0]]
    info = worker_setup(args.worker, args.threads)
    if args.memory:
        print(json.dumps({"info": info, **memory_probe(args.worker, c, args.workloads)}), file=protocol, flush=True)
        return
    side = build_side(args.worker, c)
    print(json.dumps({"ready": True, "info": info}), file=protocol, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        if cmd["cmd"] == "logits":
            import numpy as np

            np.save(cmd["path"], side.logits(np.load(cmd["idx"])))
            reply = {"ok": True}
        elif cmd["cmd"] == "warmup":
            for w in cmd["workloads"]:
                for _ in range(cmd["n"]):
                    getattr(side, w)()
            reply = {"ok": True}
        elif cmd["cmd"] == "matmul":
            reply = {"gflops": matmul_gflops(side.name, cmd["n"], cmd["repeats"])}
        else:  # "time"
            seconds, noise = clean_time_per_call(getattr(side, cmd["work"]), cmd["min_time"], cmd["max_noise"],
                                                 cmd["retries"], cmd["settle"])
            reply = {"seconds": seconds, "noise": noise}
        print(json.dumps(reply), file=protocol, flush=True)


def release_free_heap() -> None:
    """glibc's ``malloc_trim(0)``: give the heap's free pages back to the OS (where there is glibc).

    Building the models ran forward passes (the DPO reference's log-probs) whose
    freed memory glibc may keep in its heap; left there, it would count in the
    baseline and the step would reuse it unseen. Trimmed first, the baseline is
    what is alive. Both sides get it, in their memory workers only.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def memory_probe(side: str, c: dict, workloads=WORKLOADS) -> dict:
    """Resident memory of one side, per workload, in a fresh process of its own.

    ``baseline_mib`` is VmRSS once the models, optimisers and data are built,
    before any step (the interpreter, the libraries, the weights; NumPy's
    AdamW moments and gradients too, which it allocates at construction while
    torch allocates them in its first step). Then, per workload in turn
    (train, dpo, generate), the kernel's peak counter VmHWM is reset
    (``/proc/self/clear_refs``), the workload runs three times, and
    ``peak_mib`` is VmHWM: everything resident at its worst moment, including
    what earlier workloads left (the DPO policy's optimiser state, memory a
    pool or the allocator kept); ``added_mib`` is peak - baseline. (NumPy's
    workspace is cleared before the baseline: the scratch buffers that
    ``prepare()``'s reference passes left in it belong to the steps; and
    both sides return glibc's free heap pages first, ``release_free_heap``.) For NumPy,
    ``traced_mib`` is tracemalloc's peak over one more call (NumPy reports
    its array buffers to tracemalloc): the bytes NumPy allocated during the
    call, arrays served from the package's workspace not included.
    """
    obj = build_side(side, c)
    if side != "torch":
        # The reference's forward passes in prepare() left scratch buffers in the package's
        # workspace: memory a step will use, not part of the built models. (Torch freed its own.)
        try:
            from alignment_np.functional import workspace
        except ImportError:  # a version of the package before the workspace
            pass
        else:
            workspace.clear()
    gc.collect()
    release_free_heap()
    out = {"baseline_mib": status_mib("VmRSS")}
    for w in workloads:
        fn = getattr(obj, w)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        for _ in range(3):
            fn()
        peak = status_mib("VmHWM")
        out[w] = {"peak_mib": peak, "added_mib": peak - out["baseline_mib"]}
        if side != "torch":
            tracemalloc.start()
            fn()
            out[w]["traced_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
    return out


# ---------------------------------------------------------------- the driver


def read_reply(proc, who: str) -> dict:
    """One JSON line from a worker process's stdout; if it died, a RuntimeError with its last stderr lines."""
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read().strip().splitlines()
        raise RuntimeError(f"{who} died: {' | '.join(err[-3:])}")
    return json.loads(line)


class Worker:
    """A side's worker process, driven over its stdin/stdout."""

    def __init__(self, side: str, config: str, args, memory: bool = False):
        self.side = side
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--configs", config,
               "--workloads", ",".join(args.workloads)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if memory:
            cmd.append("--memory")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=worker_env(side, args.coretype), cwd=REPO)
        self.hello = self._read()
        self.info = self.hello.get("info", {})

    def _read(self) -> dict:
        return read_reply(self.proc, f"the {self.side} worker")

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                pass
            self.proc.wait(timeout=60)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                pipe.close()
            except BrokenPipeError:  # stdin's buffer, flushed to a worker that is gone
                pass


def worker_env(side: str, coretype) -> dict:
    """The worker's environment: the caller's, unchanged, except the best path's core type."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if side == "numpy-best" and coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    return env


def check_parity(workers: list, c: dict) -> float:
    """Max |logits| difference between the sides on one batch: they must be the same model."""
    import numpy as np

    idx = np.random.default_rng(1).integers(0, c["V"], (2, c["T"]))
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "idx.npy", idx)
        logits = []
        for k, w in enumerate(workers):
            path = str(Path(tmp) / f"logits{k}.npy")
            w.ask(cmd="logits", idx=str(Path(tmp) / "idx.npy"), path=path)
            logits.append(np.load(path))
    diff = max(float(np.abs(a - logits[0]).max()) for a in logits[1:]) if len(logits) > 1 else 0.0
    scale = float(np.abs(logits[0]).max())
    if not diff <= 1e-4 * max(1.0, scale):
        raise RuntimeError(f"the sides' models disagree: max |logits diff| = {diff:.3g}")
    return diff


def bench_config(name: str, args) -> dict:
    c = CONFIGS[name]
    workers = [Worker(side, name, args) for side in args.sides]
    try:
        parity = check_parity(workers, c) if len(workers) > 1 else None
        for w in workers:  # warm up: first calls allocate, fault pages in, build caches
            w.ask(cmd="warmup", n=args.warmup, workloads=args.workloads)
        times = {(w.side, work): [] for w in workers for work in args.workloads}
        for r in range(args.repeats):
            for work in args.workloads:
                # alternate which side goes first, so a burst of load hits all alike
                for w in workers if r % 2 == 0 else workers[::-1]:
                    reply = w.ask(cmd="time", work=work, min_time=args.min_time, max_noise=args.max_noise,
                                  retries=args.retries, settle=args.settle)
                    times[(w.side, work)].append(reply["seconds"])
                    print(f"[{name} repeat {r + 1}/{args.repeats}] {w.side} {work}: {1e3 * reply['seconds']:.1f} ms "
                          f"(others used {100 * reply['noise']:.0f}% of the CPUs)", file=sys.stderr, flush=True)
                    stats = args.noise_stats
                    stats["measurements"] += 1
                    stats["noisy"] += reply["noise"] > args.max_noise
                    stats["worst_kept"] = max(stats["worst_kept"], reply["noise"])
        result = {"config": name, **c, "parity_max_abs_diff": parity, "sides": {},
                  "workers": {w.side: w.info for w in workers}}
        for w in workers:
            per = {}
            for work in args.workloads:
                ts = times[(w.side, work)]
                t = statistics.median(ts)
                per[work] = {"seconds": t, "tokens_per_s": tokens_per_call(c, work) / t,
                             "tokens_per_s_range": [tokens_per_call(c, work) / max(ts),
                                                    tokens_per_call(c, work) / min(ts)]}
            if "train" in per:
                per["train"]["gflops"] = train_flops(c) / per["train"]["seconds"] / 1e9
            result["sides"][w.side] = per
        if name == args.names[0]:  # the machine's matmul ceiling, once, from the first config's workers
            result["matmul_gflops"] = {w.side: w.ask(cmd="matmul", n=args.matmul_n, repeats=args.matmul_repeats)
                                       ["gflops"] for w in workers}
        return result
    finally:
        for w in workers:
            w.close()


def run_memory_probes(name: str, args) -> dict:
    result = {}
    for side in args.sides:
        try:
            w = Worker(side, name, args, memory=True)
            w.close()
            result[side] = w.hello
            print(f"[memory {name}] {side}: " + ", ".join(f"{k} +{w.hello[k]['added_mib']:.0f} MiB"
                                                        for k in WORKLOADS if k in w.hello), file=sys.stderr, flush=True)
        except RuntimeError as e:
            result[side] = {"error": str(e)}
    return result


# ---------------------------------------------------------------- report

LABELS = {"numpy": "NumPy", "numpy-best": "NumPy best", "torch": "PyTorch"}


def print_report(header: dict, results: list, memory: dict, matmul_n: int) -> None:
    print("## Machine")
    for k, v in header.items():
        print(f"- {k}: {v}")
    peak = results[0].get("matmul_gflops", {})
    ceiling = max(peak.values()) if peak else float("nan")
    print(f"- float32 matmul ({matmul_n}^3): "
          + ", ".join(f"{LABELS[k]} {v:.0f} GFLOP/s" for k, v in peak.items()))
    print()
    sides = list(results[0]["sides"])
    has_torch = "torch" in sides
    numpy_sides = [s for s in sides if s != "torch"]
    print("## Throughput (median of repeats, min-max in brackets; NumPy/PyTorch > 1 means NumPy is faster)")
    print()
    cols = [LABELS[s] for s in sides] + ([f"{LABELS[s]}/PyTorch" for s in numpy_sides] if has_torch else [])
    print("| config | work | " + " | ".join(cols) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in cols) + " |")
    units = {"train": "train tokens/s", "dpo": "DPO tokens/s", "generate": "generate new tokens/s",
             "rollout": "rollout new tokens/s", "ppo": "PPO iteration tokens/s"}
    for r in results:
        for w in [w for w in WORKLOADS if w in r["sides"][sides[0]]]:
            cells = []
            for s in sides:
                m = r["sides"][s][w]
                lo, hi = m["tokens_per_s_range"]
                cells.append(f"{m['tokens_per_s']:,.0f} ({lo:,.0f}-{hi:,.0f})")
            if has_torch:
                t = r["sides"]["torch"][w]["tokens_per_s"]
                cells += [f"{r['sides'][s][w]['tokens_per_s'] / t:.2f}x" for s in numpy_sides]
            print(f"| {r['config']} | {units[w]} | " + " | ".join(cells) + " |")
    print()
    print("## Train step against the matmul ceiling, and DPO step / train step (same tokens)")
    print()
    print("| config | side | model GFLOP/step | achieved GFLOP/s | % of ceiling | DPO step / train step |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in results:
        for side, per in r["sides"].items():
            if "train" not in per or "dpo" not in per:
                continue
            print(f"| {r['config']} | {LABELS[side]} | {train_flops(r) / 1e9:.2f} | {per['train']['gflops']:.1f} | "
                  f"{100 * per['train']['gflops'] / ceiling:.0f}% | "
                  f"{per['dpo']['seconds'] / per['train']['seconds']:.2f}x |")
    if any(r["parity_max_abs_diff"] is not None for r in results):
        print()
        print("Parity (max |logits difference| between the sides, same weights): "
              + ", ".join(f"{r['config']} {r['parity_max_abs_diff']:.1e}" for r in results))
    if memory:
        print()
        print("## Resident memory added above the built models (MiB; each side in a fresh process)")
        print()
        print("Base: VmRSS after building the models and optimisers, before any step. Added: the most")
        print("resident during three calls of the workload (VmHWM), minus base. Workloads run in turn.")
        print()
        msides = [s for s in args_sides(memory)]
        cols = [f"{LABELS[s]} added" for s in msides] + (
            [f"{LABELS[s]}/PyTorch" for s in msides if s != "torch"] if "torch" in msides else [])
        print("| config | work | " + " | ".join(f"{LABELS[s]} base" for s in msides) + " | "
              + " | ".join(cols) + " |")
        print("| --- | --- | " + " | ".join("---:" for _ in range(len(msides) + len(cols))) + " |")
        for name, per_side in memory.items():
            for w in [w for w in WORKLOADS if any(w in m for m in per_side.values())]:
                base = [f"{per_side[s]['baseline_mib']:.0f}" if w in per_side.get(s, {}) else "-" for s in msides]
                added = [f"{per_side[s][w]['added_mib']:.0f}" if w in per_side.get(s, {}) else "-" for s in msides]
                ratios = []
                if "torch" in msides and w in per_side.get("torch", {}):
                    t = per_side["torch"][w]["added_mib"]
                    ratios = [f"{per_side[s][w]['added_mib'] / t:.2f}x" if w in per_side.get(s, {}) else "-"
                              for s in msides if s != "torch"]
                print(f"| {name} | {w} | " + " | ".join(base + added + ratios) + " |")


def args_sides(memory: dict) -> list:
    first = next(iter(memory.values()))
    return [s for s in SIDES if s in first and "error" not in first[s]]


def config_names(parser, text: str) -> list:
    """The names of a ``--configs`` argument (comma-separated); a parser error unless all are known."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or any(n not in CONFIGS for n in names):
        parser.error(f"--configs: expected names from {list(CONFIGS)}, got {text!r}")
    return names


def require_positive(parser, args, *flags) -> None:
    """A parser error unless each of these int arguments is >= 1."""
    for flag in flags:
        value = getattr(args, flag.replace("-", "_"))
        if value < 1:
            parser.error(f"--{flag}: expected an int >= 1, got {value}")


def require_positive_time(parser, args, *flags) -> None:
    """A parser error unless each of these seconds arguments is > 0 (NaN is not)."""
    for flag in flags:
        value = getattr(args, flag.replace("-", "_"))
        if not value > 0:
            parser.error(f"--{flag}: expected a number > 0, got {value}")


def threads_for_both_sides(n: int) -> None:
    """n threads for OpenBLAS, alignment_np's blocks and torch: the diagnostics that run both
    sides in one process (generate_parts.py, kernels_vs_torch.py)."""
    import numpy  # noqa: F401  (loads OpenBLAS, whose threads are set next)
    import torch

    from alignment_np.functional import parallel

    set_blas_threads(n)
    parallel.set_num_threads(n)
    torch.set_num_threads(n)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="tiny,small,medium", help="comma-separated: tiny, small, medium")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per workload and side (median)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run (numbers not meaningful): 1 repeat, 1 call per measurement and no "
                        "warm-up, a small matmul, no memory probes, no best-path worker, 1 thread unless --threads")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds per timed measurement (>= 1 call)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per workload first")
    p.add_argument("--threads", type=int, default=0,
                   help="BLAS threads for NumPy and torch.set_num_threads (default: OpenBLAS's own, and "
                        "torch as many)")
    p.add_argument("--max-noise", type=float, default=0.05,
                   help="measure again while other processes use more than this fraction of the CPUs")
    p.add_argument("--retries", type=int, default=4, help="re-measurements allowed per measurement")
    p.add_argument("--settle", type=float, default=0.2, help="seconds of pause before each measurement")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, from {', '.join(WORKLOADS)}")
    p.add_argument("--no-best", action="store_true", help="skip the NumPy best-path worker")
    p.add_argument("--no-torch", action="store_true", help="run the NumPy side(s) only")
    p.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = config_names(p, args.configs)
    if args.repeats < 1:
        p.error(f"--repeats: expected >= 1, got {args.repeats}")
    if args.threads < 0:
        p.error(f"--threads: expected >= 0, got {args.threads}")
    args.names = names
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not args.workloads or any(w not in WORKLOADS for w in args.workloads):
        p.error(f"--workloads: expected names from {list(WORKLOADS)}, got {','.join(args.workloads)!r}")
    args.noise_stats = {"measurements": 0, "noisy": 0, "worst_kept": 0.0}
    args.matmul_n, args.matmul_repeats = 2048, 7
    if args.quick:
        args.repeats, args.min_time, args.warmup, args.no_memory, args.retries, args.settle = 1, 0.0, 0, True, 0, 0.0
        args.no_best = True
        args.matmul_n, args.matmul_repeats = 256, 1
        # One thread unless asked: a smoke run only checks that everything works, and
        # two BLAS threads on a busy 2-core machine can run 10x slower than one.
        args.threads = args.threads or 1
    return args


def _torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def main(argv=None) -> dict:
    """Run the benchmark; print the report and return the results as a dict.

    The driver (this process) changes no setting of its own: the sides run
    in worker processes (``--worker``), started fresh for each config.
    """
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return {}
    if not args.no_torch and not _torch_installed():
        args.no_torch = True
    args.coretype, coretype_note = recommended_coretype()
    args.sides = ["numpy"] + ([] if args.no_best else ["numpy-best"]) + ([] if args.no_torch else ["torch"])
    header = {
        "command": "python " + " ".join(["benchmarks/bench_gpt.py"] + (argv if argv is not None else sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": f"{cpu_model()}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores available",
        "python": platform.python_version(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    start = cpu_snapshot()
    results = []
    for name in args.names:  # the JSON file is rewritten after each config: a long run keeps what it measured
        results.append(bench_config(name, args))
        if args.json:
            Path(args.json).write_text(json.dumps({"header": header, "results": results}, indent=1))
    workers = results[0]["workers"]
    info = workers["numpy"]
    header["numpy"] = (f"{info['numpy']}, OpenBLAS core type {info['blas_core']}, {info['blas_threads']} BLAS threads, "
                       f"{info.get('numpy_threads', '?')} alignment_np threads; "
                       f"allocator {info['allocator']}; torch imported: {info['torch_imported']}")
    if "numpy-best" in workers:
        best = workers["numpy-best"]
        header["numpy best"] = (f"OpenBLAS core type {best['blas_core']} (OPENBLAS_CORETYPE "
                                f"{best['coretype_env'] or 'unset'}), allocator {best['allocator']}")
    header["openblas_coretype"] = coretype_note
    header["torch"] = ("not installed or --no-torch" if "torch" not in workers else
                       f"{workers['torch']['torch']}, {workers['torch']['torch_threads']} threads, eager")
    memory = {} if args.no_memory else {name: run_memory_probes(name, args) for name in args.names}
    header["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    header["CPU used by other processes during the run"] = others_share(start, cpu_snapshot())
    ns = args.noise_stats
    header["disturbed measurements"] = (
        f"{ns['noisy']} of {ns['measurements']} kept although other processes used more than "
        f"{100 * args.max_noise:.0f}% of the CPUs (worst {100 * ns['worst_kept']:.0f}%) after "
        f"{args.retries} re-measurements")
    print_report(header, results, memory, args.matmul_n)
    out = {"header": header, "matmul_gflops": results[0].get("matmul_gflops", {}), "results": results,
           "memory": memory}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
