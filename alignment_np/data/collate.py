"""Batching: texts and (prompt, response) pairs -> padded id arrays and masks.

The second step on the path of data (DESIGN.md): the tokenizer turns one text
into ids; a *collator* turns a list of texts into rectangular (B, T) arrays a
model can eat, plus the masks that say which positions are real and which
ones the loss counts.

One layout for every collator
-----------------------------
Each example becomes the token sequence

    s = [bos] + prompt + response + [eos]          (length L)

and the model reads ``input_ids = s[:-1]`` and is asked to predict
``targets = s[1:]``: the logits at position t score ``targets[:, t]``, the
token that follows ``input_ids[:, t]`` (nanoGPT's ``x, y``). The causal shift
is therefore already done here: ``cross_entropy_forward(logits, targets,
loss_mask)`` and ``compute_log_probs(logits, targets, loss_mask)`` take the
model's logits as they are, with no ``shift=True`` and no wasted last position.

Every collator returns the same four (B, T) int64 arrays on the active backend:

    input_ids       token ids, ``pad_id`` (0) after the end of a row (RIGHT padding:
                    in training every row starts at position 0)
    attention_mask  1 on real input tokens, 0 on padding
    targets         the next token at each position, ``pad_id`` where nothing is counted
    loss_mask       1 where ``targets`` is counted by the loss, 0 elsewhere

``collate_lm`` counts every real target (plain language modelling: the model
learns the whole text, its first character from bos and when to stop with
eos). ``collate_sft`` and ``collate_preferences`` count only the RESPONSE
tokens (eos included: a chat model must learn to stop), so the loss and the
log-probs are those of log pi(response | prompt), never of the prompt (as in
TRL's ``completion_only_loss`` and the DPO reference's ``-100`` labels).

T is the longest row of the batch (at most ``block_size``), not
``block_size`` itself: short batches cost less.

Too long? Documented choice
---------------------------
``block_size`` is the model's longest input, so an example fits when
``L - 1 = 1 + len(prompt) + len(response) + 1 - 1 <= block_size``.

* ``collate_lm`` raises ValueError naming the text: there is no prompt to
  give up, and silently cutting a training text would teach a model lines
  that never end.
* ``collate_sft`` and ``collate_preferences`` cut the PROMPT from the left
  (keep its end, the words nearest the response; TRL's ``truncation_mode=
  "keep_end"``), keeping bos, and raise ValueError naming the example if the
  response alone does not fit. ``truncate_prompt=False`` raises instead.

Shapes: B batch (examples; 2B rows for preference pairs), T time.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..backend import xp_active

__all__ = ["collate_lm", "collate_sft", "collate_preferences", "BATCH_KEYS"]

BATCH_KEYS = ("input_ids", "attention_mask", "targets", "loss_mask")


# --------------------------------------------------------------------------- validation
def _check_tokenizer(tokenizer) -> None:
    for attr in ("encode", "pad_id", "bos_id", "eos_id"):
        if not hasattr(tokenizer, attr):
            raise TypeError(
                f"tokenizer: expected a tokenizer with encode(), pad_id, bos_id and eos_id "
                f"(e.g. CharTokenizer), {type(tokenizer).__name__} has no {attr}"
            )


def _check_block_size(block_size) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size: expected a positive int (the model's longest input), got {block_size!r}")
    return int(block_size)


def _check_texts(name: str, texts) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(
            f"{name}: expected a list of str, got {type(texts).__name__}"
            + (" (wrap a single text in a list: [text])" if isinstance(texts, str) else "")
        )
    if len(texts) == 0:
        raise ValueError(f"{name}: expected at least one example, got an empty list")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}]: expected a str, got {type(text).__name__}")
    return list(texts)


def _check_pairs(pairs) -> tuple[list[str], list[str]]:
    if isinstance(pairs, (str, dict)) or not isinstance(pairs, Sequence):
        raise TypeError(f"pairs: expected a list of (prompt, response) tuples, got {type(pairs).__name__}")
    if len(pairs) == 0:
        raise ValueError("pairs: expected at least one (prompt, response) pair, got an empty list")
    prompts, responses = [], []
    for i, pair in enumerate(pairs):
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"pairs[{i}]: expected a (prompt, response) pair of str, got {pair!r}")
        prompt, response = pair
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise TypeError(
                f"pairs[{i}]: expected a (prompt, response) pair of str, "
                f"got ({type(prompt).__name__}, {type(response).__name__})"
            )
        prompts.append(prompt)
        responses.append(response)
    return prompts, responses


# --------------------------------------------------------------------------- assembling
def _fit_prompt(prompt_ids: list[int], response_ids: list[int], block_size: int, where: str, truncate: bool):
    """The prompt's ids, cut from the left so that the row fits ``block_size`` inputs."""
    room = block_size - 1 - len(response_ids)  # inputs = bos + prompt + response (eos is only a target)
    if room < 0:
        raise ValueError(
            f"{where}: the response alone encodes to {len(response_ids)} tokens; with bos and eos it "
            f"needs block_size >= {len(response_ids) + 1}, got block_size={block_size}"
        )
    if len(prompt_ids) > room:
        if not truncate:
            raise ValueError(
                f"{where}: bos + prompt + response is {1 + len(prompt_ids) + len(response_ids)} input "
                f"tokens, more than block_size={block_size}; pass truncate_prompt=True to keep the end of the prompt"
            )
        prompt_ids = prompt_ids[len(prompt_ids) - room :]  # keep the end: the words next to the response
    return prompt_ids


