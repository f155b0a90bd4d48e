"""The experiments (``experiment NAME --run RUN``) end to end on the tiny pipeline, and their parts.

The session fixture ``tiny_experiment_run`` (tests/conftest.py) runs
``experiment all --preset tiny`` on a copy of the session's tiny pipeline run
(two points per sweep, three iterations); the tests read what it wrote, resume
a copy of it, stop it, and feed it bad input.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.cli import main
from alignment_np.commands.checkpoints import load_policy
from alignment_np.experiments import EXPERIMENTS
from alignment_np.experiments.measure import (best_of_n_expectation, best_of_n_expectation_loop,
                                              best_of_n_weights)
from alignment_np.runs import RunFolder

TINY = ["--preset", "tiny", "--quiet"]


def run_main(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read(run, name):
    with open(os.path.join(run, "experiments", f"{name}.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def exp_run(tiny_experiment_run):
    """The tiny pipeline, then every experiment at its tiny preset (made once per session, tests/conftest.py)."""
    return tiny_experiment_run


@pytest.fixture
def run_copy(exp_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(exp_run, run)
    return run


# ---------------------------------------------------------------------------- the files


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_each_experiment_writes_its_table_json_plot_and_report_section(exp_run, name):
    folder = RunFolder(exp_run)
    record = folder.stage(f"experiment_{name}")
    assert record.complete and record["kind"] == "experiment" and record["config"]["preset"] == "tiny"
    assert record["inputs"] == {s: folder.stage(s)["id"] for s in ("sft", "collect", "rm")}
    page = (exp_run / "experiments" / f"{name}.md").read_text()
    assert page.startswith("# ") and "| --- |" in page and " ± " in page
    document = read(exp_run, name)
    assert document["experiment"] == name and document["config"]["preset"] == "tiny"
    assert document["evaluation"]["samples"] == 32 and document["evaluation"]["seed"] == 1234
    pytest.importorskip("matplotlib")
    assert (exp_run / "experiments" / f"{name}.png").stat().st_size > 1000
    report = (exp_run / "report.md").read_text()
    assert f"(`experiment_{name}`)" in report and f"experiments/{name}.json" in report
    assert f"![experiment_{name}](experiments/{name}.png)" in report


def _has_se(row: dict, keys) -> None:
    for key in keys:
        assert isinstance(row[key], float) and math.isfinite(row[key]), (key, row)
        se = row[f"{key}_se"]
        assert isinstance(se, float) and se >= 0, (key, row)


MEASURED = ("score", "kl", "grammatical", "proxy", "win_rate", "eos_fraction")


def test_every_number_of_the_frontier_has_its_standard_error(exp_run):
    document = read(exp_run, "frontier")
    points = document["points"]
    methods = [p["method"] for p in points]
    assert methods == ["SFT", "PPO", "PPO", "GRPO", "GRPO", "RLOO", "RLOO", "DPO", "DPO"]
    for p in points:
        assert p["status"] == "complete" and p["n"] == 32
        _has_se(p, MEASURED)
        if p["method"] != "SFT":
            _has_se(p, ("gain",))
    sft = points[0]
    assert sft["kl"] == 0.0 and sft["gain"] is None
    for p in points[1:]:  # every gain is paired with the same SFT samples
        assert p["reference_score"] == pytest.approx(sft["score"])
    assert [(p["param"], p["value"]) for p in points[1:3]] == [("kl_coef", 0.05), ("kl_coef", 0.2)]
    assert [p["value"] for p in points[3:5]] == [0.04, 0.2] and points[3]["param"] == "beta"
    bon = document["best_of_n"]
    assert [b["n"] for b in bon] == [1, 2, 4]
    for b in bon:
        _has_se(b, ("score", "proxy", "grammatical", "gain", "kl"))
        assert b["kl"] == pytest.approx(math.log(b["n"]) - (b["n"] - 1) / b["n"]) and b["samples"] == 16
    assert bon[0]["gain"] == 0.0  # best of 1 is the SFT model: computed, and exactly 0
    assert bon[2]["proxy"] >= bon[1]["proxy"] >= bon[0]["proxy"]  # the picker's own score can only rise with N
    assert set(document["stages"]) >= {"base/ppo_kl0p05_s3", "base/dpo_beta0p5"}
    assert document["stages"]["base/ppo_kl0p05_s3"]["steps"] == 3


def test_the_overoptimization_curves_start_at_the_sft_model_and_follow_the_checkpoints(exp_run):
    document = read(exp_run, "overoptimization")
    frontier = read(exp_run, "frontier")
    off, on = document["ppo"]
    assert (off["kl_coef"], on["kl_coef"]) == (0.0, 0.05) and off["stage"] == "ppo_kl0_s3"
    for r in (off, on):
        assert [c["step"] for c in r["curve"]] == [0, 1, 2, 3]
        assert r["curve"][0]["stage"] == "sft" and r["curve"][0]["kl"] == 0.0
        for c in r["curve"]:
            _has_se(c, ("score", "proxy", "grammatical", "kl", "sqrt_kl"))
            assert c["sqrt_kl"] == pytest.approx(math.sqrt(max(c["kl"], 0.0)))
        assert r["fall"] is not None and {"fall", "fall_se", "falls"} <= set(r["fall"])
        assert 0 < len(r["examples"]) <= 3 and {"score", "proxy", "completion"} <= set(r["examples"][0])
    # The KL-on run at its last checkpoint IS the frontier's PPO point: one training, one evaluation.
    ppo = next(p for p in frontier["points"] if p["stage"] == "ppo_kl0p05_s3")
    assert on["curve"][-1]["score"] == ppo["score"] and on["curve"][-1]["kl"] == ppo["kl"]
    assert len(document["best_of_n_examples"]) == 3
    page = (exp_run / "experiments" / "overoptimization.md").read_text()
    assert "## What the proxy rewards" in page
    for r in (off, on):  # the page states each run's fall as the JSON has it
        if r["fall"].get("note"):  # the tiny run's gold score may peak at its last checkpoint
            assert f"{r['fall']['note']} (iteration {r['fall']['last_step']}): no fall." in page
        else:
            assert f"is below its best (iteration {r['fall']['peak_step']}) by " in page
            assert "paired by prompt" in page


def test_noise_flips_the_runs_pairs_and_compares_four_methods_at_each_rate(exp_run):
    document = read(exp_run, "noise")
    rates = document["flip_rates"]
    assert [r["flip_rate"] for r in rates] == [0.0, 0.4]
    assert rates[0]["run"] == "base" and rates[1]["run"] == "flip-0.4"
    pairs = rates[1]["pairs"]
    assert rates[1]["flipped"] == math.floor(0.4 * pairs + 0.5)
    for r in rates:
        assert 0 <= r["reward_model"]["accuracy"] <= 1 and r["reward_model"]["accuracy_se"] >= 0
    by = {(p["method"], p["flip_rate"]): p for p in document["points"]}
    assert set(by) == {(m, r) for m in ("DPO", "cDPO", "rDPO", "RM+PPO") for r in (0.0, 0.4)}
    for p in document["points"]:
        _has_se(p, MEASURED)
    # At flip rate 0 the three DPO losses are one: one training (the run's own dpo) serves them.
    assert by[("DPO", 0.0)]["stage"] == by[("cDPO", 0.0)]["stage"] == by[("rDPO", 0.0)]["stage"] == "dpo"
    assert by[("RM+PPO", 0.0)]["stage"] == "ppo_kl0p05_s3"
    stages = document["stages"]
    assert stages["flip-0.4/cdpo_beta0p1_ls0p4"]["label_smoothing"] == 0.4
    assert stages["flip-0.4/cdpo_beta0p1_ls0p4"]["loss_type"] == "sigmoid"
    assert stages["flip-0.4/rdpo_beta0p1_ls0p4"]["loss_type"] == "robust"
    # The noisy reward model has the run's own rm config, trained on the flipped pairs.
    parent = RunFolder(exp_run)
    assert rates[1]["rm_config"] == parent.stage("rm")["config"]
    flipped = RunFolder(exp_run / "experiments" / "flip-0.4")
    assert flipped.stage("rm")["inputs"]["collect"] == flipped.stage("collect")["id"]
    assert flipped.stage("collect")["derived_from"]["id"] == parent.stage("collect")["id"]


def test_the_flipped_pairs_are_those_collect_would_write_with_that_flip_rate(exp_run, run_copy):
    """Reuse the pairs, do not resample: flipping the run's pairs with its seed = collecting with --flip-rate."""
    sub = exp_run / "experiments" / "flip-0.4"
    assert main(["collect", "--run", str(run_copy), "--force", "--flip-rate", "0.4", *TINY]) == 0
    assert (sub / "preferences.jsonl").read_text() == (run_copy / "preferences.jsonl").read_text()
    assert (sub / "preferences_heldout.jsonl").read_text() == (exp_run / "preferences_heldout.jsonl").read_text()


