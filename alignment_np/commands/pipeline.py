"""``pipeline``: every stage of preference learning in order, into one run folder.

    python -m alignment_np pipeline --task sentiment --out runs/sentiment
    python -m alignment_np pipeline --out runs/sentiment --resume      # after a stop: carry on
    python -m alignment_np pipeline --out runs/quick --preset tiny      # seconds, to see it work

runs ``sft`` -> ``collect`` -> ``rm`` -> ``dpo`` -> ``eval``, each exactly as
its own command would (same flags from ``--config``/``--preset``, same run
folder), then writes ``report.md`` with the plots. With ``--resume`` a stage
that is complete and current is skipped, one that stopped is continued, one
that never ran is run: a pipeline stopped anywhere finishes with the same
numbers as one that never stopped. Without ``--resume`` or ``--force`` a
folder that already holds a run is refused.
"""

from __future__ import annotations

import importlib
import shlex

from ..backend import BACKENDS
from .common import PRESETS, say

HELP = "run sft, collect, rm, dpo and eval in order into one run folder, then write the report"

# The preference-learning pipeline of the course, in order.
PIPELINE = ("sft", "collect", "rm", "dpo", "eval")


def add_arguments(parser) -> None:
    parser.add_argument("--out", "--run", dest="run", required=True, metavar="DIR",
                        help="the run folder to create (or to continue, with --resume)")
    parser.add_argument("--task", default="sentiment", help="the task to align to (default %(default)s)")
    parser.add_argument("--config", metavar="FILE", help="a JSON file with one object per stage: "
                                                         '{"sft": {...}, "collect": {...}, ...}')
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="a named config under the file: 'tiny' runs in seconds")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--resume", action="store_true", help="skip the stages that are done, continue the rest")
    what.add_argument("--force", action="store_true", help="make every stage again, overwriting the run")
    parser.add_argument("--backend", choices=BACKENDS, default=None)
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no per-step lines")


def stage_argv(args, stage: str, record) -> list[str]:
    """The command line that runs ``stage`` as part of this pipeline (None: skip it)."""
    argv = [stage, "--run", args.run]
    for flag, value in (("--config", args.config), ("--preset", args.preset), ("--backend", args.backend)):
        if value is not None:
            argv += [flag, value]
    if args.quiet:
        argv.append("--quiet")
    if stage == "sft":
        argv += ["--task", args.task]
    if record is not None:
        resumable = stage not in ("collect", "eval")  # those write everything at their end: they start again
        argv.append("--resume" if (args.resume and resumable) else "--force")
    return argv


def run(args) -> int:
    from ..cli import build_parser
    from ..runs import RunFolder
    from ..runs.report import write_report
    from . import COMMANDS

    folder = RunFolder(args.run)
    if folder.task not in (None, args.task):
        raise ValueError(f"--task: the run at {folder.path} is for task {folder.task!r}, got {args.task!r}")
    existing = folder.stages()
    if existing and not (args.resume or args.force):
        raise ValueError(
            f"{folder.path} already holds a run (stages {list(existing)}); continue it with --resume "
            f"or make it again with --force"
        )
    parser = build_parser()
    for stage in PIPELINE:
        record = folder.stage(stage)
        if args.resume and record is not None and record.complete and not folder.stale_inputs(stage):
            say(f"== {stage}: complete, skipped", args.quiet)
            continue
        argv = stage_argv(args, stage, record)
        say(f"== {stage}: python -m alignment_np {' '.join(argv)}", args.quiet)
        stage_args = parser.parse_args(argv)
        stage_args.command_line = "python -m alignment_np " + " ".join(shlex.quote(a) for a in argv)
        code = importlib.import_module(f"alignment_np.commands.{COMMANDS[stage]}").run(stage_args)
        if code != 0:
            say(f"pipeline stopped at stage {stage} (exit status {code}); continue with "
                f"`pipeline --out {folder.path} --resume`")
            return code
    path = write_report(folder)
    say(f"report: {path}")
    return 0
