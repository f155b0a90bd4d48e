"""Preference pairs: a prompt, the response a rater chose, the one they rejected.

This is the raw material of every method in the course: a reward model learns
to score ``chosen`` above ``rejected`` (Bradley-Terry), DPO learns a policy
directly from the same pairs. On disk a dataset is JSON Lines, one object per
line with the Hugging Face Hub's column names::

    {"prompt": "How do I boil an egg?", "chosen": "Simmer it for 8 minutes.", "rejected": "No."}

so a file written here loads with ``datasets.load_dataset("json", ...)`` and
TRL's trainers, and a Hub dataset exported to JSONL loads here.

Extra fields
------------
Hub datasets carry more columns than the three (a score per response, a
source, an id), and so do the pairs this package collects (the rater's scores,
whether a label was flipped on purpose). They are kept, not dropped: every key
other than the three lands, in file order, in the pair's ``meta`` dict, and
``save_preferences`` writes it back after the three::

    {"prompt": "the soup was", "chosen": " superb .", "rejected": " cold .", "score_chosen": 0.63}
    -> PreferencePair("the soup was", " superb .", " cold .", meta={"score_chosen": 0.63})

``PreferencePair(prompt, chosen, rejected)`` keeps its course signature:
``meta`` is an optional fourth field (default empty), compared like the others.
Its values are any JSON values (numbers, strings, booleans, null, lists,
objects), finite and at most ``MAX_DEPTH`` levels deep.

Three promises
--------------
* nothing a user wrote is lost: writing goes to a temporary file in the same
  directory, then ``os.replace`` swaps it in (atomic on POSIX and Windows), so
  a crash mid-write leaves the previous file intact;
* a bad file fails loudly: the error names the path, the 1-based line number
  and what is wrong with that line, and nothing is guessed or repaired;
* a pathological file fails early and cheaply, never by exhausting memory or
  the recursion limit. Decided once, for every line:

  accepted: a UTF-8 byte-order mark at the very start of the file (Windows
  editors write one); ``\\r\\n`` line endings; blank lines; extra keys (kept in
  ``meta``), nested up to ``MAX_DEPTH`` levels; any valid Unicode text.

  refused, with a ValueError naming the path and the line:
  - bytes that are not UTF-8 (UTF-16 included), and a byte-order mark
    anywhere but the start of the file;
  - the literals ``NaN``, ``Infinity``, ``-Infinity`` and numbers that
    overflow to infinity (``1e999``): JSON has no such values, and one NaN
    score would poison every mean computed from the file;
  - a line longer than ``max_line_bytes`` (default 16 MiB), read no further;
  - nesting deeper than ``MAX_DEPTH`` (which also keeps Python's recursion
    limit out of reach);
  - a lone surrogate (``"\\ud800"``): not text, and not writable as UTF-8;
  - a line that is not one JSON object, a missing key, a duplicated key, and
    a prompt, chosen or rejected that is not a string (the conversational
    format, a list of messages, included).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterable, Sequence

from ..io import atomic_write

__all__ = [
    "PreferencePair",
    "create_preference_dataset",
    "save_preferences",
    "load_preferences",
    "MAX_DEPTH",
    "MAX_LINE_BYTES",
]

_KEYS = ("prompt", "chosen", "rejected")

MAX_DEPTH = 32
"""Deepest nesting of lists and objects accepted in a line (the line's own object is level 1)."""

MAX_LINE_BYTES = 16 * 2**20
"""Default longest line ``load_preferences`` reads (16 MiB): far above any real
pair, far below what would exhaust a laptop's memory."""


@dataclass
class PreferencePair:
    """One human (or AI) judgement: for ``prompt``, ``chosen`` beat ``rejected``.

    prompt: the context both responses answer (may be empty).
    chosen: the preferred response, y_w ("winner") in the papers.
    rejected: the dispreferred response, y_l ("loser").
    meta: optional extra fields (a dict with str keys and JSON values), e.g.
        the rater's scores; kept through ``save_preferences`` /
        ``load_preferences``. Its keys may not be "prompt", "chosen" or "rejected".
    """

    prompt: str
    chosen: str
    rejected: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in fields(self)[:3]:
            value = getattr(self, f.name)
            if not isinstance(value, str):
                raise TypeError(
                    f"PreferencePair.{f.name}: expected str, got {type(value).__name__} ({value!r:.60})"
                )
        _check_meta(self.meta, "PreferencePair.meta")

    def __repr__(self) -> str:
        # The course's three-field repr when there is nothing more to show.
        extra = f", meta={self.meta!r}" if self.meta else ""
        return f"PreferencePair(prompt={self.prompt!r}, chosen={self.chosen!r}, rejected={self.rejected!r}{extra})"


def _check_meta(meta, name: str) -> None:
    if not isinstance(meta, dict):
        raise TypeError(f"{name}: expected a dict of extra fields, got {type(meta).__name__}")
    for key in meta:
        if not isinstance(key, str):
            raise TypeError(f"{name}: keys must be str, got {type(key).__name__} {key!r}")
        if key in _KEYS:
            raise ValueError(f"{name}: key {key!r} is one of the pair's own fields {list(_KEYS)}")
        if not _is_text(key):
            raise ValueError(f"{name}: key {key!r} holds a lone surrogate (not valid Unicode text)")


def _as_list(name: str, values) -> list:
    # A str is a sequence of characters: create_preference_dataset("hi", ...)
    # would silently build one pair per character.
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name}: expected a sequence of str, got a single {type(values).__name__}")
    try:
        return list(values)
    except TypeError:
        raise TypeError(f"{name}: expected a sequence of str, got {type(values).__name__}") from None


