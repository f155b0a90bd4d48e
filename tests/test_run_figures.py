"""docs/figures/make_run_figures.py: the run's plots and tables for chapters 9 to 12.

The script must keep working (it runs end to end here on the session's tiny
run with the on-policy stages, ``tiny_rl_run`` in tests/conftest.py), every table and plot the chapters
include must be one it writes, and the committed tables must be exactly what
the script renders from the committed ``run.json``: no number in the
chapters was typed by hand.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
COMMITTED = DOCS / "figures" / "run"
SNIPPET = re.compile(r'^--8<-- "figures/run/([^"]+)"$', flags=re.M)
IMAGE = re.compile(r"!\[[^\]]*\]\(figures/run/([^)\s]+)\)")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _script():
    path = DOCS / "figures" / "make_run_figures.py"
    spec = importlib.util.spec_from_file_location("make_run_figures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _script()


def _chapters():
    return sorted(p for p in DOCS.glob("*.md") if re.match(r"\d\d-", p.name))


def test_the_script_renders_a_run_end_to_end(script, tiny_rl_run, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "figures"
    written = {Path(p).name for p in script.main(["--run", str(tiny_rl_run), "--out", str(out)])}
    assert set(script.TABLES) | {script.SNAPSHOT} <= written
    for name in script.RUN_PLOTS:  # every plot of the run; the experiments are not in it
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, name
    for name in script.EXPERIMENT_PLOTS:  # not in this run: a small placeholder says so (not strict)
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) < 10_000, name
    results = json.loads((tiny_rl_run / "results.json").read_text())
    sft, dpo = results["eval"]["policies"]["sft"], results["eval"]["policies"]["dpo"]
    table = (out / "eval.md").read_text()
    assert f"{dpo['score']:.3f} ± {dpo['score_se']:.3f}" in table and f"{sft['score']:.3f}" in table
    # The verdict is computed from the same numbers: its count of standard errors is the gain's.
    verdict = (out / "verdict_dpo.md").read_text()
    assert f"{dpo['gain'] / dpo['gain_se']:.1f} standard errors" in verdict
    assert ("an improvement" in verdict) == (dpo["gain"] > 2 * dpo["gain_se"])
    assert "*Not in this run: the `frontier` experiment" in (out / "frontier.md").read_text()
    for policy in ("sft", "dpo", "ppo", "grpo", "rloo"):
        assert (out / f"samples_{policy}.md").read_text().count("\n- `") == script.SAMPLES_SHOWN
    # What the tables were rendered from renders them again, byte for byte.
    snapshot = json.loads((out / script.SNAPSHOT).read_text())
    for name, text in script.render_tables(snapshot).items():
        assert (out / name).read_text() == text, name


def test_strict_refuses_a_run_without_what_the_chapters_show(script, tiny_pipeline_run, tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    shutil.copytree(tiny_pipeline_run, run)  # no ppo, grpo, rloo, bon, no experiments
    with pytest.raises(SystemExit, match="lacks .*curves_ppo.png.*"):
        script.main(["--run", str(run), "--out", str(tmp_path / "out"), "--strict"])
    assert not (tmp_path / "out" / "eval.md").exists()  # refused before writing a table


def test_make_runs_the_commands_the_chapters_describe(script):
    commands = script.make_commands("runs/figures", preset="tiny")
    assert [c[0] for c in commands] == ["pipeline", "ppo", "grpo", "rloo", "bon", "eval", "experiment"]
    assert commands[0][:5] == ["pipeline", "--task", "sentiment", "--out", "runs/figures"]
    assert commands[-1][:4] == ["experiment", "all", "--run", "runs/figures"]
    assert all(c[-2:] == ["--preset", "tiny"] for c in commands)
    assert all("--preset" not in c for c in script.make_commands("runs/figures"))


def test_every_table_and_plot_the_chapters_include_is_written_by_the_script(script):
    included, shown = set(), set()
    for page in _chapters():
        text = page.read_text(encoding="utf-8")
        included |= set(SNIPPET.findall(text))
        shown |= set(IMAGE.findall(text))
    assert included and shown, "no chapter includes the run's figures; the patterns or the pages changed"
    assert included <= set(script.TABLES), sorted(included - set(script.TABLES))
    assert shown <= set(script.RUN_FIGURES), sorted(shown - set(script.RUN_FIGURES))
    for name in included | shown:
        assert (COMMITTED / name).is_file(), f"docs/figures/run/{name} is not committed"


def test_the_committed_tables_are_what_the_script_renders_from_the_committed_run(script):
    snapshot = json.loads((COMMITTED / script.SNAPSHOT).read_text(encoding="utf-8"))
    for name, text in script.render_tables(snapshot).items():
        assert (COMMITTED / name).read_text(encoding="utf-8") == text, f"docs/figures/run/{name} was edited by hand"


# ---------------------------------------------------------------------------- chapter 12: the experiments


def test_the_experiments_tables_and_verdicts_come_from_their_json(script, tiny_experiment_run, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "figures"
    script.main(["--run", str(tiny_experiment_run), "--out", str(out)])
    documents = {name: json.loads((tiny_experiment_run / "experiments" / f"{name}.json").read_text())
                 for name in script.EXPERIMENTS}
    for name in script.EXPERIMENTS:
        assert (out / f"{name}.png").read_bytes().startswith(PNG_SIGNATURE), name
        for table in (f"{name}.md", f"verdict_{name}.md"):
            assert not (out / table).read_text().startswith("*Not in this run"), table
    timing = (out / "experiments_time.md").read_text()
    for name, document in documents.items():
        assert f"| `{name}` | {script._seconds(document['seconds'])} |" in timing
    # The frontier: one row per DPO point, each at its own KL.
    frontier = (out / "verdict_frontier.md").read_text()
    dpo = [p for p in documents["frontier"]["points"] if p["method"] == "DPO"]
    for p in dpo:
        assert f"| beta = {p['value']:g} | {p['kl']:.2f} | {p['score']:.3f} ± {p['score_se']:.3f} |" in frontier
    # Over-optimisation: each run's KL, and the fall as the experiment measured it.
    over = (out / "verdict_overoptimization.md").read_text()
    for r in documents["overoptimization"]["ppo"]:
        end = r["curve"][-1]
        assert f"reached {end['kl']:.2f} ± {end['kl_se']:.2f} nats" in over
        fall = r["fall"]
        if fall.get("note"):
            assert "its last checkpoint is its best" in over
        else:
            assert f"fell by {fall['fall']:.3f} ± {fall['fall_se']:.3f}" in over
    assert "| best-of-N | gold | R = d (c1 - c2 d) |" in over
    # Noise: the gain of every method at every flip rate.
    noise = (out / "verdict_noise.md").read_text()
    for p in documents["noise"]["points"]:
        assert f"{p['gain']:+.3f} ± {p['gain_se']:.3f}" in noise
    # KL control: the controller's range, recomputed here from the run's config.
    control = documents["kl_control"]
    adaptive = next(p for p in control["points"] if p["method"] == "adaptive")
    batch = control["stages"][adaptive["stage"]]["batch_size"]
    updates = len(adaptive["trajectory"]["kl_coef"]) - 1
    rising = adaptive["trajectory"]["final_kl_coef"] >= control["kl_coef"]
    bound = (1 + (0.2 if rising else -0.2) * batch / control["kl_horizon"]) ** updates
    assert f"a factor of at most {bound:.2f}" in (out / "verdict_kl_control.md").read_text()
    # What the text became: read from the samples the experiment kept.
    snapshot = json.loads((out / script.SNAPSHOT).read_text())
    assert "SFT" in snapshot["exploit_profiles"] and len(snapshot["exploit_profiles"]) >= 2
    for name, text in script.render_tables(snapshot).items():
        assert (out / name).read_text() == text, name


def _point(method, kl, score, se=0.01, param=None, value=None):
    return {"method": method, "param": param, "value": value, "status": "complete", "kl": kl, "kl_se": 0.1,
            "score": score, "score_se": se}


def test_the_frontier_verdict_reads_each_curve_at_dpos_kl(script):
    sft = _point("SFT", 0.0, 0.0)
    ppo = [_point("PPO", 2.0, 0.5, param="kl_coef", value=0.2), _point("PPO", 4.0, 0.7, param="kl_coef", value=0.05)]
    assert script.interpolate([sft, *ppo], 3.0) == pytest.approx((0.6, math.hypot(0.005, 0.005)))
    assert script.interpolate([sft, *ppo], 1.0)[0] == pytest.approx(0.25)  # from the SFT model at KL 0
    assert script.interpolate([sft, *ppo], 4.5) is None
    below = [_point("DPO", 3.0, 0.4, param="beta", value=0.1), _point("DPO", 9.0, 0.9, param="beta", value=0.05)]
    text = script.frontier_verdict({"points": [sft, *ppo, *below], "best_of_n": []})
    assert "**PPO** is above DPO by more than two standard errors at 1 of the 1 DPO points" in text
    assert "1 lie beyond its range" in text and "the opposite of the paper's finding" in text
    assert "**The highest rater score** is that of DPO (beta = 0.05)" in text
    above = [_point("DPO", 3.0, 0.8, param="beta", value=0.1)]
    assert "as the paper found" in script.frontier_verdict({"points": [sft, *ppo, *above], "best_of_n": []})
    close = [_point("DPO", 3.0, 0.61, param="beta", value=0.1)]
    assert "cannot tell the two apart" in script.frontier_verdict({"points": [sft, *ppo, *close], "best_of_n": []})
    # The empirical frontier: a point is on it unless another scores higher at no more KL.
    assert script.pareto([sft, *ppo, *below]) == [sft, *ppo, below[1]]


@pytest.mark.parametrize("form, c1, c2, peak", [("bon", 1.0, 0.25, 2.0), ("rl", 1.0, 0.5, math.e)])
def test_gao_fit_recovers_the_forms_and_their_peaks(script, form, c1, c2, peak):
    d = [0.0, 0.5, 1.0, 1.5, 2.5, 3.5]
    reward = [x * (c1 - c2 * (x if form == "bon" else math.log(x))) if x > 0 else 0.0 for x in d]
    fit = script.gao_fit(d, reward, [0.05] * len(d), form)
    assert fit["points"] == 5  # d = 0 says nothing: R(0) = 0 by the form
    assert fit["c1"] == pytest.approx(c1) and fit["c2"] == pytest.approx(c2) and fit["peak_d"] == pytest.approx(peak)
    # The peak is a maximum of the fitted curve: R is lower on both sides.
    R = (lambda x: x * (c1 - c2 * x)) if form == "bon" else (lambda x: x * (c1 - c2 * math.log(x)))
    assert fit["peak_reward"] == pytest.approx(R(peak)) and R(peak) > max(R(0.9 * peak), R(1.1 * peak))
    # Its standard errors are the weighted least-squares ones: four times the SE, four times theirs.
    wider = script.gao_fit(d, reward, [0.2] * len(d), form)
    assert wider["c1_se"] == pytest.approx(4 * fit["c1_se"])
    rising = script.gao_fit(d, [x * (1 + 0.1 * x) for x in d], [0.05] * len(d), "bon")
    assert rising["peak_d"] is None and "keeps rising" in script._peak_text(rising)
    assert script.gao_fit([0.0, 1.0], [0.0, 0.5], [0.1, 0.1], form) is None  # one point beyond d = 0


def _kl_control(final_coef, updates=10, batch=64, horizon=256.0):
    coefs = [0.05 * (final_coef / 0.05) ** (i / updates) for i in range(updates + 1)]
    trajectory = {"steps": list(range(1, updates + 2)), "kl": [4.0] * (updates + 1), "kl_coef": coefs,
                  "tail_kl": 4.1, "tail_kl_se": 0.1, "tail_kl_error": 0.2, "tail_kl_error_se": 0.05,
                  "tail_iterations": 3, "final_kl_coef": coefs[-1]}
    fixed = {**trajectory, "kl_coef": [0.05] * (updates + 1), "final_kl_coef": 0.05, "tail_kl": 9.0,
             "tail_kl_error": 5.0}
    points = [{"method": "fixed", "stage": "ppo_fixed", "status": "failed", "trajectory": fixed},
              {"method": "adaptive", "stage": "ppo_adaptive", "status": "failed", "trajectory": trajectory}]
    return {"kl_coef": 0.05, "kl_target": 4.0, "kl_horizon": horizon, "points": points,
            "stages": {"ppo_adaptive": {"batch_size": batch}}}


def test_the_kl_control_verdict_says_when_the_clip_limited_the_controller(script):
    bound = (1 + 0.2 * 64 / 256) ** 10
    saturated = script.kl_control_verdict(_kl_control(0.05 * bound))
    assert f"a factor of at most {bound:.2f}: it used 100% of that range" in saturated
    assert "the clip, not the target, limited it" in saturated
    assert "within two standard errors of the target" in saturated  # 4.1 +- 0.1 against 4
    assert "2.25 times it: above the target" in saturated            # the fixed run's 9.0
    assert "**closer, by" in saturated
    free = script.kl_control_verdict(_kl_control(0.05 * bound ** 0.5))
    assert "it used 50% of that range (in log)." in free and "limited it" not in free


def test_the_noise_verdict_compares_each_method_across_flip_rates(script):
    points = []
    for rate, shift in ((0.0, 0.0), (0.4, -0.3)):
        for m, score in (("DPO", 0.5), ("cDPO", 0.45), ("rDPO", 0.5), ("RM+PPO", 0.6)):
            points.append({"method": m, "flip_rate": rate, "status": "complete", "score": score + shift,
                           "score_se": 0.02, "gain": score + shift - 0.1, "gain_se": 0.02})
    results = {"points": points, "flip_rates": [
        {"flip_rate": 0.0, "reward_model": {"accuracy": 0.8, "accuracy_se": 0.02}},
        {"flip_rate": 0.4, "reward_model": {"accuracy": 0.55, "accuracy_se": 0.03}}]}
    text = script.noise_verdict(results)
    assert "| cDPO | +0.350 ± 0.020 (+17.5 SE) | +0.050 ± 0.020 (+2.5 SE) |" in text
    assert "**DPO**: from flip rate 0 to 0.4 its rater score changed by -0.300 ± 0.028, **fallen, by 10.6" in text
    assert "at 0.4 it is still above the SFT model by more than two standard errors" in text
    assert "cDPO -0.050 ± 0.028, not more than two standard errors from 0 (-1.8)" in text
    assert "RM+PPO +0.100 ± 0.028, **higher, by 3.5 standard errors**" in text
    assert "a change of -0.250 ± 0.036: **fallen, by 6.9 standard errors**; at 0.4 it is not above chance" in text


def test_text_profile_counts_what_a_policy_learned_to_write(script):
    profile = script.text_profile([" was superb superb !", " was dull .", " was good , but the cast was bad ."],
                                  [False, True, True])
    assert profile["n"] == 3 and profile["words"] == pytest.approx((4 + 3 + 9) / 3)
    assert profile["exclamation"] == pytest.approx(1 / 3) and profile["repeated"] == pytest.approx(1 / 3)
    assert profile["grammatical"] == pytest.approx(2 / 3)
    assert profile["counts"]["was"] == 4 and profile["counts"]["superb"] == 2 and "!" not in profile["counts"]
    sft = script.text_profile([" was dull .", " was good ."], [True, True])
    table = script.exploit_table({"SFT": sft, "policy": profile})
    assert "superb (+0.67)" in table and "| with a '!' | 0.00 | 0.33 |" in table
