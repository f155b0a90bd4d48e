"""Runs: the folder every command reads and writes, and the mechanics every command shares.

* ``folder.RunFolder``: config.json, one checkpoint per stage, metrics.jsonl,
  results.json, report.md; refusal to overwrite without ``--resume`` or
  ``--force``; stale inputs refused;
* ``signals.StopRequest``: Ctrl-C and SIGTERM finish the step, then save;
* ``config``: a stage's config from defaults, presets, files and flags, and
  flags checked against the stored config on ``--resume``;
* ``loop.train_stage``: drive any trainer, logging, saving, stopping on a
  signal or a NaN.
"""

from .config import add_config_arguments, check_resume, explicit_values, load_config_file, resolve
from .folder import RunFolder, StageRecord
from .loop import Outcome, train_stage
from .signals import Interrupted, StopRequest, stop_at_once

__all__ = [
    "RunFolder",
    "StageRecord",
    "StopRequest",
    "Interrupted",
    "stop_at_once",
    "Outcome",
    "train_stage",
    "add_config_arguments",
    "check_resume",
    "explicit_values",
    "load_config_file",
    "resolve",
]
