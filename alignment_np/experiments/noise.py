"""Experiment 3, noisy preferences: what flipped labels do to DPO, its robust variants, and RM+PPO.

Real preference data is noisy: annotators disagree, on ambiguous pairs often.
Here the noise is controlled: a fraction ``flip_rate`` of the run's training
pairs has its labels swapped (exactly that fraction, with the collection's
seed: the pairs ``collect --flip-rate`` would write, without sampling again,
``tasks.collect.flip_labels``), and four methods learn from the noisy pairs:

    DPO     the sigmoid loss (Rafailov et al. 2023, Eq. 7), which trusts every label
    cDPO    conservative DPO: the sigmoid loss with label_smoothing = the flip rate
            (Mitchell 2023): the targets are softened to 1 - eps
    rDPO    robust DPO (Chowdhury et al. 2024, Eq. 8): the loss de-biased for a known flip
            rate eps, label_smoothing = the flip rate
    RM+PPO  a reward model trained on the noisy pairs (Bradley-Terry), then PPO against it

Each is evaluated on held-out prompts by the rater (with standard errors,
paired with the same SFT samples), and the reward models (the explicit one of
RM+PPO, and DPO's implicit beta log pi/pi_ref) on the *clean* held-out pairs:
how much of the rater's preference each recovered through the noise. At flip
rate 0, cDPO and rDPO are DPO (eps = 0): one training serves the three.

Each flip rate is a sub-run ``<run>/experiments/flip-<rate>`` (the SFT model
linked in, collect = the flipped pairs, the clean held-out pairs linked in);
flip rate 0 is the run's own pairs and reward model (``base``), so its
DPO and RM+PPO are the frontier's points. The reward model and DPO are trained
with the run's own rm and dpo configs (``subruns.INHERITED``).

Budget: per flip rate above 0, one reward model (about 45 CPU s at the default
config), three DPO trainings (about 30 s each), one PPO of ``steps``
iterations (about 80 s at 40) and four evaluations (about 9 s each): about 5
CPU minutes for 0.2 and 0.4 together, plus the shared flip-rate-0 points.
"""

from __future__ import annotations

import dataclasses
import os

from ..checks import check_float, check_positive_int
from .common import check_float_tuple
from .tables import fmt_pm, markdown_table, plot_errorbars

TITLE = "Noisy preferences: DPO, conservative DPO, robust DPO and RM+PPO under label flips"

METHODS = ("DPO", "cDPO", "rDPO", "RM+PPO")


@dataclasses.dataclass
class NoiseConfig:
    """The noise experiment: the flip rates, and the knobs held fixed across them."""

    flip_rates: tuple = (0.0, 0.2, 0.4)
    """Fractions of the training pairs whose labels are flipped (each below 0.5)."""

    beta: float | None = None
    """DPO's beta for the four DPO trainings (None: the run's own dpo beta)."""

    kl_coef: float | None = None
    """PPO's kl_coef against each reward model (None: PPO's default)."""

    steps: int = 40
    """PPO iterations (the same as the other experiments', so flip rate 0 is the frontier's PPO point)."""

    checkpoints: int = 4
    """PPO stages keep their checkpoint this many times (shared with the over-optimisation experiment)."""

    def __post_init__(self):
        self.flip_rates = check_float_tuple("flip_rates", self.flip_rates, 0.0, 0.5, high_open=True)
        if self.beta is not None:
            self.beta = check_float("beta", self.beta, 0.0, low_open=True)
        if self.kl_coef is not None:
            self.kl_coef = check_float("kl_coef", self.kl_coef, 0.0)
        self.steps = check_positive_int("steps", self.steps)
        self.checkpoints = check_positive_int("checkpoints", self.checkpoints)


