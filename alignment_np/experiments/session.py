"""One session of experiments: the sub-runs, the evaluations, the points, and the files written.

``Session`` is shared by the experiments one command runs (``experiment all``
runs four in one session, so a stage made again with ``--force`` is made once,
and the models load once). The helpers ``ppo_point``, ``online_point``,
``dpo_point`` train a point through its command (``subruns.SubRuns.train``)
and evaluate it (``measure.Measure.evaluate``), returning one row of a table:
the point's method and swept value, its stage, and its held-out numbers with
their standard errors (or its status when training stopped on a NaN).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

from ..commands.common import PRESETS as STAGE_PRESETS
from ..io import atomic_write
from ..runs import resolve
from .common import Experiment, outputs_dir, tag
from .measure import Measure
from .subruns import SubRuns

__all__ = ["Session", "snapshot_steps", "ppo_point", "online_point", "dpo_point", "write_outputs"]


def snapshot_steps(steps: int, checkpoints: int) -> list:
    """The iterations at which a PPO stage keeps its checkpoint: ``checkpoints`` evenly spaced, ending at ``steps``."""
    return sorted({max(1, round(steps * i / checkpoints)) for i in range(1, checkpoints + 1)})


class Session:
    """The sub-runs and evaluations of the experiments run by one command.

    run: the parent RunFolder. preset: the stages' preset (and the evaluation's).
    """

    def __init__(self, exp: Experiment):
        from ..commands.eval import EvalStageConfig

        self.run = exp.run
        self.root = outputs_dir(exp.run)
        flags = (["--preset", exp.preset] if exp.preset else []) + (["--backend", exp.backend] if exp.backend else [])
        flags += ["--quiet"] if exp.quiet else []
        self.subruns = SubRuns(exp.run, self.root, flags, exp.force, exp.quiet, exp.command)
        self.eval_config = resolve(EvalStageConfig, {}, {}, STAGE_PRESETS[exp.preset or "default"].get("eval", {}))
        self.measure = Measure(exp.run, self.eval_config, force=exp.force, quiet=exp.quiet)
        self.quiet = exp.quiet

    def base(self):
        """``<run>/experiments/base``: the parent's sft, collect, rm and dpo, and every training on them."""
        return self.subruns.folder("base")

    def stage_config(self, sub, stage: str) -> dict:
        """What stage ``stage`` of ``sub`` was made with (its config.json record's config)."""
        return (sub.stage(stage) or {}).get("config", {})


def _row(session, sub, point: dict, method: str, param: str | None, value, evaluate: bool = True) -> dict:
    row = {"method": method, "param": param, "value": value, "run": os.path.basename(sub.path),
           "stage": point["stage"], "stage_id": point["id"], "status": point["status"], "step": point["step"]}
    if point["status"] == "complete" and evaluate:
        row.update(session.measure.evaluate(sub, point["stage"]))
        row["stage"] = point["stage"]  # the numbers' "stage" is the same; keep the row's own
    return row


def ppo_point(session, sub, kl_coef: float, steps: int, checkpoints: int, *, flags=(), name: str | None = None,
              method: str = "PPO", evaluate: bool = True) -> dict:
    """PPO against ``sub``'s reward model at ``kl_coef`` for ``steps`` iterations, kept every steps/checkpoints."""
    name = name or f"ppo_kl{tag(kl_coef)}_s{steps}"
    point = session.subruns.train(sub, "ppo", name, ["--kl-coef", kl_coef, "--steps", steps, *flags],
                                  snapshots=snapshot_steps(steps, checkpoints))
    row = _row(session, sub, point, method, "kl_coef", kl_coef, evaluate)
    row["snapshots"] = point["snapshots"]
    return row


