"""The command line: ``python -m alignment_np COMMAND`` (or ``alignment-np COMMAND``).

The commands are the stages of the course's pipeline, each reading and
writing one run folder (``alignment_np.runs``)::

    python -m alignment_np sft --run runs/sentiment
    python -m alignment_np sample --run runs/sentiment --prompt "the film was"

Each command lives in ``alignment_np/commands/<name>.py``. Errors a user can
fix (a bad flag value, a missing file, a run that is already there) are
printed as one line, ``alignment-np CMD: error: ...``, with exit status 1;
argparse's own usage errors exit with 2; a run stopped by Ctrl-C or SIGTERM
exits with 130 or 143 after saving. ``ALIGNMENT_NP_TRACEBACK=1`` shows the
traceback instead of the one line (for developers).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys

from .commands import COMMANDS
from .runs.signals import Interrupted

__all__ = ["main", "build_parser"]

# The errors a user's input can cause: printed as one line, not a traceback.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, RuntimeError, ImportError, OSError)


def _module(name: str):
    return importlib.import_module(f"alignment_np.commands.{COMMANDS[name]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignment-np",
        description="alignment_np: the course's alignment pipeline on a tiny GPT, from the command line.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name in COMMANDS:
        module = _module(name)
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.__doc__.split("\n\n")[0]))
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 2 usage, 130/143 interrupted)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = "python -m alignment_np " + " ".join(shlex.quote(a) for a in argv)
    try:
        from .backend import apply_env_backend, set_backend

        if getattr(args, "backend", None):
            set_backend(args.backend)  # the flag wins over the environment
        else:
            apply_env_backend()  # ALIGNMENT_NP_BACKEND, or numpy
        return _module(args.command).run(args)
    except Interrupted as stopped:
        print(f"alignment-np {args.command}: {stopped}; nothing was written", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:  # Ctrl-C outside training (which saves) and outside a stage's work
        print(f"alignment-np {args.command}: interrupted (every checkpoint already saved is whole)", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if os.environ.get("ALIGNMENT_NP_TRACEBACK"):  # for developers: the whole story
            raise
        print(f"alignment-np {args.command}: error: {err}", file=sys.stderr)
        return 1
