"""Experiment 2, reward over-optimisation: the proxy rises while the gold score stalls or falls.

Gao et al. 2022 ("Scaling laws for reward model overoptimization") optimise a
learned (proxy) reward model with best-of-N and with PPO, and measure along
the way both the proxy score and a gold score the policy never sees, against
d = sqrt(KL(policy || initial policy)). The proxy keeps rising with d; the
gold score rises, peaks and falls (Goodhart's law): for best-of-N as
d (alpha - beta d), for RL as d (alpha - beta log d) (their Eq. 1 and 2).

Here the proxy is the run's reward model, the gold score the rater (VADER),
and the grammatical fraction shows a third thing the proxy does not see:
fluency. PPO runs against the reward model with the KL penalty off
(kl_coef 0) and on (the default coefficient), each evaluated on held-out
prompts at ``checkpoints`` points along its ``steps`` iterations (the
checkpoints its stage kept, ``subruns.py``); best-of-N over N = 1, 2, 4, ...
is computed from one set of samples (``measure.py``). The experiment ends with
what the policies wrote at the end, with both scores: what the proxy rewards.

Whether the gold score falls is measured, not assumed: for each PPO run the
gold score at the end is compared with the best gold score along the way by
a paired difference over the same held-out prompts (with its standard error),
and the page says whether it fell by more than two standard errors. (The best
checkpoint is picked on the same samples, which biases the difference upwards:
a fall just over two standard errors is weak evidence.)

Budget: the KL-on run is the frontier's PPO point at the default coefficient
(trained once); the KL-off run is one more PPO training (about 80 CPU s at 40
iterations); 2 x ``checkpoints`` evaluations (about 9 CPU s each); best-of-N
reuses the frontier's samples when N and the prompts agree. About 3 CPU
minutes on its own, 2 after the frontier.
"""

from __future__ import annotations

import dataclasses
import math

from ..checks import check_nonneg_int, check_positive_int
from ..stats import paired_difference
from .common import check_float_tuple, check_int_tuple
from .tables import examples_lines, fmt_pm, markdown_table, plot_errorbars

TITLE = "Reward over-optimisation: proxy (reward model) and gold (rater) score against sqrt(KL)"


@dataclasses.dataclass
class OveroptimizationConfig:
    """The over-optimisation experiment's runs (lists: set them in a --config file)."""

    ppo_kl_coefs: tuple = (0.0, 0.05)
    """PPO's kl_coef values: 0 is the KL penalty off; each run is evaluated along its training."""

    bon_ns: tuple = (1, 2, 4, 8, 16, 32)
    """Best-of-N's N values (the largest is sampled once per prompt)."""

    bon_prompts: int = 256
    """Held-out prompts best-of-N is measured on (the first of the evaluation's prompts)."""

    steps: int = 40
    """PPO iterations (the same as the other experiments', so the KL-on run is their PPO point)."""

    checkpoints: int = 4
    """Evaluations along each PPO run, evenly spaced, the last at the end."""

    examples: int = 6
    """Completions shown per run at the end (those the reward model scores highest)."""

    def __post_init__(self):
        self.ppo_kl_coefs = check_float_tuple("ppo_kl_coefs", self.ppo_kl_coefs)
        self.bon_ns = check_int_tuple("bon_ns", self.bon_ns)
        self.bon_prompts = check_positive_int("bon_prompts", self.bon_prompts)
        self.steps = check_positive_int("steps", self.steps)
        self.checkpoints = check_positive_int("checkpoints", self.checkpoints)
        self.examples = check_nonneg_int("examples", self.examples)


def _sqrt_kl(row: dict) -> tuple:
    """(sqrt(KL), its SE by the delta method SE / (2 sqrt(KL))); a KL estimate below 0 reads as 0."""
    kl, se = row["kl"], row.get("kl_se") or 0.0
    if kl <= 0:
        return 0.0, 0.0
    return math.sqrt(kl), se / (2 * math.sqrt(kl))


