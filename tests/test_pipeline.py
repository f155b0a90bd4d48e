"""The preference-learning pipeline from the command line: sft -> collect -> rm -> dpo -> eval.

One tiny pipeline (``--preset tiny``: seconds) is run once per session and
copied for each test that changes it. The checks are about the pipeline as a
tool: every stage writes its part of the run folder, the report shows every
measured number with its standard error and the commands that made it, a stop
anywhere resumes exactly, inputs made again make later stages stale, and bad
inputs are refused with clear errors before any training.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal

import numpy as np
import pytest

from alignment_np.cli import main
from alignment_np.runs import RunFolder
from alignment_np.trainers.sft import load_model

pytest.importorskip("vaderSentiment")  # the sentiment task's rater (the `tasks` extra; in `dev` too)

TINY = ["--preset", "tiny", "--quiet"]


def run_main(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def pipeline_run(tiny_pipeline_run):
    """The session's tiny pipeline (conftest.py); tests copy it before changing anything."""
    return tiny_pipeline_run


@pytest.fixture
def run_copy(pipeline_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(pipeline_run, copy)
    return copy


def test_the_pipeline_writes_every_stage_into_one_run_folder(pipeline_run):
    folder = RunFolder(pipeline_run)
    assert list(folder.stages()) == ["sft", "collect", "rm", "dpo", "eval"]
    assert all(r.complete for r in folder.stages().values())
    for name in ("sft.npz", "rm.npz", "dpo.npz", "preferences.jsonl", "preferences_heldout.jsonl",
                 "metrics.jsonl", "config.json", "results.json", "report.md", "samples_sft.jsonl",
                 "samples_dpo.jsonl"):
        assert (pipeline_run / name).exists(), name
    stages_logged = {row["stage"] for row in folder.metrics()}
    assert stages_logged == {"sft", "rm", "dpo"}
    assert {"rewards/accuracies", "rewards/margins", "loss"} <= set(folder.metrics("dpo")[0])
    assert {"accuracy", "loss"} <= set(folder.metrics("rm")[0])
    assert folder.stage("rm")["inputs"] == {"sft": folder.stage("sft")["id"], "collect": folder.stage("collect")["id"]}


def test_preferences_are_jsonl_with_the_scores_as_extra_fields(pipeline_run):
    rows = [json.loads(line) for line in open(pipeline_run / "preferences.jsonl")]
    assert rows and all({"prompt", "chosen", "rejected", "score_chosen", "score_rejected"} <= set(r) for r in rows)
    assert all(r["score_chosen"] > r["score_rejected"] for r in rows)  # no flips asked for


def test_the_evaluation_has_standard_errors_and_pairs_the_gain_with_the_sft_samples(pipeline_run):
    results = RunFolder(pipeline_run).results()["eval"]
    assert list(results["policies"]) == ["sft", "dpo"]
    sft, dpo = results["policies"]["sft"], results["policies"]["dpo"]
    for p in (sft, dpo):
        for key in ("score", "grammatical", "kl", "win_rate", "eos_fraction"):
            assert np.isfinite(p[key]) and p[f"{key}_se"] >= 0
    assert sft["kl"] == 0.0 and sft["gain"] is None
    assert dpo["gain"] == pytest.approx(dpo["score"] - dpo["reference_score"])
    assert dpo["reference_score"] == pytest.approx(sft["score"])  # the same SFT samples for every policy
    samples = [json.loads(line) for line in open(pipeline_run / "samples_dpo.jsonl")]
    assert len(samples) == results["samples"] == dpo["n"]
    assert {"prompt", "completion", "score", "grammatical", "logp", "ref_logp"} <= set(samples[0])
    pairs = results["rm_vs_rater"]
    assert pairs["n"] == len(pairs["rm"]) == len(pairs["rater"]) <= len(samples)
    if len(set(pairs["rater"])) > 1 and len(set(pairs["rm"])) > 1:
        assert -1 <= pairs["spearman"] <= 1
    else:  # the tiny model's lines may all score 0: a constant has no order, and nan says so
        assert math.isnan(pairs["spearman"])


def test_the_report_shows_the_numbers_the_plots_and_the_commands(pipeline_run):
    report = (pipeline_run / "report.md").read_text()
    results = RunFolder(pipeline_run).results()
    for heading in ("## Stages", "## Supervised fine-tuning", "## Preferences collected", "## Reward model",
                    "## `dpo`", "## Evaluation on held-out prompts", "## Commands"):
        assert heading in report
    dpo = results["eval"]["policies"]["dpo"]
    assert f"{dpo['score']:.3f} ± {dpo['score_se']:.3f}" in report
    assert f"{results['rm']['eval_accuracy']:.3f} ± {results['rm']['eval_accuracy_se']:.3f}" in report
    assert f"python -m alignment_np dpo --run {pipeline_run} --preset tiny --quiet" in report
    pytest.importorskip("matplotlib")
    for png in ("curves_sft.png", "curves_rm.png", "curves_dpo.png", "eval.png", "rm_vs_rater.png"):
        assert (pipeline_run / png).stat().st_size > 1000 and f"]({png})" in report


def test_a_pipeline_never_overwrites_a_run_and_resume_skips_what_is_done(run_copy, capsys):
    before = (run_copy / "dpo.npz").read_bytes()
    code, _, err = run_main(["pipeline", "--out", run_copy, *TINY], capsys)
    assert code == 1 and "already holds a run" in err and "--resume" in err
    code, out, _ = run_main(["pipeline", "--out", run_copy, "--resume", "--preset", "tiny"], capsys)
    assert code == 0 and out.count("complete, skipped") == 5
    assert (run_copy / "dpo.npz").read_bytes() == before


def test_a_stage_stopped_by_ctrl_c_resumes_to_the_same_weights(run_copy, tmp_path, capsys, monkeypatch):
    from alignment_np.trainers.reward_lm import RewardLMTrainer

    straight = tmp_path / "straight"
    shutil.copytree(run_copy, straight)
    assert main(["rm", "--run", str(straight), "--force", *TINY]) == 0
    original = RewardLMTrainer.train_step

    def stop_after_4(self, batch):
        metrics = original(self, batch)
        if self.step == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return metrics

    monkeypatch.setattr(RewardLMTrainer, "train_step", stop_after_4)
    code, out, _ = run_main(["rm", "--run", run_copy, "--force", *TINY], capsys)
    assert code == 130 and "SIGINT: stopped at step 4 of 10" in out
    code, _, err = run_main(["dpo", "--run", run_copy, "--force", *TINY], capsys)  # rm is not an input of dpo
    assert code == 0
    monkeypatch.setattr(RewardLMTrainer, "train_step", original)
    code, out, _ = run_main(["pipeline", "--out", run_copy, "--resume", *TINY], capsys)
    assert code == 0
    a, _ = load_model(straight / "rm.npz")
    b, _ = load_model(run_copy / "rm.npz")
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)


