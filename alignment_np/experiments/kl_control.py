"""Experiment 4, KL control: PPO's adaptive KL coefficient against a fixed one.

Ziegler et al. 2019 (Sec. 2.2) adapt the KL penalty's coefficient beta so
that the policy's KL from the reference tracks a target KL_target:

    e_t = clip(KL_t / KL_target - 1, -0.2, 0.2),    beta_{t+1} = beta_t (1 + K_beta e_t)

with K_beta = (samples this iteration) / horizon (``rl/kl_control.py``). A
fixed coefficient lets the KL go wherever the reward pulls it; the controller
raises beta while the KL is above target and lowers it below, so the KL
settles near the target whatever the reward's scale.

Two PPO runs against the run's reward model, from the same start: fixed
kl_coef (PPO's default: the frontier's point) and adaptive from the same
coefficient with ``kl_target`` and ``kl_horizon``. Their KL (TRL's
``objective/kl``: the summed k1 estimate per response on the iteration's own
rollouts) and coefficient (``objective/kl_coef``) per iteration come from the
sub-run's metrics.jsonl; the final policies are evaluated on held-out
prompts like every other point.

The horizon: Ziegler et al. use 10000 samples over runs of millions of
episodes. Here a run sees ``steps`` x 64 rollouts (2,560 at 40 iterations): with
a horizon of 10000 the coefficient could change by at most a factor
(1 + 0.2 x 64 / 10000)^40 = 1.05 in the whole run, nothing to see. The
default horizon of 256 samples allows 5% per iteration (a factor of 7 over
40 iterations), which is what "adaptive" needs to mean in a run this short.

Budget: one PPO training (about 80 CPU s at 40 iterations) and two
evaluations (one shared with the frontier).
"""

from __future__ import annotations

import dataclasses
import math

from ..checks import check_float, check_positive_int
from ..stats import mean_se
from .common import tag
from .tables import fmt_pm, markdown_table

TITLE = "KL control: the adaptive KL controller against a fixed coefficient"


@dataclasses.dataclass
class KLControlConfig:
    """The KL-control experiment: the controller's target and horizon, and the start they share."""

    kl_coef: float | None = None
    """The fixed coefficient, and the adaptive controller's starting value (None: PPO's default)."""

    kl_target: float = 4.0
    """The adaptive controller's target: mean summed KL per response, in nats."""

    kl_horizon: float = 256.0
    """The controller's horizon in samples (see the module docstring for why it is short here)."""

    steps: int = 40
    """PPO iterations of both runs (the same as the other experiments', so the fixed run is shared)."""

    checkpoints: int = 4
    """PPO stages keep their checkpoint this many times (shared with the over-optimisation experiment)."""

    tail: float = 0.25
    """The final fraction of the iterations whose KL is averaged for the table."""

    def __post_init__(self):
        if self.kl_coef is not None:
            self.kl_coef = check_float("kl_coef", self.kl_coef, 0.0, low_open=True)
        self.kl_target = check_float("kl_target", self.kl_target, 0.0, low_open=True)
        self.kl_horizon = check_float("kl_horizon", self.kl_horizon, 0.0, low_open=True)
        self.steps = check_positive_int("steps", self.steps)
        self.checkpoints = check_positive_int("checkpoints", self.checkpoints)
        self.tail = check_float("tail", self.tail, 0.0, 1.0, low_open=True)


def _trajectory(sub, stage: str, target: float, tail: float) -> dict:
    """The KL and coefficient per iteration from metrics.jsonl, and their summary over the last ``tail``."""
    rows = [r for r in sub.metrics(stage) if isinstance(r.get("objective/kl"), (int, float))]
    steps = [r["step"] for r in rows]
    kl = [r["objective/kl"] for r in rows]
    coef = [r.get("objective/kl_coef") for r in rows]
    last = kl[-max(1, math.ceil(tail * len(kl))):]
    out = {"steps": steps, "kl": kl, "kl_coef": coef, **mean_se(last).as_dict("tail_kl"),
           **mean_se([abs(k - target) for k in last]).as_dict("tail_kl_error"), "tail_iterations": len(last),
           "final_kl_coef": coef[-1] if coef else None}
    return out


