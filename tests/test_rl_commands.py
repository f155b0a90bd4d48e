"""The RLHF commands on a run folder: ppo, grpo, rloo (trained) and bon (sampled), then eval.

They read the tiny pipeline's SFT model (and reward model), add their own
checkpoint, metrics and report section, and stop, resume and refuse like
every stage (the shared mechanism is tested in test_runs.py and
test_pipeline.py; here: what is particular to on-policy training).
"""

from __future__ import annotations

import os
import shutil
import signal

import numpy as np
import pytest

from alignment_np.cli import main
from alignment_np.commands.checkpoints import load_policy
from alignment_np.runs import RunFolder

TINY = ["--preset", "tiny", "--quiet"]


def run_main(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def rl_run(tiny_rl_run):
    """The tiny pipeline plus ppo, grpo, rloo and bon, then eval (the session's, tests/conftest.py)."""
    return tiny_rl_run


def test_each_method_adds_its_checkpoint_metrics_and_report_section(rl_run):
    folder = RunFolder(rl_run)
    for name in ("ppo", "grpo", "rloo"):
        record = folder.stage(name)
        assert record.complete and record["kind"] == "policy" and record["step"] == 3
        assert record["inputs"] == {"sft": folder.stage("sft")["id"], "rm": folder.stage("rm")["id"]}
        assert [r["step"] for r in folder.metrics(name)] == [1, 2, 3]
        assert {"objective/scores", "objective/kl"} <= set(folder.metrics(name)[0])
        model, _ = load_policy(folder.checkpoint(name))  # the policy out of the trainer's checkpoint
        assert all(np.isfinite(p.data).all() for p in model.parameters())
    assert {"loss/value_avg", "val/var_explained", "policy/clipfrac_avg"} <= set(folder.metrics("ppo")[0])
    report = (rl_run / "report.md").read_text()
    for heading in ("## `ppo` (PPO against the reward model, 3 iterations)", "## `grpo` (GRPO",
                    "## `rloo` (RLOO", "## Best-of-N (`bon`: N = 16, picked by the reward model)"):
        assert heading in report


def test_eval_measures_every_trained_policy_against_the_same_sft_samples(rl_run):
    results = RunFolder(rl_run).results()
    policies = results["eval"]["policies"]
    assert list(policies) == ["sft", "dpo", "ppo", "grpo", "rloo"]
    for name in ("dpo", "ppo", "grpo", "rloo"):
        assert policies[name]["reference_score"] == pytest.approx(policies["sft"]["score"])
        assert policies[name]["kl_se"] >= 0 and 0 <= policies[name]["grammatical"] <= 1
    bon = results["bon"]
    assert bon["kl"] == pytest.approx(np.log(16) - 15 / 16) and bon["samples"] == 16
    assert bon["gain"] == pytest.approx(bon["score"] - bon["reference_score"])


def test_the_rater_can_be_the_reward_and_then_no_reward_model_is_needed(rl_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(rl_run, run)
    os.remove(run / "rm.npz")
    code, _, err = run_main(["grpo", "--run", run, *TINY, "--name", "grpo_rm"], capsys)
    assert code == 1 and "rm.npz" in err  # the reward model is needed and gone
    code, _, _ = run_main(["grpo", "--run", run, *TINY, "--reward", "rater", "--name", "grpo_rater"], capsys)
    assert code == 0
    record = RunFolder(run).stage("grpo_rater")
    assert record["inputs"] == {"sft": RunFolder(run).stage("sft")["id"]} and record["config"]["reward"] == "rater"


def test_ppo_stopped_by_sigterm_resumes_to_the_same_weights(rl_run, tmp_path, capsys, monkeypatch):
    from alignment_np.trainers.ppo import PPOTrainer

    run = tmp_path / "run"
    shutil.copytree(rl_run, run)
    argv = ["ppo", "--run", str(run), *TINY, "--steps", "4", "--name"]
    assert main([*argv, "straight"]) == 0
    original = PPOTrainer.train_step

    def stop_after_2(self, prompts):
        metrics = original(self, prompts)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return metrics

    monkeypatch.setattr(PPOTrainer, "train_step", stop_after_2)
    code, out, _ = run_main([*argv, "stopped"], capsys)
    assert code == 143 and "SIGTERM: stopped at step 2 of 4" in out
    monkeypatch.setattr(PPOTrainer, "train_step", original)
    code, _, err = run_main(["ppo", "--run", run, "--resume", "--name", "stopped", "--kl-coef", "0.5"], capsys)
    assert code == 1 and "--kl-coef: stage 'stopped'" in err
    assert main(["ppo", "--run", str(run), "--resume", "--name", "stopped", "--quiet"]) == 0
    a, _ = load_policy(run / "straight.npz")
    b, _ = load_policy(run / "stopped.npz")
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)


@pytest.mark.parametrize("argv, message", [
    (["ppo", "--name", "new", "--num-mini-batches", "3"], "--num-mini-batches: expected a divisor of batch_size=8"),
    (["grpo", "--name", "new", "--loss-type", "ppo"], "--loss-type: expected one of"),
    (["rloo", "--name", "new", "--reward", "vader"], "invalid choice: 'vader'"),
    (["bon", "--name", "new", "--n", "0"], "--n: expected a positive int, got 0"),
    (["ppo", "--name", "dpo"], "already holds stage 'dpo'"),
])
def test_bad_rl_flags_are_refused_before_any_work(argv, message, rl_run, capsys):
    if "invalid choice" in message:
        with pytest.raises(SystemExit):
            main([argv[0], "--run", str(rl_run), *argv[1:]])
        assert message in capsys.readouterr().err
        return
    code, _, err = run_main([argv[0], "--run", rl_run, *TINY, *argv[1:]], capsys)
    assert code == 1 and message in err
