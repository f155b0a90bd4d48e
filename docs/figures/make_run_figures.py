"""The run's figures and tables for chapters 9 to 12, regenerated from a run folder.

    python docs/figures/make_run_figures.py --run RUNDIR               # from a finished run
    python docs/figures/make_run_figures.py --make --run RUNDIR        # make the run first
    python docs/figures/make_run_figures.py --run RUNDIR --out DIR     # somewhere else (tests)

Chapters 9 to 12 show a real run of the package's command line: its plots,
its evaluation table, its experiments. Every number they show comes from
here, never typed by hand: this script copies the run's plots and renders
its ``results.json`` (and each experiment's Markdown table) into small
Markdown files under ``docs/figures/run/``, which the chapters include with
the ``pymdownx.snippets`` extension (``--8<-- "figures/run/eval.md"``). The
sentences that judge a result ("more than two standard errors", "most of
its completions are grammatical") are computed here too, from the same
numbers, so that the prose stays true of whatever run the figures come from:
chapter 12's (``verdict_<experiment>.md``) from each experiment's JSON, which
``run.json`` keeps with the rest.

``--make`` first creates the run at the default configuration with the
commands the chapters describe (``MAKE_COMMANDS``: pipeline, ppo, grpo,
rloo, bon, eval, experiment all), each as its own ``python -m alignment_np``
process, and records the wall time of each and the machine in
``<run>/figures_make.json`` (the chapters show it). At the default
configuration the commands before ``experiment all`` took about 25 minutes of
wall time on a shared two-core machine, and ``experiment all`` is meant to
take under 30 more; ``--preset tiny`` makes a run in a couple of minutes whose
numbers mean nothing (for trying the script).

Needs matplotlib (the run's plots; the ``plots`` or ``dev`` extra).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
if ROOT not in sys.path:  # run from a checkout: the package next to docs/
    sys.path.insert(0, ROOT)

from alignment_np.runs import RunFolder  # noqa: E402
from alignment_np.runs.report import fmt, pm  # noqa: E402

DEFAULT_OUT = os.path.join(HERE, "run")

# The plots the chapters show, copied from the run folder (drawn by alignment_np/runs/plots.py).
RUN_PLOTS = ("curves_sft.png", "curves_rm.png", "curves_dpo.png", "curves_ppo.png", "curves_grpo.png",
             "curves_rloo.png", "eval.png", "rm_vs_rater.png")
# The experiments of chapter 12: <run>/experiments/<name>.{md,json,png}, written by `experiment NAME`.
EXPERIMENTS = ("frontier", "overoptimization", "noise", "kl_control")
EXPERIMENT_PLOTS = tuple(f"{name}.png" for name in EXPERIMENTS)
# The policies whose held-out evaluation each chapter judges.
POLICIES = ("sft", "dpo", "ppo", "grpo", "rloo")
ONLINE = ("ppo", "grpo", "rloo")
# Every Markdown file written (the chapters include them).
TABLES = ("provenance.md", "stages.md", "commands.md", "sft.md", "collect.md", "rm.md", "dpo.md", "eval.md",
          "online.md", "bon.md", *(f"verdict_{p}.md" for p in POLICIES if p != "sft"),
          *(f"samples_{p}.md" for p in POLICIES), *(f"{name}.md" for name in EXPERIMENTS),
          "experiments_time.md", *(f"verdict_{name}.md" for name in EXPERIMENTS))
RUN_FIGURES = RUN_PLOTS + EXPERIMENT_PLOTS
# The run's numbers the tables are rendered from, kept beside them (see snapshot_of).
SNAPSHOT = "run.json"

# The commands --make runs, in order (each as `python -m alignment_np ...`).
MAKE_COMMANDS = (
    ("pipeline", "--task", "sentiment", "--out", "{run}"),
    ("ppo", "--run", "{run}"),
    ("grpo", "--run", "{run}"),
    ("rloo", "--run", "{run}"),
    ("bon", "--run", "{run}"),
    ("eval", "--run", "{run}"),
    ("experiment", "all", "--run", "{run}"),
)
SAMPLES_SHOWN = 6


# ----------------------------------------------------------------------------- making the run


def make_commands(run: str, preset: str | None = None) -> list[list[str]]:
    """The argument lists of ``python -m alignment_np`` that make the chapters' run in ``run``."""
    extra = ["--preset", preset] if preset else []
    return [[part.format(run=run) for part in command] + extra for command in MAKE_COMMANDS]


def machine() -> dict:
    """What the run was made on (the wall times depend on it)."""
    import numpy

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "numpy": numpy.__version__,
            "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS")}


