"""report.md: what a run did and measured, rebuilt from config.json and results.json.

Every stage records its numbers in results.json; after each stage the
report is written again from everything the run holds, so it is never out of
step with the run. Every number a stage measured on samples is shown with its
standard error; an improvement is called one only when it exceeds two of
them. The commands that made each stage close the report, so anyone can make
the run again.
"""

from __future__ import annotations

import math
import os

from .folder import RunFolder
from .plots import has_matplotlib, write_plots

__all__ = ["build_report", "write_report", "fmt", "pm"]


def fmt(value, digits: int = 3) -> str:
    """A number for a table: ``digits`` significant decimals; '—' for None."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def pm(mean, se, digits: int = 3) -> str:
    """``mean ± se``."""
    if mean is None:
        return "—"
    return f"{fmt(mean, digits)} ± {fmt(se, digits)}" if se is not None else fmt(mean, digits)


def _table(headers, rows) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _seconds(s) -> str:
    if s is None:
        return "—"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _stages_section(run: RunFolder) -> list[str]:
    rows = []
    for name, record in run.stages().items():
        stale = run.stale_inputs(name)
        status = record.get("status", "?") + (f" (stale: {', '.join(stale)} made again)" if stale else "")
        made_from = ", ".join(record.get("inputs", {})) or "—"
        steps = "—" if record.get("steps") is None else f"{record.get('step')} / {record.get('steps')}"
        rows.append([f"`{name}`", status, steps,
                     _seconds(record.get("seconds")), made_from])
    total = sum(r.get("seconds") or 0.0 for r in run.stages().values())
    return ["## Stages", "", *_table(["stage", "status", "steps", "wall time", "made from"], rows), "",
            f"Total wall time of the stages: {_seconds(total)}.", ""]


def _sft_section(r: dict) -> list[str]:
    return ["## Supervised fine-tuning (`sft`)", "",
            f"A TinyGPT of {fmt(r.get('parameters'))} parameters, {fmt(r.get('steps'))} steps. Cross-entropy in "
            f"nats per token: {fmt(r.get('train_loss'))} on training lines, {fmt(r.get('eval_loss'))} on held-out "
            f"lines, against {fmt(r.get('unigram_entropy'))} for a model that knows only the character "
            "frequencies.", ""]


def _collect_section(r: dict) -> list[str]:
    lines = ["## Preferences collected from the SFT model (`collect`)", "",
             f"{fmt(r.get('samples_per_prompt'))} completions per training prompt, sampled at temperature 1; the "
             "rater's best is *chosen*, its worst *rejected*; pairs closer than "
             f"{fmt(r.get('min_gap'))} in score are dropped.", ""]
    rows = [[k.replace("_", " "), fmt(r.get(k))] for k in
            ("prompts", "pairs", "heldout_pairs", "dropped_close", "dropped_unfinished", "flipped",
             "score_chosen_mean", "score_rejected_mean") if k in r]
    return lines + _table(["", "value"], rows) + [""]


def _rm_section(r: dict, eval_results: dict | None = None) -> list[str]:
    acc, acc_se = r.get("eval_accuracy"), r.get("eval_accuracy_se")
    lines = ["## Reward model on the transformer (`rm`)", "",
             f"Held-out pairwise accuracy against the rater's labels: **{pm(acc, acc_se)}** on "
             f"{fmt(r.get('eval_pairs'))} held-out pairs (chance 0.5); held-out Bradley-Terry loss "
             f"{fmt(r.get('eval_loss'))} (log 2 = 0.693 at chance)."]
    pairs = (eval_results or {}).get("rm_vs_rater")
    if pairs:
        lines += ["", f"Rank correlation (Spearman) of the reward model's score with the rater's on "
                      f"{fmt(pairs.get('n'))} held-out samples of the SFT model: **{fmt(pairs.get('spearman'))}**."]
    return lines + [""]


def _offline_section(name: str, r: dict) -> list[str]:
    keys = [k for k in ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
                        "logps/chosen", "logps/rejected", "nll_loss", "log_odds_ratio") if k in r]
    lines = [f"## `{name}` (loss {r.get('loss_type', '?')}, beta {fmt(r.get('beta'))})", "",
             "Held-out preference pairs (the implicit reward is beta (log pi - log pi_ref)):", ""]
    return lines + _table(["metric", "held-out"], [[f"`{k}`", fmt(r[k])] for k in keys]) + [""]


_ONLINE_KEYS = ("objective/scores", "objective/kl", "objective/rlhf_reward", "objective/non_score_reward",
                "objective/kl_coef", "objective/entropy", "policy/clipfrac_avg", "policy/approxkl_avg",
                "policy/entropy_avg", "loss/policy_avg", "loss/value_avg", "val/var_explained",
                "completions/mean_length", "completions/clipped_ratio")


def _online_section(name: str, r: dict) -> list[str]:
    reward = "the reward model" if r.get("reward") == "rm" else "the rater"
    final = r.get("final", {})
    keys = [k for k in _ONLINE_KEYS if k in final] or sorted(final)
    lines = [f"## `{name}` ({r.get('method', '?').upper()} against {reward}, {fmt(r.get('iterations'))} "
             "iterations)", "", "Training metrics (TRL's names), averaged over the last tenth of the iterations; "
             "the held-out numbers are in the evaluation below:", ""]
    return lines + _table(["metric", "value"], [[f"`{k}`", fmt(final[k])] for k in keys]) + [""]


def _bon_section(name: str, r: dict) -> list[str]:
    picker = "the reward model" if r.get("reward") == "rm" else "the rater itself (an oracle)"
    return [f"## Best-of-N (`{name}`: N = {r.get('n')}, picked by {picker})", "",
            f"On {fmt(r.get('samples'))} held-out prompts: rater score **{pm(r.get('score'), r.get('score_se'))}**, "
            f"gain over one SFT sample of the same prompt {pm(r.get('gain'), r.get('gain_se'))}, win rate "
            f"{pm(r.get('win_rate'), r.get('win_rate_se'))}, grammatical {pm(r.get('grammatical'), r.get('grammatical_se'))}, "
            f"mean proxy (picker's) score {fmt(r.get('proxy'))}; KL from the SFT model log N - (N-1)/N = "
            f"{fmt(r.get('kl'))} nats (analytic).", ""]


def _experiment_section(name: str, r: dict) -> list[str]:
    """An experiment (``experiment NAME``): its main table, its plot, and links to its page and numbers."""
    lines = [f"## Experiment: {r.get('title', name)} (`{name}`)", "", *r.get("summary", []), ""]
    if r.get("plot"):
        lines += [f"![{name}]({r['plot']})", ""]
    return lines + [f"The whole experiment: [{r.get('markdown')}]({r.get('markdown')}); every number with its "
                    f"standard error and the config it ran with: [{r.get('json')}]({r.get('json')}).", ""]


def _eval_section(r: dict) -> list[str]:
    policies = r.get("policies", {})
    if not policies:
        return []
    base = r.get("reference", "sft")
    lines = ["## Evaluation on held-out prompts (`eval`)", "",
             f"{fmt(r.get('samples'))} completions per policy, sampled at temperature 1 on held-out prompts "
             "(never used in training or collection). Score: the rater's; gain: the paired difference from "
             f"`{base}` on the same prompts; KL(policy || {base}): estimated per sequence on the policy's "
             f"own samples; win rate: against `{base}`'s completion for the same prompt, judged by the rater "
             "(ties count 1/2). Every ± is one standard error.", ""]
    rows = []
    for name, p in policies.items():
        gain = p.get("gain")
        significant = gain is not None and p.get("gain_se") is not None and abs(gain) > 2 * p["gain_se"]
        gain_text = pm(gain, p.get("gain_se")) + (" *" if significant else "") if name != base else "—"
        rows.append([f"`{name}`", pm(p.get("score"), p.get("score_se")), gain_text,
                     pm(p.get("grammatical"), p.get("grammatical_se")), pm(p.get("kl"), p.get("kl_se")),
                     pm(p.get("win_rate"), p.get("win_rate_se")) if name != base else "—",
                     fmt(p.get("eos_fraction"))])
    lines += _table(["policy", "rater score", "gain over " + base, "grammatical", "KL", "win rate", "ended"], rows)
    lines += ["", "`*`: the gain exceeds two standard errors.", ""]
    samples = r.get("examples", {})
    if samples:
        lines += ["### Samples", "", "The first few held-out completions of each policy (rater score, grammatical):", ""]
        for name, rows_ in samples.items():
            lines.append(f"**{name}**")
            lines.append("")
            for s in rows_:
                mark = "" if s.get("grammatical") else " (ungrammatical)"
                lines.append(f"- `{s['prompt']}`{s['completion']}  — {fmt(s.get('score'), 2)}{mark}")
            lines.append("")
    return lines


def build_report(run: RunFolder, plots: list[str] | None = None) -> str:
    """The report's Markdown (nothing written)."""
    results = run.results()
    lines = [f"# Run report: `{os.path.basename(os.path.abspath(run.path))}`", "",
             f"Task: **{run.task or '—'}**. Folder: `{run.path}`.", ""]
    lines += _stages_section(run)
    sections = {"sft": _sft_section, "collect": _collect_section}
    for name, record in run.stages().items():
        r = results.get(name)
        if r is None:
            continue
        if name == "rm":
            lines += _rm_section(r, results.get("eval"))
        elif name in sections:
            lines += sections[name](r)
        elif r.get("kind") == "offline":
            lines += _offline_section(name, r)
        elif r.get("kind") == "online":
            lines += _online_section(name, r)
        elif r.get("kind") == "best_of_n":
            lines += _bon_section(name, r)
    if "eval" in results:
        lines += _eval_section(results["eval"])
    for name in run.stages():
        if (results.get(name) or {}).get("kind") == "experiment":
            lines += _experiment_section(name, results[name])
    if plots:
        lines += ["## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots] + [""]
    elif plots is not None and not has_matplotlib():
        lines += ["## Plots", "", "Not drawn: matplotlib is not installed "
                                  "(`pip install \"alignment_np[plots]\"`).", ""]
    lines += ["## Commands", "", "The commands that made this run, in order:", "", "```bash"]
    for record in run.stages().values():
        lines += record.get("commands", [])
    lines += ["```", ""]
    return "\n".join(lines)


def write_report(run: RunFolder, plots: bool = True) -> str:
    """Draw the plots (if matplotlib is there) and write report.md; returns its path."""
    paths = write_plots(run) if plots else None
    return run.write_report(build_report(run, paths))