def test_kl_control_reads_both_trajectories_from_the_metrics(exp_run):
    document = read(exp_run, "kl_control")
    fixed, adaptive = document["points"]
    assert (fixed["method"], adaptive["method"]) == ("fixed", "adaptive")
    assert fixed["stage"] == "ppo_kl0p05_s3"  # the frontier's point
    for p in (fixed, adaptive):
        t = p["trajectory"]
        assert t["steps"] == [1, 2, 3] and len(t["kl"]) == len(t["kl_coef"]) == 3
        assert t["tail_kl"] == pytest.approx(np.mean(t["kl"])) and t["tail_kl_se"] >= 0
        _has_se(p, MEASURED)
    assert fixed["trajectory"]["kl_coef"] == [0.05] * 3
    assert adaptive["trajectory"]["kl_coef"] != fixed["trajectory"]["kl_coef"]  # the controller moved it
    metrics = RunFolder(exp_run / "experiments" / "base").metrics(adaptive["stage"])
    assert [m["objective/kl_coef"] for m in metrics] == adaptive["trajectory"]["kl_coef"]


def test_one_training_serves_every_experiment_that_needs_it(exp_run):
    base = RunFolder(exp_run / "experiments" / "base")
    stages = base.stages()
    assert stages["sft"]["id"] == RunFolder(exp_run).stage("sft")["id"]  # linked, with its record
    assert os.path.samefile(base.checkpoint("sft"), exp_run / "sft.npz") or \
        (exp_run / "sft.npz").read_bytes() == open(base.checkpoint("sft"), "rb").read()
    ppo = [s for s in stages if s.startswith("ppo_kl0p05")]
    assert ppo == ["ppo_kl0p05_s3"] and len(stages["ppo_kl0p05_s3"]["commands"]) == 3  # three segments
    assert sorted(stages["ppo_kl0p05_s3"]["snapshots"]) == ["1", "2", "3"]
    assert "dpo_beta0p1" not in stages  # the run's own dpo is the DPO point at its beta
    evaluations = json.loads((exp_run / "experiments" / "base" / "evaluations.json").read_text())
    assert "ppo_kl0p05_s3@3" in evaluations and "sft@100" in evaluations  # the stage at its step


