"""The experiments of stage 10, one module each, run on a run folder made by ``pipeline``.

    python -m alignment_np experiment frontier --run runs/sentiment
    python -m alignment_np experiment all --run runs/sentiment

* ``frontier``: rater score against KL for PPO, GRPO, RLOO (sweeps of their KL
  weight), DPO (a sweep of beta) and best-of-N (a sweep of N), as the DPO
  paper's IMDb figure (``frontier.py``);
* ``overoptimization``: PPO and best-of-N against the learned reward model,
  proxy and gold score against sqrt(KL), KL penalty off and on, with what the
  policy learned to exploit (``overoptimization.py``; Gao et al. 2022);
* ``noise``: label-flip rates 0, 0.2, 0.4: DPO, conservative DPO, robust DPO
  and RM+PPO on the held-out rater score, the reward model's accuracy on the
  clean held-out pairs (``noise.py``);
* ``kl_control``: PPO's adaptive KL controller against a fixed coefficient,
  the KL trajectory against its target (``kl_control.py``; Ziegler et al. 2019).

What they share: the record in the run and the config (``common.py``), the
sub-runs whose stages the commands train (``subruns.py``), the evaluations
(``measure.py``), the points and the files written (``session.py``), tables
and plots (``tables.py``).
"""

from __future__ import annotations

import importlib
import time

__all__ = ["EXPERIMENTS", "experiment_module", "run_experiments"]

EXPERIMENTS = ("frontier", "overoptimization", "noise", "kl_control")

_CONFIGS = {"frontier": "FrontierConfig", "overoptimization": "OveroptimizationConfig", "noise": "NoiseConfig",
            "kl_control": "KLControlConfig"}


def experiment_module(name: str):
    """The module of experiment ``name``; ValueError naming the known ones otherwise."""
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment: expected one of {list(EXPERIMENTS) + ['all']}, got {name!r}")
    return importlib.import_module(f"alignment_np.experiments.{name}")


def config_class(name: str):
    """The config dataclass of experiment ``name``."""
    return getattr(experiment_module(name), _CONFIGS[name])


def run_experiments(args) -> int:
    """Run ``args.name`` (one experiment, or ``all`` in order) on ``args.run``; returns the exit status.

    ``all`` checks every experiment before running any: without ``--resume`` or
    ``--force``, one that already ran refuses the whole command. With
    ``--resume``, one that never ran is started.
    """
    from ..commands.common import say
    from ..runs import RunFolder
    from ..runs.signals import Interrupted, stop_at_once
    from .common import Stopped, begin, open_experiment, record_name
    from .session import Session, write_outputs

    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    for name in names:
        experiment_module(name)
    run = RunFolder(args.run, create=False)
    opened = []
    for name in names:
        resume = bool(args.resume) and run.stage(record_name(name)) is not None
        opened.append(open_experiment(_with(args, resume=resume), name, config_class(name)))
    session = None
    for exp in opened:
        module = experiment_module(exp.name)
        session = session or Session(exp)
        exp.started, exp.cpu_started = time.perf_counter(), time.process_time()
        begin(exp)
        say(f"== experiment {exp.name}: {module.TITLE}", exp.quiet)
        try:
            with stop_at_once():
                results = module.run(session, exp)
                page, summary = module.markdown(results, exp, session)
                entry = write_outputs(session, exp, module.TITLE, results, page, module.plot, summary)
        except (Stopped, Interrupted) as stopped:
            run.finish(exp.record, "interrupted", 0, time.perf_counter() - exp.started)
            print(f"experiment {exp.name}: {stopped}; the trainings and evaluations done so far are kept; "
                  f"continue with `experiment {args.name} --run {run.path} --resume`", flush=True)
            return stopped.exit_code
        except BaseException:
            run.finish(exp.record, "failed", 0, time.perf_counter() - exp.started)
            raise
        points = len(results.get("points", [])) + len(results.get("best_of_n", []))
        run.finish(exp.record, "complete", points, time.perf_counter() - exp.started)
        _write_report(run)
        say(f"experiment {exp.name}: wrote {entry['markdown']}, {entry['json']}"
            + (f", {entry['plot']}" if entry["plot"] else "") + f" in {run.path} "
            f"({time.perf_counter() - exp.started:.0f} s)", exp.quiet)
    return 0


def _write_report(run) -> None:
    """The run's report.md with the experiment's section, keeping the plots the run already drew.

    (``runs.report.write_report`` would draw every training curve again: seconds of
    matplotlib for figures an experiment does not change.)
    """
    import os

    from ..runs.plots import has_matplotlib
    from ..runs.report import build_report

    names = [f"curves_{stage}.png" for stage in run.stages()] + ["eval.png", "rm_vs_rater.png"]
    plots = [run.file(n) for n in names if os.path.exists(run.file(n))]
    run.write_report(build_report(run, plots if (plots or not has_matplotlib()) else None))


def _with(args, **changes):
    import argparse

    return argparse.Namespace(**{**vars(args), **changes})
