"""The benchmark (``benchmarks/bench_gpt.py``) runs, so that it cannot rot.

Each test runs it in ``--quick`` mode on the tiny config (a second or two):
these tests check that it works and reports sane numbers, not how fast
anything is (timings on a shared machine mean little; see docs/performance.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alignment_np.nn.gpt import GPTConfig, TinyGPT

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_gpt.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpt", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_from_the_command_line_numpy_only():
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, "-W", "always::ResourceWarning", str(SCRIPT), "--quick", "--configs", "tiny", "--no-torch"],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT.parent,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ResourceWarning" not in proc.stderr  # every worker's pipes are closed
    out = proc.stdout
    # the NumPy worker ran as a learner runs it: no allocator call, torch never imported
    assert re.search(r"- numpy: \S+, OpenBLAS core type \S+, \d+ BLAS threads, \d+ alignment_np threads; "
                     r"allocator glibc default; "
                     r"torch imported: False", out)
    # what the best path would set, and why, on every CPU (recommended or not)
    assert re.search(r"- openblas_coretype: (none recommended|SkylakeX recommended|OPENBLAS_CORETYPE=\S+ set by "
                     r"the caller) \(.+\)", out)
    for work in ("train tokens/s", "DPO tokens/s", "generate new tokens/s", "rollout new tokens/s",
                 "PPO iteration tokens/s"):
        row = re.search(rf"\| tiny \| {work} \| ([\d,]+) \(", out)
        assert row and int(row.group(1).replace(",", "")) > 0, work
    assert re.search(r"\| tiny \| NumPy \| 0\.73 \| [\d.]+ \| \d+% \| [\d.]+x \|", out)


@pytest.mark.torch
def test_quick_run_against_torch():
    pytest.importorskip("torch")
    bench = load_bench()
    result = bench.main(["--quick", "--configs", "tiny"])
    (tiny,) = result["results"]
    assert tiny["parity_max_abs_diff"] < 1e-4  # both sides really are the same model
    for side in ("numpy", "torch"):
        for work in bench.WORKLOADS:
            assert tiny["sides"][side][work]["tokens_per_s"] > 0, (side, work)
    assert set(result["matmul_gflops"]) == {"numpy", "torch"}
    assert tiny["workers"]["numpy"]["torch_imported"] is False  # each side in a process of its own
    assert tiny["workers"]["torch"]["torch_imported"] is True


def test_bad_arguments_are_refused(capsys):
    bench = load_bench()
    with pytest.raises(SystemExit):
        bench.parse_args(["--configs", "huge"])
    assert "--configs: expected names from ['tiny', 'small', 'medium'], got 'huge'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--repeats", "0"])
    assert "--repeats: expected >= 1, got 0" in capsys.readouterr().err


def test_model_flops_match_the_parameter_count():
    """The FLOP formula, recomputed from a model's own parameters (PaLM's 6N + 12 L T D per
    token, N = the matrices of the blocks plus the tied head wte; biases, LayerNorm and
    the position table do no matmul work)."""
    bench = load_bench()
    for name, c in bench.CONFIGS.items():
        model = TinyGPT(GPTConfig(vocab_size=c["V"], block_size=c["T"], n_layer=c["L"],
                                  n_head=c["H"], d_model=c["D"]))
        n = sum(p.data.size for name_, p in model.named_parameters()
                if name_.startswith("blocks.") and p.data.ndim == 2) + model.wte.data.size
        tokens = c["B"] * c["T"]
        expected = 6 * n * tokens + 12 * c["L"] * c["T"] * c["D"] * tokens
        assert bench.train_flops(c) == pytest.approx(expected, rel=1e-12), name


def test_dpo_batch_has_the_tokens_of_a_train_batch():
    """The DPO step is compared with the train step on the same number of tokens."""
    bench = load_bench()
    c = bench.CONFIGS["tiny"]
    side = bench.NumpySide(c)
    batch = side.dpo_batch
    assert batch["input_ids"].shape == side.idx.shape == (c["B"], c["T"])
    assert np.all(batch["attention_mask"] == 1)  # full rows: both sides take the causal path
    assert bench.tokens_per_call(c, "dpo") == bench.tokens_per_call(c, "train") == c["B"] * c["T"]


def test_only_the_best_path_worker_gets_a_core_type():
    bench = load_bench()
    assert "OPENBLAS_CORETYPE" not in os.environ or pytest.skip("OPENBLAS_CORETYPE set by the caller")
    assert "OPENBLAS_CORETYPE" not in bench.worker_env("numpy", "SkylakeX")
    assert "OPENBLAS_CORETYPE" not in bench.worker_env("torch", "SkylakeX")
    assert bench.worker_env("numpy-best", "SkylakeX")["OPENBLAS_CORETYPE"] == "SkylakeX"
    assert "OPENBLAS_CORETYPE" not in bench.worker_env("numpy-best", None)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_memory_probe_reports_numpy_peaks():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--worker", "numpy", "--memory", "--configs", "tiny", "--threads", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    assert m["baseline_mib"] > 0 and m["info"]["allocator"] == "glibc default"
    for work in ("train", "dpo", "generate"):
        assert m[work]["peak_mib"] > 0 and m[work]["added_mib"] >= 0 and m[work]["traced_mib"] >= 0
    # a train step keeps every layer's activations for backward; generation keeps none
    assert m["train"]["added_mib"] > 0


@pytest.mark.torch
def test_the_torch_ppo_side_computes_what_the_package_computes():
    """The benchmark's torch PPO iteration does the package's work: its GAE and whitening give
    gae_advantages' numbers, and its rollout's log-probs are the package's response log-probs."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import torch_gpt
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from alignment_np.rl.advantages import gae_advantages
    from alignment_np.trainers.lm_logprobs import response_forward

    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    mask = (np.arange(7)[None, :] < rng.integers(1, 8, size=5)[:, None]).astype(np.float64)
    adv, ret = gae_advantages(rewards, values, mask, 1.0, 0.95)
    t_adv, t_ret = torch_gpt._gae(*(torch.tensor(a) for a in (rewards, values, mask)), 1.0, 0.95)
    np.testing.assert_allclose(t_adv.numpy(), adv, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(t_ret.numpy(), ret, rtol=1e-10, atol=1e-12)

    model = TinyGPT(GPTConfig(vocab_size=11, block_size=12, n_layer=2, n_head=2, d_model=8, dtype="float64"), seed=3)
    tokens = rng.integers(0, 11, size=(3, 12))
    out, _ = response_forward(model, tokens, None, 5, 0.7, ("logits", "values"))
    tmodel = torch_gpt.TorchGPT.from_numpy(model, value_head=True)
    with torch.no_grad():
        logps, _ = torch_gpt._response_logps(tmodel, torch.from_numpy(tokens), 5, 0.7)
        values = tmodel.values(torch.from_numpy(tokens)[:, :-1])[:, 4:]
    np.testing.assert_allclose(logps.numpy(), out["logps"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(values.numpy(), out["values"], rtol=1e-10, atol=1e-12)


def load_script(name: str):
    """A script of benchmarks/ that imports bench_gpt from beside it, as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


@pytest.mark.torch
def test_generation_parts_do_the_work_of_a_whole_call():
    """The parts of generate_parts.py sample what generate and torch_generate sample."""
    pytest.importorskip("torch")
    parts = load_script("generate_parts")
    bench = parts.bench_gpt
    from alignment_np.rl.generate import generate

    c = bench.CONFIGS["tiny"]
    numpy_side = bench.NumpySide(c)
    torch_side = bench.TorchSide(c, bench.NumpySide(c))
    clock = parts._Clock()
    tokens = parts.numpy_parts(numpy_side, clock, 1)
    n_new = c["T"] - numpy_side.prompt.shape[1]
    whole = generate(numpy_side.model, numpy_side.prompt, n_new, temperature=0.0)["new_tokens"]
    np.testing.assert_array_equal(tokens, whole)
    assert all(clock.seconds[part] > 0 for part in parts.PARTS)
    torch_tokens = parts.torch_parts(torch_side, parts._Clock(), 1)
    np.testing.assert_array_equal(torch_tokens.numpy(), torch_side.generate().numpy())


@pytest.mark.torch
def test_generation_parts_report_and_bad_arguments(capsys):
    pytest.importorskip("torch")
    parts = load_script("generate_parts")
    result = parts.main(["--configs", "tiny", "--repeats", "1", "--calls", "1", "--threads", "1"])
    out = capsys.readouterr().out
    for part in parts.PARTS:
        np_ms, torch_ms, speed = result["tiny"][part]
        assert np_ms > 0 and torch_ms > 0 and speed > 0
        assert re.search(rf"\| tiny \| {part} \| [\d.]+ \| [\d.]+ \| [\d.]+x \|", out)
    for argv, message in ((["--configs", "huge"], "--configs: expected names from"),
                          (["--repeats", "0"], "--repeats: expected an int >= 1, got 0")):
        with pytest.raises(SystemExit):
            parts.main(argv)
        assert message in capsys.readouterr().err


@pytest.mark.torch
def test_each_kernel_pair_computes_the_same_thing():
    """Both sides of every row of kernels_vs_torch.py time the same computation."""
    pytest.importorskip("torch")
    module = load_script("kernels_vs_torch")
    c = module.bench_gpt.CONFIGS["tiny"]
    rows = module.kernels(c)
    assert [calls for name, calls, _, _ in rows if name.startswith("layernorm")] == [2 * c["L"] + 1] * 2
    for name, _, numpy_fn, torch_fn in rows:
        got, want = numpy_fn(), torch_fn()
        if name.endswith("forward"):
            got = got[0]  # (out, cache)
        elif name.startswith("linear"):  # (dx, dw, db); torch keeps w as (out, in)
            got = (got[0], got[1].T, got[2])
        got = got if isinstance(got, tuple) else (got,)
        want = want if isinstance(want, tuple) else (want,)
        assert len(got) == len(want), name
        for a, b in zip(got, want):
            b = b.detach().numpy()  # float32 on both sides: agreement to a few ulps of the largest entry
            np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=2e-6 * np.abs(b).max(), err_msg=name)


@pytest.mark.torch
def test_kernels_vs_torch_report_and_bad_arguments(capsys):
    pytest.importorskip("torch")
    module = load_script("kernels_vs_torch")
    result = module.main(["--configs", "tiny", "--repeats", "1", "--min-time", "0.001", "--threads", "1"])
    out = capsys.readouterr().out
    assert len(result["tiny"]) == 16
    for kernel, calls, numpy_us, torch_us, speed in result["tiny"]:
        assert calls >= 1 and numpy_us > 0 and torch_us > 0 and speed > 0
        assert f"| tiny | {kernel} | {calls} |" in out
    assert re.search(r"\| tiny \| all of the above \| \| \| \| \| [+-][\d.]+ \|", out)
    with pytest.raises(SystemExit):
        module.main(["--min-time", "0"])
    assert "--min-time: expected a number > 0, got 0.0" in capsys.readouterr().err


def test_tile_sizes_sets_the_block_size_and_restores_it():
    module = load_script("tile_sizes")
    from alignment_np.functional import attention

    before = attention.TILE_QUERIES
    with module.tile_queries(16):
        assert len(attention.attention_tiles(1, 2, 64)) == 4  # blocks of 16 queries
    assert attention.TILE_QUERIES == before
    with pytest.raises(RuntimeError), module.tile_queries(16):
        raise RuntimeError("restored even so")
    assert attention.TILE_QUERIES == before


def test_tile_sizes_report_and_bad_arguments(capsys):
    module = load_script("tile_sizes")
    from alignment_np.functional import attention

    before = attention.TILE_QUERIES
    result = module.main(["--configs", "tiny", "--queries", "16,64", "--repeats", "2", "--min-time", "0.001",
                          "--steps", "--step-time", "0.001", "--threads", "1"])
    out = capsys.readouterr().out
    assert attention.TILE_QUERIES == before
    assert list(result["tiny"]) == [16, 64]
    assert all(ratio == 1.0 for _, ratio in result["tiny"][16])  # the first size against itself
    for n, timings in result["tiny"].items():
        assert all(ms > 0 and ratio > 0 for ms, ratio in timings)
        assert re.search(rf"\| tiny \| {n} \|( [\d.]+ \|){{6}}$", out, re.MULTILINE)
    for argv, message in ((["--queries", "0"], "--queries: expected distinct ints >= 1"),
                          (["--queries", "32,32"], "--queries: expected distinct ints >= 1"),
                          (["--queries", "a"], "--queries: expected distinct ints >= 1"),
                          (["--step-time", "0"], "--step-time: expected a number > 0, got 0.0"),
                          (["--threads", "0"], "--threads: expected an int >= 1, got 0")):
        with pytest.raises(SystemExit):
            module.main(argv)
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("work", ["train", "dpo", "generate"])
def test_two_processes_compute_what_one_process_computes(work):
    # train, DPO: each half's share of the loss; a wrong scale (or a half computed twice) is off by about 1.
    # generate: the same tokens, row for row (a half swapped or decoded twice differs).
    module = load_script("two_processes")
    from alignment_np.functional import parallel

    before = parallel.num_threads()
    difference = module.difference(module.bench_gpt.CONFIGS["tiny"], "tiny", work)
    assert difference == 0.0 if work == "generate" else difference < 1e-5
    assert parallel.num_threads() == before  # one_thread() restored the count


def test_two_processes_helper_follows_the_updates_and_a_dead_helper_is_reported():
    module = load_script("two_processes")
    c = module.bench_gpt.CONFIGS["tiny"]
    with module.one_thread():
        two = module.TwoProcesses(c, "tiny", "train")
        try:
            assert not os.path.exists(two.path)  # unlinked once both processes hold the map
            before = two.opt.flat.data.copy()
            two.opt.lr = 1e-2  # a step that moves every weight clearly
            two.step()
            assert np.abs(two.opt.flat.data - before).max() > 5e-3
            # The next gradient is the one-process gradient at the updated weights: the helper read them.
            grad = two.gradients().copy()
            one = module.bench_gpt.NumpySide(c)
            one.opt.flat.data[...] = two.opt.flat.data
            one.opt.zero_grad()
            module._backward_half(one.model, one.idx, one.targets, 1.0)
            assert np.abs(grad - one.opt.flat.grad).max() < 1e-5 * np.abs(one.opt.flat.grad).max()
            two.proc.kill()
            two.proc.wait()
            with pytest.raises(RuntimeError, match="the helper process stopped"):
                two.step()
        finally:
            two.close()


def test_two_processes_report_and_bad_arguments(capsys):
    module = load_script("two_processes")
    result = module.main(["--configs", "tiny", "--workloads", "train", "--repeats", "1", "--min-time", "0.001",
                          "--no-torch"])
    out = capsys.readouterr().out
    row = result["tiny", "train"]
    assert row["diff"] < 1e-5
    assert row["numpy"]["vs_numpy"] == 1.0 and row["numpy"]["ms"] > 0
    assert row["two-processes"]["ms"] > 0 and row["two-processes"]["vs_numpy"] > 0
    assert re.search(r"^\| tiny \| train \| two-processes \| [\d.]+ \| [\d.]+ \| [\d.]+e-\d+ \|$", out, re.MULTILINE)
    workloads = "--workloads: expected distinct names from ['train', 'dpo', 'generate']"
    for argv, message in ((["--workloads", "ppo"], workloads),
                          (["--workloads", "train,train"], workloads),
                          (["--repeats", "0"], "--repeats: expected an int >= 1, got 0"),
                          (["--min-time", "0"], "--min-time: expected a number > 0, got 0.0")):
        with pytest.raises(SystemExit):
            module.main(argv)
        assert message in capsys.readouterr().err