def create_preference_dataset(
    prompts: Sequence[str],
    chosen_responses: Sequence[str],
    rejected_responses: Sequence[str],
) -> list[PreferencePair]:
    """Zip three parallel lists into ``PreferencePair``s.

    prompts, chosen_responses, rejected_responses: sequences of str, all of
    the same length N. Returns a list of N pairs.

    Raises ValueError if the lengths differ (naming all three: silently
    truncating to the shortest, as ``zip`` would, would misalign every pair
    after a missing line), and TypeError naming the argument, index and type
    of any element that is not a str.
    """
    columns = {
        "prompts": _as_list("prompts", prompts),
        "chosen_responses": _as_list("chosen_responses", chosen_responses),
        "rejected_responses": _as_list("rejected_responses", rejected_responses),
    }
    lengths = {name: len(col) for name, col in columns.items()}
    if len(set(lengths.values())) != 1:
        described = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"prompts, chosen_responses and rejected_responses must have the same length; got {described}")
    for name, col in columns.items():
        for i, value in enumerate(col):
            if not isinstance(value, str):
                raise TypeError(f"{name}[{i}]: expected str, got {type(value).__name__} ({value!r:.60})")
    return [PreferencePair(p, c, r) for p, c, r in zip(*columns.values())]


def save_preferences(pairs: Iterable[PreferencePair], path: str | os.PathLike) -> None:
    """Write ``pairs`` to ``path`` as UTF-8 JSON Lines, atomically.

    Each line is ``{"prompt": ..., "chosen": ..., "rejected": ..., **meta}``
    with ``ensure_ascii=False`` (text stays readable; ``json.dumps`` escapes
    newlines inside strings, so one pair is always one line). The file is
    built beside the target and moved over it with ``os.replace``: readers
    see either the old file or the complete new one, never half of it.

    Raises TypeError for an item that is not a PreferencePair or a field of
    the wrong type, and ValueError (naming the pair, and the key) for what
    ``load_preferences`` would refuse: a NaN or infinite number, a value
    that is not JSON, nesting deeper than ``MAX_DEPTH``, text that cannot be
    encoded as UTF-8. Nothing is written then.
    """
    path = Path(path)
    lines = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, PreferencePair):
            raise TypeError(f"pairs[{i}]: expected PreferencePair, got {type(pair).__name__}")
        record = {}
        for key in _KEYS:
            value = getattr(pair, key)
            if not isinstance(value, str):  # the dataclass fields are mutable
                raise TypeError(f"pairs[{i}].{key}: expected str, got {type(value).__name__}")
            record[key] = value
        _check_meta(pair.meta, f"pairs[{i}].meta")
        for key, value in pair.meta.items():
            problem = _json_problem(value, depth=2)
            if problem:
                raise ValueError(f"pairs[{i}].meta[{key!r}]: {problem}")
            record[key] = value
        line = json.dumps(record, ensure_ascii=False, allow_nan=False)
        try:
            lines.append(line.encode("utf-8"))
        except UnicodeEncodeError as err:  # e.g. a lone surrogate from a bad decode
            raise ValueError(f"pairs[{i}]: text cannot be encoded as UTF-8 ({err.reason})") from None

    def write(f):
        for line in lines:
            f.write(line + b"\n")

    atomic_write(path, write)


def _json_problem(value, depth: int) -> str | None:
    """What keeps ``value`` from being a finite JSON value at most MAX_DEPTH deep (None: nothing).

    Iterative, so a deeply nested value cannot overflow the recursion limit here.
    depth: the nesting level of ``value`` itself (the line's object is level 1).
    """
    stack = [(value, depth)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list, tuple)):
            if d > MAX_DEPTH:
                return f"nested deeper than MAX_DEPTH={MAX_DEPTH} levels"
            if isinstance(v, dict):
                for k, item in v.items():
                    if not isinstance(k, str):
                        return f"object keys must be str, got {type(k).__name__} {k!r}"
                    if not _is_text(k):
                        return "a key holds a lone surrogate (not valid Unicode)"
                    stack.append((item, d + 1))
            else:
                stack.extend((item, d + 1) for item in v)
        elif isinstance(v, float):
            if not math.isfinite(v):
                return f"{v} is not a finite number (JSON has no NaN or Infinity)"
        elif isinstance(v, str):
            if not _is_text(v):
                return "text holds a lone surrogate (not valid Unicode)"
        elif not (v is None or isinstance(v, (bool, int))):
            return f"expected a JSON value (str, number, bool, None, list, dict), got {type(v).__name__}"
    return None


