"""A character-level tokenizer: text <-> integer ids, with pad / bos / eos (/ unk).

The first step on the path of data (DESIGN.md): text -> ids and an attention
mask of shape (B, T) -> TinyGPT. A character tokenizer is the smallest honest
tokenizer: every character of the training text is one token, so a learner
can print the vocabulary and read it, and a tiny GPT learns spelling, words
and sentences from scratch (Karpathy's char-rnn and nanoGPT's
``shakespeare_char`` do the same).

The vocabulary is laid out as

    id 0  <pad>   fills the short rows of a batch; the attention mask is 0 there
    id 1  <bos>   "beginning of sequence": gives the first character a context
    id 2  <eos>   "end of sequence": lets a model learn when to stop generating
    id 3  <unk>   only with ``unk=True``: stands for a character never seen
    then  the characters of the text, sorted (so the ids do not depend on the
          order the texts came in)

pad is 0 so that an array of zeros is an all-padding batch, as in most
libraries (TRL and Hugging Face use the tokenizer's ``pad_token_id``).

Shapes: B batch (number of texts), T time (tokens per row after padding).
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import numpy as np

from ..backend import to_numpy, xp_active
from ..checks import check_bool
from ..io import atomic_write

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"

_FORMAT_VERSION = 1


class CharTokenizer:
    """Maps each character to one id; special tokens first (pad = 0).

    chars: the characters of the vocabulary, each a str of length 1, no
        repeats; their order fixes their ids (``from_text`` sorts them).
    unk: if True, add ``<unk>`` (id 3) and map any character outside the
        vocabulary to it; if False, such a character raises ValueError.
    """

    def __init__(self, chars: Iterable[str], unk: bool = False):
        if not isinstance(unk, bool):
            raise TypeError(f"unk must be a bool, got {type(unk).__name__} {unk!r}")
        if isinstance(chars, str):
            chars = list(chars)
        if not isinstance(chars, Iterable) or isinstance(chars, (bytes, dict)):
            raise TypeError(f"chars must be a str or an iterable of single characters, got {type(chars).__name__}")
        chars = list(chars)
        seen: set[str] = set()
        for i, ch in enumerate(chars):
            if not isinstance(ch, str) or len(ch) != 1:
                raise ValueError(
                    f"chars[{i}] must be a single character (a str of length 1), got {ch!r}"
                )
            if ch in seen:
                raise ValueError(f"chars[{i}] = {ch!r} is repeated; each character may appear once")
            seen.add(ch)
        self.unk = unk
        self.specials: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN) + ((UNK_TOKEN,) if unk else ())
        self.chars: tuple[str, ...] = tuple(chars)
        # id -> token string, and character -> id (specials are not characters:
        # the text "<pad>" is five characters, never the pad token).
        self.tokens: tuple[str, ...] = self.specials + self.chars
        self._char_to_id = {ch: len(self.specials) + i for i, ch in enumerate(self.chars)}

    # ------------------------------------------------------------------ build
    @classmethod
    def from_text(cls, texts: str | Iterable[str], unk: bool = False) -> "CharTokenizer":
        """Build the vocabulary from every character that occurs in ``texts``.

        texts: a str, or an iterable of str (e.g. the lines of a corpus).
        unk: as in the constructor.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Iterable) or isinstance(texts, (bytes, dict)):
            raise TypeError(f"texts must be a str or an iterable of str, got {type(texts).__name__}")
        chars: set[str] = set()
        n = 0
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
            chars.update(text)
            n += 1
        if not chars:
            raise ValueError(
                f"texts contain no characters (got {n} text(s), all empty): "
                "there is nothing to build a vocabulary from"
            )
        return cls(sorted(chars), unk=unk)

    # -------------------------------------------------------------- special ids
    @property
    def vocab_size(self) -> int:
        """Number of token ids V (specials included): the model's output width."""
        return len(self.tokens)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    @property
    def unk_id(self) -> int | None:
        """3 when built with ``unk=True``, otherwise None."""
        return 3 if self.unk else None

    @property
    def special_ids(self) -> tuple[int, ...]:
        return tuple(range(len(self.specials)))

    # ---------------------------------------------------------------- encoding
    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """The ids of ``text``, one per character (plus bos / eos if asked).

        Raises ValueError naming the first character outside the vocabulary
        and its position, unless the tokenizer was built with ``unk=True``.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        add_bos = check_bool("add_bos", add_bos)
        add_eos = check_bool("add_eos", add_eos)
        lookup = self._char_to_id
        ids = [self.bos_id] if add_bos else []
        for pos, ch in enumerate(text):
            i = lookup.get(ch)
            if i is None:
                if not self.unk:
                    raise ValueError(
                        f"character {ch!r} at position {pos} of text {_preview(text)} is not in "
                        f"the vocabulary ({len(self.chars)} characters); build the tokenizer "
                        "with unk=True to map unknown characters to <unk>"
                    )
                i = self.unk_id
            ids.append(i)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(
        self,
        texts: Sequence[str],
        add_bos: bool = False,
        add_eos: bool = False,
        padding_side: str = "right",
        max_length: int | None = None,
        truncation: bool = False,
    ):
        """Encode several texts into one padded array and its attention mask.

        texts: a list of B strings.
        padding_side: "right" puts the pad ids after the text (training: the
            text starts at position 0); "left" puts them before it (generation:
            every prompt ends at the last column, so the next token is sampled
            at the same position for the whole batch).
        max_length: T, the width of the arrays; default the longest row.
        truncation: with ``max_length``, cut longer rows to their first
            ``max_length`` ids instead of raising ValueError.

        Returns ``(ids, attention_mask)``, both (B, T) int64 on the active
        backend: ids holds ``pad_id`` where the mask is 0, the mask is 1 on
        real tokens (bos and eos included).
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(
                f"texts must be a list of str, got {type(texts).__name__}"
                + (" (wrap a single text in a list: [text])" if isinstance(texts, str) else "")
            )
        if len(texts) == 0:
            raise ValueError("texts is empty: expected at least one text to encode")
        if not isinstance(padding_side, str) or padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        add_bos = check_bool("add_bos", add_bos)
        add_eos = check_bool("add_eos", add_eos)
        truncation = check_bool("truncation", truncation)
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < 1
        ):
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
        if truncation and max_length is None:
            raise ValueError("truncation=True needs max_length: the length to cut rows to")

        rows = []
        for b, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{b}] must be a str, got {type(text).__name__}")
            rows.append(self.encode(text, add_bos=add_bos, add_eos=add_eos))
        T = max(len(r) for r in rows) if max_length is None else int(max_length)

        ids = np.full((len(rows), T), self.pad_id, dtype=np.int64)  # (B, T)
        mask = np.zeros((len(rows), T), dtype=np.int64)  # (B, T)
        for b, row in enumerate(rows):
            if len(row) > T:
                if not truncation:
                    raise ValueError(
                        f"texts[{b}] encodes to {len(row)} tokens, more than max_length={T}; "
                        "pass truncation=True to cut it"
                    )
                row = row[:T]
            n = len(row)
            start = 0 if padding_side == "right" else T - n
            ids[b, start : start + n] = row
            mask[b, start : start + n] = 1
        xp = xp_active()  # arrays created here go where the active backend says
        return xp.asarray(ids), xp.asarray(mask)

    # ---------------------------------------------------------------- decoding
    def decode(self, ids, skip_special: bool = True) -> str:
        """The text of a 1-D sequence of ids.

        skip_special: drop pad, bos and eos (True), or write them as
            ``<pad>``, ``<bos>``, ``<eos>`` (False). ``<unk>`` is always
            written: it stands for a character of the text, and dropping it
            would silently shorten the text.
        """
        skip_special = check_bool("skip_special", skip_special)
        arr = _ids_array(ids)
        if arr.ndim != 1:
            raise ValueError(
                f"ids must be 1-D (one sequence), got shape {arr.shape}; use decode_batch for (B, T)"
            )
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"ids must be integers, got dtype {arr.dtype}")
        V = self.vocab_size
        skip = {self.pad_id, self.bos_id, self.eos_id} if skip_special else set()
        out = []
        for pos, i in enumerate(arr.tolist()):
            if not 0 <= i < V:
                raise ValueError(f"id {i} at position {pos} is outside the vocabulary [0, {V})")
            if i not in skip:
                out.append(self.tokens[i])
        return "".join(out)

    def decode_batch(self, ids, skip_special: bool = True) -> list[str]:
        """``decode`` each row of a (B, T) array of ids."""
        skip_special = check_bool("skip_special", skip_special)
        arr = _ids_array(ids)
        if arr.ndim != 2:
            raise ValueError(f"ids must be 2-D (B, T), got shape {arr.shape}")
        return [self.decode(row, skip_special=skip_special) for row in arr]

    # ----------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        """Plain JSON-ready data: what a checkpoint stores to rebuild the tokenizer."""
        return {
            "type": "CharTokenizer",
            "version": _FORMAT_VERSION,
            "chars": list(self.chars),
            "unk": self.unk,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        """Rebuild a tokenizer from ``to_dict()``'s output."""
        if not isinstance(d, dict):
            raise TypeError(f"tokenizer data must be a dict, got {type(d).__name__}")
        for key in ("type", "chars", "unk"):
            if key not in d:
                raise ValueError(f"tokenizer data is missing the key {key!r} (has {sorted(d)})")
        if d["type"] != "CharTokenizer":
            raise ValueError(f"tokenizer data has type {d['type']!r}, expected 'CharTokenizer'")
        version = d.get("version", _FORMAT_VERSION)
        if version != _FORMAT_VERSION:
            raise ValueError(
                f"tokenizer data has version {version!r}, this library reads version {_FORMAT_VERSION}"
            )
        if not isinstance(d["chars"], list):
            raise ValueError(f"tokenizer data 'chars' must be a list, got {type(d['chars']).__name__}")
        return cls(d["chars"], unk=d["unk"])

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer to ``path`` as UTF-8 JSON, atomically.

        The file is written beside ``path`` and moved over it, so a crash
        mid-write leaves any previous file whole.
        """
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n"
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        """Read a tokenizer written by ``save``; bad JSON raises ValueError naming the file."""
        path = os.fspath(path)
        with open(path, "rb") as f:  # a missing file raises FileNotFoundError naming it
            raw = f.read()
        try:
            d = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not UTF-8 text ({err})") from err
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}: line {err.lineno} column {err.colno}: invalid JSON ({err.msg})"
            ) from err
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: not a CharTokenizer file: {err}") from err

    # ------------------------------------------------------------------ dunder
    def __eq__(self, other) -> bool:
        if not isinstance(other, CharTokenizer):
            return NotImplemented
        return self.chars == other.chars and self.unk == other.unk

    def __hash__(self) -> int:
        return hash((self.chars, self.unk))

    def __repr__(self) -> str:
        shown = "".join(self.chars)
        if len(shown) > 40:
            shown = shown[:37] + "..."
        return f"CharTokenizer(vocab_size={self.vocab_size}, chars={shown!r}, unk={self.unk})"


def _ids_array(ids) -> np.ndarray:
    """``ids`` as a NumPy array, or TypeError naming ``ids`` (None, a str, a ragged list)."""
    if ids is None or isinstance(ids, (str, bytes, dict)):
        raise TypeError(f"ids must be an array or a list of token ids, got {type(ids).__name__}")
    try:
        return to_numpy(ids)
    except (TypeError, ValueError) as err:
        raise TypeError(f"ids must be an array or a list of token ids, got {type(ids).__name__} ({err})") from None


def _preview(text: str, limit: int = 40) -> str:
    """The text's repr, shortened for error messages."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
