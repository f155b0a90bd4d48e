"""Tests for the command line (``alignment_np/cli.py``, ``__main__.py``) and the progress bar."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest

from alignment_np import progress as progress_module
from alignment_np.cli import build_parser, main
from alignment_np.data.corpus import generate_corpus, unigram_entropy
from alignment_np.progress import Progress
from alignment_np.trainers.sft import SFTTrainer, load_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A tiny run: a couple of hundred lines, a 1-layer d_model-16 model, a few steps (well under a second).
TINY = ["--lines", "200", "--eval-lines", "40", "--d-model", "16", "--n-layer", "1", "--n-head", "2",
        "--batch-size", "8", "--log-every", "2", "--samples", "2"]


def run_main(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- help
def test_python_dash_m_help_runs_the_entry_point():
    done = subprocess.run([sys.executable, "-m", "alignment_np", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    assert "usage: alignment-np" in done.stdout and "sft" in done.stdout and "sample" in done.stdout


@pytest.mark.parametrize("command", ["sft", "sample"])
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: alignment-np {command}" in out
    assert ("--resume" in out) if command == "sft" else ("--prompt" in out)


def test_a_command_is_required_and_bad_choices_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["sft", "--backend", "jax"])
    assert "invalid choice: 'jax'" in capsys.readouterr().err


# --------------------------------------------------------------------------- sft and sample
def test_sft_trains_prints_baseline_losses_and_samples_then_saves(tmp_path, capsys):
    out_path = tmp_path / "runs" / "sft.npz"  # the folder does not exist yet
    code, out, _ = run_main(["sft", "--steps", "4", "--out", str(out_path), *TINY], capsys)
    assert code == 0
    baseline = unigram_entropy(generate_corpus(200, seed=0))
    assert f"unigram entropy baseline: {baseline:.4f}" in out
    assert "step     2  loss" in out and "step     4  loss" in out
    assert "held-out lines" in out and out.count("  sample: ") == 2
    model, tokenizer = load_model(out_path)
    assert model.config.d_model == 16 and tokenizer.vocab_size == model.config.vocab_size
    assert SFTTrainer.resume(out_path).step == 4


def test_sft_quiet_prints_no_step_lines(tmp_path, capsys):
    code, out, err = run_main(["sft", "--steps", "3", "--out", str(tmp_path / "q.npz"), "--quiet", *TINY], capsys)
    assert code == 0
    assert "  loss " not in out and "sft:" not in err  # neither loss lines nor a bar
    assert "unigram entropy baseline" in out


def test_sft_resume_with_more_steps_continues_from_the_checkpoint(tmp_path, capsys):
    path = tmp_path / "run.npz"
    assert main(["sft", "--steps", "3", "--out", str(path), "--quiet", *TINY]) == 0
    code, out, _ = run_main(["sft", "--steps", "5", "--out", str(path), "--resume", *TINY], capsys)
    assert code == 0
    assert "resumed" in out and "at step 3 of 5" in out  # the schedule is stretched to the new total
    assert "step     4  loss" in out and "step     2  loss" not in out
    resumed = SFTTrainer.resume(path)
    assert resumed.step == 5 and resumed.config.steps == 5
    assert resumed.metadata["corpus"] == {"lines": 200, "eval_lines": 40, "seed": 0}


def test_sft_resume_refuses_another_corpus(tmp_path, capsys):
    path = tmp_path / "run.npz"
    assert main(["sft", "--steps", "2", "--out", str(path), "--quiet", *TINY]) == 0
    code, _, err = run_main(["sft", "--steps", "4", "--out", str(path), "--resume", "--seed", "1"], capsys)
    assert code == 1 and "--seed: the checkpoint was trained with --seed 0, got 1" in err
    # without corpus flags the stored corpus is used (200 lines here, not the default 4000)
    code, out, _ = run_main(["sft", "--steps", "3", "--out", str(path), "--resume", "--quiet", "--samples", "0"],
                            capsys)
    assert code == 0 and "corpus: 200 training lines" in out


def test_sft_interrupted_run_resumes_exactly(tmp_path, capsys, monkeypatch):
    """Ctrl-C (SIGINT) stops after a whole step and saves; --resume then finishes the same run."""
    import alignment_np.cli as cli

    straight = tmp_path / "straight.npz"
    assert main(["sft", "--steps", "6", "--out", str(straight), "--quiet", *TINY]) == 0
    original_train = SFTTrainer.train

    def train_interrupted_after_2_steps(self, data, steps=None, progress=True, callback=None, eval_data=None):
        def interrupting(step, metrics):
            if step == 2:
                os.kill(os.getpid(), cli.signal.SIGINT)  # the handler only sets a flag
            return callback(step, metrics)

        return original_train(self, data, steps, progress, interrupting, eval_data)

    monkeypatch.setattr(SFTTrainer, "train", train_interrupted_after_2_steps)
    path = tmp_path / "run.npz"
    code, out, _ = run_main(["sft", "--steps", "6", "--out", str(path), "--quiet", *TINY], capsys)
    assert code == 130 and "interrupted at step 2" in out
    monkeypatch.setattr(SFTTrainer, "train", original_train)
    assert main(["sft", "--steps", "6", "--out", str(path), "--resume", "--quiet", *TINY]) == 0
    a, _ = load_model(straight)
    b, _ = load_model(path)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)


def test_sample_continues_the_prompt(tmp_path, capsys):
    ckpt = tmp_path / "s.npz"
    assert main(["sft", "--steps", "2", "--out", str(ckpt), "--quiet", *TINY]) == 0
    capsys.readouterr()
    code, out, _ = run_main(["sample", "--ckpt", str(ckpt), "--prompt", "the film was", "--prompt", "i",
                             "--num-samples", "2", "--max-new-tokens", "5", "--seed", "3"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("the film was") and lines[2].startswith("i")
    assert all(len(line) <= len("the film was") + 5 for line in lines)
    # same seed, same samples
    assert run_main(["sample", "--ckpt", str(ckpt), "--prompt", "the film was", "--prompt", "i",
                     "--num-samples", "2", "--max-new-tokens", "5", "--seed", "3"], capsys)[1] == out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sft", "--resume", "--out", "{tmp}/none.npz", *TINY], r"--resume: no checkpoint at"),
        (["sft", "--steps", "0", "--out", "{tmp}/x.npz", *TINY], r"steps: expected a positive int, got 0"),
        (["sample", "--ckpt", "{tmp}/none.npz"], r"no checkpoint file at"),
        (["sample", "--ckpt", "{tmp}/s.npz", "--prompt", "THE"], r"character 'T' at position 0"),
        (["sample", "--ckpt", "{tmp}/s.npz", "--temperature", "-1"], r"temperature: expected a finite number >= 0"),
        (["sample", "--ckpt", "{tmp}/s.npz", "--num-samples", "0"], r"--num-samples: expected a positive int"),
    ],
)
def test_errors_are_reported_with_exit_status_1(argv, message, tmp_path, capsys):
    if "sample" in argv and "{tmp}/s.npz" in argv:
        assert main(["sft", "--steps", "1", "--out", str(tmp_path / "s.npz"), "--quiet", *TINY]) == 0
    code, _, err = run_main([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys)
    assert code == 1
    assert err.startswith(f"alignment-np {argv[0]}: error:")
    assert __import__("re").search(message, err)


def test_parser_defaults_are_the_documented_small_model():
    args = build_parser().parse_args(["sft"])
    assert (args.d_model, args.n_layer, args.block_size, args.steps) == (64, 2, 64, 1000)
    assert args.out == "runs/sft.npz" and not args.resume and args.backend == "numpy"


# --------------------------------------------------------------------------- progress
def test_progress_plain_text_prints_about_ten_lines_and_the_end():
    stream = io.StringIO()
    bar = Progress(total=25, desc="sft", use_tqdm=False, stream=stream)
    for _ in range(25):
        bar.update(1, loss=0.5)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 13  # every 2 of 25 steps (25 // 10), and the last
    assert lines[-1].startswith("sft: 25/25 (100%)") and lines[-1].endswith("loss=0.5")


def test_progress_write_goes_to_the_log_stream():
    log, bar_stream = io.StringIO(), io.StringIO()
    bar = Progress(total=3, use_tqdm=False, stream=bar_stream, log_stream=log)
    bar.write("step 1 loss 2.0")
    assert log.getvalue() == "step 1 loss 2.0\n" and bar_stream.getvalue() == ""


def test_progress_disabled_prints_nothing(capsys):
    stream = io.StringIO()
    bar = Progress(total=5, enabled=False, stream=stream, log_stream=stream)
    for _ in range(5):
        bar.update(1, loss=1.0)
    bar.write("hello")
    bar.close()
    assert stream.getvalue() == "" and capsys.readouterr() == ("", "")
    assert bar.n == 5  # it still counts


def test_progress_uses_tqdm_when_installed():
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    with Progress(total=4, desc="sft", stream=stream, log_stream=stream) as bar:
        assert bar.uses_tqdm
        for _ in range(4):
            bar.update(1, loss=0.25)
        bar.write("a line")
    text = stream.getvalue()
    assert "a line" in text and "4/4" in text and "loss=0.25" in text


def test_progress_falls_back_without_tqdm(monkeypatch):
    monkeypatch.setattr(progress_module, "has_tqdm", lambda: False)
    stream = io.StringIO()
    bar = Progress(total=2, stream=stream)
    assert not bar.uses_tqdm
    bar.update(2)
    assert stream.getvalue().startswith("2/2 (100%)")


def test_progress_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"total: expected an int >= 0, got -1"):
        Progress(total=-1)
    with pytest.raises(ValueError, match=r"lines: expected a positive int, got 0"):
        Progress(total=3, lines=0)