def reward_model_accuracy(session, sub) -> dict:
    """The sub-run's reward model on the clean held-out pairs: accuracy and its SE (the ``rm`` stage's
    own measurement, made again if the run lacks it)."""
    r = sub.results().get("rm", {})
    if r.get("eval_accuracy") is None:
        from ..commands.collect import HELDOUT_PAIRS
        from ..data.preferences import load_preferences

        held = session.measure.reward_model(sub).evaluate(load_preferences(sub.file(HELDOUT_PAIRS)))
        r = {"eval_accuracy": held["accuracy"], "eval_accuracy_se": held["accuracy_se"], "eval_pairs": None}
    return {"accuracy": r["eval_accuracy"], "accuracy_se": r["eval_accuracy_se"], "pairs": r.get("eval_pairs")}


def run(session, exp) -> dict:
    """Flip, train and evaluate every method at every flip rate; returns every number."""
    from .session import dpo_point, ppo_point

    c, subruns = exp.config, session.subruns
    beta = c.beta if c.beta is not None else subruns.default("dpo", "beta")
    kl_coef = c.kl_coef if c.kl_coef is not None else subruns.default("ppo", "kl_coef")
    sft = {"method": "SFT", "flip_rate": None, "stage": "sft", **session.measure.evaluate(session.base(), "sft")}
    rates, points = [], []
    for rate in c.flip_rates:
        if rate == 0.0:
            sub, pairs = session.base(), {"flipped": 0, "flip_rate": 0.0}
        else:
            sub = subruns.folder(f"flip-{rate:g}", link=("sft",))
            pairs = subruns.derive_noisy_pairs(sub, rate)
            rm = subruns.train(sub, "rm", "rm")
            if rm["status"] != "complete":
                raise ValueError(f"noise: the reward model on the pairs with flip rate {rate:g} did not finish "
                                 f"({rm['status']} at step {rm['step']}); see {sub.path}")
        rates.append({"flip_rate": rate, "run": os.path.basename(sub.path),
                      "pairs": sub.results().get("collect", {}).get("pairs"),
                      "flipped": pairs.get("flipped"), "reward_model": reward_model_accuracy(session, sub),
                      "rm_config": session.stage_config(sub, "rm")})
        for variant in ("sigmoid", "conservative", "robust"):
            row = dpo_point(session, sub, beta, variant, label_smoothing=rate if variant != "sigmoid" else 0.0)
            points.append({**row, "flip_rate": rate})
        row = ppo_point(session, sub, kl_coef, c.steps, c.checkpoints, method="RM+PPO")
        row.pop("snapshots", None)
        points.append({**row, "flip_rate": rate})
    return {"beta": beta, "kl_coef": kl_coef, "sft": sft, "flip_rates": rates, "points": points,
            "stages": {f"{p['run']}/{p['stage']}": session.stage_config(session.subruns.folder(p["run"], link=()),
                                                                        p["stage"]) for p in points}}


def _cell(p: dict | None) -> str:
    if p is None:
        return "—"
    if p["status"] != "complete":
        return f"{p['status']} at step {p['step']}"
    return fmt_pm(p["score"], p["score_se"])


