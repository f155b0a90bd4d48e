"""The run's plots (PNG, matplotlib: the optional extra ``plots``).

Each function reads what the run folder holds (metrics.jsonl, results.json)
and writes one PNG into it; ``write_plots`` makes every plot the run has data
for. Without matplotlib, ``write_plots`` returns an empty list and the report
says how to get the plots; nothing else in the package needs matplotlib.
"""

from __future__ import annotations

import importlib.util
import math

from .folder import RunFolder

__all__ = ["has_matplotlib", "write_plots", "training_curves", "policy_comparison", "reward_model_vs_rater"]

# What each stage's curves show: (metric keys, panel title), names as the trainers log them (TRL's).
CURVES = {
    "sft": [(("loss",), "cross-entropy (nats/token)")],
    "rm": [(("loss",), "Bradley-Terry loss"), (("accuracy",), "pairwise accuracy")],
    "dpo": [(("loss",), "loss"), (("rewards/accuracies",), "implicit reward accuracy"),
            (("rewards/chosen", "rewards/rejected", "rewards/margins"), "implicit rewards")],
    "ppo": [(("objective/scores", "objective/rlhf_reward"), "reward"), (("objective/kl",), "KL to the reference"),
            (("policy/clipfrac",), "clip fraction"), (("val/loss", "loss/value_avg"), "value loss")],
    "grpo": [(("objective/scores",), "reward"), (("objective/kl",), "KL to the reference"),
             (("policy/clipfrac",), "clip fraction")],
    "rloo": [(("objective/scores",), "reward"), (("objective/kl",), "KL to the reference")],
}


def has_matplotlib() -> bool:
    """True when matplotlib is installed (found without importing it)."""
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no window, works without a display
    import matplotlib.pyplot as plt

    return plt


def _smooth(values, window: int):
    """A trailing moving average (the raw curve of a small batch is too noisy to read)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def training_curves(run: RunFolder, stage: str, panels=None) -> str | None:
    """``curves_<stage>.png``: the stage's logged metrics against the step; None if it logged none."""
    rows = run.metrics(stage)
    kind = stage.split("_")[0] if stage not in CURVES else stage
    panels = panels or CURVES.get(kind) or [(("loss",), "loss")]
    panels = [(keys, title) for keys, title in panels if any(k in row for row in rows for k in keys)]
    if not rows or not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    window = max(1, len(rows) // 25)
    for ax, (keys, title) in zip(axes[0], panels):
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if not points:
                continue
            steps, values = zip(*points)
            line, = ax.plot(steps, values, alpha=0.25, linewidth=0.8)
            ax.plot(steps, _smooth(list(values), window), color=line.get_color(), label=key)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(f"{stage}: training curves (faint: every step; solid: moving average of {window})", fontsize=10)
    fig.tight_layout()
    path = run.file(f"curves_{stage}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def policy_comparison(run: RunFolder) -> str | None:
    """``eval.png``: each policy's mean rater score and KL from the reference, with 2-SE error bars."""
    policies = run.results().get("eval", {}).get("policies", {})
    if not policies:
        return None
    names = list(policies)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for ax, (key, title) in zip(axes, (("score", "rater score (held-out prompts)"),
                                       ("kl", "KL(policy || reference), nats per sequence"),
                                       ("grammatical", "fraction grammatical"))):
        means = [policies[n].get(key, math.nan) for n in names]
        errors = [2 * policies[n].get(f"{key}_se", 0.0) for n in names]
        ax.bar(names, means, yerr=errors, capsize=4, color="#4C72B0", alpha=0.85)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle("evaluation: bars are means, error bars 2 standard errors", fontsize=10)
    fig.tight_layout()
    path = run.file("eval.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reward_model_vs_rater(run: RunFolder) -> str | None:
    """``rm_vs_rater.png``: the reward model's score against the rater's on held-out samples."""
    pairs = run.results().get("eval", {}).get("rm_vs_rater")
    if not pairs or not pairs.get("rm"):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    ax.scatter(pairs["rater"], pairs["rm"], s=8, alpha=0.5)
    ax.set_xlabel("rater score (VADER compound)")
    ax.set_ylabel("reward model score")
    rho = pairs.get("spearman")
    ax.set_title(f"reward model vs rater, held-out samples\nSpearman rho = {rho:.3f}" if rho is not None
                 else "reward model vs rater", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = run.file("rm_vs_rater.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(run: RunFolder) -> list[str]:
    """Every plot the run has data for; [] without matplotlib. Returns the paths written."""
    if not has_matplotlib():
        return []
    paths = [training_curves(run, stage) for stage in run.stages()]
    paths += [policy_comparison(run), reward_model_vs_rater(run)]
    return [p for p in paths if p]
