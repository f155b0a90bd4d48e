"""``experiment``: the stage-10 experiments on a run folder made by ``pipeline``.

    python -m alignment_np experiment frontier --run runs/sentiment
    python -m alignment_np experiment all --run runs/sentiment
    python -m alignment_np experiment noise --run runs/sentiment --resume     # after a stop: carry on
    python -m alignment_np experiment all --run runs/quick --preset tiny      # seconds, to see it work

NAME is ``frontier`` (rater score against KL for PPO, GRPO, RLOO, DPO and
best-of-N), ``overoptimization`` (proxy and gold score against sqrt(KL) with
the KL penalty off and on), ``noise`` (label-flip rates: DPO, conservative
and robust DPO, RM+PPO), ``kl_control`` (adaptive against fixed KL
coefficient) or ``all``. Each experiment trains its points with the
commands (``ppo``, ``grpo``, ``rloo``, ``dpo``, ``rm``) as stages of
sub-runs in ``<run>/experiments/``, evaluates them on held-out prompts, and
writes ``<run>/experiments/<name>.md``, ``.json`` and ``.png`` and a section
of ``<run>/report.md`` (``alignment_np/experiments/``). Like a stage it is
refused if it already ran unless ``--resume`` (skip the trainings and
evaluations done, continue the one that stopped) or ``--force`` (make every
training and evaluation again); Ctrl-C or SIGTERM saves the training in
progress. ``--preset`` applies to the experiment's sweeps and to the stages
it trains (``tiny``: two points per sweep, a few iterations); ``--config``
takes a JSON file with one object per experiment, e.g.
``{"frontier": {"ppo_kl_coefs": [0.02, 0.1]}}``.
"""

from __future__ import annotations

from ..backend import BACKENDS
from ..experiments.common import PRESETS

HELP = "run an experiment (frontier, overoptimization, noise, kl_control, all) on a pipeline's run folder"

NAMES = ("frontier", "overoptimization", "noise", "kl_control", "all")


def add_arguments(parser) -> None:
    parser.add_argument("name", metavar="NAME", help=f"the experiment: one of {', '.join(NAMES)}")
    parser.add_argument("--run", required=True, metavar="DIR",
                        help="a run folder made by `pipeline` (sft, collect and rm complete)")
    parser.add_argument("--config", metavar="FILE",
                        help='a JSON file with one object per experiment: {"frontier": {...}, "noise": {...}}')
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="the sweeps' and the stages' named config: 'tiny' runs in seconds (default: default)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--resume", action="store_true",
                      help="continue the experiment: skip the trainings and evaluations done")
    what.add_argument("--force", action="store_true",
                      help="make the experiment again: every training and evaluation it needs")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="array backend (default: $ALIGNMENT_NP_BACKEND, or numpy)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no per-step lines")


def run(args) -> int:
    from ..experiments import run_experiments

    if args.name not in NAMES:
        raise ValueError(f"NAME: expected one of {list(NAMES)}, got {args.name!r}")
    return run_experiments(args)
