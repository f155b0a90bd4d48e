"""A stage's config: one dataclass, read from defaults, a config file and flags, checked on resume.

Each command describes what a user can set as a dataclass with a docstring
per field (``commands/sft.py``'s ``SFTStageConfig``, ...). From it:

* ``add_config_arguments`` makes one flag per field (``batch_size`` ->
  ``--batch-size``), its help the field's docstring, its default ``None`` so
  that a flag *given* can be told from one left out (the flaw that let
  ``sft --resume`` silently restart the schedule at the default ``--steps``);
* ``resolve`` builds the config: the dataclass defaults, then a preset, then the
  config file, then the flags given; an unknown key in the file is an error
  naming the file and the known keys; a bad value names the flag (or the
  file's key) it came from;
* ``check_resume`` compares the flags given on ``--resume`` with the stored
  config: a flag that would change the run is refused, naming the flag, the
  stored and the given value (a resumed run is the same run).

Config files are JSON: either the stage's own fields, ``{"lr": 0.001}``, or a
pipeline file with one object per stage, ``{"sft": {...}, "dpo": {...}}``,
of which each command reads its own section.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import math
import os
import textwrap
import typing

__all__ = [
    "add_config_arguments",
    "explicit_values",
    "field_docs",
    "flag_name",
    "load_config_file",
    "resolve",
    "check_resume",
]


def flag_name(field: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")


@functools.lru_cache(maxsize=None)
def field_docs(cls) -> dict:
    """{field: docstring} of a dataclass whose fields carry docstrings (read from its source).

    The string literal right after a field's annotation documents it (the
    convention of the project's configs, as in nanoGPT and CleanRL). Fields
    inherited from a base dataclass take the base's docstrings; a field made
    without source (``dataclasses.make_dataclass``) may carry its doc in
    ``metadata["doc"]``. Fields whose source cannot be read have no doc.
    """
    docs = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(getattr(after, "value", None), ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    for f in dataclasses.fields(cls):
        if "doc" in f.metadata:
            docs[f.name] = f.metadata["doc"]
    return docs


def _parse_optional(kind):
    def parse(text: str):
        if text.lower() in ("none", "null"):
            return None
        return kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def _flag_type(hint):
    """(argparse type, is_bool) for a field's type hint; None when the field has no flag (e.g. tuples)."""
    if hint in (int, float, str):
        return hint, False
    if hint is bool:
        return None, True
    args = typing.get_args(hint)
    if len(args) == 2 and type(None) in args:  # Optional[X] / X | None
        inner = args[0] if args[1] is type(None) else args[1]
        if inner in (int, float, str):
            return _parse_optional(inner), False
    return None, False


def add_config_arguments(parser: argparse.ArgumentParser, cls, exclude=(), title: str | None = None,
                         defaults: dict | None = None) -> None:
    """One flag per field of dataclass ``cls`` (except ``exclude``); defaults stay None (= not given).

    Fields whose type has no flag form (tuples, dicts) can still be set in a
    config file. ``metadata={"choices": [...]}`` on a field restricts its flag.
    defaults: values that replace the dataclass's in the help text (a preset
    the command applies when nothing else is given).
    """
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        kind, is_bool = _flag_type(hints[f.name])
        if kind is None and not is_bool:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        default = (defaults or {}).get(f.name, default)
        doc = docs.get(f.name, "")
        help_text = (doc + " " if doc else "") + f"(default: {default})"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if is_bool:
            group.add_argument(flag_name(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        else:
            group.add_argument(flag_name(f.name), dest=f.name, type=kind, default=None,
                               choices=f.metadata.get("choices"), metavar=f.name.upper(), help=help_text)


def explicit_values(args: argparse.Namespace, cls, exclude=()) -> dict:
    """{field: value} of the flags of ``cls`` that were given on the command line."""
    names = {f.name for f in dataclasses.fields(cls)} - set(exclude)
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def load_config_file(path: str | os.PathLike, section: str | None = None, sections=()) -> dict:
    """The values for one stage from a JSON config file.

    path: a JSON object. It is either the stage's own fields, or a pipeline
    file whose top-level keys are stage names (``sections``); then
    ``section``'s object is returned ({} if absent). Errors name the path.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, parse_constant=_refuse_constant)
    except FileNotFoundError:
        raise FileNotFoundError(f"--config: no file at {path!r}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"--config {path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a JSON object, got {type(data).__name__}")
    if sections and any(k in sections for k in data):
        unknown = sorted(k for k in data if k not in sections and k != "task")
        if unknown:
            raise ValueError(f"--config {path}: unknown sections {unknown}; expected some of {list(sections)}")
        part = data.get(section, {})
        if not isinstance(part, dict):
            raise ValueError(f"--config {path}: section {section!r} must be an object, got {type(part).__name__}")
        return dict(part)
    return data


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number a config may hold")


def resolve(cls, explicit: dict, file_values: dict | None = None, preset: dict | None = None,
            source: str = "--config"):
    """An instance of ``cls`` from its defaults, then ``preset``, then ``file_values``, then ``explicit``.

    Unknown keys in ``file_values`` or ``preset`` raise ValueError listing the
    known ones. The dataclass validates its values (``__post_init__``); its
    ValueError is re-raised naming where the value came from: the flag
    (``--steps: expected a positive int, got 0``) or the file's key.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    for where, values in (("preset", preset), (source, file_values)):
        unknown = sorted(set(values or {}) - set(names))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; the known keys are {names}")
    values = {**(preset or {}), **(file_values or {}), **explicit}
    try:
        return cls(**values)
    except (ValueError, TypeError) as err:
        message = str(err)
        for name in names:
            if message.startswith(f"{name}:"):
                origin = flag_name(name) if name in explicit else (
                    f"{source} key {name!r}" if name in (file_values or {}) else name)
                raise type(err)(origin + message[len(name):]) from err
        raise


def check_resume(stored: dict, explicit: dict, may_change=(), run: str = "the run") -> None:
    """Refuse flags given on ``--resume`` that differ from the stored config.

    stored: the stage's config as config.json keeps it. explicit: the flags
    given now. may_change: fields a resumed run may change (e.g. ``steps``,
    to train longer). Everything else is the run's identity: changing it on
    resume would silently make a different run under the same name.
    """
    for name, value in explicit.items():
        if name in may_change or name not in stored:
            continue
        old = stored[name]
        same = old == value or (
            isinstance(old, float) and isinstance(value, float) and math.isclose(old, value, rel_tol=1e-12)
        )
        if not same:
            flag = flag_name(name)
            raise ValueError(
                f"{flag}: {run} was made with {flag} {old}, got {value}; a resumed run keeps its "
                f"config (start it again with --force to change it)"
            )