def _is_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _reject_duplicate_keys(items: list[tuple[str, object]]) -> dict:
    # json.loads keeps the last of two equal keys without a word; a duplicated
    # "chosen" is a corrupted line, not something to resolve silently.
    out = {}
    for key, value in items:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _refuse_constant(name: str):
    # json.loads turns the non-standard literals NaN, Infinity and -Infinity into floats.
    raise ValueError(f"{name} is not valid JSON (JSON has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise ValueError(f"the number {text[:40]} overflows to infinity")
    return value


def _where(path: Path, lineno: int) -> str:
    return f"{path}, line {lineno}"


def _describe(value) -> str:
    if isinstance(value, list):
        return "list (the conversational format, a list of messages, is not supported: give plain text)"
    return f"{type(value).__name__} ({value!r:.60})"


def load_preferences(path: str | os.PathLike, *, max_line_bytes: int = MAX_LINE_BYTES) -> list[PreferencePair]:
    """Read a JSON Lines file written by ``save_preferences`` (or exported from the Hub).

    path: the file.
    max_line_bytes: the longest line read (bytes, line ending excluded);
        a longer one is refused without being read into memory.

    Returns the pairs in file order; keys other than prompt, chosen and
    rejected are kept in each pair's ``meta`` in the order the line has them.
    Blank lines are skipped; a UTF-8 byte-order mark at the start of the file
    and Windows line endings are accepted. Anything else that is wrong raises
    ValueError naming the path, the 1-based line number and the problem (the
    module docstring lists what is refused).
    """
    from ..checks import check_positive_int

    max_line_bytes = check_positive_int("max_line_bytes", max_line_bytes)
    path = Path(path)
    pairs = []
    with open(path, "rb") as f:  # a missing file raises FileNotFoundError naming it
        lineno = 0
        while True:
            # Binary readline splits on b"\n" only, so the line numbers match an
            # editor's; the limit keeps a pathological line out of memory.
            raw = f.readline(max_line_bytes + 2)
            if not raw:
                break
            lineno += 1
            where = _where(path, lineno)
            if not raw.endswith(b"\n") and len(raw) > max_line_bytes:
                raise ValueError(f"{where}: longer than max_line_bytes={max_line_bytes} bytes; not read further")
            raw = raw[:-1] if raw.endswith(b"\n") else raw
            raw = raw[:-1] if raw.endswith(b"\r") else raw
            if len(raw) > max_line_bytes:
                raise ValueError(f"{where}: longer than max_line_bytes={max_line_bytes} bytes; not read further")
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a UTF-8 byte-order mark, only at the very start of the file
            if not raw.strip():
                continue
            pairs.append(_parse_line(raw, where))
    return pairs


def _parse_line(raw: bytes, where: str) -> PreferencePair:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError(f"{where}: not valid UTF-8 (it starts with a UTF-16 byte-order mark; save the file as UTF-8)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{where}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    if text.startswith("\ufeff"):
        raise ValueError(f"{where}: a byte-order mark (U+FEFF) is accepted only at the start of the file")
    try:
        record = json.loads(
            text,
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
        )
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise ValueError(f"{where}: nested deeper than MAX_DEPTH={MAX_DEPTH} levels") from None
    except ValueError as err:  # our hooks, or an integer with too many digits
        raise ValueError(f"{where}: {err}") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object with keys {list(_KEYS)}, got {type(record).__name__}")
    missing = [k for k in _KEYS if k not in record]
    if missing:
        raise ValueError(f"{where}: expected keys {list(_KEYS)}; missing {missing}")
    for key in _KEYS:
        value = record[key]
        if not isinstance(value, str):
            raise ValueError(f"{where}: {key!r} must be a string, got {_describe(value)}")
        if not _is_text(value):
            raise ValueError(f"{where}: {key!r} holds a lone surrogate (not valid Unicode text)")
    meta = {k: v for k, v in record.items() if k not in _KEYS}
    for key, value in meta.items():
        problem = _json_problem(value, depth=2)
        if problem:
            raise ValueError(f"{where}: extra field {key!r}: {problem}")
    return PreferencePair(record["prompt"], record["chosen"], record["rejected"], meta)