def _fall(measure, sub, stage: str, curve: list) -> dict | None:
    """The gold score at the end minus its best along the run, paired by prompt over the held-out samples."""
    done = [r for r in curve if r["stage"] != "sft"]
    if len(done) < 2:
        return None
    peak = max(done, key=lambda r: r["score"])
    last = done[-1]
    if peak is last:
        return {"peak_step": last["step"], "last_step": last["step"], "fall": 0.0, "fall_se": 0.0,
                "falls": False, "note": "the gold score is highest at the end"}
    end = [s["score"] for s in measure.samples(sub, stage, last["step"])]
    top = [s["score"] for s in measure.samples(sub, stage, peak["step"])]
    d = paired_difference(top, end)  # peak minus end, the same prompts in the same order
    return {"peak_step": peak["step"], "last_step": last["step"], "fall": d.mean, "fall_se": d.se,
            "falls": d.mean > 2 * d.se}


def run(session, exp) -> dict:
    """Train the PPO runs, evaluate them along the way, and best-of-N; returns every number."""
    from .session import ppo_point

    c, base, measure = exp.config, session.base(), session.measure
    sft = {**measure.evaluate(base, "sft"), "stage": "sft", "step": 0}
    runs = []
    for kl in c.ppo_kl_coefs:
        point = ppo_point(session, base, kl, c.steps, c.checkpoints, evaluate=False)
        curve = [dict(sft)]
        for step, path in sorted(point["snapshots"].items()):
            curve.append(measure.evaluate(base, point["stage"], step=step, path=path))
        for r in curve:
            r["sqrt_kl"], r["sqrt_kl_se"] = _sqrt_kl(r)
        final = [s for s in (measure.samples(base, point["stage"], curve[-1]["step"]) if len(curve) > 1 else [])]
        top = sorted(final, key=lambda s: -s["proxy"])[: c.examples]
        runs.append({"kl_coef": kl, "stage": point["stage"], "status": point["status"], "curve": curve,
                     "fall": _fall(measure, base, point["stage"], curve), "examples": top,
                     "config": session.stage_config(base, point["stage"])})
    bon = measure.best_of_n(base, c.bon_ns, c.bon_prompts)
    for r in bon:
        r["sqrt_kl"], r["sqrt_kl_se"] = _sqrt_kl(r)
    n_max = max(c.bon_ns)
    bon_examples = sorted(measure.best_of_n_examples(base, n_max, c.bon_prompts, c.bon_prompts),
                          key=lambda s: -s["proxy"])[: c.examples]
    return {"ppo": runs, "best_of_n": bon, "best_of_n_examples": bon_examples,
            "points": [r for run_ in runs for r in run_["curve"]]}


HEADERS = ["iteration", "KL (nats)", "sqrt(KL)", "RM score (proxy)", "rater score (gold)", "grammatical"]


def _curve_rows(curve) -> list:
    return [[r["step"], fmt_pm(r["kl"], r["kl_se"], 2), fmt_pm(r["sqrt_kl"], r["sqrt_kl_se"], 2),
             fmt_pm(r["proxy"], r["proxy_se"]), fmt_pm(r["score"], r["score_se"]),
             fmt_pm(r["grammatical"], r["grammatical_se"], 2)] for r in curve]


def _fall_text(name: str, fall: dict | None) -> str:
    if fall is None:
        return f"{name}: fewer than two checkpoints, no fall measured."
    if fall.get("note"):
        return f"{name}: {fall['note']} (iteration {fall['last_step']}): no fall."
    verdict = "**falls** (by more than two standard errors)" if fall["falls"] else \
        "does not fall by more than two standard errors"
    return (f"{name}: the gold score at iteration {fall['last_step']} is below its best (iteration "
            f"{fall['peak_step']}) by {fmt_pm(fall['fall'], fall['fall_se'])}, paired by prompt: it {verdict}.")


