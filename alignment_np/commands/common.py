"""What every stage command shares: the run flags, opening a stage, presets, printing.

A stage command (``sft``, ``collect``, ``rm``, ``dpo``, ``eval``, ...) is
a module with ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``;
``cli.py`` collects them. ``open_stage`` does the part that is the same for
all of them, before any work starts:

1. open the run folder (created, checked for writing);
2. resolve the stage's config: dataclass defaults < ``--preset`` < ``--config``
   file < flags given;
3. on ``--resume``, refuse flags that would change the stored config;
   without ``--resume`` or ``--force``, refuse a stage that already ran;
4. check the stages it reads are complete and current, record it as running.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import time

from ..backend import BACKENDS
from ..checks import check_nonneg_int
from ..runs import RunFolder, add_config_arguments, check_resume, explicit_values, load_config_file, resolve
from ..runs.signals import Interrupted, stop_at_once

__all__ = ["STAGES", "PRESETS", "add_run_arguments", "add_stage_config", "open_stage", "Stage", "say"]

# The stages a pipeline config file may hold a section for, in pipeline order.
STAGES = ("sft", "collect", "rm", "dpo", "eval", "ppo", "grpo", "rloo", "bon")

# Named configs: "default" is the run the README describes (the dataclasses' own
# defaults, plus what the sentiment task needs: completions long enough for its
# longest review, 66 characters with <eos>); "tiny" makes every stage take
# seconds, for tests and a first look. A preset sits under --config and the flags.
_RESPONSE = 66
PRESETS = {
    "default": {
        # DPO gentler than DPOConfig's defaults (TRL's beta 0.1, lr 1e-3 for a few hundred pairs): on the
        # sentiment task's 2,000 pairs, beta 0.1 with lr 1e-4 raised the rater's score as much but cut the
        # grammatical fraction from 0.87 to 0.30 (KL 14 nats); beta 0.5 kept 0.81 at KL 1.2.
        "dpo": {"beta": 0.5, "lr": 1e-4, "batch_size": 32, "steps": 100},
        "ppo": {"response_length": _RESPONSE},
        # GRPO's KL weight above the paper's 0.04: at 0.04 the group-normalised advantages drove the policy to
        # 11.5 nats and half its completions ungrammatical (gain +0.57); at 0.1, 4.6 nats, 0.76 grammatical
        # (gain +0.49), on a trial run of 100 iterations.
        "grpo": {"max_completion_length": _RESPONSE, "beta": 0.1},
        "rloo": {"response_length": _RESPONSE},
    },
    "tiny": {
        "sft": {"lines": 300, "eval_lines": 40, "d_model": 32, "n_layer": 1, "n_head": 2, "steps": 100,
                "batch_size": 8, "warmup_steps": 5, "lr": 0.01},
        "collect": {"prompts": 48, "samples_per_prompt": 4, "heldout_prompts": 16, "batch_size": 64, "min_gap": 0.0},
        "rm": {"steps": 10, "batch_size": 8},
        "dpo": {"steps": 10, "batch_size": 8},
        "eval": {"samples": 32, "batch_size": 32},
        "ppo": {"steps": 3, "batch_size": 8, "num_mini_batches": 2, "num_ppo_epochs": 2, "response_length": _RESPONSE},
        "grpo": {"steps": 3, "batch_size": 4, "num_generations": 4, "max_completion_length": _RESPONSE},
        "rloo": {"steps": 3, "batch_size": 4, "rloo_k": 4, "response_length": _RESPONSE},
        "bon": {"samples": 16},
    },
}


def say(text: str = "", quiet: bool = False) -> None:
    """Print a line of the command's log to stdout (nothing when ``quiet``)."""
    if not quiet:
        print(text, flush=True)


def add_run_arguments(parser: argparse.ArgumentParser, resumable: bool = True) -> None:
    """The flags every stage command takes: where the run is, and how to treat what is there."""
    parser.add_argument("--run", required=True, metavar="DIR",
                        help="the run folder (created if needed); every stage reads and writes it")
    parser.add_argument("--config", metavar="FILE",
                        help="a JSON config: this stage's fields, or one object per stage as `pipeline` takes")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="a named config under the file and the flags: 'tiny' runs in seconds (default: default)")
    if resumable:
        parser.add_argument("--resume", action="store_true",
                            help="continue the stage that is in the run folder, exactly where it stopped")
    parser.add_argument("--force", action="store_true",
                        help="start the stage again, overwriting what the run folder holds for it")
    parser.add_argument("--backend", choices=BACKENDS, default=None,
                        help="array backend (default: $ALIGNMENT_NP_BACKEND, or numpy)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no per-step lines")
    parser.add_argument("--save-every", type=int, default=0, metavar="N",
                        help="also save the checkpoint every N steps (default 0: at the end and on a stop)")


def add_stage_config(parser: argparse.ArgumentParser, cls, exclude=(), section: str | None = None) -> None:
    """The flags of a stage's config dataclass, in their own help section.

    section: the stage's section of the presets; the default preset's values
    are the defaults the help shows.
    """
    add_config_arguments(parser, cls, exclude=exclude, title=f"{cls.__name__} (also settable in --config)",
                         defaults=PRESETS["default"].get(section, {}) if section else None)


