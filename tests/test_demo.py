"""demo.py prints the stage-10 report with numbers that come from real training."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(demo):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert demo.main(["--seed", "0"]) == 0
    return buf.getvalue()


def test_prints_the_four_sections_in_the_course_layout(report):
    titles = [
        "Stage 10: Alignment - RLHF and DPO",
        "1. Reward Model Training",
        "2. Direct Preference Optimization (DPO)",
        "3. PPO Components (for RLHF)",
        "4. RLHF vs DPO Comparison",
    ]
    positions = [report.index(t) for t in titles]
    assert positions == sorted(positions)


def _row(report, label):
    line = next(line for line in report.splitlines() if line.strip().startswith(label))
    return [float(x) for x in re.findall(r"-?\d+\.\d+", line[len(label) + 2:])]


def _estimate(report, label):
    """(value, standard error) printed as 'label V ± SE'."""
    value, se = re.search(re.escape(label) + r" ([-+]?\d+\.\d+) ± (\d+\.\d+)", report).groups()
    return float(value), float(se)


def test_reward_model_learns_beyond_chance(report):
    loss0, acc0, _ = _row(report, "before training")
    loss1, acc1, margin1 = _row(report, "after 30 epochs")
    ceiling = float(re.search(r"true reward's accuracy\): (\d\.\d+)", report).group(1))
    assert loss1 < loss0 and margin1 > 0
    assert acc1 > 0.5 + 0.5 * (ceiling - 0.5)  # at least half-way from chance to the ceiling
    # The claim "better than chance" exceeds two standard errors of the accuracy.
    acc, se = _estimate(report, "held-out accuracy")
    assert acc == pytest.approx(acc1, abs=1e-4) and 0 < se < 0.05
    assert acc - 0.5 > 2 * se


def test_dpo_moves_the_policy_the_right_way(report):
    before = _row(report, "before (policy = reference)")
    after = _row(report, "after 60 DPO steps")
    assert before[0] == pytest.approx(math.log(2), abs=1e-4)  # the loss at policy = reference
    assert after[0] < before[0] and after[1] > 0.6 and after[4] > 0  # loss, accuracy, margin
    sft_loss, entropy = map(float, re.search(r"held-out loss (\d\.\d+) nats/char \(unigram entropy (\d\.\d+)\)", report).groups())
    assert sft_loss < 0.5 * entropy


def test_dpo_claims_exceed_two_standard_errors(report):
    # Every improvement the DPO section claims rests on enough samples that it
    # is more than two standard errors away from "no effect" (DESIGN.md, Evaluation).
    after = _row(report, "after 60 DPO steps")
    margin, margin_se = _estimate(report, "per held-out pair: reward margin")
    accuracy, accuracy_se = _estimate(report, ", accuracy")
    assert margin == pytest.approx(after[4], abs=1e-4) and accuracy == pytest.approx(after[1], abs=1e-4)
    assert margin > 2 * margin_se
    assert accuracy - 0.5 > 2 * accuracy_se
    n, pos_before, pos_after = re.search(
        r"completions of (\d+) held-out prompts judged positive by the lexicon rater: (\d\.\d+) before, (\d\.\d+) after", report
    ).groups()
    difference, se = _estimate(report, "difference")
    assert int(n) >= 512
    assert difference == pytest.approx(float(pos_after) - float(pos_before), abs=2e-3)
    assert 0 < se < 0.05 and difference > 2 * se


def test_ppo_components_report(report):
    assert "agrees with the vectorised GAE: True" in report
    first = _row(report, "first epoch (ratio = 1)")
    assert first[1:] == [0.0, 0.0, 1.0]  # no clipping, no KL, ratio 1 before any update
    final = _row(report, "after 4 epochs")
    assert final[1] > 0 and final[2] > 0  # the updates moved the policy


def test_reward_section_is_deterministic(demo, capsys):
    a = demo.reward_model_section(seed=3)
    b = demo.reward_model_section(seed=3)
    assert a["after"] == b["after"] and a["before"] == b["before"]


def test_help_and_bad_backend():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "demo.py"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--backend" in out.stdout and "--seed" in out.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "demo.py"), "--backend", "torch"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'torch'" in bad.stderr


def test_cupy_without_a_gpu_is_one_clear_line(demo, capsys):
    from alignment_np import backend

    if backend.has_cupy_gpu():
        pytest.skip("this machine has a GPU")
    assert demo.main(["--backend", "cupy"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("demo.py: backend 'cupy' was requested but") and err.count("\n") == 1


def test_cupy_from_the_environment_without_a_gpu_is_the_same_one_line(demo):
    import os
    import subprocess
    import sys

    from alignment_np import backend

    if backend.has_cupy_gpu():
        pytest.skip("this machine has a GPU")
    env = dict(os.environ, ALIGNMENT_NP_BACKEND="cupy")
    out = subprocess.run([sys.executable, str(ROOT / "demo.py")], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("demo.py: backend 'cupy' was requested but") and out.stderr.count("\n") == 1
    assert "Traceback" not in out.stderr and "ALIGNMENT_NP_BACKEND=cupy" in out.stderr