def online_point(session, sub, method: str, weight: float, steps: int) -> dict:
    """GRPO (``beta``) or RLOO (``kl_coef``) against ``sub``'s reward model for ``steps`` iterations."""
    param = {"grpo": "beta", "rloo": "kl_coef"}[method]
    name = f"{method}_{'beta' if method == 'grpo' else 'kl'}{tag(weight)}_s{steps}"
    point = session.subruns.train(sub, method, name, [f"--{param.replace('_', '-')}", weight, "--steps", steps])
    return _row(session, sub, point, method.upper(), param, weight)


DPO_NAMES = {"sigmoid": "dpo", "conservative": "cdpo", "robust": "rdpo"}


def dpo_point(session, sub, beta: float, variant: str = "sigmoid", label_smoothing: float = 0.0) -> dict:
    """DPO (``sigmoid``), conservative DPO (sigmoid with ``label_smoothing``) or robust DPO, on ``sub``'s pairs.

    With ``label_smoothing`` 0 the three are one loss (Mitchell 2023's cDPO and Chowdhury et al.
    2024's rDPO both reduce to DPO when the assumed flip rate is 0): one training serves the three.
    """
    loss_type = "robust" if (variant == "robust" and label_smoothing > 0) else "sigmoid"
    flags = ["--beta", beta, "--loss-type", loss_type]
    name = f"dpo_beta{tag(beta)}"
    if label_smoothing > 0:
        flags += ["--label-smoothing", label_smoothing]
        name = f"{DPO_NAMES[variant]}_beta{tag(beta)}_ls{tag(label_smoothing)}"
    point = session.subruns.train(sub, "dpo", name, flags)
    label = {"sigmoid": "DPO", "conservative": "cDPO", "robust": "rDPO"}[variant]
    row = _row(session, sub, point, label, "beta", beta)
    row["label_smoothing"] = label_smoothing
    held = sub.results().get(point["stage"], {})
    acc, n = held.get("rewards/accuracies"), held.get("eval_pairs")
    if acc is not None and n:
        # The implicit reward's accuracy on the clean held-out pairs; its SE that of a mean of n 0/1 values.
        row["implicit_accuracy"] = acc
        row["implicit_accuracy_se"] = math.sqrt(acc * (1 - acc) / (n - 1)) if n > 1 else None
    return row


def _json_ready(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def write_outputs(session: Session, exp: Experiment, title: str, results: dict, markdown: str, plot,
                  summary: list) -> dict:
    """Write ``<run>/experiments/<name>.{json,md,png}`` and the experiment's entry in the run's results.

    results: every number (JSON-ready). markdown: the experiment's page. plot: a function
    ``plot(results, path)`` drawing the PNG (skipped without matplotlib). summary: Markdown lines
    for the run's report (the main table). Returns the run's results entry.
    """
    from ..runs.plots import has_matplotlib

    name = exp.name
    base = os.path.join(session.root, name)
    png = None
    if has_matplotlib():
        plot(results, base + ".png")
        png = f"experiments/{name}.png"
    document = {"experiment": name, "title": title,
                "config": {"preset": exp.preset, **dataclasses.asdict(exp.config)},
                "evaluation": {**session.measure.setup, "prompts": "the task's held-out (eval) split",
                               "reference": "the run's SFT model (sft.npz)"},
                "command": exp.command, **results,
                "seconds": float((exp.run.stage(exp.record) or {}).get("seconds") or 0.0)
                + time.perf_counter() - exp.started,
                "cpu_seconds_this_session": time.process_time() - exp.cpu_started}
    text = json.dumps(_json_ready(document), indent=1, ensure_ascii=False) + "\n"
    atomic_write(base + ".json", lambda f: f.write(text.encode("utf-8")))
    page = markdown if png else markdown + ("\n_The plot was not drawn: matplotlib is not installed "
                                            "(`pip install \"alignment_np[plots]\"`)._\n")
    atomic_write(base + ".md", lambda f: f.write(page.encode("utf-8")))
    entry = {"kind": "experiment", "title": title, "markdown": f"experiments/{name}.md",
             "json": f"experiments/{name}.json", "plot": png, "summary": summary,
             "seconds": document["seconds"]}
    exp.run.save_results(exp.record, entry)
    return entry
