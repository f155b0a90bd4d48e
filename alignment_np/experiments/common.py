"""What the four experiments share: their record in the run, their config, and where they write.

An experiment is recorded in the parent run's config.json as a stage of its
own, ``experiment_<name>`` (kind ``experiment``), made from the run's ``sft``,
``collect`` and ``rm``. So it behaves like every stage: a second run without
``--resume`` or ``--force`` is refused, ``--resume`` continues it (the
trainings and evaluations already done are skipped), a flag that would change
a resumed experiment is refused, and when the run's SFT model, pairs or reward
model are made again the experiment is stale. Its trainings are stages of
sub-runs (``subruns.py``); its numbers and plots go to::

    <run>/experiments/<name>.md      the table(s), every number with its standard error
    <run>/experiments/<name>.json    every number, with its SE, and the config it ran with
    <run>/experiments/<name>.png     the plot (matplotlib: the ``plots`` extra)

and a section of ``<run>/report.md`` links them.

An experiment's own config is a dataclass per experiment (its sweeps and
schedules) resolved like a stage's: the dataclass defaults < ``--preset``
(``PRESETS`` below: ``tiny`` runs each experiment in seconds) < ``--config``
file (one object per experiment, ``{"frontier": {...}, "noise": {...}}``).
The stages an experiment trains take the same ``--preset`` as the
``pipeline`` (``commands/common.py``), so a point at the default
hyper-parameters is the same training as the run's own stage.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

from ..checks import check_positive_int
from ..runs import RunFolder, check_resume, load_config_file, resolve

__all__ = ["PRESETS", "EXPERIMENT_INPUTS", "Stopped", "record_name", "tag", "check_float_tuple",
           "check_int_tuple", "open_experiment", "Experiment", "outputs_dir"]

# What every experiment is made from: the parent run's stages.
EXPERIMENT_INPUTS = ("sft", "collect", "rm")

# The experiments' own presets (their sweeps), beside the stages' presets of commands/common.py.
# "tiny": two points per sweep and two or three iterations, so that each experiment runs end to
# end on the tiny pipeline in seconds (the tests); "default": the dataclasses' own defaults.
PRESETS = {
    "default": {},
    "tiny": {
        "frontier": {"ppo_kl_coefs": (0.05, 0.2), "grpo_betas": (0.04, 0.2), "rloo_kl_coefs": (0.05, 0.2),
                     "dpo_betas": (0.1, 0.5), "bon_ns": (1, 2, 4), "bon_prompts": 16, "steps": 3,
                     "checkpoints": 3},
        "overoptimization": {"ppo_kl_coefs": (0.0, 0.05), "bon_ns": (1, 2, 4), "bon_prompts": 16, "steps": 3,
                             "checkpoints": 3, "examples": 3},
        "noise": {"flip_rates": (0.0, 0.4), "steps": 3, "checkpoints": 3},
        "kl_control": {"kl_target": 2.0, "kl_horizon": 100.0, "steps": 3, "checkpoints": 3, "tail": 1.0},
    },
}


class Stopped(Exception):
    """A stage the experiment ran was stopped by Ctrl-C or SIGTERM (it saved); carries its exit status."""

    def __init__(self, exit_code: int, message: str = "stopped"):
        self.exit_code = int(exit_code)
        super().__init__(message)


def record_name(name: str) -> str:
    """The experiment's stage name in the parent run: ``experiment_<name>``."""
    return f"experiment_{name}"


def outputs_dir(run: RunFolder) -> str:
    """``<run>/experiments``: the experiments' tables, JSON, plots and sub-runs (created)."""
    path = run.file("experiments")
    os.makedirs(path, exist_ok=True)
    return path


def tag(value) -> str:
    """A number as it appears in a stage name: 0.05 -> '0p05', 16 -> '16', 1e-05 -> '1e-05' (stage names
    allow lower-case letters, digits, '_' and '-')."""
    text = repr(float(value)) if not isinstance(value, int) else str(value)
    if text.endswith(".0"):
        text = text[:-2]
    return text.replace(".", "p").replace("+", "")


