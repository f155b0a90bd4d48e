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
    assert not any((out / name).exists() for name in script.EXPERIMENT_PLOTS)
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
