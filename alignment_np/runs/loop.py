"""Driving a trainer inside a run: log, save, stop on a signal, stop on NaN.

Every trainer of the package follows one protocol (``SFTTrainer`` is the
model): ``trainer.step`` counts the steps taken; ``trainer.train(data,
steps, progress, callback)`` calls ``callback(step, metrics)`` after each
step and stops when it returns True; ``train_step`` raises
``NonFiniteLossError`` *before* the optimiser step when the loss or the
gradient norm is NaN or infinite; ``trainer.save(path)`` writes everything
needed to continue exactly. ``train_stage`` adds what a run needs, the same
for every command:

* every step's metrics go to ``metrics.jsonl`` under the stage's name;
* ``save_every`` steps, and at the end, the checkpoint is saved (atomically)
  and config.json records the step;
* Ctrl-C or SIGTERM (``StopRequest``) stops at the end of the step and saves;
  the stage is then ``interrupted`` and ``--resume`` continues it exactly;
* a NaN or infinite loss stops the run naming the step; the model still holds
  the last good step's parameters (the bad update was never applied), and
  that state is what is saved. Should those parameters themselves hold an
  inf (an earlier update overflowed without yet making the loss NaN), nothing
  is saved and the last checkpoint on disk stays: it never holds a NaN model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..checks import NonFiniteLossError
from .folder import RunFolder
from .signals import StopRequest

__all__ = ["Outcome", "train_stage"]


@dataclass
class Outcome:
    """How a stage's session ended."""

    status: str
    """'complete', 'interrupted' (a signal; resumable) or 'failed' (a NaN; the last good state saved)."""

    step: int
    """Steps taken in all (the checkpoint's step)."""

    seconds: float
    """Wall time of this session's training."""

    exit_code: int
    """What the command returns: 0 complete, 130/143 interrupted by SIGINT/SIGTERM, 1 failed."""

    message: str
    """One line for the user: what happened and where the checkpoint is."""


def train_stage(run: RunFolder, stage: str, trainer, data, *, steps: int, stop: StopRequest,
                save_every: int = 0, progress: bool = True, checkpoint: str | None = None) -> Outcome:
    """Train ``trainer`` on ``data`` up to ``steps`` steps in all, as stage ``stage`` of ``run``.

    steps: the stage's total; a resumed trainer (``trainer.step`` > 0) takes
    the remaining ``steps - trainer.step``. checkpoint: where to save
    (default ``<run>/<stage>.npz``). Returns an ``Outcome``; the stage's
    record in config.json says the same (status, step, wall time).
    """
    path = run.checkpoint(stage) if checkpoint is None else checkpoint
    run.drop_metrics(stage, after_step=trainer.step)  # steps after the checkpoint are redone

    def save() -> None:
        trainer.save(path)
        run.update_stage(stage, step=trainer.step)

    def callback(step, metrics):
        run.log(stage, step, metrics)
        if save_every and step % save_every == 0:
            save()
        return stop.requested

    start = time.perf_counter()
    try:
        trainer.train(data, steps=max(steps - trainer.step, 0), progress=progress, callback=callback)
    except NonFiniteLossError as err:
        seconds = time.perf_counter() - start
        if _parameters_finite(trainer):
            save()  # the parameters of the last good step: the bad update was not applied
            kept = f"saved the last good state (step {trainer.step}) to {path}"
        else:  # an earlier update already overflowed (a huge learning rate): keep what is on disk
            kept = f"the weights are no longer finite, so {path} was left as it was ({_on_disk(run, stage)})"
        run.finish(stage, "failed", run.stage(stage).get("step", 0), seconds)
        return Outcome("failed", trainer.step, seconds, 1, f"{err}; stopped, and {kept}")
    save()
    seconds = time.perf_counter() - start
    if stop.requested and trainer.step < steps:
        run.finish(stage, "interrupted", trainer.step, seconds)
        return Outcome("interrupted", trainer.step, seconds, stop.exit_code,
                       f"{stop.signal_name}: stopped at step {trainer.step} of {steps}; saved {path} "
                       f"(continue with --resume)")
    run.finish(stage, "complete", trainer.step, seconds)
    return Outcome("complete", trainer.step, seconds, 0, f"step {trainer.step} in {seconds:.1f}s; saved {path}")


def _parameters_finite(trainer) -> bool:
    """True when every parameter of every model the trainer holds is finite (NaN and inf are not)."""
    from ..backend import get_array_module
    from ..nn.module import Module

    for value in vars(trainer).values():
        if isinstance(value, Module):
            for p in value.parameters():
                if not bool(get_array_module(p.data).isfinite(p.data).all()):
                    return False
    return True


def _on_disk(run: RunFolder, stage: str) -> str:
    step = (run.stage(stage) or {}).get("step", 0)
    return f"its last save, step {step}" if step else "no save had been made"