def markdown(results: dict, exp, session) -> tuple[str, list]:
    """(the page, the summary lines for the run's report)."""
    e = session.measure.setup
    lines = [f"# {TITLE}", "",
             f"PPO optimises the run's reward model (the proxy); the rater (gold) never trains anything. Each "
             f"checkpoint is evaluated on {e['samples']} held-out prompts (seed {e['seed']}); iteration 0 is the "
             "SFT model. KL is KL(policy || SFT) per completion on the policy's own samples; best-of-N's is the "
             "analytic log N - (N-1)/N. Every ± is one standard error; the plot's error bars are two.", ""]
    summary = []
    for r in results["ppo"]:
        name = f"PPO, kl_coef {r['kl_coef']:g}" + (" (KL penalty off)" if r["kl_coef"] == 0 else "")
        table = markdown_table(HEADERS, _curve_rows(r["curve"]))
        if r["status"] != "complete":
            table += ["", f"The training stopped ({r['status']}); the checkpoints before it are shown."]
        fall = _fall_text(name, r["fall"])
        lines += [f"## {name} (`{r['stage']}`)", "", *table, "", fall, ""]
        summary += [f"**{name}**", "", *table, "", fall, ""]
    bon_rows = [[f"N = {r['n']}", fmt_pm(r["kl"], r["kl_se"], 2), fmt_pm(r["sqrt_kl"], r["sqrt_kl_se"], 2),
                 fmt_pm(r["proxy"], r["proxy_se"]), fmt_pm(r["score"], r["score_se"]),
                 fmt_pm(r["grammatical"], r["grammatical_se"], 2)] for r in results["best_of_n"]]
    bon = results["best_of_n"]
    lines += [f"## Best-of-N by the reward model ({bon[0]['samples']} held-out prompts, {bon[0]['n_max']} SFT "
              "samples each)", "", *markdown_table(["N"] + HEADERS[1:], bon_rows), "",
              "![overoptimization](overoptimization.png)", "", "## What the proxy rewards", "",
              "The completions each policy wrote at the end that the reward model scores highest (rater and reward "
              "model scores):", ""]
    summary += ["**Best-of-N**", "", *markdown_table(["N"] + HEADERS[1:], bon_rows), ""]
    for r in results["ppo"]:
        if r["examples"]:
            lines += examples_lines(r["examples"], f"**PPO, kl_coef {r['kl_coef']:g}** (iteration "
                                                   f"{r['curve'][-1]['step']})")
    if results["best_of_n_examples"]:
        lines += examples_lines(results["best_of_n_examples"], f"**Best-of-{bon[-1]['n']}**")
    return "\n".join(lines), summary


def _xy(key: str):
    return lambda r: (r["sqrt_kl"], r["sqrt_kl_se"], r[key], r[f"{key}_se"] or 0.0)


def plot(results: dict, path: str) -> None:
    """Three panels against sqrt(KL): gold score, proxy score, grammatical fraction; PPO off/on and BoN."""
    series = {}
    for r in results["ppo"]:
        series[f"PPO kl_coef {r['kl_coef']:g}"] = r["curve"]
    series["best-of-N"] = results["best_of_n"]
    colours = ["#1f77b4", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    styles = {name: ("o", colours[i % len(colours)]) for i, name in enumerate(series)}
    styles["best-of-N"] = ("v", "#ff7f0e")
    x = "sqrt(KL(policy || SFT)), sqrt(nats)"
    panels = [(x, label, series, _xy(key)) for key, label in (("score", "gold: rater (VADER) score"),
                                                              ("proxy", "proxy: reward-model score"),
                                                              ("grammatical", "fraction grammatical"))]
    plot_errorbars(path, panels, styles, "Over-optimisation (cf. Gao et al. 2022): error bars 2 SE; labels: "
                   "PPO iteration, best-of-N's N", annotate=_label)


def _label(row: dict) -> str | None:
    if "n" in row and "n_max" in row:
        return f"N={row['n']}"
    return None if row["stage"] == "sft" else str(row["step"])
