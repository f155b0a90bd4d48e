"""Preference pairs: a prompt, the response a rater chose, the one they rejected.

This is the raw material of every method in the course: a reward model learns
to score ``chosen`` above ``rejected`` (Bradley-Terry), DPO learns a policy
directly from the same pairs. On disk a dataset is JSON Lines, one object per
line with the Hugging Face Hub's column names::

    {"prompt": "How do I boil an egg?", "chosen": "Simmer it for 8 minutes.", "rejected": "No."}

so a file written here loads with ``datasets.load_dataset("json", ...)`` and
TRL's trainers, and a Hub dataset exported to JSONL loads here.

Two promises:

* nothing a user wrote is lost: writing goes to a temporary file in the same
  directory, then ``os.replace`` swaps it in (atomic on POSIX and Windows), so
  a crash mid-write leaves the previous file intact;
* a bad file fails loudly: the error names the path, the 1-based line number
  and what is wrong with that line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Sequence

from ..io import atomic_write

__all__ = [
    "PreferencePair",
    "create_preference_dataset",
    "save_preferences",
    "load_preferences",
]

_KEYS = ("prompt", "chosen", "rejected")


@dataclass
class PreferencePair:
    """One human (or AI) judgement: for ``prompt``, ``chosen`` beat ``rejected``.

    prompt: the context both responses answer (may be empty).
    chosen: the preferred response, y_w ("winner") in the papers.
    rejected: the dispreferred response, y_l ("loser").
    """

    prompt: str
    chosen: str
    rejected: str

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str):
                raise TypeError(
                    f"PreferencePair.{f.name}: expected str, got {type(value).__name__} ({value!r:.60})"
                )


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

    Each line is ``{"prompt": ..., "chosen": ..., "rejected": ...}`` with
    ``ensure_ascii=False`` (text stays readable; ``json.dumps`` escapes
    newlines inside strings, so one pair is always one line). The file is
    built beside the target and moved over it with ``os.replace``: readers
    see either the old file or the complete new one, never half of it.
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
        line = json.dumps(record, ensure_ascii=False)
        try:
            lines.append(line.encode("utf-8"))
        except UnicodeEncodeError as err:  # e.g. a lone surrogate from a bad decode
            raise ValueError(f"pairs[{i}]: text cannot be encoded as UTF-8 ({err.reason})") from None

    def write(f):
        for line in lines:
            f.write(line + b"\n")

    atomic_write(path, write)


def _reject_duplicate_keys(items: list[tuple[str, object]]) -> dict:
    # json.loads keeps the last of two equal keys without a word; a duplicated
    # "chosen" is a corrupted line, not something to resolve silently.
    out = {}
    for key, value in items:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def load_preferences(path: str | os.PathLike) -> list[PreferencePair]:
    """Read a JSON Lines file written by ``save_preferences`` (or exported from the Hub).

    Blank lines are skipped; a UTF-8 byte-order mark and Windows line endings
    are accepted. Any other problem raises ValueError naming the path, the
    1-based line number and the problem: bytes that are not UTF-8, invalid
    JSON, a value that is not an object, a missing or unexpected key, or a
    value that is not a string.
    """
    path = Path(path)
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    pairs = []
    # Split the bytes ourselves (only on "\n"): the line numbers then match
    # what an editor shows, and a decoding error can name its line.
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{where}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
        try:
            record = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
        except ValueError as err:  # from _reject_duplicate_keys
            raise ValueError(f"{where}: {err}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object with keys {list(_KEYS)}, got {type(record).__name__}")
        missing = [k for k in _KEYS if k not in record]
        extra = sorted(k for k in record if k not in _KEYS)
        if missing or extra:
            raise ValueError(
                f"{where}: expected keys {list(_KEYS)}; missing {missing}, unexpected {extra}"
            )
        for key in _KEYS:
            if not isinstance(record[key], str):
                raise ValueError(
                    f"{where}: {key!r} must be a string, got {type(record[key]).__name__} ({record[key]!r:.60})"
                )
        pairs.append(PreferencePair(record["prompt"], record["chosen"], record["rejected"]))
    return pairs