def _as_tuple(name: str, value) -> tuple:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name}: expected a list of numbers, got {type(value).__name__}")
    value = tuple(value)
    if not value:
        raise ValueError(f"{name}: expected at least one value, got none")
    return value


def check_float_tuple(name: str, value, low: float = 0.0, high: float = math.inf,
                      high_open: bool = False) -> tuple:
    """A non-empty list of distinct numbers in [low, high] (or [low, high)), as a sorted tuple of floats."""
    from ..checks import check_float

    value = _as_tuple(name, value)
    out = tuple(sorted(check_float(f"{name}[{i}]", v, low, high, high_open=high_open) for i, v in enumerate(value)))
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: expected distinct values, got {list(value)}")
    return out


def check_int_tuple(name: str, value) -> tuple:
    """A non-empty list of distinct positive ints, as a sorted tuple."""
    value = _as_tuple(name, value)
    out = tuple(sorted(check_positive_int(f"{name}[{i}]", v) for i, v in enumerate(value)))
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: expected distinct values, got {list(value)}")
    return out


@dataclasses.dataclass
class Experiment:
    """An opened experiment: the parent run, its resolved config, and how to treat what is there."""

    run: RunFolder
    name: str
    config: object
    preset: str | None
    resume: bool
    force: bool
    quiet: bool
    backend: str | None
    command: str | None
    started: float = dataclasses.field(default_factory=time.perf_counter)
    cpu_started: float = dataclasses.field(default_factory=time.process_time)

    @property
    def record(self) -> str:
        return record_name(self.name)


def open_experiment(args, name: str, cls) -> Experiment:
    """Check everything before any work, as ``commands.common.open_stage`` does for a stage.

    1. the parent run folder exists and holds complete, current ``sft``,
       ``collect`` and ``rm`` stages;
    2. the config: the dataclass defaults < the experiment preset < the
       ``--config`` file's section for this experiment; on ``--resume`` the
       stored config, and a file value or a ``--preset`` that would change it is
       refused;
    3. without ``--resume`` or ``--force``, an experiment that already ran is refused.
    Nothing is recorded yet: ``begin`` below does that, once everything loaded.
    """
    run = RunFolder(args.run, create=False)
    record = run.stage(record_name(name))
    resume, force = bool(args.resume), bool(args.force)
    if resume and force:
        raise ValueError("--resume and --force: give one of them (continue the experiment, or make it again)")
    if record is not None and not (resume or force):
        raise ValueError(
            f"{run.path} already holds experiment {name!r} ({record.get('status')}); continue it with --resume "
            f"or make it again with --force"
        )
    if resume and record is None:
        raise ValueError(f"--resume: {run.path} holds no experiment {name!r} to resume")
    file_values = load_config_file(args.config, name, tuple(PRESETS["tiny"])) if args.config else {}
    preset = args.preset
    if resume:
        stored = dict(record.get("config", {}))
        stored_preset = stored.pop("preset", None)
        if preset is not None and preset != stored_preset:
            raise ValueError(f"--preset: experiment {name!r} of {run.path} was made with --preset "
                             f"{stored_preset}, got {preset}; a resumed experiment keeps its config "
                             f"(make it again with --force to change it)")
        check_resume(stored, file_values, run=f"experiment {name!r} of {run.path}")
        config, preset = resolve(cls, {}, preset=stored), stored_preset
    else:
        config = resolve(cls, {}, file_values, PRESETS[preset or "default"].get(name, {}))
    for source in EXPERIMENT_INPUTS:
        run.require(source, by=f"experiment {name}")
    return Experiment(run, name, config, preset, resume, force, bool(args.quiet), getattr(args, "backend", None),
                      getattr(args, "command_line", None))


def begin(exp: Experiment, parts: int | None = None) -> None:
    """Record the experiment as running in the parent run (``parts``: its trainings and evaluations)."""
    config = {"preset": exp.preset, **_plain(dataclasses.asdict(exp.config))}
    exp.run.begin(exp.record, config, inputs=EXPERIMENT_INPUTS, resume=exp.resume, force=exp.force,
                  command=exp.command, steps=parts)
    exp.run.update_stage(exp.record, kind="experiment")


def _plain(value):
    """Tuples as lists, recursively (config.json is JSON; resolving a list gives the tuple back)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