def git_commit() -> str | None:
    """The repository's commit, if this is a git checkout."""
    try:
        out = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def make_run(run: str, preset: str | None = None) -> dict:
    """Run ``make_commands`` one process each; record their wall times in ``<run>/figures_make.json``."""
    from alignment_np.commands import COMMANDS

    commands = make_commands(run, preset)
    missing = sorted({c[0] for c in commands} - set(COMMANDS))
    if missing:
        raise SystemExit(f"make_run_figures: this checkout has no command {missing} "
                         f"(python -m alignment_np --help lists the commands)")
    record = {"commit": git_commit(), "preset": preset or "default", "machine": machine(),
              "started": datetime.datetime.now().isoformat(timespec="seconds"), "commands": []}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    for args in commands:
        line = "python -m alignment_np " + " ".join(args)
        print(f"== {line}", flush=True)
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", "alignment_np", *args], env=env)
        record["commands"].append({"command": line, "seconds": time.perf_counter() - start, "exit": code})
        if code != 0:
            raise SystemExit(f"make_run_figures: `{line}` failed with exit status {code}")
    record["seconds"] = sum(c["seconds"] for c in record["commands"])
    with open(os.path.join(run, "figures_make.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    return record


# ----------------------------------------------------------------------------- Markdown helpers


def _table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _seconds(s) -> str:
    if s is None:
        return "—"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _missing(what: str, command: str) -> str:
    return f"*Not in this run: {what} (made by `{command}`).*\n"


def _ratio(gain, se):
    """gain / se, or None where undefined."""
    if gain is None or se is None or se == 0 or not math.isfinite(se):
        return None
    return gain / se


# ----------------------------------------------------------------------------- the tables


def provenance(snapshot: dict) -> str:
    made = snapshot.get("figures_make")
    stages = snapshot["config"]["stages"]
    total = sum(r.get("seconds") or 0.0 for r in stages.values())
    lines = [f"*The run: task `{snapshot['config'].get('task')}`, stages {', '.join(f'`{s}`' for s in stages)}; "
             f"{_seconds(total)} of stage wall time in all."]
    if made:
        m = made.get("machine", {})
        lines.append(f" Made by `make_run_figures.py --make` (preset `{made.get('preset')}`) at commit "
                     f"`{made.get('commit') or 'unknown'}` on {made.get('started', '?')[:10]}, in "
                     f"{_seconds(made.get('seconds'))} of wall time for all its commands, on "
                     f"{m.get('cpu_count', '?')} CPU cores ({m.get('processor', '?')}), Python "
                     f"{m.get('python', '?')}, NumPy {m.get('numpy', '?')}.")
    else:
        lines.append(" The machine it was made on was not recorded (it was not made by `--make`).")
    return "".join(lines) + "*\n"


def stages_table(snapshot: dict) -> str:
    rows = []
    for name, record in snapshot["config"]["stages"].items():
        steps = "—" if record.get("steps") is None else f"{record.get('step')} / {record.get('steps')}"
        rows.append([f"`{name}`", record.get("status", "?"), steps, _seconds(record.get("seconds")),
                     ", ".join(f"`{s}`" for s in record.get("inputs", {})) or "—"])
    return _table(["stage", "status", "steps", "wall time", "made from"], rows)


def commands_block(snapshot: dict) -> str:
    made = snapshot.get("figures_make")
    if made:
        lines = [c["command"] for c in made["commands"]]
    else:
        lines = [c for record in snapshot["config"]["stages"].values() for c in record.get("commands", [])]
    return "```bash\n" + "\n".join(lines) + "\n```\n"


def sft_table(r: dict | None) -> str:
    if not r:
        return _missing("the SFT stage", "python -m alignment_np sft")
    rows = [["parameters", fmt(r.get("parameters"))], ["steps", fmt(r.get("steps"))],
            ["cross-entropy on training lines (nats/token)", fmt(r.get("train_loss"))],
            ["cross-entropy on held-out lines (nats/token)", fmt(r.get("eval_loss"))],
            ["unigram entropy of the corpus (nats/token)", fmt(r.get("unigram_entropy"))]]
    return _table(["SFT", "value"], rows)


def collect_table(r: dict | None) -> str:
    if not r:
        return _missing("the collection stage", "python -m alignment_np collect")
    rows = [["training prompts", fmt(r.get("prompts"))], ["samples per prompt", fmt(r.get("samples_per_prompt"))],
            ["completions that ended with `<eos>`", fmt(r.get("eos_fraction"))],
            ["pairs kept", fmt(r.get("pairs"))], ["held-out pairs (for the reward model)", fmt(r.get("heldout_pairs"))],
            ["dropped: scores tied or closer than the minimum gap", fmt(r.get("dropped_gap"))],
            ["dropped: fewer than two finished completions", fmt(r.get("dropped_unfinished"))],
            ["labels flipped on purpose", fmt(r.get("flipped"))],
            ["mean rater score, chosen", fmt(r.get("score_chosen_mean"))],
            ["mean rater score, rejected", fmt(r.get("score_rejected_mean"))]]
    return _table(["collection", "value"], rows)


def rm_table(r: dict | None, eval_results: dict | None) -> str:
    if not r:
        return _missing("the reward model", "python -m alignment_np rm")
    acc, se = r.get("eval_accuracy"), r.get("eval_accuracy_se")
    k = _ratio(None if acc is None else acc - 0.5, se)
    verdict = "—" if k is None else f"{k:.1f} standard errors above chance"
    rows = [["held-out pairs", fmt(r.get("eval_pairs"))], ["held-out accuracy against the rater's labels",
                                                           pm(acc, se)],
            ["distance from chance (0.5)", verdict],
            ["held-out Bradley-Terry loss (log 2 = 0.693 at chance)", fmt(r.get("eval_loss"))]]
    pairs = (eval_results or {}).get("rm_vs_rater")
    if pairs:
        rows.append([f"Spearman correlation with the rater, {fmt(pairs.get('n'))} held-out SFT samples",
                     fmt(pairs.get("spearman"))])
    return _table(["reward model", "value"], rows)


DPO_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "logps/chosen",
            "logps/rejected")


def dpo_table(r: dict | None) -> str:
    if not r:
        return _missing("the DPO stage", "python -m alignment_np dpo")
    rows = [[f"`{k}`", fmt(r.get(k))] for k in DPO_KEYS if k in r]
    header = f"DPO (loss `{r.get('loss_type')}`, beta {fmt(r.get('beta'))}), held-out pairs"
    return _table([header, "value"], rows)


def eval_table(r: dict | None) -> str:
    policies = (r or {}).get("policies") or {}
    if not policies:
        return _missing("the evaluation", "python -m alignment_np eval")
    base = r.get("reference", "sft")
    rows = []
    for name, p in policies.items():
        own = name == base
        rows.append([f"`{name}`", pm(p.get("score"), p.get("score_se")),
                     "—" if own else pm(p.get("gain"), p.get("gain_se")),
                     "—" if own else pm(p.get("win_rate"), p.get("win_rate_se")),
                     pm(p.get("grammatical"), p.get("grammatical_se")),
                     "—" if own else pm(p.get("kl"), p.get("kl_se"), 2), fmt(p.get("eos_fraction"))])
    note = (f"\n*{fmt(r.get('samples'))} completions per policy on held-out prompts, temperature 1; "
            f"gain and win rate paired with `{base}`'s completion of the same prompt; KL in nats per "
            "completion, estimated on the policy's own samples.*\n")
    return _table(["policy", "rater score", f"gain over `{base}`", "win rate", "grammatical",
                   f"KL from `{base}`", "ended"], rows) + note


def verdict(name: str, p: dict | None, base: dict | None, what: str) -> str:
    """The sentence that judges a policy against the SFT model: computed, never typed."""
    if not p or not base:
        return _missing(f"the held-out evaluation of `{name}`", f"python -m alignment_np eval")
    k = _ratio(p.get("gain"), p.get("gain_se"))
    if k is None:
        judged = "its standard error is undefined, so no claim is made"
    elif k > 2:
        judged = f"**{k:.1f} standard errors: an improvement**"
    elif k < -2:
        judged = f"**{k:.1f} standard errors: the score fell**"
    else:
        judged = f"**{k:.1f} standard errors: not more than two, so no improvement is claimed**"
    g, g_base = p.get("grammatical"), base.get("grammatical")
    grammar = ("most of its completions are grammatical" if g is not None and g > 0.5
               else "fewer than half of its completions are grammatical")
    return (f"{what}: on held-out prompts its mean rater score is {pm(p.get('score'), p.get('score_se'))} "
            f"against the SFT model's {pm(base.get('score'), base.get('score_se'))}; the paired gain "
            f"{pm(p.get('gain'), p.get('gain_se'))} is {judged}. Its win rate against the SFT model is "
            f"{pm(p.get('win_rate'), p.get('win_rate_se'))}; {grammar} "
            f"({pm(g, p.get('grammatical_se'))}, the SFT model's {fmt(g_base)}); its KL from the SFT model is "
            f"{pm(p.get('kl'), p.get('kl_se'), 2)} nats per completion.\n")


VERDICT_SUBJECTS = {"dpo": "**DPO** (`dpo`)", "ppo": "**PPO** against the reward model (`ppo`)",
                    "grpo": "**GRPO** against the reward model (`grpo`)",
                    "rloo": "**RLOO** against the reward model (`rloo`)"}

ONLINE_KEYS = ("objective/scores", "objective/kl", "objective/rlhf_reward", "objective/kl_coef",
               "policy/clipfrac_avg", "policy/approxkl_avg", "val/var_explained", "kl",
               "completions/mean_length", "completions/clipped_ratio")


def online_table(results: dict) -> str:
    present = [m for m in ONLINE if m in results]
    if not present:
        return _missing("the on-policy methods", "python -m alignment_np ppo")
    keys = [k for k in ONLINE_KEYS if any(k in results[m].get("final", {}) for m in present)]
    rows = [[f"`{k}`", *(fmt(results[m]["final"].get(k)) if k in results[m].get("final", {}) else "—"
                         for m in present)] for k in keys]
    rows.append(["iterations", *(fmt(results[m].get("iterations")) for m in present)])
    rows.append(["wall time", *(_seconds(results[m].get("seconds")) for m in present)])
    return _table(["last tenth of training", *(f"`{m}`" for m in present)], rows)


def bon_table(r: dict | None) -> str:
    if not r:
        return _missing("best-of-N", "python -m alignment_np bon")
    k = _ratio(r.get("gain"), r.get("gain_se"))
    verdict_text = "—" if k is None else f"{k:.1f} standard errors"
    picker = "the reward model" if r.get("reward") == "rm" else "the rater"
    rows = [["N (samples per prompt)", fmt(r.get("n"))], ["picked by", picker],
            ["held-out prompts", fmt(r.get("samples"))],
            ["rater score of the kept completions", pm(r.get("score"), r.get("score_se"))],
            ["rater score of one SFT sample of the same prompts", pm(r.get("reference_score"),
                                                                       r.get("reference_score_se"))],
            ["paired gain", pm(r.get("gain"), r.get("gain_se"))], ["gain in standard errors", verdict_text],
            ["win rate against one SFT sample", pm(r.get("win_rate"), r.get("win_rate_se"))],
            ["grammatical", pm(r.get("grammatical"), r.get("grammatical_se"))],
            ["mean score by the picker (proxy)", fmt(r.get("proxy"))],
            ["KL from the SFT model, log N - (N-1)/N (nats, analytic)", fmt(r.get("kl"))]]
    return _table(["best-of-N", "value"], rows)


def samples_list(snapshot: dict, policy: str) -> str:
    rows = snapshot["samples"].get(policy)
    if not rows:
        return _missing(f"held-out samples of `{policy}`", "python -m alignment_np eval")
    lines = [f"*Held-out samples of `{policy}` (rater score):*", ""]
    for s in rows:
        mark = "" if s.get("grammatical") else "; ungrammatical"
        lines.append(f"- `{s['prompt']}{s['completion']}` ({s['score']:+.3f}{mark})")
    return "\n".join(lines) + "\n"


def experiment_table(snapshot: dict, name: str) -> str:
    text = snapshot["experiments"].get(name)
    if text is None:
        return _missing(f"the `{name}` experiment", f"python -m alignment_np experiment {name}")
    # The experiment's title is the chapter's section heading and its plot is shown by the chapter
    # (copied into figures/run/): drop both; its sub-headings become bold lines inside the section.
    lines = []
    for line in text.splitlines():
        if line.startswith("# ") or line.startswith("!["):
            continue
        lines.append(f"**{line.lstrip('#').strip()}**" if line.startswith("#") else line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


# ----------------------------------------------------------------------------- the experiments' verdicts
#
# Chapter 12 judges each experiment's results in sentences ("PPO's curve lies above DPO's", "the gold
# score fell"): they are computed here from the experiment's JSON (<run>/experiments/<name>.json, kept
# in run.json), so that they stay true of whatever run the figures come from.

EXPERIMENT_BUDGET_SECONDS = 30 * 60  # what `experiment all` was designed to fit on two cores (issue 9)


def _spm(mean, se, digits: int = 3) -> str:
    """A signed ``+mean ± se`` ('—' when there is no number)."""
    if mean is None:
        return "—"
    return f"{mean:+.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")


def _judge(diff, se, up: str = "higher", down: str = "lower") -> str:
    """Whether ``diff`` is more than two standard errors from 0, in words."""
    k = _ratio(diff, se)
    if k is None:
        return "its standard error is undefined, so no claim is made"
    if k > 2:
        return f"**{up}, by {k:.1f} standard errors**"
    if k < -2:
        return f"**{down}, by {-k:.1f} standard errors**"
    return f"not more than two standard errors from 0 ({k:+.1f})"


def _hypot(*ses):
    """The standard error of a sum or difference of independent estimates (None if any is missing)."""
    if any(s is None for s in ses):
        return None
    return math.sqrt(sum(s * s for s in ses))


def _complete(rows):
    return [r for r in rows if r.get("status", "complete") == "complete" and r.get("score") is not None]


def experiments_time(snapshot: dict) -> str:
    """How long each experiment took (its JSON's wall time), and the whole `experiment all`."""
    found = snapshot.get("experiment_results") or {}
    if not found:
        return _missing("the experiments", "python -m alignment_np experiment all")
    rows, total = [], 0.0
    for name in EXPERIMENTS:
        r = found.get(name)
        if r is None:
            rows.append([f"`{name}`", "not run", "—", "—"])
            continue
        total += r.get("seconds") or 0.0
        points = len(r.get("points") or []) + len(r.get("best_of_n") or [])
        rows.append([f"`{name}`", _seconds(r.get("seconds")), _seconds(r.get("cpu_seconds_this_session")),
                     fmt(points)])
    made = snapshot.get("figures_make") or {}
    command = next((c for c in made.get("commands", []) if " experiment all " in f" {c['command']} "), None)
    wall = command["seconds"] if command else total
    within = "within" if wall <= EXPERIMENT_BUDGET_SECONDS else "over"
    note = (f"\n*In all {_seconds(wall)} of wall time"
            + (" for the `experiment all` command" if command else ", the sum of the four")
            + f": {within} the {_seconds(EXPERIMENT_BUDGET_SECONDS)} the experiments were designed to fit on "
            "two CPU cores. Each experiment trains only what an earlier one has not (the order above), so "
            "the later ones are cheaper than they would be alone.*\n")
    return _table(["experiment", "wall time", "CPU time", "points (trainings and evaluations)"], rows) + note


# ---- the frontier


def _setting(r: dict) -> str:
    return "—" if r.get("param") is None else f"{r['param']} = {r['value']:g}"


def frontier_curves(results: dict) -> tuple:
    """(the SFT point, {method: its points sorted by KL}): every curve but best-of-N's starts at the SFT
    model (KL 0); best-of-N's at N = 1."""
    points = [r for r in _complete(results.get("points", []) + results.get("best_of_n", []))
              if r.get("kl") is not None]
    sft = next((r for r in points if r["method"] == "SFT"), None)
    curves = {}
    for r in points:
        if r["method"] != "SFT":
            curves.setdefault(r["method"], []).append(r)
    for method, rows in curves.items():
        rows.sort(key=lambda r: r["kl"])
        if method != "BoN" and sft is not None:
            rows.insert(0, sft)
    return sft, curves


def interpolate(curve: list, kl: float):
    """(score, se) of ``curve`` (points sorted by KL, joined by straight lines) at ``kl``; None outside it.

    The se treats the two neighbouring points as independent estimates and ignores the KL's own error.
    """
    for a, b in zip(curve, curve[1:]):
        if a["kl"] <= kl <= b["kl"]:
            w = 0.0 if b["kl"] == a["kl"] else (kl - a["kl"]) / (b["kl"] - a["kl"])
            se = _hypot((1 - w) * (a.get("score_se") or 0.0), w * (b.get("score_se") or 0.0))
            return (1 - w) * a["score"] + w * b["score"], se
    if len(curve) == 1 and curve[0]["kl"] == kl:
        return curve[0]["score"], curve[0].get("score_se")
    return None


def pareto(points: list) -> list:
    """The points no other point beats: none has a higher score at a KL no larger (point estimates)."""
    return [p for p in points
            if not any(q is not p and q["kl"] <= p["kl"] and q["score"] > p["score"] for q in points)]


COMPARED = ("PPO", "GRPO", "RLOO", "BoN")
METHOD_NAMES = {"BoN": "best-of-N"}


def _point_label(r: dict) -> str:
    return "SFT" if r["method"] == "SFT" else f"{METHOD_NAMES.get(r['method'], r['method'])} ({_setting(r)})"


def frontier_verdict(results: dict | None) -> str:
    """DPO against each other method at DPO's KLs; the highest score; the empirical frontier."""
    if not results:
        return _missing("the `frontier` experiment", "python -m alignment_np experiment frontier")
    sft, curves = frontier_curves(results)
    dpo = [r for r in curves.get("DPO", []) if r["method"] == "DPO"]
    others = [m for m in COMPARED if m in curves]
    out = []
    tallies = {m: {"above": 0, "below": 0, "within": 0, "outside": 0} for m in others}
    if dpo and others:
        rows = []
        for d in dpo:
            cells = []
            for m in others:
                curve = curves[m]
                at = interpolate(curve, d["kl"])
                if at is None:
                    tallies[m]["outside"] += 1
                    cells.append(f"beyond its KL range ({curve[0]['kl']:.2f} to {curve[-1]['kl']:.2f})")
                    continue
                diff, se = at[0] - d["score"], _hypot(at[1], d.get("score_se"))
                k = _ratio(diff, se)
                tallies[m]["above" if k is not None and k > 2 else "below" if k is not None and k < -2
                          else "within"] += 1
                cells.append(f"{_spm(diff, se)}" + ("" if k is None else f" ({k:+.1f} SE)"))
            rows.append([_setting(d), f"{d['kl']:.2f}", pm(d["score"], d.get("score_se")), *cells])
        out += ["**Each method against DPO, at DPO's KL.** Each other method's curve (its points joined by "
                "straight lines, from the SFT model at KL 0; best-of-N's from N = 1) is read at each DPO "
                "point's KL; a cell is that score minus DPO's, ± one standard error (the neighbouring points "
                "and the DPO point taken as independent, the KL's own error ignored), and how many standard "
                "errors that is.", "",
                _table(["DPO point", "its KL (nats)", "DPO's rater score",
                        *(f"{METHOD_NAMES.get(m, m)} minus DPO" for m in others)], rows)]
        for m in others:
            t = tallies[m]
            reached = t["above"] + t["below"] + t["within"]
            name = METHOD_NAMES.get(m, m)
            if reached == 0:
                text = (f"- **{name}**: no DPO point lies within its range of KL, so the two are not compared "
                        "at equal KL.")
            else:
                text = (f"- **{name}** is above DPO by more than two standard errors at {t['above']} of the "
                        f"{reached} DPO points within its range of KL, below at {t['below']}, within two "
                        f"standard errors at {t['within']}" + (f"; {t['outside']} lie beyond its range"
                                                                if t["outside"] else "") + ".")
            out.append(text)
        if "PPO" in tallies:
            t = tallies["PPO"]
            if t["above"] + t["below"] + t["within"] == 0:
                paper = "the two curves do not overlap in KL, so the paper's comparison cannot be made here"
            elif t["below"] and not t["above"]:
                paper = "DPO is above PPO where they differ: **as the paper found**"
            elif t["above"] and not t["below"]:
                paper = "PPO is above DPO where they differ: **the opposite of the paper's finding**"
            elif t["above"] and t["below"]:
                paper = "each is above the other at some KL: **neither dominates**"
            else:
                paper = ("no difference exceeds two standard errors: **this run cannot tell the two apart** "
                         "at equal KL")
            out += ["", f"The DPO paper's IMDb experiment found DPO's frontier above PPO's (Rafailov et al. "
                        f"2023, Fig. 2 left). Here: {paper}."]
    every = ([sft] if sft else []) + [r for m, rows in curves.items() for r in rows if r is not sft]
    if every:
        best = max(every, key=lambda r: r["score"])
        front = sorted(pareto(every), key=lambda r: r["kl"])
        out += ["", f"**The highest rater score** is that of {_point_label(best)}, "
                    f"{pm(best['score'], best.get('score_se'))} at a KL of {best['kl']:.2f} nats. "
                    "**On the empirical frontier** (no other point has a higher score at a KL no larger, judged "
                    "on the point estimates): "
                    + ", ".join(f"{_point_label(r)} at {r['kl']:.2f} nats" for r in front) + "."]
    return "\n".join(out).strip() + "\n"


# ---- over-optimisation


def gao_fit(d, reward, se, form: str) -> dict | None:
    """Gao et al. 2022's form fitted to (d, R) by weighted least squares through R(0) = 0.

    form "bon": R = c1 d - c2 d^2 (their Eq. 1); "rl": R = c1 d - c2 d log d (their Eq. 2).
    d: sqrt(KL) of each point; reward: R, the score's rise from the start; se: R's standard errors
    (weights 1/se^2; unweighted, with no standard errors for c1 and c2, if any is missing or 0).
    Points at d = 0 carry no information (R(0) = 0 by the form) and are left out. Returns
    {"c1", "c1_se", "c2", "c2_se", "points", "d_max", "peak_d", "peak_reward"} or None with fewer than
    two points. The peak: dR/dd = 0 at d* = c1 / (2 c2) (bon) or d* = exp(c1 / c2 - 1) (rl), a maximum
    when c2 > 0 (and, for bon, c1 > 0).
    """
    import numpy as np

    rows = [(x, y, s) for x, y, s in zip(d, reward, se) if x is not None and y is not None and x > 0]
    if len(rows) < 2:
        return None
    x = np.array([r[0] for r in rows], dtype=np.float64)
    y = np.array([r[1] for r in rows], dtype=np.float64)
    second = x * x if form == "bon" else x * np.log(x)
    X = np.column_stack([x, -second])
    weighted = all(r[2] is not None and r[2] > 0 for r in rows)
    w = np.array([1.0 / r[2] ** 2 for r in rows]) if weighted else np.ones(len(rows))
    normal = (X.T * w) @ X
    if abs(np.linalg.det(normal)) < 1e-12 * max(1.0, float(np.abs(normal).max())) ** 2:
        return None
    cov = np.linalg.inv(normal)
    c1, c2 = cov @ ((X.T * w) @ y)
    c1_se, c2_se = (math.sqrt(cov[0, 0]), math.sqrt(cov[1, 1])) if weighted else (None, None)
    peak_d = peak_reward = None
    if c2 > 0 and (form == "rl" or c1 > 0):
        peak_d = c1 / (2 * c2) if form == "bon" else math.exp(c1 / c2 - 1)
        peak_reward = c1 * c1 / (4 * c2) if form == "bon" else c2 * peak_d
    return {"c1": float(c1), "c1_se": c1_se, "c2": float(c2), "c2_se": c2_se, "points": len(rows),
            "d_max": float(x.max()), "peak_d": peak_d, "peak_reward": peak_reward}


def _gao_rows(results: dict) -> list:
    """(name, form, d, R, se) of every curve of the over-optimisation experiment, gold and proxy."""
    out = []
    for r in results.get("ppo", []):
        curve = _complete(r.get("curve", []))
        if not curve:
            continue
        start = curve[0]
        name = f"PPO, kl_coef {r['kl_coef']:g}"
        done = curve[1:]
        out.append((name, "gold", "rl", [p["sqrt_kl"] for p in done], [p.get("gain") for p in done],
                    [p.get("gain_se") for p in done]))
        out.append((name, "proxy", "rl", [p["sqrt_kl"] for p in done],
                    [p["proxy"] - start["proxy"] for p in done],
                    [_hypot(p.get("proxy_se"), start.get("proxy_se")) for p in done]))
    bon = sorted(results.get("best_of_n", []), key=lambda r: r["n"])
    if bon:
        first = bon[0]
        out.append(("best-of-N", "gold", "bon", [p["sqrt_kl"] for p in bon], [p.get("gain") for p in bon],
                    [p.get("gain_se") for p in bon]))
        out.append(("best-of-N", "proxy", "bon", [p["sqrt_kl"] for p in bon],
                    [p["proxy"] - first["proxy"] for p in bon],
                    [_hypot(p.get("proxy_se"), first.get("proxy_se")) for p in bon]))
    return out


def _peak_text(fit: dict) -> str:
    c2_k = _ratio(fit["c2"], fit["c2_se"])
    if fit["peak_d"] is None:
        return "none (c2 ≤ 0: the fitted curve keeps rising)" if fit["c2"] <= 0 else \
            "none (c1 ≤ 0: the fitted curve falls from the start)"
    where = "inside" if fit["peak_d"] <= fit["d_max"] else "beyond"
    support = "" if c2_k is None else (", c2 more than two SE above 0" if c2_k > 2 else
                                       ", but c2 is within two SE of 0")
    return f"d = {fit['peak_d']:.2f} (KL {fit['peak_d'] ** 2:.2f} nats), {where} the measured range{support}"


def gao_table(results: dict) -> str:
    rows = []
    for name, score, form, d, reward, se in _gao_rows(results):
        fit = gao_fit(d, reward, se, form)
        if fit is None:
            rows.append([name, score, form, "fewer than two points beyond d = 0", "", "", ""])
            continue
        rows.append([name, score, "R = d (c1 - c2 d)" if form == "bon" else "R = d (c1 - c2 log d)",
                     pm(fit["c1"], fit["c1_se"]), pm(fit["c2"], fit["c2_se"]), f"{fit['d_max']:.2f}",
                     _peak_text(fit)])
    return _table(["curve", "score", "Gao et al.'s form", "c1", "c2", "largest d measured", "fitted peak"], rows)


def _words(text: str) -> list:
    return text.split()


def text_profile(completions, grammatical=None) -> dict:
    """What a set of completions looks like: its length, '!', repeated words, grammatical fraction, words."""
    from collections import Counter

    n = len(completions)
    words = [_words(c) for c in completions]
    counts = Counter(w for ws in words for w in ws if w.isalpha())
    return {"n": n, "words": sum(len(ws) for ws in words) / n if n else None,
            "exclamation": sum(1 for ws in words if "!" in ws) / n if n else None,
            "repeated": sum(1 for ws in words if any(a == b and a.isalpha() for a, b in zip(ws, ws[1:]))) / n
            if n else None,
            "grammatical": (sum(1 for g in grammatical if g) / n) if grammatical is not None and n else None,
            "counts": dict(sorted(counts.items()))}


def _read_lines(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def exploit_profiles(folder: RunFolder, results: dict) -> dict:
    """{label: text_profile} of the SFT model's held-out completions, each PPO run's at its end, and best-of-N's
    at its largest N, read from the experiment's samples (``<run>/experiments/base``)."""
    base = os.path.join(folder.path, "experiments", "base")
    samples_dir = os.path.join(base, "samples")
    profiles = {}
    sft_files = sorted(f for f in os.listdir(samples_dir) if f.startswith("sft_step")) \
        if os.path.isdir(samples_dir) else []
    if sft_files:
        rows = _read_lines(os.path.join(samples_dir, sft_files[-1]))
        profiles["SFT"] = text_profile([s["completion"] for s in rows], [s.get("grammatical") for s in rows])
    for r in results.get("ppo", []):
        curve = r.get("curve", [])
        if r.get("status") != "complete" or len(curve) < 2:
            continue
        path = os.path.join(samples_dir, f"{r['stage']}_step{curve[-1]['step']}.jsonl")
        if os.path.exists(path):
            rows = _read_lines(path)
            profiles[f"PPO, kl_coef {r['kl_coef']:g} (iteration {curve[-1]['step']})"] = text_profile(
                [s["completion"] for s in rows], [s.get("grammatical") for s in rows])
    bon = _read_json(os.path.join(base, "best_of_n.json"))
    if bon and bon.get("proxy"):
        kept, kept_ok = [], []
        for completions, proxy, ok in zip(bon["completions"], bon["proxy"], bon["grammatical"]):
            best = max(range(len(proxy)), key=lambda i: (proxy[i], -i))  # the first maximum, as best-of-N keeps
            kept.append(completions[best])
            kept_ok.append(bool(ok[best]))
        profiles[f"best-of-{len(bon['proxy'][0])}"] = text_profile(kept, kept_ok)
    return profiles


def exploit_table(profiles: dict, top: int = 5) -> str:
    if len(profiles) < 2 or "SFT" not in profiles:
        return ""
    sft = profiles["SFT"]
    names = list(profiles)
    rows = [["completions", *(fmt(profiles[n]["n"]) for n in names)],
            ["words per completion", *(fmt(profiles[n]["words"], 1) for n in names)],
            ["with a '!'", *(fmt(profiles[n]["exclamation"], 2) for n in names)],
            ["with a word repeated at once ('superb superb')", *(fmt(profiles[n]["repeated"], 2) for n in names)],
            ["grammatical", *(fmt(profiles[n]["grammatical"], 2) for n in names)]]
    rises = ["words risen most, per completion (vs SFT)", "—"]
    for n in names[1:]:
        p = profiles[n]
        delta = {w: p["counts"].get(w, 0) / p["n"] - sft["counts"].get(w, 0) / sft["n"]
                 for w in set(p["counts"]) | set(sft["counts"])}
        best = sorted((w for w in delta if delta[w] > 0), key=lambda w: (-delta[w], w))[:top]
        rises.append(", ".join(f"{w} ({delta[w]:+.2f})" for w in best) or "—")
    rows.append(rises)
    return _table(["held-out completions", *names], rows)


def _kl_text(row: dict) -> str:
    return pm(row["kl"], row.get("kl_se"), 2)


def overoptimization_verdict(results: dict | None, profiles: dict | None = None) -> str:
    """Per PPO run: the KL reached, the proxy's rise, the gold score's peak and fall, the grammatical fraction;
    the penalty's effect; best-of-N; Gao et al.'s forms fitted; what the policies' text became."""
    if not results:
        return _missing("the `overoptimization` experiment", "python -m alignment_np experiment overoptimization")
    out, ends = [], {}
    for r in results.get("ppo", []):
        curve = _complete(r.get("curve", []))
        name = f"PPO with kl_coef {r['kl_coef']:g}" + (" (the KL penalty off)" if r["kl_coef"] == 0 else "")
        if len(curve) < 2:
            out.append(f"- **{name}**: no checkpoint was evaluated ({r.get('status')}).")
            continue
        sft, done = curve[0], curve[1:]
        end, peak = done[-1], max(done, key=lambda p: p["score"])
        ends[r["kl_coef"]] = end
        proxy_diff, proxy_se = end["proxy"] - sft["proxy"], _hypot(end.get("proxy_se"), sft.get("proxy_se"))
        gram_diff = None if end.get("grammatical") is None else end["grammatical"] - sft["grammatical"]
        gram_se = _hypot(end.get("grammatical_se"), sft.get("grammatical_se"))
        fall = r.get("fall")
        if fall is None:
            fall_text = "fewer than two checkpoints, so no fall is measured"
        elif fall.get("note"):
            fall_text = "its last checkpoint is its best, so it did not fall"
        else:
            fall_text = (f"from there to the end it fell by {pm(fall['fall'], fall['fall_se'])}, paired by "
                         "prompt: " + ("**more than two standard errors**" if fall["falls"] else
                                       "not more than two standard errors"))
        out.append(
            f"- **{name}**, {end['step']} iterations: the KL from the SFT model reached "
            f"{pm(end['kl'], end.get('kl_se'), 2)} nats (d = {end['sqrt_kl']:.2f}). The proxy (reward-model) "
            f"score went from {fmt(sft['proxy'])} to {fmt(end['proxy'])}, {_spm(proxy_diff, proxy_se)}: "
            f"{_judge(proxy_diff, proxy_se, 'risen', 'fallen')}. The gold (rater) score ends "
            f"{_spm(end.get('gain'), end.get('gain_se'))} above the SFT model's (paired): "
            f"{_judge(end.get('gain'), end.get('gain_se'))}; it was highest at iteration {peak['step']} "
            f"({_spm(peak.get('gain'), peak.get('gain_se'))}), and {fall_text}. The grammatical fraction went "
            f"from {fmt(sft.get('grammatical'), 2)} to {fmt(end.get('grammatical'), 2)}, "
            f"{_spm(gram_diff, gram_se, 2)}: {_judge(gram_diff, gram_se, 'risen', 'fallen')}.")
    if 0.0 in ends and len(ends) > 1:
        on_coef = max(k for k in ends if k > 0)
        off, on = ends[0.0], ends[on_coef]
        d, se = on["score"] - off["score"], _hypot(on.get("score_se"), off.get("score_se"))
        g, gse = on["grammatical"] - off["grammatical"], _hypot(on.get("grammatical_se"), off.get("grammatical_se"))
        out.append(f"- **The penalty's effect**, at the end: without it the KL reached {_kl_text(off)} nats, "
                   f"with kl_coef {on_coef:g} {_kl_text(on)}. The gold score with the penalty minus without: "
                   f"{_spm(d, se)}, {_judge(d, se)}; the grammatical fraction: {_spm(g, gse, 2)}, "
                   f"{_judge(g, gse)} (unpaired standard errors).")
    bon = sorted(results.get("best_of_n", []), key=lambda r: r["n"])
    if len(bon) > 1:
        first, last = bon[0], bon[-1]
        top = max(bon, key=lambda r: r["score"])
        pd, pse = last["proxy"] - first["proxy"], _hypot(last.get("proxy_se"), first.get("proxy_se"))
        out.append(f"- **Best-of-N**, N = {first['n']} to {last['n']} (KL up to {last['kl']:.2f} nats, "
                   f"analytic): the proxy score {_spm(pd, pse)}, {_judge(pd, pse, 'risen', 'fallen')}; the gold "
                   f"score {_spm(last.get('gain'), last.get('gain_se'))} (paired with N = {first['n']}), "
                   f"{_judge(last.get('gain'), last.get('gain_se'), 'risen', 'fallen')}; its highest gold score "
                   f"is at N = {top['n']}.")
    out += ["", "**Gao et al.'s forms, fitted.** R is the score's rise from the start (the SFT model, or "
                "N = 1), d = sqrt(KL); weighted least squares through R(0) = 0, each point weighted by "
                "1/SE²; c1 and c2 ± their standard errors from the points' (Gao et al. write α and β; "
                "β is the KL coefficient in this course). Two numbers fitted to a few points: a description "
                "of this run's curves, not a test of the forms.", "", gao_table(results)]
    table = exploit_table(profiles or {})
    if table:
        out += ["", "**What the text became.** Every held-out completion of the SFT model, of each PPO run at "
                    "its end and of best-of-N at its largest N (the completion it keeps for each prompt): "
                    "a few measures, and the words whose count per completion rose most from the SFT model's.",
                "", table]
    return "\n".join(out).strip() + "\n"


# ---- noisy preferences


NOISE_METHODS = ("DPO", "cDPO", "rDPO", "RM+PPO")


def noise_verdict(results: dict | None) -> str:
    """Each method's gain over SFT at each flip rate; its change from the lowest rate to the highest; cDPO, rDPO
    and RM+PPO against DPO at each rate; the reward models' accuracy on the clean pairs."""
    if not results:
        return _missing("the `noise` experiment", "python -m alignment_np experiment noise")
    rates = sorted(r["flip_rate"] for r in results.get("flip_rates", []))
    by = {(p["method"], p["flip_rate"]): p for p in _complete(results.get("points", []))}
    rows = []
    for m in NOISE_METHODS:
        cells = []
        for rate in rates:
            p = by.get((m, rate))
            k = None if p is None else _ratio(p.get("gain"), p.get("gain_se"))
            cells.append("—" if p is None else _spm(p.get("gain"), p.get("gain_se"))
                         + ("" if k is None else f" ({k:+.1f} SE)"))
        rows.append([m, *cells])
    out = ["**Gain over the SFT model** (paired with its samples of the same held-out prompts), ± one "
           "standard error, and how many standard errors that is:", "",
           _table(["method", *(f"flip rate {r:g}" for r in rates)], rows)]
    if len(rates) > 1:
        low, high = rates[0], rates[-1]
        for m in NOISE_METHODS:
            a, b = by.get((m, low)), by.get((m, high))
            if a is None or b is None:
                continue
            d, se = b["score"] - a["score"], _hypot(a.get("score_se"), b.get("score_se"))
            k = _ratio(b.get("gain"), b.get("gain_se"))
            above = ("still above the SFT model by more than two standard errors" if k is not None and k > 2
                     else "no longer above the SFT model by more than two standard errors")
            out.append(f"- **{m}**: from flip rate {low:g} to {high:g} its rater score changed by {_spm(d, se)}, "
                       f"{_judge(d, se, 'risen', 'fallen')} (unpaired); at {high:g} it is {above}.")
        for rate in rates:
            base = by.get(("DPO", rate))
            if rate == 0 or base is None:
                continue
            parts = []
            for m in ("cDPO", "rDPO", "RM+PPO"):
                p = by.get((m, rate))
                if p is None:
                    continue
                d, se = p["score"] - base["score"], _hypot(p.get("score_se"), base.get("score_se"))
                parts.append(f"{m} {_spm(d, se)}, {_judge(d, se)}")
            if parts:
                out.append(f"- **Against DPO at flip rate {rate:g}** (rater score minus DPO's): "
                           + "; ".join(parts) + ".")
    acc = {r["flip_rate"]: r["reward_model"] for r in results.get("flip_rates", [])}
    if len(rates) > 1 and acc.get(rates[0]) and acc.get(rates[-1]):
        a, b = acc[rates[0]], acc[rates[-1]]
        d, se = b["accuracy"] - a["accuracy"], _hypot(a.get("accuracy_se"), b.get("accuracy_se"))
        k = _ratio(b["accuracy"] - 0.5, b.get("accuracy_se"))
        chance = ("above chance by more than two standard errors" if k is not None and k > 2
                  else "not above chance by more than two standard errors")
        out.append(f"- **The reward model** (RM+PPO's) on the clean held-out pairs: accuracy "
                   f"{pm(a['accuracy'], a.get('accuracy_se'))} at flip rate {rates[0]:g}, "
                   f"{pm(b['accuracy'], b.get('accuracy_se'))} at {rates[-1]:g}, a change of {_spm(d, se)}: "
                   f"{_judge(d, se, 'risen', 'fallen')}; at {rates[-1]:g} it is {chance}.")
    return "\n".join(out).strip() + "\n"


# ---- KL control


def kl_control_verdict(results: dict | None) -> str:
    """The fixed and the adaptive run's KL against the target; how far the controller moved the coefficient,
    against the most it could move; the held-out numbers."""
    if not results:
        return _missing("the `kl_control` experiment", "python -m alignment_np experiment kl_control")
    target, start = results["kl_target"], results["kl_coef"]
    points = {p["method"]: p for p in results.get("points", [])}
    out = []
    tails = {}
    for method in ("fixed", "adaptive"):
        p = points.get(method)
        if p is None:
            continue
        t = p["trajectory"]
        if t.get("tail_kl") is None:
            continue
        tails[method] = t
        k = _ratio(t["tail_kl"] - target, t.get("tail_kl_se"))
        where = ("within two standard errors of the target" if k is not None and abs(k) <= 2 else
                 "above the target" if t["tail_kl"] > target else "below the target")
        out.append(f"- **{method.capitalize()} coefficient** (`{p['stage']}`): over the last "
                   f"{t['tail_iterations']} iterations the training KL averaged "
                   f"{pm(t['tail_kl'], t.get('tail_kl_se'), 2)} nats against the target {target:g}, "
                   f"{t['tail_kl'] / target:.2f} times it: {where}.")
    if len(tails) == 2:
        f, a = tails["fixed"], tails["adaptive"]
        d, se = a["tail_kl_error"] - f["tail_kl_error"], _hypot(a.get("tail_kl_error_se"), f.get("tail_kl_error_se"))
        out.append(f"- **Distance from the target**, |KL - target| over those iterations: adaptive "
                   f"{pm(a['tail_kl_error'], a.get('tail_kl_error_se'), 2)}, fixed "
                   f"{pm(f['tail_kl_error'], f.get('tail_kl_error_se'), 2)}; adaptive minus fixed {_spm(d, se, 2)}: "
                   f"{_judge(d, se, 'farther', 'closer')}. (Successive iterations are correlated, so these "
                   "standard errors are optimistic.)")
    adaptive = points.get("adaptive")
    if adaptive is not None and adaptive["trajectory"].get("final_kl_coef"):
        t = adaptive["trajectory"]
        final = t["final_kl_coef"]
        stage_config = (results.get("stages") or {}).get(adaptive["stage"], {})
        batch, horizon = stage_config.get("batch_size"), results.get("kl_horizon")
        updates = max(0, len(t.get("kl_coef", [])) - 1)  # the coefficient logged at each iteration, before its update
        text = (f"- **The controller** moved kl_coef from {start:g} to {final:.4g} (a factor of {final / start:.2f}) "
                f"in the {updates} updates before the last logged iteration.")
        if batch and horizon:
            gain = batch / horizon
            bound = (1 + 0.2 * gain) ** updates if final >= start else (1 - 0.2 * gain) ** updates
            used = math.log(final / start) / math.log(bound) if bound != 1 else 0.0
            text += (f" With K = B / horizon = {batch} / {horizon:g} = {gain:.3g} and the error clipped at ±0.2, "
                     f"{updates} updates can move it by a factor of at most {bound:.2f}: it used "
                     f"{100 * used:.0f}% of that range (in log)"
                     + ("; **the clip, not the target, limited it**." if used > 0.9 else "."))
        out.append(text)
    held = [(m, points[m]) for m in ("fixed", "adaptive") if m in points and points[m].get("status") == "complete"]
    if held:
        out.append("- **Held out**, the final policies: " + "; ".join(
            f"{m} KL {pm(p['kl'], p.get('kl_se'), 2)} nats, rater score {pm(p['score'], p.get('score_se'))}, "
            f"grammatical {pm(p['grammatical'], p.get('grammatical_se'), 2)}" for m, p in held) + ".")
    return "\n".join(out).strip() + "\n"


# ----------------------------------------------------------------------------- main


def _read_json(path: str):
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def snapshot_of(folder: RunFolder) -> dict:
    """Everything the tables are rendered from, read out of the run folder (JSON-ready).

    It is written next to the figures as ``run.json``, so that the tests can
    render the committed tables again from it and check that nobody edited a
    number by hand. The reward model's per-sample scores (a plot's data) are
    left out; their correlation stays.
    """
    results = folder.results()
    evaluation = results.get("eval")
    if evaluation and evaluation.get("rm_vs_rater"):
        pairs = evaluation["rm_vs_rater"]
        evaluation["rm_vs_rater"] = {"n": pairs.get("n"), "spearman": pairs.get("spearman")}
    samples = {}
    for policy in POLICIES:
        path = folder.file(f"samples_{policy}.jsonl")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for _, line in zip(range(SAMPLES_SHOWN), f)]
            samples[policy] = [{k: s.get(k) for k in ("prompt", "completion", "score", "grammatical")}
                               for s in rows]
    experiments, experiment_results = {}, {}
    for name in EXPERIMENTS:
        path = os.path.join(folder.path, "experiments", f"{name}.md")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                experiments[name] = f.read()
        document = _read_json(os.path.join(folder.path, "experiments", f"{name}.json"))
        if document is not None:
            experiment_results[name] = document
    overoptimization = experiment_results.get("overoptimization")
    profiles = exploit_profiles(folder, overoptimization) if overoptimization else {}
    return {"config": folder.read_config(), "results": results, "samples": samples,
            "experiments": experiments, "experiment_results": experiment_results, "exploit_profiles": profiles,
            "figures_make": _read_json(folder.file("figures_make.json"))}


def render_tables(snapshot: dict) -> dict:
    """{file name: Markdown} for every table the chapters include, from a ``snapshot_of`` a run."""
    results = snapshot["results"]
    evaluation = results.get("eval") or {}
    policies = evaluation.get("policies") or {}
    tables = {
        "provenance.md": provenance(snapshot),
        "stages.md": stages_table(snapshot),
        "commands.md": commands_block(snapshot),
        "sft.md": sft_table(results.get("sft")),
        "collect.md": collect_table(results.get("collect")),
        "rm.md": rm_table(results.get("rm"), evaluation),
        "dpo.md": dpo_table(results.get("dpo")),
        "eval.md": eval_table(evaluation),
        "online.md": online_table(results),
        "bon.md": bon_table(results.get("bon")),
    }
    for name, subject in VERDICT_SUBJECTS.items():
        tables[f"verdict_{name}.md"] = verdict(name, policies.get(name), policies.get("sft"), subject)
    for name in POLICIES:
        tables[f"samples_{name}.md"] = samples_list(snapshot, name)
    for name in EXPERIMENTS:
        tables[f"{name}.md"] = experiment_table(snapshot, name)
    found = snapshot.get("experiment_results") or {}
    tables["experiments_time.md"] = experiments_time(snapshot)
    tables["verdict_frontier.md"] = frontier_verdict(found.get("frontier"))
    tables["verdict_overoptimization.md"] = overoptimization_verdict(found.get("overoptimization"),
                                                                     snapshot.get("exploit_profiles"))
    tables["verdict_noise.md"] = noise_verdict(found.get("noise"))
    tables["verdict_kl_control.md"] = kl_control_verdict(found.get("kl_control"))
    assert set(tables) == set(TABLES), "TABLES lists every Markdown file written"
    return tables


# The command that makes each plot (a placeholder names it when the run lacks the plot).
PLOT_COMMANDS = {**{f"curves_{stage}.png": f"python -m alignment_np {stage}"
                    for stage in ("sft", "rm", "dpo", "ppo", "grpo", "rloo")},
                 "eval.png": "python -m alignment_np eval", "rm_vs_rater.png": "python -m alignment_np eval",
                 **{f"{name}.png": f"python -m alignment_np experiment {name}" for name in EXPERIMENTS}}


def placeholder_png(path: str, title: str, command: str) -> None:
    """A small image saying that the run lacks a plot and which command makes it (the chapters stay whole)."""
    from alignment_np.runs.plots import _pyplot

    plt = _pyplot()
    fig = plt.figure(figsize=(5.0, 1.2))
    fig.text(0.5, 0.62, title, ha="center", va="center", fontsize=10)
    if command:
        fig.text(0.5, 0.3, f"(made by {command})", ha="center", va="center", fontsize=8, color="grey")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_figures(run: str, out: str = DEFAULT_OUT, strict: bool = False) -> list[str]:
    """Copy the run's plots and render its tables into ``out``; returns the paths written.

    strict: refuse a run that lacks a plot or a table the chapters show (the
    committed figures must be complete); otherwise a missing table becomes a
    line saying which command makes it, and a missing plot a small image
    saying the same.
    """
    from alignment_np.runs.plots import write_plots

    folder = RunFolder(run, create=False)
    write_plots(folder)  # draws every plot the run has data for (the online stages skip it)
    os.makedirs(out, exist_ok=True)
    written, missing = [], []
    sources = [(name, folder.file(name)) for name in RUN_PLOTS]
    sources += [(name, os.path.join(folder.path, "experiments", name)) for name in EXPERIMENT_PLOTS]
    for name, source in sources:
        if os.path.exists(source):
            shutil.copyfile(source, os.path.join(out, name))
        else:
            missing.append(name)
            if strict:
                continue
            placeholder_png(os.path.join(out, name), f"Not in this run: {name}", PLOT_COMMANDS.get(name, ""))
        written.append(os.path.join(out, name))
    text = json.dumps(snapshot_of(folder), indent=1, ensure_ascii=False) + "\n"
    snapshot = json.loads(text)  # the tables come from exactly what run.json holds
    files = {SNAPSHOT: text}
    for name, text in render_tables(snapshot).items():
        if text.startswith("*Not in this run"):
            missing.append(name)
        files[name] = text
    if strict and missing:
        raise SystemExit(f"make_run_figures: the run at {run} lacks {missing}; the chapters show them "
                         f"(make them with the commands in MAKE_COMMANDS)")
    for name, text in files.items():
        path = os.path.join(out, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(path)
    for name in missing:
        print(f"note: not in this run: {name}", file=sys.stderr)
    return written


def main(argv=None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, metavar="DIR", help="the run folder (made by --make, or by hand)")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where the figures go (default: docs/figures/run)")
    parser.add_argument("--make", action="store_true", help="make the run first (MAKE_COMMANDS; refuses an "
                                                            "existing run folder)")
    parser.add_argument("--preset", default=None, help="with --make: a preset of the commands ('tiny' to try)")
    parser.add_argument("--strict", action="store_true", help="refuse a run that lacks a figure or a table the "
                                                              "chapters show (implied by --make)")
    args = parser.parse_args(argv)
    if args.make:
        if os.path.exists(args.run) and os.listdir(args.run):
            raise SystemExit(f"make_run_figures: {args.run} is not empty; --make makes a new run")
        make_run(args.run, args.preset)
    written = write_figures(args.run, args.out, strict=args.strict or args.make)
    print(f"wrote {len(written)} files into {args.out}")
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