# ---------------------------------------------------------------------------- resume, refuse, stop


def test_a_second_run_is_refused_and_resume_skips_what_is_done(run_copy, capsys, monkeypatch):
    code, _, err = run_main(["experiment", "frontier", "--run", run_copy, *TINY], capsys)
    assert code == 1 and "already holds experiment 'frontier'" in err and "--resume" in err
    code, _, err = run_main(["experiment", "all", "--run", run_copy, *TINY], capsys)
    assert code == 1 and "already holds experiment" in err
    before = {name: read(run_copy, name) for name in EXPERIMENTS}

    def no_training(self, argv):
        raise AssertionError(f"resume trained again: {argv}")

    def no_evaluation(*args, **kwargs):
        raise AssertionError("resume evaluated again")

    from alignment_np.experiments import subruns
    from alignment_np.tasks import evaluate

    monkeypatch.setattr(subruns.SubRuns, "run_command", no_training)
    monkeypatch.setattr(evaluate, "evaluate_policy", no_evaluation)
    monkeypatch.setattr("alignment_np.rl.best_of_n.best_of_n", no_evaluation)
    code, _, err = run_main(["experiment", "all", "--run", run_copy, "--resume", "--quiet"], capsys)
    assert code == 0, err
    for name in EXPERIMENTS:
        after = read(run_copy, name)
        for document in (before[name], after):
            for key in ("seconds", "cpu_seconds_this_session", "command"):
                document.pop(key)
        assert after == before[name], name
    code, _, err = run_main(["experiment", "frontier", "--run", run_copy, "--resume", "--preset", "default"], capsys)
    assert code == 1 and "--preset: experiment 'frontier'" in err


def test_a_stage_stopped_by_sigterm_stops_the_experiment_and_resume_finishes_it(exp_run, run_copy, capsys,
                                                                                monkeypatch):
    from alignment_np.trainers.ppo import PPOTrainer

    original = PPOTrainer.train_step

    def stop_after_2(self, prompts):
        metrics = original(self, prompts)
        if self.step == 2 and self.config.adaptive_kl:
            os.kill(os.getpid(), signal.SIGTERM)
        return metrics

    monkeypatch.setattr(PPOTrainer, "train_step", stop_after_2)
    config = run_copy / "straight.json"  # one segment, so that the signal lands inside it
    config.write_text(json.dumps({"kl_control": {"checkpoints": 1}}))
    code, out, _ = run_main(["experiment", "kl_control", "--run", run_copy, "--force", "--config", config, *TINY],
                            capsys)
    assert code == 143 and "continue with `experiment kl_control" in out
    folder = RunFolder(run_copy)
    assert folder.stage("experiment_kl_control")["status"] == "interrupted"
    stage = [s for s in RunFolder(run_copy / "experiments" / "base").stages() if s.startswith("ppo_adaptive")][0]
    assert RunFolder(run_copy / "experiments" / "base").stage(stage)["status"] == "interrupted"
    monkeypatch.setattr(PPOTrainer, "train_step", original)
    assert main(["experiment", "kl_control", "--run", str(run_copy), "--resume", "--quiet"]) == 0
    assert folder.stage("experiment_kl_control")["status"] == "complete"
    # Stopped, resumed and made again with --force: the same weights as the straight run of the fixture.
    a, _ = load_policy(exp_run / "experiments" / "base" / f"{stage}.npz")
    b, _ = load_policy(run_copy / "experiments" / "base" / f"{stage}.npz")
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    resumed, straight = read(run_copy, "kl_control")["points"][1], read(exp_run, "kl_control")["points"][1]
    assert resumed["trajectory"] == straight["trajectory"]