def test_a_stage_made_again_makes_the_later_ones_stale(run_copy, capsys):
    assert main(["collect", "--run", str(run_copy), "--force", *TINY, "--seed", "5"]) == 0
    code, _, err = run_main(["eval", "--run", run_copy, *TINY], capsys)
    assert code == 1 and "stage 'dpo', which is stale" in err  # a stale policy is not measured
    code, _, err = run_main(["rm", "--run", run_copy, "--resume", *TINY], capsys)
    assert code == 1 and "was made from another version of ['collect']" in err
    assert main(["dpo", "--run", str(run_copy), "--force", *TINY]) == 0
    assert main(["eval", "--run", str(run_copy), *TINY, "--policies", "dpo"]) == 0


def test_dpo_variants_get_their_own_stage_and_bad_names_are_refused(run_copy, capsys):
    code, out, _ = run_main(["dpo", "--run", run_copy, "--name", "simpo", "--loss-type", "simpo", "--beta", "2",
                             "--preset", "tiny"], capsys)
    assert code == 0 and "reference-free" in out
    assert RunFolder(run_copy).stage("simpo")["kind"] == "policy" and (run_copy / "simpo.npz").exists()
    for name, message in (("rm", "another stage's name"), ("Bad Name", "lower-case letters")):
        code, _, err = run_main(["dpo", "--run", run_copy, "--name", name, *TINY], capsys)
        assert code == 1 and message in err
    code, _, err = run_main(["dpo", "--run", run_copy, "--loss-type", "kto", "--name", "x", *TINY], capsys)
    assert code == 1 and "--loss-type: expected one of" in err


@pytest.mark.parametrize("damage, message", [
    (lambda run: os.remove(run / "preferences.jsonl"), "preferences.jsonl"),
    (lambda run: (run / "preferences.jsonl").write_text('{"prompt": "a", "chosen": 1}\n'),
     r"preferences.jsonl.*line 1"),
    (lambda run: (run / "sft.npz").write_bytes(b"not a checkpoint"), "corrupt or unreadable checkpoint"),
])
def test_missing_or_malformed_inputs_are_clear_errors_before_training(damage, message, run_copy, capsys):
    damage(run_copy)
    code, _, err = run_main(["rm", "--run", run_copy, "--force", *TINY], capsys)
    assert code == 1 and err.startswith("alignment-np rm: error:")
    assert re.search(message, err)
    assert RunFolder(run_copy).stage("rm")["status"] == "complete"  # nothing was started


def test_a_checkpoint_of_another_model_size_is_refused_on_resume(run_copy, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["sft", "--run", str(other), *TINY, "--d-model", "16"]) == 0
    shutil.copy(other / "sft.npz", run_copy / "rm.npz")  # not a reward-model checkpoint of this run
    code, _, err = run_main(["rm", "--run", run_copy, "--resume", *TINY], capsys)
    assert code == 1 and "not a reward-model checkpoint" in err


def test_eval_refuses_an_unknown_policy_and_sample_reads_any_stage(pipeline_run, capsys):
    code, _, err = run_main(["eval", "--run", pipeline_run, "--policies", "ppo", *TINY], capsys)
    assert code == 1 and "'ppo' is not a complete policy stage" in err
    code, out, _ = run_main(["sample", "--run", pipeline_run, "--stage", "dpo", "--format", "jsonl",
                             "--num-samples", "2", "--max-new-tokens", "10"], capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 6 and all(r["logp"] <= 0 for r in rows)