def run(session, exp) -> dict:
    """The fixed and the adaptive PPO run, their trajectories and their held-out evaluation."""
    from .session import ppo_point

    c, base = exp.config, session.base()
    kl_coef = c.kl_coef if c.kl_coef is not None else session.subruns.default("ppo", "kl_coef")
    fixed = ppo_point(session, base, kl_coef, c.steps, c.checkpoints, method="fixed")
    name = f"ppo_adaptive_kl{tag(kl_coef)}_t{tag(c.kl_target)}_h{tag(c.kl_horizon)}_s{c.steps}"
    adaptive = ppo_point(session, base, kl_coef, c.steps, c.checkpoints, method="adaptive", name=name,
                         flags=["--adaptive-kl", "--kl-target", c.kl_target, "--kl-horizon", c.kl_horizon])
    points = []
    for row in (fixed, adaptive):
        row.pop("snapshots", None)
        row["trajectory"] = _trajectory(base, row["stage"], c.kl_target, c.tail)
        points.append(row)
    return {"kl_coef": kl_coef, "kl_target": c.kl_target, "kl_horizon": c.kl_horizon, "points": points,
            "stages": {p["stage"]: session.stage_config(base, p["stage"]) for p in points}}


def markdown(results: dict, exp, session) -> tuple[str, list]:
    """(the page, the summary lines for the run's report)."""
    rows = []
    for p in results["points"]:
        t = p["trajectory"]
        held = [fmt_pm(p["kl"], p["kl_se"], 2), fmt_pm(p["score"], p["score_se"]),
                fmt_pm(p["grammatical"], p["grammatical_se"], 2)] if p["status"] == "complete" else \
            [f"{p['status']} at step {p['step']}", "", ""]
        rows.append([p["method"], f"`{p['stage']}`", fmt_pm(t["tail_kl"], t["tail_kl_se"], 2),
                     fmt_pm(t["tail_kl_error"], t["tail_kl_error_se"], 2), fmt_pm(t["final_kl_coef"], None, 4),
                     *held])
    table = markdown_table(["KL coefficient", "stage", "training KL, last iterations", "|KL - target|, last iterations",
                            "final kl_coef", "held-out KL", "held-out rater score", "grammatical"], rows)
    tail = results["points"][0]["trajectory"]["tail_iterations"]
    lines = [f"# {TITLE}", "",
             f"Both runs start at kl_coef {results['kl_coef']:g}; the adaptive one targets "
             f"{results['kl_target']:g} nats with a horizon of {results['kl_horizon']:g} samples. Training KL: "
             f"TRL's objective/kl on each iteration's rollouts, the mean over the last {tail} iterations with "
             "its standard error across them (successive iterations are correlated, so that SE is optimistic). "
             "Held-out: the final policy on the evaluation's held-out prompts, as every other point. Every ± "
             "is one standard error.", "", *table, "", "![kl_control](kl_control.png)", ""]
    return "\n".join(lines), table


def plot(results: dict, path: str) -> None:
    """KL per iteration against its target (left) and the coefficient per iteration (right)."""
    from .tables import _pyplot

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {"fixed": "#1f77b4", "adaptive": "#d62728"}
    for p in results["points"]:
        t = p["trajectory"]
        left.plot(t["steps"], t["kl"], marker=".", color=colours.get(p["method"]), label=p["method"])
        right.plot(t["steps"], t["kl_coef"], marker=".", color=colours.get(p["method"]), label=p["method"])
    left.axhline(results["kl_target"], color="grey", linestyle="--", label="target")
    left.set_xlabel("iteration")
    left.set_ylabel("objective/kl (nats per response)")
    right.set_xlabel("iteration")
    right.set_ylabel("objective/kl_coef")
    right.set_yscale("log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Adaptive (Ziegler et al. 2019) against fixed KL coefficient", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