def test_a_parent_stage_made_again_makes_the_experiments_stages_stale(run_copy):
    from alignment_np.experiments.subruns import SubRuns

    parent = RunFolder(run_copy)
    record = dict(parent.stage("rm"))
    parent.update_stage("rm", id="0123456789ab")  # as `rm --force` would: a new id
    subruns = SubRuns(parent, str(run_copy / "experiments"), ["--preset", "tiny"], False, True, "test")
    base = subruns.folder("base")
    assert base.stage("rm")["id"] == "0123456789ab"
    assert base.stale_inputs("ppo_kl0p05_s3") == ["rm"]
    assert base.stale_inputs("dpo_beta0p5") == []  # DPO never read the reward model
    parent.update_stage("rm", id=record["id"])


def test_bad_names_missing_stages_and_bad_configs_are_clear_errors(exp_run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "--run", str(exp_run)])
    code, _, err = run_main(["experiment", "frontiers", "--run", exp_run, *TINY], capsys)
    assert code == 1 and "NAME: expected one of ['frontier', 'overoptimization', 'noise', 'kl_control', 'all']" in err
    code, _, err = run_main(["experiment", "frontier", "--run", tmp_path / "nothing", *TINY], capsys)
    assert code == 1 and "no run folder there" in err
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(exp_run / "config.json", partial / "config.json")
    folder = RunFolder(partial)
    data = folder.read_config()
    data["stages"] = {k: v for k, v in data["stages"].items() if k in ("sft", "collect")}
    folder._write_config(data)
    code, _, err = run_main(["experiment", "noise", "--run", partial, *TINY], capsys)
    assert code == 1 and "needs stage 'rm', which has not run" in err
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"frontier": {"ppo_kl_coefs": []}}))
    code, _, err = run_main(["experiment", "frontier", "--run", partial, "--config", config, *TINY], capsys)
    assert code == 1 and "--config key 'ppo_kl_coefs': expected at least one value, got none" in err
    config.write_text(json.dumps({"noise": {"flip_rates": [0.2, 0.5]}}))
    code, _, err = run_main(["experiment", "noise", "--run", partial, "--config", config, *TINY], capsys)
    assert code == 1 and "flip_rates[1]: expected a number in [0, 0.5), got 0.5" in err
    config.write_text(json.dumps({"frontiers": {}}))
    code, _, err = run_main(["experiment", "frontier", "--run", partial, "--config", config, *TINY], capsys)
    assert code == 1 and "--config: unknown keys ['frontiers']" in err


# ---------------------------------------------------------------------------- best-of-N's estimator


@given(st.integers(1, 5), st.integers(0, 2 ** 31 - 1), st.booleans())
def test_the_best_of_n_estimator_equals_the_average_over_every_subset(n_max, seed, ties):
    rng = np.random.default_rng(seed)
    proxy = rng.normal(size=(3, n_max))
    if ties:  # best-of-N keeps the first of equal scores: so must the estimator
        proxy = np.round(proxy)
    values = rng.normal(size=(3, n_max))
    for n in range(1, n_max + 1):
        np.testing.assert_allclose(best_of_n_expectation(proxy, values, n),
                                   best_of_n_expectation_loop(proxy, values, n), rtol=1e-12, atol=1e-12)


def test_best_of_n_weights_are_a_distribution_over_ranks():
    w = best_of_n_weights(8, 3)
    assert w.sum() == pytest.approx(1.0) and np.all(w[:2] == 0) and np.all(np.diff(w[1:]) > 0)
    np.testing.assert_allclose(best_of_n_weights(8, 1), np.full(8, 1 / 8))
    np.testing.assert_array_equal(best_of_n_weights(8, 8), np.eye(8)[-1])
    with pytest.raises(ValueError, match="n: expected 1 <= n <= 8, got 9"):
        best_of_n_weights(8, 9)
