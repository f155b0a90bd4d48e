"""Experiment 1, the reward-KL frontier: how much rater score each method buys with each nat of KL.

The DPO paper's IMDb experiment (Rafailov et al. 2023, Sec. 6.1, Fig. 2
left) plots, for each method and each setting of its KL knob, the expected
reward of held-out completions against KL(policy || reference): the better
method reaches a higher reward at the same KL. Here, on the sentiment task,
every method learns from the same preference data (the run's pairs and the
reward model trained on them), and the judge is the rater (VADER), which no
method sees:

    PPO    a sweep of kl_coef (the per-token KL penalty's weight)
    GRPO   a sweep of beta (the weight of its k3 KL loss term)
    RLOO   a sweep of kl_coef (the KL in its reward)
    DPO    a sweep of beta (the implicit KL constraint)
    BoN    best-of-N by the reward model, a sweep of N; its KL the analytic log N - (N-1)/N

Each point is a stage of ``<run>/experiments/base`` (trained by its command)
evaluated on the held-out prompts with the same seed as every other point
(``measure.py``); the SFT model itself is the origin. Error bars are 2
standard errors on both axes (the KL's SE over the evaluated samples; best-of-N's
analytic KL has none).

Budget (``experiment all`` under 30 minutes on 2 cores; measured with one BLAS
thread, CPU seconds, at the default configs of this commit's parent): one
PPO iteration of 64 rollouts, 4 epochs of 4 minibatches with its separate
critic costs about 2 s, one GRPO or RLOO iteration (16 prompts x 4) about
0.6 s, a DPO training of 100 steps about 30 s, one evaluation of 512 held-out
samples about 9 s, best-of-N about 4 ms per sample. Hence 40 iterations for
every on-policy point (PPO moves far in that: its KL at kl_coef 0.05 passes
10 nats within 30 iterations), three PPO points, two GRPO, two RLOO, three
DPO, and best-of-N over 256 prompts up to N = 32: about 7 CPU minutes, of which
the PPO point at the default kl_coef is shared with the other experiments.
"""

from __future__ import annotations

import dataclasses

from ..checks import check_positive_int
from .common import check_float_tuple, check_int_tuple
from .tables import fmt_pm, markdown_table, plot_errorbars

TITLE = "Reward against KL: the frontier of PPO, GRPO, RLOO, DPO and best-of-N"


@dataclasses.dataclass
class FrontierConfig:
    """The frontier's sweeps (each a list; set them in a --config file)."""

    ppo_kl_coefs: tuple = (0.01, 0.05, 0.2)
    """PPO's kl_coef values (the per-token KL penalty)."""

    grpo_betas: tuple = (0.04, 0.2)
    """GRPO's beta values (the weight of its KL loss term)."""

    rloo_kl_coefs: tuple = (0.05, 0.2)
    """RLOO's kl_coef values (the KL in its reward)."""

    dpo_betas: tuple = (0.05, 0.1, 0.5)
    """DPO's beta values."""

    bon_ns: tuple = (1, 2, 4, 8, 16, 32)
    """Best-of-N's N values (the largest is sampled once per prompt, the rest computed from it)."""

    bon_prompts: int = 256
    """Held-out prompts best-of-N is measured on (the first of the evaluation's prompts)."""

    steps: int = 40
    """Iterations of every PPO, GRPO and RLOO point (the same in every experiment, so points are shared)."""

    checkpoints: int = 4
    """PPO stages keep their checkpoint this many times along training (shared with the over-optimisation
    experiment, which evaluates them)."""

    def __post_init__(self):
        self.ppo_kl_coefs = check_float_tuple("ppo_kl_coefs", self.ppo_kl_coefs)
        self.grpo_betas = check_float_tuple("grpo_betas", self.grpo_betas)
        self.rloo_kl_coefs = check_float_tuple("rloo_kl_coefs", self.rloo_kl_coefs)
        self.dpo_betas = check_float_tuple("dpo_betas", self.dpo_betas)
        if any(b <= 0 for b in self.dpo_betas):
            raise ValueError(f"dpo_betas: expected numbers > 0, got {list(self.dpo_betas)}")
        self.bon_ns = check_int_tuple("bon_ns", self.bon_ns)
        self.bon_prompts = check_positive_int("bon_prompts", self.bon_prompts)
        self.steps = check_positive_int("steps", self.steps)
        self.checkpoints = check_positive_int("checkpoints", self.checkpoints)