@dataclasses.dataclass
class Stage:
    """An opened stage: its run folder, resolved config, and whether it resumes."""

    run: RunFolder
    name: str
    config: object
    resume: bool
    force: bool
    quiet: bool
    save_every: int
    inputs: tuple
    steps: int | None
    command: str | None

    @property
    def checkpoint(self) -> str:
        return self.run.checkpoint(self.name)

    def begin(self) -> None:
        """Record the stage as running (call it once everything is loaded and checked, just before the work)."""
        self.run.begin(self.name, dataclasses.asdict(self.config), inputs=self.inputs, resume=self.resume,
                       force=self.force, command=self.command, steps=self.steps)

    def train(self, trainer, data, kind: str | None = None):
        """``begin()``, then train to ``config.steps`` under the run's mechanics (``runs.train_stage``).

        kind: what the stage's checkpoint holds ("policy", "reward_model"),
        recorded so that ``eval`` finds the policies. Prints the outcome's line
        when the stage did not complete. Returns the ``Outcome``.
        """
        from ..runs import StopRequest, train_stage

        self.begin()
        if kind is not None:
            self.run.update_stage(self.name, kind=kind)
        with StopRequest() as stop:
            outcome = train_stage(self.run, self.name, trainer, data, steps=self.steps, stop=stop,
                                  save_every=self.save_every, progress=not self.quiet)
        if outcome.status != "complete":
            print(outcome.message, flush=True)
        return outcome

    @contextlib.contextmanager
    def work_written_at_the_end(self):
        """``begin()``, then the body with Ctrl-C / SIGTERM stopping at once (``runs.stop_at_once``).

        For stages that write their output only when done (collect, eval):
        a stop or an error leaves nothing half-written, and the stage is
        recorded as interrupted or failed. Yields a dict; set its "step" to
        what the record's step should say. The body records completion itself.
        """
        self.begin()
        start, state = time.perf_counter(), {"step": 0}
        try:
            with stop_at_once():
                yield state
        except Interrupted:
            self.run.finish(self.name, "interrupted", state["step"], time.perf_counter() - start)
            raise
        except BaseException:
            self.run.finish(self.name, "failed", state["step"], time.perf_counter() - start)
            raise


def open_stage(args, name: str, cls, *, inputs=(), may_change=("steps",), steps_field: str | None = "steps",
               config_section: str | None = None, checkpointed: bool = True) -> Stage:
    """Everything a stage command checks before its work, the same way for all; see the module docstring.

    Nothing is recorded yet: the command loads and checks what it needs, then
    calls ``Stage.begin()`` just before the work, so that a mistake found
    while loading leaves the run folder as it was.

    name: the stage's name in the run (its checkpoint is ``<name>.npz``).
    cls: the stage's config dataclass. inputs: the stages it reads, or a
    function of the resolved config that returns them.
    may_change: config fields a ``--resume`` may change (``steps``: train longer).
    config_section: the section of a pipeline config file and of the preset to
    read (default ``name``). checkpointed: the stage writes ``<name>.npz`` (a
    ``--resume`` needs it).
    """
    save_every = check_nonneg_int("--save-every", getattr(args, "save_every", 0))
    section = config_section or name
    run = RunFolder(args.run)
    explicit = explicit_values(args, cls)
    file_values = load_config_file(args.config, section, STAGES) if args.config else {}
    preset = PRESETS[args.preset or "default"].get(section, {})
    resume = bool(getattr(args, "resume", False))
    force = bool(getattr(args, "force", False))
    record = run.stage(name)
    if record is not None and not (resume or force):
        how = "continue it with --resume or start it again with --force" if hasattr(args, "resume") \
            else "make it again with --force"
        raise ValueError(
            f"{run.path} already holds stage {name!r} ({record.get('status')}, step {record.get('step')} of "
            f"{record.get('steps')}); {how}"
        )
    if resume and record is None:
        raise ValueError(f"--resume: {run.path} holds no stage {name!r} to resume")
    if resume and force:
        raise ValueError("--resume and --force: give one of them (continue the stage, or start it again)")
    if resume and checkpointed and not os.path.exists(run.checkpoint(name)):
        raise ValueError(
            f"--resume: stage {name!r} of {run.path} stopped before its first save ({run.checkpoint(name)} "
            f"does not exist); start it again with --force"
        )
    if resume and record is not None:
        stored = record.get("config", {})
        given = {**file_values, **explicit}
        check_resume(stored, given, may_change=may_change, run=f"stage {name!r} of {run.path}")
        changes = {k: v for k, v in given.items() if k in may_change}
        config = resolve(cls, changes, preset=stored)
    else:
        config = resolve(cls, explicit, file_values, preset)
    if callable(inputs):
        inputs = inputs(config)
    for source in inputs:
        run.require(source, by=name)
    steps = getattr(config, steps_field) if steps_field else None
    if resume and record is not None and steps is not None and steps < int(record.get("step") or 0):
        raise ValueError(
            f"--{steps_field}: the stage {name!r} has already taken {record.get('step')} steps; "
            f"got --{steps_field} {steps}"
        )
    return Stage(run, name, config, resume, force, bool(getattr(args, "quiet", False)), save_every,
                 tuple(inputs), steps, getattr(args, "command_line", None))
