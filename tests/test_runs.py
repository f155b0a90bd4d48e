"""The run mechanism every command shares (``alignment_np/runs/``): folders, config, signals, the loop."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import numpy as np
import pytest

from alignment_np.checks import NonFiniteLossError, check_positive_int
from alignment_np.io import atomic_write, remove_stale_temporaries
from alignment_np.runs import (
    RunFolder,
    StopRequest,
    add_config_arguments,
    check_resume,
    explicit_values,
    load_config_file,
    resolve,
    train_stage,
)
from alignment_np.runs.config import field_docs


# --------------------------------------------------------------------------- the folder
def test_a_run_folder_is_created_and_a_file_or_unwritable_path_is_refused(tmp_path):
    run = RunFolder(tmp_path / "a" / "b")
    assert os.path.isdir(run.path) and run.stages() == {} and run.task is None
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file; a run is a folder"):
        RunFolder(a_file)
    with pytest.raises(ValueError, match="cannot write into the run folder"):
        RunFolder(a_file / "inside")  # a folder cannot be made under a file
    with pytest.raises(FileNotFoundError, match="no run folder there"):
        RunFolder(tmp_path / "missing", create=False)


def test_a_stage_that_ran_is_never_overwritten_without_resume_or_force(tmp_path):
    run = RunFolder(tmp_path)
    first = run.begin("sft", {"lr": 1.0}, steps=5)
    with pytest.raises(ValueError, match=r"already holds stage 'sft' \(running, step 0 of 5\).*--resume.*--force"):
        run.begin("sft", {"lr": 1.0})
    with pytest.raises(ValueError, match="give one of them"):
        run.begin("sft", {"lr": 1.0}, resume=True, force=True)
    assert run.begin("sft", {"lr": 1.0}, resume=True)["id"] == first["id"]  # the same stage continues
    assert run.begin("sft", {"lr": 2.0}, force=True)["id"] != first["id"]  # a new one
    with pytest.raises(ValueError, match="holds no stage 'rm' to resume"):
        run.begin("rm", {}, resume=True)


def test_a_stage_needs_its_inputs_complete_and_current(tmp_path):
    run = RunFolder(tmp_path)
    with pytest.raises(ValueError, match="stage 'rm' needs stage 'sft', which has not run"):
        run.begin("rm", {}, inputs=["sft"])
    run.begin("sft", {}, steps=10)
    run.finish("sft", "interrupted", step=4, seconds=1.0)
    with pytest.raises(ValueError, match=r"which is interrupted at step 4 of 10 \(finish it with `sft --resume`\)"):
        run.begin("rm", {}, inputs=["sft"])
    run.begin("sft", {}, resume=True)
    run.finish("sft", "complete", step=10, seconds=2.0)
    assert run.stage("sft")["seconds"] == 3.0  # wall time adds up over sessions
    run.begin("rm", {}, inputs=["sft"])
    run.finish("rm", "complete", step=3, seconds=1.0)
    run.require("rm")
    run.begin("sft", {}, force=True)  # sft made again: rm was made from the old one
    run.finish("sft", "complete", step=10, seconds=1.0)
    assert run.stale_inputs("rm") == ["sft"]
    with pytest.raises(ValueError, match="stage 'rm', which is stale: it was made from a version of"):
        run.require("rm")
    with pytest.raises(ValueError, match=r"--resume: stage 'rm' was made from another version of \['sft'\]"):
        run.begin("rm", {}, inputs=["sft"], resume=True)


def test_one_task_per_run(tmp_path):
    run = RunFolder(tmp_path)
    run.set_task("sentiment")
    run.set_task("sentiment")
    with pytest.raises(ValueError, match="--task: the run at .* is for task 'sentiment', got 'other'"):
        run.set_task("other")


def test_metrics_keep_the_last_row_per_step_and_resume_drops_the_redone_steps(tmp_path):
    run = RunFolder(tmp_path)
    for step in (1, 2, 3):
        run.log("sft", step, {"loss": np.float32(3.0 - step), "tokens": np.int64(7)})
    run.log("rm", 1, {"loss": 0.5})
    with open(run.file("metrics.jsonl"), "a") as f:
        f.write('{"stage": "sft", "step": 4, "lo')  # torn by a crash
    rows = run.metrics("sft")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["loss"] == 2.0 and rows[0]["tokens"] == 7
    run.log("sft", 2, {"loss": 9.0})  # a step redone
    assert [r["loss"] for r in run.metrics("sft")] == [2.0, 9.0, 0.0]
    run.drop_metrics("sft", after_step=1)
    assert [r["step"] for r in run.metrics("sft")] == [1] and len(run.metrics("rm")) == 1
    run.drop_metrics("sft")
    assert run.metrics("sft") == [] and len(run.metrics()) == 1


def test_results_and_report_are_written_whole(tmp_path):
    run = RunFolder(tmp_path)
    run.save_results("sft", {"loss": 1.5})
    run.save_results("rm", {"accuracy": 0.75})
    run.save_results("sft", {"loss": 1.25})
    assert run.results() == {"sft": {"loss": 1.25}, "rm": {"accuracy": 0.75}}
    assert open(run.write_report("# report\n")).read() == "# report\n"


def test_temporaries_of_a_crashed_writer_are_removed_and_a_live_writers_are_kept(tmp_path):
    dead_pid = 2 ** 22 + 12345  # above Linux's pid_max: no such process
    stale = tmp_path / f".sft.npz.{dead_pid}.0123456789ab.tmp"
    old_style = tmp_path / ".sft.npz.0123456789ab.tmp"  # from before pids were in the name
    live = tmp_path / f".sft.npz.{os.getpid()}.0123456789ab.tmp"
    unrelated = tmp_path / ".notes.tmp"
    for p in (stale, old_style, live, unrelated):
        p.write_text("x")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([str(stale), str(old_style)])
    assert live.exists() and unrelated.exists()
    stale.write_text("x")
    assert RunFolder(tmp_path).removed_temporaries == [str(stale)]  # a run cleans up when it starts


def test_atomic_write_names_its_temporary_with_the_writer_pid(tmp_path):
    seen = []

    def write(f):
        seen.extend(os.listdir(tmp_path))  # the temporary file, while it is being written
        f.write(b"x")

    atomic_write(tmp_path / "a.bin", write)
    assert seen[0].startswith(f".a.bin.{os.getpid()}.") and seen[0].endswith(".tmp")
    assert os.listdir(tmp_path) == ["a.bin"]


# --------------------------------------------------------------------------- config
@dataclasses.dataclass
class ToyConfig:
    steps: int = 10
    """Optimiser steps."""

    lr: float = 0.1
    """Learning rate (100% of it)."""

    name: str = "x"
    """A name."""

    clip: float | None = None
    """Clip, or none."""

    average: bool = False
    """Average or not."""

    betas: tuple = (0.9, 0.99)
    """Only in a config file."""

    def __post_init__(self):
        self.steps = check_positive_int("steps", self.steps)


def _parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, ToyConfig)
    return parser.parse_args(argv)


def test_flags_come_from_the_config_dataclass_and_default_to_not_given():
    args = _parse([])
    assert explicit_values(args, ToyConfig) == {}
    args = _parse(["--steps", "3", "--clip", "none", "--average", "--lr", "0.5"])
    assert explicit_values(args, ToyConfig) == {"steps": 3, "clip": None, "average": True, "lr": 0.5} or \
        explicit_values(args, ToyConfig) == {"steps": 3, "average": True, "lr": 0.5}
    assert _parse(["--clip", "0.5", "--no-average"]).average is False
    assert not hasattr(_parse([]), "betas")  # a tuple has no flag
    assert field_docs(ToyConfig)["lr"] == "Learning rate (100% of it)."


def test_resolve_layers_defaults_preset_file_flags_and_names_the_source_of_a_bad_value(tmp_path):
    config = resolve(ToyConfig, {"lr": 0.3}, file_values={"steps": 7, "lr": 0.2}, preset={"steps": 5, "name": "p"})
    assert (config.steps, config.lr, config.name) == (7, 0.3, "p")
    with pytest.raises(ValueError, match=r"--steps: expected a positive int, got 0"):
        resolve(ToyConfig, {"steps": 0})
    with pytest.raises(ValueError, match=r"--config key 'steps': expected a positive int, got -1"):
        resolve(ToyConfig, {}, file_values={"steps": -1})
    with pytest.raises(ValueError, match=r"--config: unknown keys \['stpes'\]; the known keys are"):
        resolve(ToyConfig, {}, file_values={"stpes": 3})


def test_config_files_hold_a_stage_or_a_pipeline(tmp_path):
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"lr": 0.5}))
    assert load_config_file(flat, "sft", sections=("sft", "dpo")) == {"lr": 0.5}
    piped = tmp_path / "pipe.json"
    piped.write_text(json.dumps({"task": "sentiment", "sft": {"lr": 0.5}, "dpo": {"beta": 0.2}}))
    assert load_config_file(piped, "dpo", sections=("sft", "dpo")) == {"beta": 0.2}
    assert load_config_file(piped, "rm", sections=("sft", "dpo", "rm")) == {}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"sft": {}, "sfft": {}}))
    with pytest.raises(ValueError, match=r"unknown sections \['sfft'\]"):
        load_config_file(bad, "sft", sections=("sft", "dpo"))
    for text, message in (("[1, 2]", "expected a JSON object, got list"), ("{", "not valid JSON"),
                          ('{"lr": NaN}', "not valid JSON")):
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_config_file(bad, "sft")
    with pytest.raises(FileNotFoundError, match="--config: no file at"):
        load_config_file(tmp_path / "none.json", "sft")


def test_resume_refuses_a_flag_that_changes_the_run_but_allows_the_listed_ones():
    stored = {"steps": 10, "lr": 0.1, "name": "x"}
    check_resume(stored, {"lr": 0.1, "steps": 20}, may_change=("steps",))
    with pytest.raises(ValueError, match=r"--lr: stage 'sft' was made with --lr 0.1, got 0.2; a resumed run keeps"):
        check_resume(stored, {"lr": 0.2}, run="stage 'sft'")
    with pytest.raises(ValueError, match="--steps: the run was made with --steps 10, got 20"):
        check_resume(stored, {"steps": 20})


# --------------------------------------------------------------------------- signals
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_only_asks_for_a_stop_and_the_handlers_are_restored(signum, code, capsys):
    before = signal.getsignal(signum)
    with StopRequest() as stop:
        assert not stop.requested and stop.exit_code == 0
        os.kill(os.getpid(), signum)  # would end the process (SIGTERM) or raise KeyboardInterrupt
        os.kill(os.getpid(), signum)  # a second one changes nothing
        assert stop.requested and stop.exit_code == code
    assert signal.getsignal(signum) is before
    err = capsys.readouterr().err
    assert "stopping at the end of this step" in err and "already stopping" in err


# --------------------------------------------------------------------------- the loop
class ToyTrainer:
    """The trainer protocol on one parameter: w <- w - lr * grad of (w - 3)^2 (lr may make it blow up)."""

    def __init__(self, lr=0.1, w=0.0, nan_at=None):
        self.w, self.lr, self.step, self.nan_at, self.saves = np.float64(w), lr, 0, nan_at, []

    def train_step(self):
        loss = float((self.w - 3.0) ** 2) if self.step + 1 != self.nan_at else float("nan")
        if not np.isfinite(loss):
            raise NonFiniteLossError(self.step + 1, "loss", loss)
        self.w = self.w - self.lr * 2 * (self.w - 3.0)
        self.step += 1
        return {"loss": loss}

    def train(self, data, steps=None, progress=True, callback=None):
        for _ in range(steps):
            metrics = self.train_step()
            if callback is not None and callback(self.step, metrics):
                break

    def save(self, path):
        self.saves.append(self.step)
        np.savez(path, w=self.w, step=self.step)


def test_train_stage_logs_saves_and_completes(tmp_path):
    run = RunFolder(tmp_path)
    run.begin("toy", {}, steps=6)
    trainer = ToyTrainer()
    with StopRequest() as stop:
        outcome = train_stage(run, "toy", trainer, None, steps=6, stop=stop, save_every=2, progress=False)
    assert (outcome.status, outcome.step, outcome.exit_code) == ("complete", 6, 0)
    assert trainer.saves == [2, 4, 6, 6]
    assert [r["step"] for r in run.metrics("toy")] == [1, 2, 3, 4, 5, 6]
    assert run.stage("toy").complete and run.stage("toy")["step"] == 6
    assert int(np.load(run.checkpoint("toy"))["step"]) == 6


def test_train_stage_stops_on_a_signal_at_the_end_of_a_step_and_the_save_survives_a_second_one(tmp_path):
    run = RunFolder(tmp_path)
    run.begin("toy", {}, steps=10)
    trainer = ToyTrainer()
    original_save = trainer.save

    def save_interrupted(path):  # Ctrl-C again in the middle of the final save
        os.kill(os.getpid(), signal.SIGINT)
        original_save(path)

    def step_then_term():
        metrics = ToyTrainer.train_step(trainer)
        if trainer.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
            trainer.save = save_interrupted
        return metrics

    trainer.train_step = step_then_term
    with StopRequest() as stop:
        outcome = train_stage(run, "toy", trainer, None, steps=10, stop=stop, progress=False)
    assert (outcome.status, outcome.step, outcome.exit_code) == ("interrupted", 3, 143)
    assert "SIGTERM: stopped at step 3 of 10" in outcome.message and "--resume" in outcome.message
    assert int(np.load(run.checkpoint("toy"))["step"]) == 3  # the save completed
    assert run.stage("toy")["status"] == "interrupted"


def test_train_stage_stops_on_nan_naming_the_step_and_keeps_the_last_good_state(tmp_path):
    run = RunFolder(tmp_path)
    run.begin("toy", {}, steps=10)
    trainer = ToyTrainer(nan_at=5)
    with StopRequest() as stop:
        outcome = train_stage(run, "toy", trainer, None, steps=10, stop=stop, progress=False)
    assert (outcome.status, outcome.step, outcome.exit_code) == ("failed", 4, 1)
    assert "step 5: loss is nan" in outcome.message and "last good state (step 4)" in outcome.message
    saved = np.load(run.checkpoint("toy"))
    assert int(saved["step"]) == 4 and np.isfinite(saved["w"])
    assert run.stage("toy")["status"] == "failed" and [r["step"] for r in run.metrics("toy")] == [1, 2, 3, 4]


def test_train_stage_resumes_where_the_checkpoint_is_and_redoes_the_unsaved_steps(tmp_path):
    run = RunFolder(tmp_path)
    run.begin("toy", {}, steps=6)
    for step in range(1, 6):  # logged before a crash, but only step 2 was saved
        run.log("toy", step, {"loss": -1.0})
    trainer = ToyTrainer()
    trainer.step, trainer.w = 2, np.float64(2.0)
    with StopRequest() as stop:
        train_stage(run, "toy", trainer, None, steps=6, stop=stop, progress=False)
    losses = {r["step"]: r["loss"] for r in run.metrics("toy")}
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and losses[3] != -1.0 and losses[2] == -1.0
