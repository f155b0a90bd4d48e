"""Preference pairs and their JSON Lines files."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.data import preferences
from alignment_np.data.preferences import (
    PreferencePair,
    create_preference_dataset,
    load_preferences,
    save_preferences,
)

PAIRS = [
    PreferencePair("How do I boil an egg?", "Simmer it for 8 minutes.", "No."),
    PreferencePair("", "empty prompt is fine", "still fine"),
    PreferencePair("Ünïcødé ☃ 日本語 🙂", "line one\nline two\r\nline three", 'quotes " and \\ backslash'),
    PreferencePair("separators\u2028and\u2029and\x85", "tab\there", "nul\x00byte"),
]


# -- building datasets ---------------------------------------------------------------


def test_create_preference_dataset_zips_in_order():
    pairs = create_preference_dataset(["p1", "p2"], ["c1", "c2"], ["r1", "r2"])
    assert pairs == [PreferencePair("p1", "c1", "r1"), PreferencePair("p2", "c2", "r2")]
    assert pairs[1].prompt == "p2" and pairs[1].chosen == "c2" and pairs[1].rejected == "r2"


def test_create_preference_dataset_accepts_any_iterables():
    pairs = create_preference_dataset(("a" for _ in range(2)), ("b", "b"), ["c", "c"])
    assert pairs == [PreferencePair("a", "b", "c")] * 2
    assert create_preference_dataset([], [], []) == []


def test_mismatched_lengths_name_all_three():
    with pytest.raises(ValueError, match="same length; got prompts=3, chosen_responses=2, rejected_responses=3"):
        create_preference_dataset(["a", "b", "c"], ["a", "b"], ["a", "b", "c"])


def test_non_string_element_names_argument_index_and_type():
    with pytest.raises(TypeError, match=r"chosen_responses\[1\]: expected str, got int"):
        create_preference_dataset(["a", "b"], ["a", 7], ["a", "b"])
    with pytest.raises(TypeError, match=r"prompts\[0\]: expected str, got NoneType"):
        create_preference_dataset([None], ["a"], ["b"])


def test_a_single_string_is_not_a_list_of_prompts():
    with pytest.raises(TypeError, match="prompts: expected a sequence of str, got a single str"):
        create_preference_dataset("abc", ["a", "b", "c"], ["a", "b", "c"])
    with pytest.raises(TypeError, match="rejected_responses: expected a sequence of str, got int"):
        create_preference_dataset(["a"], ["b"], 3)


def test_preference_pair_checks_its_fields():
    with pytest.raises(TypeError, match="PreferencePair.rejected: expected str, got bytes"):
        PreferencePair("p", "c", b"r")


# -- JSON Lines ------------------------------------------------------------------------


def test_round_trip_of_awkward_text(tmp_path):
    path = tmp_path / "prefs.jsonl"
    save_preferences(PAIRS, path)
    assert load_preferences(path) == PAIRS
    assert load_preferences(str(path)) == PAIRS  # str paths too


@given(st.lists(st.tuples(st.text(), st.text(), st.text()), max_size=8))
def test_round_trip_loses_nothing(rows):
    pairs = [PreferencePair(*row) for row in rows]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "prefs.jsonl"
        save_preferences(pairs, path)
        assert load_preferences(path) == pairs


def test_file_format_is_hub_jsonl(tmp_path):
    path = tmp_path / "prefs.jsonl"
    save_preferences(PAIRS, path)
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(PAIRS) + 1  # one pair per line, newline-terminated
    for line, pair in zip(lines, PAIRS):
        record = json.loads(line.decode("utf-8"))
        assert list(record) == ["prompt", "chosen", "rejected"]
        assert record == {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}
    assert "日本語".encode("utf-8") in raw  # ensure_ascii=False: text stays readable
    assert b"\\u65e5" not in raw


def test_loads_hub_style_files(tmp_path):
    # Another key order, a byte-order mark, Windows line endings and blank lines.
    path = tmp_path / "hub.jsonl"
    body = '{"rejected": "r1", "prompt": "p1", "chosen": "c1"}\r\n\r\n  \n{"prompt": "p2", "chosen": "c2", "rejected": "r2"}'
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    assert load_preferences(path) == [PreferencePair("p1", "c1", "r1"), PreferencePair("p2", "c2", "r2")]


def test_empty_dataset_round_trips(tmp_path):
    path = tmp_path / "empty.jsonl"
    save_preferences([], path)
    assert path.read_bytes() == b""
    assert load_preferences(path) == []


GOOD = '{"prompt": "p", "chosen": "c", "rejected": "r"}'


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ('{"prompt": "p", "chosen": "c", "rejected": ', "invalid JSON"),
        ('["p", "c", "r"]', "expected a JSON object .* got list"),
        ('"just a string"', "expected a JSON object .* got str"),
        ('{"prompt": "p", "chosen": "c"}', r"expected keys .*; missing \['rejected'\]"),
        ('{"prompt": "p", "chosen": "c", "rejected": 3}', "'rejected' must be a string, got int"),
        ('{"prompt": null, "chosen": "c", "rejected": "r"}', "'prompt' must be a string, got NoneType"),
        ('{"prompt": "p", "chosen": "c", "chosen": "d", "rejected": "r"}', "duplicate key 'chosen'"),
    ],
)
def test_bad_line_names_path_line_and_problem(tmp_path, bad_line, problem):
    path = tmp_path / "bad.jsonl"
    # The bad line is line 4: a blank line in between still counts.
    path.write_text(f"{GOOD}\n{GOOD}\n\n{bad_line}\n{GOOD}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 4: ") + problem):
        load_preferences(path)


def test_invalid_utf8_names_its_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + '{"prompt": "café", "chosen": "c", "rejected": "r"}'.encode("latin-1"))
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 2: not valid UTF-8")):
        load_preferences(path)


def test_save_rejects_non_pairs_and_unencodable_text(tmp_path):
    path = tmp_path / "x.jsonl"
    with pytest.raises(TypeError, match=r"pairs\[1\]: expected PreferencePair, got dict"):
        save_preferences([PAIRS[0], {"prompt": "p", "chosen": "c", "rejected": "r"}], path)
    pair = PreferencePair("p", "c", "r")
    pair.chosen = 5  # a dataclass field can be reassigned after construction
    with pytest.raises(TypeError, match=r"pairs\[0\].chosen: expected str, got int"):
        save_preferences([pair], path)
    with pytest.raises(ValueError, match=r"pairs\[0\]: text cannot be encoded as UTF-8"):
        save_preferences([PreferencePair("lone surrogate \ud800", "c", "r")], path)
    assert not path.exists()


def test_a_crash_while_writing_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "prefs.jsonl"
    save_preferences(PAIRS, path)
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(preferences.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        save_preferences([PreferencePair("new", "data", "lost")] * 1000, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["prefs.jsonl"], "the temporary file must be cleaned up"


def test_write_goes_through_a_temporary_file_in_the_same_directory(tmp_path, monkeypatch):
    path = tmp_path / "prefs.jsonl"
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((Path(src), Path(dst), Path(src).read_bytes()))
        real_replace(src, dst)

    monkeypatch.setattr(preferences.os, "replace", spy)
    save_preferences(PAIRS, path)
    [(src, dst, content)] = seen
    assert dst == path and src.parent == path.parent and src != path
    assert content == path.read_bytes()  # the complete file existed before the swap
    assert os.listdir(tmp_path) == ["prefs.jsonl"]


# -- extra fields ----------------------------------------------------------------------


def test_extra_fields_are_kept_in_meta_in_file_order_and_written_back(tmp_path):
    path = tmp_path / "hub.jsonl"
    line = ('{"prompt": "p", "score_rejected": -0.5, "chosen": "c", "rejected": "r", '
            '"source": "hub", "tags": ["a", {"b": null}], "ok": true, "n": 3}')
    path.write_text(line + "\n", encoding="utf-8")
    [pair] = load_preferences(path)
    assert (pair.prompt, pair.chosen, pair.rejected) == ("p", "c", "r")
    assert pair.meta == {"score_rejected": -0.5, "source": "hub", "tags": ["a", {"b": None}], "ok": True, "n": 3}
    assert list(pair.meta) == ["score_rejected", "source", "tags", "ok", "n"]
    out = tmp_path / "out.jsonl"
    save_preferences([pair], out)
    record = json.loads(out.read_text(encoding="utf-8"))
    assert list(record) == ["prompt", "chosen", "rejected", "score_rejected", "source", "tags", "ok", "n"]
    assert load_preferences(out) == [pair]


def test_meta_keeps_the_course_signature_and_repr():
    pair = PreferencePair("p", "c", "r")
    assert pair.meta == {} and repr(pair) == "PreferencePair(prompt='p', chosen='c', rejected='r')"
    scored = PreferencePair("p", "c", "r", meta={"score": 1.0})
    assert scored != pair  # the extra fields are part of the record
    assert repr(scored).endswith("meta={'score': 1.0})")
    assert PreferencePair("p", "c", "r").meta is not pair.meta  # no shared default dict


@pytest.mark.parametrize(
    "meta, error, match",
    [
        ([("score", 1)], TypeError, "PreferencePair.meta: expected a dict of extra fields, got list"),
        ({1: "x"}, TypeError, "PreferencePair.meta: keys must be str, got int"),
        ({"chosen": "x"}, ValueError, r"key 'chosen' is one of the pair's own fields"),
    ],
)
def test_bad_meta_is_refused_at_construction(meta, error, match):
    with pytest.raises(error, match=match):
        PreferencePair("p", "c", "r", meta=meta)


@pytest.mark.parametrize(
    "value, match",
    [
        (float("nan"), "nan is not a finite number"),
        ([1.0, float("inf")], "inf is not a finite number"),
        ({"x": object()}, "expected a JSON value .* got object"),
        ("lone \ud800", "text holds a lone surrogate"),
    ],
)
def test_save_refuses_meta_that_load_would_refuse(tmp_path, value, match):
    path = tmp_path / "x.jsonl"
    with pytest.raises(ValueError, match=r"pairs\[1\].meta\['score'\]: " + match):
        save_preferences([PreferencePair("p", "c", "r"), PreferencePair("p", "c", "r", meta={"score": value})], path)
    assert not path.exists()


@given(
    st.dictionaries(
        st.text(min_size=1).filter(lambda k: k not in ("prompt", "chosen", "rejected")),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
            lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(), kids, max_size=3),
            max_leaves=8,
        ),
        max_size=4,
    )
)
def test_round_trip_keeps_any_json_meta(meta):
    pair = PreferencePair("p", "c", "r", meta=meta)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "prefs.jsonl"
        save_preferences([pair], path)
        assert load_preferences(path) == [pair]


# -- pathological files ----------------------------------------------------------------


def nested(depth: int) -> str:
    """A JSON value with ``depth`` levels of lists."""
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ('{"prompt": "p", "chosen": "c", "rejected": "r", "score": NaN}', "NaN is not valid JSON"),
        ('{"prompt": "p", "chosen": "c", "rejected": "r", "score": Infinity}', "Infinity is not valid JSON"),
        ('{"prompt": "p", "chosen": "c", "rejected": "r", "score": -Infinity}', "-Infinity is not valid JSON"),
        ('{"prompt": "p", "chosen": "c", "rejected": "r", "score": 1e999}', "the number 1e999 overflows to infinity"),
        ('{"prompt": "p", "chosen": "c", "rejected": "r", "score": 1' + "0" * 5000 + "}", "digits|limit"),
        ('{"prompt": "p", "chosen": "c", "rejected": "r", "deep": ' + nested(40) + "}",
         r"extra field 'deep': nested deeper than MAX_DEPTH=32"),
        ('{"prompt": "p", "chosen": "c", "rejected": "r", "deep": ' + nested(100_000) + "}",
         "nested deeper than MAX_DEPTH=32"),
        ('{"prompt": "p", "chosen": "c", "rejected": "\\ud800"}', "'rejected' holds a lone surrogate"),
        ('{"prompt": "p", "chosen": "c", "rejected": "r", "x": "\\udfff"}', "extra field 'x': text holds a lone surrogate"),
        ('{"prompt": "p", "chosen": [{"role": "assistant", "content": "c"}], "rejected": "r"}',
         "'chosen' must be a string, got list .*conversational format"),
        ('{"prompt": "p", "chosen": "c", "rejected": "r"} {"prompt": "q"}', "invalid JSON \\(Extra data"),
        ('\ufeff{"prompt": "p", "chosen": "c", "rejected": "r"}', r"a byte-order mark \(U\+FEFF\) is accepted only at the start"),
        ('{"prompt": "p", "chosen": "c\x01", "rejected": "r"}', "invalid JSON \\(Invalid control character"),
    ],
)
def test_pathological_line_names_path_line_and_problem(tmp_path, bad_line, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD}\n{GOOD}\n\n{bad_line}\n{GOOD}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 4: ") + problem):
        load_preferences(path)


def test_nesting_up_to_max_depth_is_accepted(tmp_path):
    path = tmp_path / "deep.jsonl"
    # the line's object is level 1, so its value may hold MAX_DEPTH - 1 levels
    path.write_text('{"prompt": "p", "chosen": "c", "rejected": "r", "deep": ' + nested(31) + "}\n")
    [pair] = load_preferences(path)
    assert pair.meta["deep"] == eval(nested(31))


def test_a_huge_line_is_refused_without_reading_it(tmp_path, monkeypatch):
    path = tmp_path / "huge.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + b'{"prompt": "' + b"x" * 5000 + b'", "chosen": "c", "rejected": "r"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 2: longer than max_line_bytes=1000 bytes")):
        load_preferences(path, max_line_bytes=1000)
    # the limit is on the line itself, line ending excluded
    exact = tmp_path / "exact.jsonl"
    exact.write_bytes(GOOD.encode() + b"\r\n")
    assert len(load_preferences(exact, max_line_bytes=len(GOOD))) == 1
    with pytest.raises(ValueError, match="line 1: longer than max_line_bytes"):
        load_preferences(exact, max_line_bytes=len(GOOD) - 1)
    with pytest.raises(ValueError, match="max_line_bytes: expected a positive int, got 0"):
        load_preferences(exact, max_line_bytes=0)


def test_utf16_files_and_missing_files_are_clear_errors(tmp_path):
    path = tmp_path / "utf16.jsonl"
    path.write_bytes((GOOD + "\n").encode("utf-16"))  # starts with the UTF-16 byte-order mark
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 1: not valid UTF-8") + ".*UTF-16"):
        load_preferences(path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_preferences(tmp_path / "missing.jsonl")


def test_a_byte_order_mark_only_on_the_first_line(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\n\xef\xbb\xbf" + GOOD.encode() + b"\n")  # line 2 starts with a BOM
    with pytest.raises(ValueError, match="line 2: a byte-order mark"):
        load_preferences(path)