def run(session, exp) -> dict:
    """Train and evaluate every point; returns {"points": [rows], "best_of_n": [rows]}."""
    from .session import dpo_point, online_point, ppo_point

    c, base = exp.config, session.base()
    points = [{"method": "SFT", "param": None, "value": None, "run": "base", "stage": "sft", "status": "complete",
               **session.measure.evaluate(base, "sft")}]
    for kl in c.ppo_kl_coefs:
        points.append(ppo_point(session, base, kl, c.steps, c.checkpoints))
    for beta in c.grpo_betas:
        points.append(online_point(session, base, "grpo", beta, c.steps))
    for kl in c.rloo_kl_coefs:
        points.append(online_point(session, base, "rloo", kl, c.steps))
    for beta in c.dpo_betas:
        points.append(dpo_point(session, base, beta))
    bon = session.measure.best_of_n(base, c.bon_ns, c.bon_prompts)
    for row in bon:
        row.update(method="BoN", param="n", value=row["n"], status="complete")
    for row in points:
        row.pop("snapshots", None)
    return {"points": points, "best_of_n": bon,
            "stages": {f"{r['run']}/{r['stage']}": session.stage_config(base, r["stage"]) for r in points}}


def _rows(points) -> list:
    rows = []
    for r in points:
        setting = "—" if r["param"] is None else f"{r['param']} = {r['value']:g}"
        if r["status"] != "complete":
            rows.append([r["method"], setting, f"{r['status']} at step {r['step']}", "", "", "", "", f"`{r['stage']}`"])
            continue
        rows.append([r["method"], setting, fmt_pm(r["score"], r["score_se"]), fmt_pm(r.get("gain"), r.get("gain_se")),
                     fmt_pm(r["kl"], r["kl_se"], 2), fmt_pm(r["grammatical"], r["grammatical_se"], 2),
                     fmt_pm(r.get("proxy"), r.get("proxy_se")),
                     "—" if r.get("stage") in (None, "—") else f"`{r['stage']}`"])
    return rows


HEADERS = ["method", "setting", "rater score", "gain over SFT", "KL (nats)", "grammatical", "RM score", "stage"]


def markdown(results: dict, exp, session) -> tuple[str, list]:
    """(the page, the summary lines for the run's report)."""
    c = exp.config
    bon = [{**r, "stage": "—"} for r in results["best_of_n"]]
    table = markdown_table(HEADERS, _rows(results["points"] + bon))
    e = session.measure.setup
    lines = [f"# {TITLE}", "",
             f"Each policy point is evaluated on {e['samples']} held-out prompts (seed {e['seed']}, the same for "
             "every point, so every gain is paired with the same SFT samples); best-of-N on the first "
             f"{bon[0]['samples']} of them, from {bon[0]['n_max']} SFT samples per prompt. Rater score: VADER's "
             "compound score, which no method sees; RM score: the run's reward model, which PPO, GRPO, RLOO "
             "and best-of-N optimise; KL: KL(policy || SFT) per completion, estimated on the policy's own "
             "samples (best-of-N: log N - (N-1)/N, analytic). "
             f"On-policy points: {c.steps} iterations each. Every ± is one standard error; the plot's error "
             "bars are two.", "", *table, "",
             "![frontier](frontier.png)", ""]
    return "\n".join(lines), table


MARKERS = {"SFT": ("*", "black"), "PPO": ("o", "#1f77b4"), "GRPO": ("s", "#2ca02c"), "RLOO": ("^", "#9467bd"),
           "DPO": ("D", "#d62728"), "BoN": ("v", "#ff7f0e")}


def plot(results: dict, path: str) -> None:
    """The frontier: rater score against KL, one marker style per method, 2-SE error bars on both axes."""
    series = {}
    for r in results["points"] + results["best_of_n"]:
        if r.get("status", "complete") == "complete":
            series.setdefault(r["method"], []).append(r)
    plot_errorbars(path, [("KL(policy || SFT), nats per completion (linear below 1, log above)",
                           "rater (VADER) score on held-out prompts",
                           {m: sorted(rows, key=lambda r: r["kl"]) for m, rows in series.items()},
                           lambda r: (r["kl"], r["kl_se"] or 0.0, r["score"], r["score_se"] or 0.0))],
                   MARKERS, "Reward-KL frontier (cf. Rafailov et al. 2023, Fig. 2 left); error bars 2 SE",
                   label=lambda m, rows: m if m == "SFT" else f"{m} ({rows[0]['param']})", xscale="symlog",
                   annotate=lambda r: None if r["value"] is None else f"{r['value']:g}")
