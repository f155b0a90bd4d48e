"""A run folder: everything one run of the pipeline wrote, in one place.

Every command (``sft``, ``collect``, ``rm``, ``dpo``, ``eval``, ``ppo``, ...)
reads and writes the same folder, so a later stage, a resumed one, or a person
with another rater can pick up any stage's output::

    runs/sentiment/
        config.json        the task, and per stage: its resolved config, status,
                           step, wall time, the command that ran it, an id, and
                           the ids of the stages it was made from
        sft.npz            one checkpoint per stage, named after it
        preferences.jsonl  the collected pairs (collect)
        rm.npz, dpo.npz    ... (later: ppo.npz, grpo.npz, rloo.npz)
        metrics.jsonl      one JSON object per logged step: {"stage", "step", <TRL names>}
        results.json       each stage's measured numbers (what the report shows)
        report.md          the report, rebuilt from results.json after each stage
        *.png              plots

Nothing a user made is lost or silently changed:

* a stage that already ran is refused unless ``--resume`` (continue it) or
  ``--force`` (start it again) is given;
* a stage records the ids of the stages it was made from; when one of them is
  made again (``--force``) the later stage is *stale* and is refused as an
  input until it is made again too, instead of mixing two runs' outputs;
* every file is written atomically (``io.atomic_write``): a crash leaves the
  previous version whole; temporary files of a crashed writer are removed
  when a run starts (``io.remove_stale_temporaries``);
* the folder is checked for writing before any training starts.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
import uuid

from ..io import atomic_write, remove_stale_temporaries

__all__ = ["RunFolder", "StageRecord"]

CONFIG = "config.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
REPORT = "report.md"

STATUSES = ("running", "interrupted", "failed", "complete")


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def _write_json(path: str, value) -> None:
    text = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _read_json(path: str, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the run's {what} is not valid JSON ({err})") from err


class StageRecord(dict):
    """What config.json keeps about one stage (a dict, so it is its own JSON).

    Keys: ``config`` (the resolved config), ``status`` (one of running,
    interrupted, failed, complete), ``step`` and ``steps`` (progress), ``id``
    (new each time the stage starts afresh), ``inputs`` ({stage: id} of the
    stages it was made from), ``seconds`` (wall time, all sessions), ``commands``
    (every command line that ran it), ``started`` / ``finished`` (ISO times).
    """

    @property
    def complete(self) -> bool:
        return self.get("status") == "complete"


class RunFolder:
    """The folder of one run. ``RunFolder(path)`` creates it if needed and checks it can be written.

    path: the folder (created with its parents). A path that is a file, or a
    folder that cannot be written, raises ValueError naming it, before any work.
    """

    def __init__(self, path: str | os.PathLike, create: bool = True):
        self.path = os.fspath(path)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"{self.path}: is a file; a run is a folder (give a folder path)")
        if not create and not os.path.isdir(self.path):
            raise FileNotFoundError(f"{self.path}: no run folder there (make one with `pipeline` or `sft`)")
        try:
            os.makedirs(self.path, exist_ok=True)
            # Can we really write here? Create and remove a file, as every save will.
            fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=self.path)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise ValueError(f"{self.path}: cannot write into the run folder ({err.strerror or err})") from err
        self.removed_temporaries = remove_stale_temporaries(self.path)

    # ------------------------------------------------------------------ paths
    def file(self, name: str) -> str:
        """The path of ``name`` inside the run folder."""
        return os.path.join(self.path, name)

    def checkpoint(self, stage: str) -> str:
        """``<run>/<stage>.npz``."""
        return self.file(f"{stage}.npz")

    # ------------------------------------------------------------------ config.json
    def read_config(self) -> dict:
        """config.json as a dict: {"task": ..., "stages": {name: StageRecord}} (empty if new)."""
        path = self.file(CONFIG)
        if not os.path.exists(path):
            return {"task": None, "stages": {}}
        data = _read_json(path, "config")
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise ValueError(f"{path}: expected an object with a 'stages' object, got {str(data)[:80]}")
        data["stages"] = {k: StageRecord(v) for k, v in data["stages"].items()}
        return data

    def _write_config(self, data: dict) -> None:
        _write_json(self.file(CONFIG), data)

    @property
    def task(self) -> str | None:
        """The task the run was made for (set by its first stage)."""
        return self.read_config().get("task")

    def set_task(self, task: str) -> None:
        """Record the run's task; a run holds one task: another one is refused."""
        data = self.read_config()
        if data.get("task") not in (None, task):
            raise ValueError(f"--task: the run at {self.path} is for task {data['task']!r}, got {task!r}")
        data["task"] = task
        self._write_config(data)

    def stage(self, name: str) -> StageRecord | None:
        """The record of stage ``name``, or None if it never ran."""
        return self.read_config()["stages"].get(name)

    def stages(self) -> dict:
        """{name: StageRecord} of every stage that ran, in the order they first ran."""
        return self.read_config()["stages"]

    def update_stage(self, name: str, **fields) -> StageRecord:
        """Set ``fields`` of stage ``name``'s record (created if new) and write config.json."""
        data = self.read_config()
        record = data["stages"].setdefault(name, StageRecord())
        if "status" in fields and fields["status"] not in STATUSES:
            raise ValueError(f"status: expected one of {STATUSES}, got {fields['status']!r}")
        record.update(fields)
        self._write_config(data)
        return record

    def begin(self, name: str, config: dict, inputs=(), resume: bool = False, force: bool = False,
              command: str | None = None, steps: int | None = None) -> StageRecord:
        """Start (or resume) stage ``name``; refuse to overwrite a stage that already ran.

        config: the stage's resolved config (JSON-ready); inputs: the names of
        the stages it is made from (each must be complete and not stale).
        resume: continue the stage that is there; force: start it afresh,
        discarding what it had (its metrics lines too). Returns its record.
        """
        existing = self.stage(name)
        if resume and force:
            raise ValueError("--resume and --force: give one of them (continue the stage, or start it again)")
        if existing is not None and not (resume or force):
            raise ValueError(
                f"{self.path} already holds stage {name!r} ({existing.get('status')}, step "
                f"{existing.get('step')} of {existing.get('steps')}); continue it with --resume or "
                f"start it again with --force"
            )
        if resume and existing is None:
            raise ValueError(f"--resume: {self.path} holds no stage {name!r} to resume")
        input_ids = {}
        for source in inputs:
            input_ids[source] = self.require(source, by=name)["id"]
        if existing is not None and resume:
            if existing.get("inputs", {}) != input_ids:
                changed = [s for s in input_ids if existing.get("inputs", {}).get(s) != input_ids[s]]
                raise ValueError(
                    f"--resume: stage {name!r} was made from another version of {changed} "
                    f"(made again since); start it again with --force"
                )
            commands = list(existing.get("commands", [])) + ([command] if command else [])
            return self.update_stage(name, status="running", commands=commands, config=config,
                                     **({} if steps is None else {"steps": steps}))
        if existing is not None:  # force: this stage starts again; its old metrics go
            self.drop_metrics(name)
        data = self.read_config()
        data["stages"].pop(name, None)  # a fresh record goes to the end, in run order
        self._write_config(data)
        return self.update_stage(
            name, config=config, status="running", step=0, steps=steps, id=uuid.uuid4().hex[:12],
            inputs=input_ids, seconds=0.0, commands=[command] if command else [], started=_now(),
        )

    def require(self, name: str, by: str | None = None) -> StageRecord:
        """Stage ``name``'s record; ValueError unless it is complete and made from current inputs."""
        record = self.stage(name)
        who = f"stage {by!r} needs" if by else "needs"
        if record is None:
            raise ValueError(f"{self.path}: {who} stage {name!r}, which has not run (run `{name}` first)")
        if not record.complete:
            raise ValueError(
                f"{self.path}: {who} stage {name!r}, which is {record.get('status')} at step "
                f"{record.get('step')} of {record.get('steps')} (finish it with `{name} --resume`)"
            )
        stale = self.stale_inputs(name)
        if stale:
            raise ValueError(
                f"{self.path}: {who} stage {name!r}, which is stale: it was made from a version of "
                f"{stale} that was made again since (make {name!r} again with --force)"
            )
        return record

    def stale_inputs(self, name: str) -> list[str]:
        """The inputs of stage ``name`` whose current id is not the one it was made from."""
        stages = self.stages()
        record = stages.get(name) or {}
        return [s for s, i in record.get("inputs", {}).items() if (stages.get(s) or {}).get("id") != i]

    def finish(self, name: str, status: str, step: int, seconds: float) -> StageRecord:
        """Record how a session of stage ``name`` ended (its wall time adds up over sessions)."""
        record = self.stage(name) or StageRecord()
        fields = {"status": status, "step": int(step), "seconds": float(record.get("seconds", 0.0)) + seconds}
        if status == "complete":
            fields["finished"] = _now()
        return self.update_stage(name, **fields)

    # ------------------------------------------------------------------ metrics.jsonl
    def log(self, stage: str, step: int, metrics: dict) -> None:
        """Append one line {"stage", "step", **metrics} to metrics.jsonl (flushed at once).

        Appending is not atomic, but a torn last line (a crash mid-write) is
        skipped when reading, and every earlier line stays valid.
        """
        row = {"stage": stage, "step": int(step)}
        row.update({k: _plain(v) for k, v in metrics.items()})
        line = json.dumps(row, ensure_ascii=False)  # NaN is written as NaN: a log shows what happened
        with open(self.file(METRICS), "ab+") as f:
            if f.tell() > 0:  # "ab+" starts at the end
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # the last line was torn: start a new one, keep this row whole
                    f.write(b"\n")
            f.write((line + "\n").encode("utf-8"))

    def metrics(self, stage: str | None = None) -> list[dict]:
        """The logged rows (of ``stage``, or all), the last row per (stage, step) kept, in step order."""
        path = self.file(METRICS)
        if not os.path.exists(path):
            return []
        rows: dict[tuple, dict] = {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a crash
                if isinstance(row, dict) and (stage is None or row.get("stage") == stage):
                    rows[(row.get("stage"), row.get("step"))] = row
        return sorted(rows.values(), key=lambda r: (str(r.get("stage")), r.get("step", 0)))

    def drop_metrics(self, stage: str, after_step: int = -1) -> None:
        """Remove ``stage``'s metric rows with step > ``after_step`` (all of them by default).

        Resuming from step k redoes the steps after k: their old rows (logged
        after the last save, before a crash) would otherwise appear twice.
        """
        path = self.file(METRICS)
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
        kept = []
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not (isinstance(row, dict) and row.get("stage") == stage and row.get("step", 0) > after_step):
                kept.append(line if line.endswith("\n") else line + "\n")
        if len(kept) != len(lines):
            atomic_write(path, lambda f: f.write("".join(kept).encode("utf-8")))

    # ------------------------------------------------------------------ results.json
    def results(self) -> dict:
        """{stage: numbers} that the stages measured (empty if none)."""
        path = self.file(RESULTS)
        return _read_json(path, "results") if os.path.exists(path) else {}

    def save_results(self, stage: str, values: dict) -> None:
        """Record stage ``stage``'s measured numbers (replacing its earlier ones)."""
        data = self.results()
        data[stage] = values
        _write_json(self.file(RESULTS), data)

    def write_report(self, text: str) -> str:
        """Write report.md (atomically); returns its path."""
        path = self.file(REPORT)
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
        return path


def _plain(value):
    """A metric as a JSON-ready Python value (NumPy scalars and 0-d arrays become numbers)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value
