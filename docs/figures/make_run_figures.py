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
numbers, so that the prose stays true of whatever run the figures come from.

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
          *(f"samples_{p}.md" for p in POLICIES), *(f"{name}.md" for name in EXPERIMENTS))
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
    experiments = {}
    for name in EXPERIMENTS:
        path = os.path.join(folder.path, "experiments", f"{name}.md")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                experiments[name] = f.read()
    return {"config": folder.read_config(), "results": results, "samples": samples,
            "experiments": experiments, "figures_make": _read_json(folder.file("figures_make.json"))}


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
    assert set(tables) == set(TABLES), "TABLES lists every Markdown file written"
    return tables


def write_figures(run: str, out: str = DEFAULT_OUT, strict: bool = False) -> list[str]:
    """Copy the run's plots and render its tables into ``out``; returns the paths written.

    strict: refuse a run that lacks a plot or a table the chapters show (the
    committed figures must be complete); otherwise a missing part becomes a
    line saying which command makes it.
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
            written.append(os.path.join(out, name))
        else:
            missing.append(name)
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
