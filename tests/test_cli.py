"""The command line (``alignment_np/cli.py``, ``commands/``): sft and sample on a run folder.

Every stage command shares the run mechanism tested in test_runs.py; these
tests check that ``sft`` (the first command to use it) keeps a user's run
safe end to end: refusal to overwrite, flags checked against the checkpoint
on --resume, Ctrl-C and SIGTERM saving, the NaN stop, bad flags named.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from alignment_np.cli import main
from alignment_np.runs import RunFolder
from alignment_np.trainers.sft import SFTTrainer, load_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--preset", "tiny", "--quiet"]


def run_main(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def same_weights(path_a, path_b) -> bool:
    a, _ = load_model(path_a)
    b, _ = load_model(path_b)
    return all(np.array_equal(p.data, q.data) for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()))


# --------------------------------------------------------------------------- help
def test_python_dash_m_help_lists_the_commands():
    done = subprocess.run([sys.executable, "-m", "alignment_np", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0
    assert "usage: alignment-np" in done.stdout and "sft" in done.stdout and "sample" in done.stdout


def test_sft_help_shows_the_run_flags_and_each_config_field_with_its_doc(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--run", "--resume", "--force", "--config", "--preset", "--save-every", "--steps", "--d-model"):
        assert flag in out
    assert "Optimiser steps in all" in out  # the field's docstring is its help


def test_a_command_is_required_and_bad_choices_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["sft", "--run", "x", "--backend", "jax"])
    assert "invalid choice: 'jax'" in capsys.readouterr().err


# --------------------------------------------------------------------------- sft
def test_sft_trains_into_a_run_folder(tmp_path, capsys):
    run = tmp_path / "runs" / "one"  # the folder does not exist yet
    code, out, _ = run_main(["sft", "--run", run, "--preset", "tiny", "--log-every", "10", "--samples", "2"], capsys)
    assert code == 0
    assert "unigram entropy baseline" in out and "step    10  loss" in out and "held-out lines" in out
    assert out.count("  sample: ") == 2
    folder = RunFolder(run)
    record = folder.stage("sft")
    assert record.complete and record["step"] == 100 and record["config"]["d_model"] == 32
    assert record["commands"] == [f"python -m alignment_np sft --run {run} --preset tiny --log-every 10 --samples 2"]
    assert [r["step"] for r in folder.metrics("sft")] == list(range(1, 101))
    assert {"loss", "grad_norm", "lr"} <= set(folder.metrics("sft")[0])
    assert folder.results()["sft"]["eval_loss"] > 0
    model, tokenizer = load_model(folder.checkpoint("sft"))
    assert model.config.d_model == 32 and tokenizer.vocab_size == model.config.vocab_size


def test_sft_never_overwrites_a_run_without_resume_or_force(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["sft", "--run", str(run), *TINY]) == 0
    before = open(run / "sft.npz", "rb").read()
    code, _, err = run_main(["sft", "--run", run, *TINY, "--lr", "0.01"], capsys)
    assert code == 1 and "already holds stage 'sft' (complete, step 100 of 100)" in err
    assert open(run / "sft.npz", "rb").read() == before
    code, _, err = run_main(["sft", "--run", run, *TINY, "--force", "--seed", "1"], capsys)
    assert code == 0 and open(run / "sft.npz", "rb").read() != before


def test_sft_resume_keeps_the_stored_config_and_only_trains_longer_when_asked(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["sft", "--run", str(run), *TINY, "--steps", "10"]) == 0
    # without --steps: the run's own 10 steps, not the default 1000 (the flaw this fixes)
    code, out, _ = run_main(["sft", "--run", run, "--resume"], capsys)
    assert code == 0 and "is complete (step 10 of 10); nothing to do" in out
    assert SFTTrainer.resume(run / "sft.npz").step == 10
    code, _, err = run_main(["sft", "--run", run, "--resume", "--d-model", "64"], capsys)
    assert code == 1 and "--d-model: stage 'sft' of" in err and "was made with --d-model 32, got 64" in err
    code, out, _ = run_main(["sft", "--run", run, "--resume", "--steps", "14", "--log-every", "2"], capsys)
    assert code == 0 and "resumed" in out and "at step 10 of 14" in out and "step    12  loss" in out
    assert SFTTrainer.resume(run / "sft.npz").step == 14
    assert RunFolder(run).stage("sft")["config"]["steps"] == 14
    code, _, err = run_main(["sft", "--run", run, "--resume", "--steps", "12"], capsys)
    assert code == 1 and "has already taken 14 steps; got --steps 12" in err


def test_sft_interrupted_by_ctrl_c_saves_and_resumes_exactly(tmp_path, capsys, monkeypatch):
    straight = tmp_path / "straight"
    assert main(["sft", "--run", str(straight), *TINY, "--steps", "8"]) == 0
    original = SFTTrainer.train_step

    def interrupt_after_3(self, batch):
        metrics = original(self, batch)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the handler only asks for a stop
        return metrics

    monkeypatch.setattr(SFTTrainer, "train_step", interrupt_after_3)
    run = tmp_path / "run"
    code, out, _ = run_main(["sft", "--run", run, *TINY, "--steps", "8"], capsys)
    assert code == 130 and "SIGINT: stopped at step 3 of 8" in out
    assert RunFolder(run).stage("sft")["status"] == "interrupted"
    monkeypatch.setattr(SFTTrainer, "train_step", original)
    assert main(["sft", "--run", str(run), "--resume", "--quiet"]) == 0
    assert same_weights(straight / "sft.npz", run / "sft.npz")


def test_sft_stops_on_sigterm_from_another_process_and_saves(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "alignment_np", "sft", "--run", str(run), *TINY, "--steps", "100000"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until it is training
            if (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").stat().st_size > 200:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "SIGTERM: stopped at step" in out
    record = RunFolder(run).stage("sft")
    assert record["status"] == "interrupted" and record["step"] > 0
    assert SFTTrainer.resume(run / "sft.npz").step == record["step"]


def test_sft_stops_on_a_nan_loss_naming_the_step_and_keeps_finite_weights(tmp_path, capsys):
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the overflow that makes the NaN
        code, out, _ = run_main(["sft", "--run", run, *TINY, "--lr", "1e30", "--steps", "10"], capsys)
    assert code == 1
    assert "step 2: loss is nan (not finite); the update was not applied" in out
    assert "saved the last good state (step 1)" in out
    model, _ = load_model(run / "sft.npz")
    assert all(np.isfinite(p.data).all() for p in model.parameters())
    assert RunFolder(run).stage("sft")["status"] == "failed"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], r"--steps: expected a positive int, got 0"),
        (["--save-every", "-1"], r"--save-every: expected an int >= 0, got -1"),
        (["--log-every", "-2"], r"--log-every: expected an int >= 0, got -2"),
        (["--lr", "nan"], r"--lr: expected a finite number > 0, got nan"),
        (["--n-head", "3"], r"--n-head: must divide d_model=32, got 3"),
        (["--warmup-steps", "50", "--steps", "10"], r"--warmup-steps: expected <= steps=10, got 50"),
        (["--resume"], r"--resume: .* holds no stage 'sft' to resume"),
        (["--resume", "--force"], r"holds no stage 'sft' to resume|give one of them"),
    ],
)
def test_bad_sft_flags_are_named_before_any_work(argv, message, tmp_path, capsys):
    code, _, err = run_main(["sft", "--run", tmp_path / "r", *TINY, *argv], capsys)
    assert code == 1 and err.startswith("alignment-np sft: error:")
    assert re.search(message, err)
    assert not (tmp_path / "r" / "sft.npz").exists()


def test_an_unusable_run_folder_is_refused_before_training(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    code, _, err = run_main(["sft", "--run", a_file, *TINY], capsys)
    assert code == 1 and "is a file; a run is a folder" in err
    code, _, err = run_main(["sft", "--run", a_file / "sub", *TINY], capsys)
    assert code == 1 and "cannot write into the run folder" in err


def test_a_config_file_sets_fields_and_unknown_keys_are_refused(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"sft": {"steps": 5, "d_model": 8, "n_head": 2}}))
    assert main(["sft", "--run", str(tmp_path / "a"), *TINY, "--config", str(config)]) == 0
    stored = RunFolder(tmp_path / "a").stage("sft")["config"]
    assert (stored["steps"], stored["d_model"], stored["n_layer"]) == (5, 8, 1)  # file over preset
    config.write_text(json.dumps({"steps": 5, "d_modle": 8}))
    code, _, err = run_main(["sft", "--run", tmp_path / "b", *TINY, "--config", config], capsys)
    assert code == 1 and "unknown keys ['d_modle']" in err


# --------------------------------------------------------------------------- sample
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("sample") / "run"
    assert main(["sft", "--run", str(run), *TINY]) == 0
    return run


def test_sample_continues_prompts_and_is_seeded(trained_run, capsys):
    argv = ["sample", "--run", trained_run, "--prompt", "the film was", "--prompt", "i",
            "--num-samples", "2", "--max-new-tokens", "5", "--seed", "3"]
    code, out, _ = run_main(argv, capsys)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 4
    assert lines[0].startswith("the film was") and lines[2].startswith("i")
    assert all(len(line) <= len("the film was") + 5 for line in lines)
    assert run_main(argv, capsys)[1] == out  # same seed, same samples


def test_sample_jsonl_gives_prompt_completion_and_logp(trained_run, capsys):
    code, out, _ = run_main(["sample", "--ckpt", trained_run / "sft.npz", "--prompt", "the soup was",
                             "--num-samples", "3", "--format", "jsonl", "--max-new-tokens", "8"], capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 3
    for row in rows:
        assert set(row) == {"prompt", "completion", "logp"}
        assert row["prompt"] == "the soup was" and row["logp"] <= 0 and len(row["completion"]) <= 8


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ckpt", "{tmp}/none.npz"], r"no checkpoint file at"),
        (["--run", "{run}", "--stage", "dpo"], r"needs stage 'dpo', which has not run"),
        (["--run", "{run}", "--prompt", "THE"], r"character 'T' at position 0"),
        (["--run", "{run}", "--temperature", "-1"], r"--temperature: expected a finite number >= 0"),
        (["--run", "{run}", "--num-samples", "0"], r"--num-samples: expected a positive int"),
    ],
)
def test_sample_errors_are_one_line_with_exit_status_1(argv, message, trained_run, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(trained_run)) for a in argv]
    code, _, err = run_main(["sample", *argv], capsys)
    assert code == 1 and err.startswith("alignment-np sample: error:")
    assert re.search(message, err)


@pytest.mark.parametrize("given, expected", [(None, 1), ("2", 2)])
def test_the_command_line_uses_one_blas_thread_unless_told_otherwise(given, expected):
    pytest.importorskip("threadpoolctl")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                            "MKL_NUM_THREADS")}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    code = ("import alignment_np.__main__, numpy, threadpoolctl; "
            "print(max(i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == min(expected, os.cpu_count() or 1)


def test_a_gpu_asked_for_in_the_environment_without_one_is_a_one_line_error(tmp_path):
    from alignment_np.backend import has_cupy_gpu

    if has_cupy_gpu():
        pytest.skip("this machine has a GPU")
    env = {**os.environ, "ALIGNMENT_NP_BACKEND": "cupy"}
    done = subprocess.run([sys.executable, "-m", "alignment_np", "sft", "--run", str(tmp_path / "r"), *TINY],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("alignment-np sft: error: backend 'cupy'")
    assert "(requested by ALIGNMENT_NP_BACKEND=cupy)" in lines[0] and "Traceback" not in done.stderr