def markdown(results: dict, exp, session) -> tuple[str, list]:
    """(the page, the summary lines for the run's report)."""
    rates = [r["flip_rate"] for r in results["flip_rates"]]
    by = {(p["method"], p["flip_rate"]): p for p in results["points"]}
    headers = ["method"] + [f"flip rate {r:g}" for r in rates]
    scores = [[m] + [_cell(by.get((m, r))) for r in rates] for m in METHODS]
    sft = results["sft"]
    scores.append(["SFT (no preference learning)"] + [fmt_pm(sft["score"], sft["score_se"])] * len(rates))
    acc = [["reward model (RM+PPO's)"] + [fmt_pm(r["reward_model"]["accuracy"], r["reward_model"]["accuracy_se"])
                                         for r in results["flip_rates"]]]
    for m in METHODS[:3]:
        acc.append([f"{m}'s implicit reward"] + [fmt_pm(by[(m, r)].get("implicit_accuracy"),
                                                       by[(m, r)].get("implicit_accuracy_se"))
                                                if (m, r) in by else "—" for r in rates])
    long_rows = []
    for p in results["points"]:
        if p["status"] != "complete":
            long_rows.append([f"{p['flip_rate']:g}", p["method"], _cell(p), "", "", "", f"`{p['run']}/{p['stage']}`"])
            continue
        long_rows.append([f"{p['flip_rate']:g}", p["method"], fmt_pm(p["score"], p["score_se"]),
                          fmt_pm(p["gain"], p["gain_se"]), fmt_pm(p["kl"], p["kl_se"], 2),
                          fmt_pm(p["grammatical"], p["grammatical_se"], 2),
                          f"`{p['run']}/{p['stage']}`"])
    e = session.measure.setup
    score_table = markdown_table(headers, scores)
    acc_table = markdown_table(["accuracy on the clean held-out pairs"] + headers[1:], acc)
    flips = ", ".join(f"{r['flipped']} of {r['pairs']} at {r['flip_rate']:g}" for r in results["flip_rates"]
                      if r["flip_rate"] > 0)
    lines = [f"# {TITLE}", "",
             f"Training pairs with their labels flipped: {flips or 'none'} (exactly that fraction, the "
             f"collection's seed). DPO beta {results['beta']:g} for all four DPO trainings; cDPO and rDPO assume "
             f"the true flip rate (label_smoothing = the flip rate); PPO kl_coef {results['kl_coef']:g} against "
             "each reward model. Rater score on "
             f"{e['samples']} held-out prompts (seed {e['seed']}); accuracy on the run's clean held-out pairs. Every "
             "± is one standard error; the plot's error bars are two.", "",
             "## Rater score on held-out prompts", "", *score_table, "",
             "## Reward models on the clean held-out pairs", "", *acc_table, "",
             "## Every point", "",
             *markdown_table(["flip rate", "method", "rater score", "gain over SFT", "KL (nats)", "grammatical",
                              "stage"], long_rows), "",
             "![noise](noise.png)", ""]
    return "\n".join(lines), score_table + [""] + acc_table


OFFSET = {"DPO": -0.006, "cDPO": -0.002, "rDPO": 0.002, "RM+PPO": 0.006}  # a sideways shift per method

STYLES = {"DPO": ("D", "#d62728"), "cDPO": ("s", "#2ca02c"), "rDPO": ("^", "#9467bd"), "RM+PPO": ("o", "#1f77b4"),
          "reward model": ("o", "#1f77b4")}


def plot(results: dict, path: str) -> None:
    """Rater score against the flip rate per method; accuracy on clean held-out pairs against the flip rate."""
    series = {m: [p for p in results["points"] if p["method"] == m and p["status"] == "complete"] for m in METHODS}
    acc = {"reward model": [{"flip_rate": r["flip_rate"], "a": r["reward_model"]["accuracy"],
                             "a_se": r["reward_model"]["accuracy_se"]} for r in results["flip_rates"]]}
    for m in METHODS[:3]:
        acc[m] = [{"flip_rate": p["flip_rate"], "a": p["implicit_accuracy"], "a_se": p.get("implicit_accuracy_se")}
                  for p in series[m] if p.get("implicit_accuracy") is not None]
    for m, rows in acc.items():
        for r in rows:
            r["method"] = "RM+PPO" if m == "reward model" else m
    plot_errorbars(path, [
        ("flip rate of the training labels", "rater (VADER) score on held-out prompts", series,
         lambda p: (p["flip_rate"] + OFFSET[p["method"]], 0.0, p["score"], p["score_se"] or 0.0)),
        ("flip rate of the training labels", "accuracy on the clean held-out pairs", acc,
         lambda p: (p["flip_rate"] + OFFSET[p["method"]], 0.0, p["a"], p["a_se"] or 0.0)),
    ], STYLES, "Noisy preferences: error bars 2 SE (methods shifted sideways a little, to be told apart)",
        hlines={0: [(results["sft"]["score"], "SFT")], 1: [(0.5, "chance")]})
