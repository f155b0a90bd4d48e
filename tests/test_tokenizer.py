"""CharTokenizer: vocabulary layout, round trips, batching with masks, files, errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.backend import get_array_module, to_numpy
from alignment_np.data.tokenizer import CharTokenizer

CHARS = "abcde .!é😀"
texts_in_vocab = st.text(alphabet=CHARS, max_size=30)


@pytest.fixture
def tok():
    return CharTokenizer.from_text(["the cat .", "a dog !"])


# ----------------------------------------------------------------- vocabulary
def test_specials_come_first_then_sorted_characters():
    tok = CharTokenizer.from_text(["ba", "c a"])
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, None)
    assert tok.tokens == ("<pad>", "<bos>", "<eos>", " ", "a", "b", "c")
    assert tok.vocab_size == len(tok) == 7
    assert tok.special_ids == (0, 1, 2)
    with_unk = CharTokenizer.from_text(["ba", "c a"], unk=True)
    assert with_unk.unk_id == 3
    assert with_unk.tokens[:4] == ("<pad>", "<bos>", "<eos>", "<unk>")
    assert with_unk.vocab_size == 8 and with_unk.special_ids == (0, 1, 2, 3)


@given(st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=5), st.randoms())
def test_vocabulary_does_not_depend_on_text_order(texts, random):
    shuffled = list(texts)
    random.shuffle(shuffled)
    a, b = CharTokenizer.from_text(texts), CharTokenizer.from_text(shuffled)
    assert a == b and hash(a) == hash(b)
    assert set(a.chars) == set("".join(texts))
    assert list(a.chars) == sorted(a.chars)


# ----------------------------------------------------------------- round trips
@given(texts_in_vocab, st.booleans(), st.booleans())
def test_encode_decode_round_trip_is_identity(text, add_bos, add_eos):
    tok = CharTokenizer.from_text(CHARS)
    ids = tok.encode(text, add_bos=add_bos, add_eos=add_eos)
    assert len(ids) == len(text) + add_bos + add_eos
    assert all(isinstance(i, int) for i in ids)
    assert tok.decode(ids) == text
    shown = tok.decode(ids, skip_special=False)
    assert shown == ("<bos>" if add_bos else "") + text + ("<eos>" if add_eos else "")
    # each character maps to its own id: decoding one id at a time gives the characters
    assert [tok.decode([i]) for i in tok.encode(text)] == list(text)


@given(st.text(min_size=1, max_size=40))
def test_any_text_round_trips_through_its_own_vocabulary(text):
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(np.asarray(tok.encode(text), dtype=np.int32)) == text


def test_unknown_character_raises_naming_it_and_its_position(tok):
    with pytest.raises(ValueError, match=r"character 'z' at position 4 .*unk=True"):
        tok.encode("the zoo")
    with pytest.raises(ValueError, match=r"character '\\n' at position 3"):
        tok.encode("cat\n")


def test_unknown_character_maps_to_unk_when_asked():
    tok = CharTokenizer.from_text("the cat", unk=True)
    ids = tok.encode("the zat")
    assert ids[4] == tok.unk_id == 3
    assert ids[:4] == tok.encode("the ") and ids[5:] == tok.encode("at")
    # <unk> stands for a character, so it is shown even when specials are skipped
    assert tok.decode(ids) == "the <unk>at"
    assert tok.decode(ids, skip_special=False) == "the <unk>at"


def test_text_that_looks_like_a_special_token_is_plain_characters():
    tok = CharTokenizer.from_text("<pad>")
    ids = tok.encode("<pad>")
    assert len(ids) == 5 and tok.pad_id not in ids


def test_decode_does_not_mutate_its_input(tok):
    ids = np.asarray(tok.encode("a cat", add_bos=True, add_eos=True))
    before = ids.copy()
    tok.decode(ids)
    tok.decode_batch(ids[None, :])
    assert np.array_equal(ids, before)


# ----------------------------------------------------------------- batching
def _expected_batch(tok, texts, add_bos, add_eos, side, T):
    """Obviously-correct reference: fill (b, t) one cell at a time."""
    ids = [[tok.pad_id] * T for _ in texts]
    mask = [[0] * T for _ in texts]
    for b, text in enumerate(texts):
        row = tok.encode(text, add_bos=add_bos, add_eos=add_eos)
        offset = 0 if side == "right" else T - len(row)
        for t in range(T):
            if 0 <= t - offset < len(row):
                ids[b][t] = row[t - offset]
                mask[b][t] = 1
    return np.array(ids), np.array(mask)


@given(
    st.lists(texts_in_vocab, min_size=1, max_size=5),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["right", "left"]),
    st.integers(0, 3),
)
def test_encode_batch_matches_cell_by_cell_reference(texts, add_bos, add_eos, side, extra_width):
    tok = CharTokenizer.from_text(CHARS)
    longest = max(len(t) for t in texts) + add_bos + add_eos
    for max_length in (None, max(1, longest + extra_width)):
        ids, mask = tok.encode_batch(
            texts, add_bos=add_bos, add_eos=add_eos, padding_side=side, max_length=max_length
        )
        T = longest if max_length is None else max_length
        want_ids, want_mask = _expected_batch(tok, texts, add_bos, add_eos, side, T)
        assert ids.shape == mask.shape == (len(texts), T)
        assert ids.dtype == mask.dtype == np.int64
        assert np.array_equal(to_numpy(ids), want_ids)
        assert np.array_equal(to_numpy(mask), want_mask)
        assert tok.decode_batch(ids) == texts


def test_encode_batch_lives_on_the_active_backend(xp):
    tok = CharTokenizer.from_text("abc")
    ids, mask = tok.encode_batch(["ab", "c"], add_eos=True, padding_side="left")
    assert get_array_module(ids) is xp and get_array_module(mask) is xp
    assert to_numpy(ids).tolist() == [[3, 4, 2], [0, 5, 2]]  # a=3, b=4, c=5 after 3 specials
    assert to_numpy(mask).tolist() == [[1, 1, 1], [0, 1, 1]]
    assert tok.decode_batch(ids) == ["ab", "c"]


def test_left_padding_ends_every_prompt_at_the_last_column(tok):
    ids, mask = tok.encode_batch(["a", "the cat"], padding_side="left")
    ids, mask = to_numpy(ids), to_numpy(mask)
    assert (mask[:, -1] == 1).all()
    assert ids[0, -1] == tok.encode("a")[0] and ids[1, -1] == tok.encode("t")[0]


def test_truncation_keeps_the_first_tokens(tok):
    ids, mask = tok.encode_batch(["the cat", "a"], add_bos=True, max_length=4, truncation=True)
    assert to_numpy(ids).tolist()[0] == tok.encode("the", add_bos=True)
    assert to_numpy(mask).sum(axis=1).tolist() == [4, 2]


def test_empty_text_gives_an_all_padding_row(tok):
    ids, mask = tok.encode_batch(["", "a"])
    assert to_numpy(mask).tolist() == [[0], [1]]
    assert to_numpy(ids)[0, 0] == tok.pad_id


# ----------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "call, exc, message",
    [
        (lambda t: t.encode(123), TypeError, "text must be a str, got int"),
        (lambda t: t.encode_batch("a cat"), TypeError, r"texts must be a list of str, got str .*\[text\]"),
        (lambda t: t.encode_batch(None), TypeError, "texts must be a list of str, got NoneType"),
        (lambda t: t.encode_batch([]), ValueError, "texts is empty"),
        (lambda t: t.encode_batch(["a", 5]), TypeError, r"texts\[1\] must be a str, got int"),
        (lambda t: t.encode_batch(["a"], padding_side="middle"), ValueError, "padding_side .* 'middle'"),
        (lambda t: t.encode_batch(["a"], max_length=0), ValueError, "max_length must be a positive int .* 0"),
        (lambda t: t.encode_batch(["a"], max_length=2.5), ValueError, "max_length .* 2.5"),
        (lambda t: t.encode_batch(["a"], truncation=True), ValueError, "truncation=True needs max_length"),
        (
            lambda t: t.encode_batch(["a", "the cat"], max_length=3),
            ValueError,
            r"texts\[1\] encodes to 7 tokens, more than max_length=3",
        ),
        (lambda t: t.decode([[3, 4]]), ValueError, r"ids must be 1-D .* \(1, 2\)"),
        (lambda t: t.decode([3.0, 4.0]), TypeError, "ids must be integers, got dtype float64"),
        (lambda t: t.decode([3, 99]), ValueError, r"id 99 at position 1 is outside the vocabulary \[0, "),
        (lambda t: t.decode([-1]), ValueError, "id -1 at position 0"),
        (lambda t: t.decode_batch([3, 4]), ValueError, r"ids must be 2-D \(B, T\), got shape \(2,\)"),
    ],
)
def test_bad_calls_raise_naming_the_problem(tok, call, exc, message):
    with pytest.raises(exc, match=message):
        call(tok)


@pytest.mark.parametrize(
    "build, exc, message",
    [
        (lambda: CharTokenizer(["a", "ab"]), ValueError, r"chars\[1\] must be a single character .* 'ab'"),
        (lambda: CharTokenizer(["a", 1]), ValueError, r"chars\[1\] must be a single character .* 1"),
        (lambda: CharTokenizer("aba"), ValueError, r"chars\[2\] = 'a' is repeated"),
        (lambda: CharTokenizer("ab", unk=1), TypeError, "unk must be a bool, got int"),
        (lambda: CharTokenizer.from_text([]), ValueError, "texts contain no characters"),
        (lambda: CharTokenizer.from_text(["", ""]), ValueError, r"got 2 text\(s\), all empty"),
        (lambda: CharTokenizer.from_text(["ab", None]), TypeError, r"texts\[1\] must be a str, got NoneType"),
        (lambda: CharTokenizer.from_dict([1]), TypeError, "tokenizer data must be a dict, got list"),
        (lambda: CharTokenizer.from_dict({"type": "CharTokenizer", "unk": False}), ValueError, "missing the key 'chars'"),
        (
            lambda: CharTokenizer.from_dict({"type": "BPE", "chars": [], "unk": False}),
            ValueError,
            "type 'BPE', expected 'CharTokenizer'",
        ),
        (
            lambda: CharTokenizer.from_dict({"type": "CharTokenizer", "version": 9, "chars": [], "unk": False}),
            ValueError,
            "version 9",
        ),
        (
            lambda: CharTokenizer.from_dict({"type": "CharTokenizer", "chars": "ab", "unk": False}),
            ValueError,
            "'chars' must be a list, got str",
        ),
    ],
)
def test_bad_construction_raises_naming_the_problem(build, exc, message):
    with pytest.raises(exc, match=message):
        build()


# ----------------------------------------------------------------- files
@pytest.mark.parametrize("unk", [False, True])
def test_dict_and_file_round_trips(tmp_path, unk):
    tok = CharTokenizer.from_text(["héllo wörld 😀", "\t\n\"\\"], unk=unk)
    d = tok.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain JSON data
    assert CharTokenizer.from_dict(d) == tok
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = CharTokenizer.load(path)
    assert loaded == tok and loaded.tokens == tok.tokens
    assert loaded.encode("wörld 😀") == tok.encode("wörld 😀")
    assert os.listdir(tmp_path) == ["tok.json"]  # no temporary file left behind


def test_save_is_atomic_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "tok.json"
    old = CharTokenizer.from_text("abc")
    old.save(path)

    def crash(fd):  # the new bytes are in the temporary file; the disk "fails" on fsync
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        CharTokenizer.from_text("xyz").save(path)
    monkeypatch.undo()
    assert CharTokenizer.load(path) == old
    assert os.listdir(tmp_path) == ["tok.json"]


def test_load_bad_json_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n "type": "CharTokenizer",\n "chars": [,\n}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json: line 3 column .*invalid JSON"):
        CharTokenizer.load(path)


def test_load_rejects_non_utf8_and_non_tokenizer_files(tmp_path):
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=r"binary\.json: not UTF-8"):
        CharTokenizer.load(binary)
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}', encoding="utf-8")
    with pytest.raises(ValueError, match=r"other\.json: not a CharTokenizer file: .*missing the key 'type'"):
        CharTokenizer.load(other)


def test_load_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        CharTokenizer.load(tmp_path / "nowhere.json")