def _pack(rows: list[tuple[list[int], int]], tokenizer) -> dict:
    """Right-padded arrays from rows (s, n_prompt): s = bos + prompt + response + eos.

    The loss counts targets[t] = s[t + 1] for t >= n_prompt (the first response
    token is predicted at the position of the last prompt token, or of bos).
    """
    b = len(rows)
    t = max(len(s) - 1 for s, _ in rows)
    pad = tokenizer.pad_id
    input_ids = np.full((b, t), pad, dtype=np.int64)  # (B, T)
    targets = np.full((b, t), pad, dtype=np.int64)  # (B, T)
    attention_mask = np.zeros((b, t), dtype=np.int64)  # (B, T)
    loss_mask = np.zeros((b, t), dtype=np.int64)  # (B, T)
    for i, (s, n_prompt) in enumerate(rows):
        n = len(s) - 1
        input_ids[i, :n] = s[:-1]
        targets[i, :n] = s[1:]
        attention_mask[i, :n] = 1
        loss_mask[i, n_prompt:n] = 1
    xp = xp_active()  # arrays created here go where the active backend says
    return {
        "input_ids": xp.asarray(input_ids),
        "attention_mask": xp.asarray(attention_mask),
        "targets": xp.asarray(targets),
        "loss_mask": xp.asarray(loss_mask),
    }


def _sequence(tokenizer, prompt_ids: list[int], response_ids: list[int]) -> tuple[list[int], int]:
    return [tokenizer.bos_id] + prompt_ids + response_ids + [tokenizer.eos_id], len(prompt_ids)


# --------------------------------------------------------------------------- public
def collate_lm(texts, tokenizer, block_size: int) -> dict:
    """Plain language modelling: predict every token of ``bos + text + eos``.

    texts: a list of B str.
    tokenizer: a CharTokenizer (or anything with encode, pad_id, bos_id, eos_id).
    block_size: the model's longest input; each text may have at most
        ``block_size - 1`` tokens (bos + text fill the inputs, eos is a target).
    Returns {"input_ids", "attention_mask", "targets", "loss_mask"}, each (B, T)
    int64, T = 1 + the longest text; ``loss_mask`` equals ``attention_mask``
    (every real position predicts a real token).
    Raises ValueError naming the text that does not fit (no truncation, see the
    module docstring), TypeError / ValueError for malformed arguments.
    """
    texts = _check_texts("texts", texts)
    _check_tokenizer(tokenizer)
    block_size = _check_block_size(block_size)
    rows = []
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text)
        if len(ids) + 1 > block_size:
            raise ValueError(
                f"texts[{i}]: bos + text is {len(ids) + 1} input tokens, more than "
                f"block_size={block_size}; shorten the text or raise block_size"
            )
        s, _ = _sequence(tokenizer, ids, [])
        rows.append((s, 0))  # n_prompt = 0: every target counts, from the first character on
    return _pack(rows, tokenizer)


