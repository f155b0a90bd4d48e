"""Tests for batching with padding and masks (``alignment_np/data/collate.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignment_np.backend import to_numpy
from alignment_np.data.collate import BATCH_KEYS, collate_lm, collate_preferences, collate_sft
from alignment_np.data.tokenizer import CharTokenizer
from alignment_np.functional.cross_entropy import cross_entropy_forward
from alignment_np.functional.logprobs import compute_log_probs
from alignment_np.nn.gpt import GPTConfig, TinyGPT

ALPHABET = "ab c."
TOK = CharTokenizer.from_text(ALPHABET)
texts_st = st.text(alphabet=ALPHABET, min_size=0, max_size=8)
batch_st = st.lists(texts_st, min_size=1, max_size=4)
pairs_st = st.lists(st.tuples(texts_st, texts_st), min_size=1, max_size=4)


def np_batch(batch):
    return {k: to_numpy(v) for k, v in batch.items()}


def row_length(batch, i):
    return int(batch["attention_mask"][i].sum())


# --------------------------------------------------------------------------- layout
@given(batch_st)
def test_collate_lm_is_bos_text_eos_shifted_by_one(texts):
    batch = np_batch(collate_lm(texts, TOK, block_size=16))
    t = max(len(x) for x in texts) + 1
    for key in BATCH_KEYS:
        assert batch[key].shape == (len(texts), t)
        assert batch[key].dtype == np.int64
    for i, text in enumerate(texts):
        n = len(text) + 1
        s = [TOK.bos_id] + TOK.encode(text) + [TOK.eos_id]
        assert batch["input_ids"][i, :n].tolist() == s[:-1]
        assert batch["targets"][i, :n].tolist() == s[1:]
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (t - n)  # right padding
        assert (batch["input_ids"][i, n:] == TOK.pad_id).all()
    # plain LM: every real position predicts a real token
    np.testing.assert_array_equal(batch["loss_mask"], batch["attention_mask"])


@given(pairs_st)
def test_collate_sft_loss_mask_covers_exactly_the_response_and_eos(pairs):
    batch = np_batch(collate_sft(pairs, TOK, block_size=32))
    for i, (prompt, response) in enumerate(pairs):
        counted = batch["targets"][i][batch["loss_mask"][i] == 1]
        assert counted.tolist() == TOK.encode(response) + [TOK.eos_id]
        n = row_length(batch, i)
        assert n == 1 + len(prompt) + len(response)
        assert TOK.decode(batch["input_ids"][i, :n]) == prompt + response
        # the causal shift: the target at t is the input at t + 1
        assert batch["targets"][i, : n - 1].tolist() == batch["input_ids"][i, 1:n].tolist()
    # padding and prompt are never counted
    assert not (batch["loss_mask"] & (1 - batch["attention_mask"])).any()


@given(st.lists(st.tuples(texts_st, texts_st, texts_st), min_size=1, max_size=4))
def test_collate_preferences_stacks_chosen_then_rejected_with_a_shared_prompt(triples):
    prompts, chosen, rejected = (list(x) for x in zip(*triples))
    batch = np_batch(collate_preferences(prompts, chosen, rejected, TOK, block_size=32))
    b = len(prompts)
    assert batch["input_ids"].shape[0] == 2 * b
    for i in range(b):
        for row, response in ((i, chosen[i]), (b + i, rejected[i])):
            counted = batch["targets"][row][batch["loss_mask"][row] == 1]
            assert counted.tolist() == TOK.encode(response) + [TOK.eos_id]
            n = row_length(batch, row)
            assert TOK.decode(batch["input_ids"][row, :n]) == prompts[i] + response


def slow_response_logps(logits, batch):
    """Obviously correct: for each row, add log_softmax(logits[t])[targets[t]] where loss_mask[t] is 1."""
    out = []
    for b in range(logits.shape[0]):
        total = 0.0
        for t in range(logits.shape[1]):
            if batch["loss_mask"][b, t]:
                z = logits[b, t]
                lse = z.max() + np.log(np.exp(z - z.max()).sum())
                total += z[batch["targets"][b, t]] - lse
        out.append(total)
    return np.array(out)


@given(st.integers(0, 2**31 - 1))
@settings(max_examples=10)
def test_preference_batch_gives_response_logps_directly(seed):
    rng = np.random.default_rng(seed)
    prompts = ["ab", "c", "a.b"]
    chosen, rejected = [" a.", "b", ""], ["cc", " ab .", "a"]
    batch = np_batch(collate_preferences(prompts, chosen, rejected, TOK, block_size=16))
    logits = rng.standard_normal((6, batch["input_ids"].shape[1], TOK.vocab_size)) * 3
    fast = compute_log_probs(logits, batch["targets"], batch["loss_mask"])
    np.testing.assert_allclose(fast, slow_response_logps(logits, batch), rtol=1e-12, atol=1e-12)


def test_preference_logps_of_a_padded_batch_equal_each_row_alone():
    """One forward over 2B right-padded rows scores each response as if it were alone."""
    tok = CharTokenizer.from_text("the film was good and bad.")
    model = TinyGPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, d_model=8,
                              dtype="float64", init_std=0.3), seed=3)
    prompts, chosen, rejected = ["the film was", "film"], [" good .", " bad and good ."], [" bad .", " good"]
    batch = collate_preferences(prompts, chosen, rejected, tok, block_size=32)
    logits = model.forward(batch["input_ids"], batch["attention_mask"])[0]["logits"]
    together = compute_log_probs(logits, batch["targets"], batch["loss_mask"])
    for row, (p, y) in enumerate([*zip(prompts, chosen), *zip(prompts, rejected)]):
        alone = collate_sft([(p, y)], tok, block_size=32)
        logits_alone = model.forward(alone["input_ids"])[0]["logits"]  # no padding at all
        expected = compute_log_probs(logits_alone, alone["targets"], alone["loss_mask"])
        np.testing.assert_allclose(together[row], expected[0], rtol=1e-12)


def test_sft_batch_loss_is_the_mean_over_response_tokens(rng):
    pairs = [("ab", " c."), ("", "abc"), ("c c", "a")]
    batch = np_batch(collate_sft(pairs, TOK, block_size=16))
    logits = rng.standard_normal(batch["input_ids"].shape + (TOK.vocab_size,))
    loss, _ = cross_entropy_forward(logits, batch["targets"], batch["loss_mask"])
    slow = -slow_response_logps(logits, batch).sum() / sum(len(y) + 1 for _, y in pairs)
    np.testing.assert_allclose(float(loss), slow, rtol=1e-12)


def test_batch_width_is_the_longest_row_not_block_size():
    batch = collate_lm(["ab", "abcab"], TOK, block_size=64)
    assert batch["input_ids"].shape == (2, 6)


def test_arrays_live_on_the_active_backend(xp):
    for batch in (
        collate_lm(["ab", "c"], TOK, 8),
        collate_sft([("a", "b")], TOK, 8),
        collate_preferences(["a"], ["b"], ["c"], TOK, 8),
    ):
        for key in BATCH_KEYS:
            assert isinstance(batch[key], xp.ndarray)


def test_collate_does_not_modify_its_inputs():
    pairs = [("ab", "c"), ("c", "ab")]
    copy = [tuple(p) for p in pairs]
    collate_sft(pairs, TOK, 8)
    assert pairs == copy


# --------------------------------------------------------------------------- too long
def test_a_long_prompt_is_cut_from_the_left_to_fit_block_size():
    block_size = 6
    batch = np_batch(collate_sft([("abcabc", "cc")], TOK, block_size))
    # inputs: bos + the prompt's last 3 characters + the response (6 = block_size)
    assert batch["input_ids"].shape == (1, block_size)
    assert batch["input_ids"][0, 0] == TOK.bos_id
    assert TOK.decode(batch["input_ids"][0]) == "abc" + "cc"
    assert batch["targets"][0][batch["loss_mask"][0] == 1].tolist() == TOK.encode("cc") + [TOK.eos_id]


def test_preference_prompt_is_cut_the_same_in_both_rows():
    batch = np_batch(collate_preferences(["abcabc"], ["c"], ["ccc"], TOK, block_size=6))
    # the rejected row needs the most room: 6 - 1 (bos) - 3 = 2 prompt characters in both rows
    assert TOK.decode(batch["input_ids"][0, :4]) == "bc" + "c"
    assert TOK.decode(batch["input_ids"][1]) == "bc" + "ccc"


def test_truncate_prompt_false_raises_naming_the_pair():
    with pytest.raises(ValueError, match=r"pairs\[1\].*block_size=6.*truncate_prompt"):
        collate_sft([("a", "b"), ("abcabc", "cc")], TOK, 6, truncate_prompt=False)


def test_a_response_that_cannot_fit_raises_naming_it():
    with pytest.raises(ValueError, match=r"pairs\[0\]: the response alone encodes to 6 tokens"):
        collate_sft([("a", "abcabc")], TOK, 6)
    with pytest.raises(ValueError, match=r"pair 0 \(rejected\)"):
        collate_preferences(["a"], ["b"], ["abcabc"], TOK, 6)


def test_a_too_long_text_raises_in_plain_lm():
    with pytest.raises(ValueError, match=r"texts\[1\]: bos \+ text is 7 input tokens, more than block_size=6"):
        collate_lm(["ab", "abcabc"], TOK, 6)
    collate_lm(["abcab"], TOK, 6)  # 5 characters + bos fill the 6 inputs exactly


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: collate_lm("ab", TOK, 8), TypeError, r"texts: expected a list of str.*\[text\]"),
        (lambda: collate_lm([], TOK, 8), ValueError, r"texts: expected at least one example"),
        (lambda: collate_lm(["a", 3], TOK, 8), TypeError, r"texts\[1\]: expected a str, got int"),
        (lambda: collate_lm(["a"], TOK, 0), ValueError, r"block_size: expected a positive int.*got 0"),
        (lambda: collate_lm(["a"], TOK, 2.5), ValueError, r"block_size: .*got 2.5"),
        (lambda: collate_lm(["a"], object(), 8), TypeError, r"tokenizer: expected a tokenizer.*object has no encode"),
        (lambda: collate_sft([], TOK, 8), ValueError, r"pairs: expected at least one"),
        (lambda: collate_sft("ab", TOK, 8), TypeError, r"pairs: expected a list of \(prompt, response\)"),
        (lambda: collate_sft([("a", "b", "c")], TOK, 8), TypeError, r"pairs\[0\]: expected a \(prompt, response\)"),
        (lambda: collate_sft([("a", 1)], TOK, 8), TypeError, r"pairs\[0\]: .*got \(str, int\)"),
        (lambda: collate_preferences(["a"], ["b", "c"], ["d"], TOK, 8), ValueError,
         r"prompts, chosen, rejected: .*got 1, 2, 1"),
        (lambda: collate_preferences(["a"], "b", ["c"], TOK, 8), TypeError, r"chosen: expected a list of str"),
        (lambda: collate_sft([("a", "z")], TOK, 8), ValueError, r"character 'z' at position 0"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