def collate_sft(pairs, tokenizer, block_size: int, truncate_prompt: bool = True) -> dict:
    """Supervised fine-tuning: learn the response given the prompt.

    pairs: a list of B (prompt, response) str pairs; ``prompt + response`` is the text.
    tokenizer, block_size: as in ``collate_lm``.
    truncate_prompt: cut too-long prompts from the left (True) or raise ValueError.
    Returns the same four (B, T) arrays as ``collate_lm``; ``loss_mask`` is 1
    only where the target is a response token (or the final eos): prompt
    tokens and padding are excluded.
    """
    prompts, responses = _check_pairs(pairs)
    _check_tokenizer(tokenizer)
    block_size = _check_block_size(block_size)
    rows = []
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        response_ids = tokenizer.encode(response)
        prompt_ids = _fit_prompt(tokenizer.encode(prompt), response_ids, block_size, f"pairs[{i}]", truncate_prompt)
        rows.append(_sequence(tokenizer, prompt_ids, response_ids))
    return _pack(rows, tokenizer)


def collate_preferences(prompts, chosen, rejected, tokenizer, block_size: int, truncate_prompt: bool = True) -> dict:
    """Preference pairs as ONE batch of 2B rows: the B chosen rows first, then the B rejected.

    prompts, chosen, rejected: lists of B str; pair i is (prompts[i], chosen[i], rejected[i]).
    tokenizer, block_size, truncate_prompt: as in ``collate_sft``. A prompt is
        cut to the same length in its chosen and its rejected row, so both
        responses are scored against the same context.
    Returns the four (2B, T) arrays of ``collate_sft``: rows [0, B) hold
    prompt + chosen, rows [B, 2B) prompt + rejected. With the model's logits
    (2B, T, V), ``compute_log_probs(logits, targets, loss_mask)`` is
    log pi(y | x) per row (DPO, Rafailov et al. 2023, Eq. 7 needs the first B
    and the last B), and a reward model reads each row at its last real
    input token (``attention_mask``).
    """
    prompts = _check_texts("prompts", prompts)
    chosen = _check_texts("chosen", chosen)
    rejected = _check_texts("rejected", rejected)
    if not len(prompts) == len(chosen) == len(rejected):
        raise ValueError(
            f"prompts, chosen, rejected: expected one entry each per pair (equal lengths), "
            f"got {len(prompts)}, {len(chosen)}, {len(rejected)}"
        )
    _check_tokenizer(tokenizer)
    block_size = _check_block_size(block_size)
    chosen_rows, rejected_rows = [], []
    for i, (prompt, y_c, y_r) in enumerate(zip(prompts, chosen, rejected)):
        ids_c, ids_r = tokenizer.encode(y_c), tokenizer.encode(y_r)
        longer = ids_c if len(ids_c) >= len(ids_r) else ids_r  # the row that needs the most room
        where = f"pair {i} ({'chosen' if longer is ids_c else 'rejected'})"
        prompt_ids = _fit_prompt(tokenizer.encode(prompt), longer, block_size, where, truncate_prompt)
        chosen_rows.append(_sequence(tokenizer, prompt_ids, ids_c))
        rejected_rows.append(_sequence(tokenizer, prompt_ids, ids_r))
    return _pack(chosen_rows + rejected_rows, tokenizer)
