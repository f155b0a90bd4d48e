"""Tests for the shared rollout (``alignment_np/rl/rollout.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from alignment_np.backend import to_numpy
from alignment_np.data.tokenizer import CharTokenizer
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.rl.generate import generate
from alignment_np.rl.rollout import collect_rollout, sample_completions, score_completions
from alignment_np.trainers.lm_logprobs import response_forward

TOK = CharTokenizer.from_text("ab c.")
PROMPTS = ["ab", "c", "a b c", "", "b."]


def model(seed=0, dtype="float64", init_std=0.5):
    """A random tiny model whose next-token distribution is far from uniform (so eos comes, sometimes)."""
    config = GPTConfig(vocab_size=TOK.vocab_size, block_size=24, n_layer=1, n_head=2, d_model=8, dtype=dtype,
                       init_std=init_std)
    return TinyGPT(config, seed=seed)


def count_a(prompts, completions):
    return np.array([c.count("a") for c in completions], dtype=np.float64)


def test_samples_are_laid_out_as_documented():
    s = sample_completions(model(), TOK, PROMPTS, max_new_tokens=8, temperature=1.0, rng=3)
    b, p = len(PROMPTS), s.prompt_length
    assert p == max(len(x) for x in PROMPTS) + 1  # <bos> + the longest prompt
    tokens, attention, response = (to_numpy(a) for a in (s.tokens, s.attention_mask, s.response_mask))
    n = response.shape[1]
    assert tokens.shape == attention.shape == (b, p + n) and n == s.response_lengths.max() <= 8
    np.testing.assert_array_equal(response.sum(axis=1), s.response_lengths)
    np.testing.assert_array_equal(attention[:, p:], response)
    for row, prompt in enumerate(PROMPTS):
        real = tokens[row, :p][attention[row, :p] == 1]
        assert real.tolist() == TOK.encode(prompt, add_bos=True)  # left padded, <bos> first
        length = s.response_lengths[row]
        ids = tokens[row, p : p + length]
        assert s.contains_eos[row] == (ids[-1] == TOK.eos_id) and (TOK.eos_id not in ids[:-1])
        assert s.completions[row] == TOK.decode(ids)
        assert np.all(tokens[row, p + length :] == TOK.pad_id)
        end = s.response_ends[row]
        assert attention[row, end] == 1 and (end + 1 == tokens.shape[1] or attention[row, end + 1] == 0)
    np.testing.assert_array_equal(to_numpy(s.response_tokens), tokens[:, p:])


def test_rollout_logprobs_are_the_samplers_and_the_reference_scores_the_same_tokens():
    policy, reference = model(seed=1), model(seed=2)
    r = collect_rollout(policy, reference, TOK, PROMPTS, count_a, max_new_tokens=6, temperature=0.8, rng=5)
    n = r.response_mask.shape[1]
    ids, mask = TOK.encode_batch(PROMPTS, add_bos=True, padding_side="left")
    gen = generate(policy, ids, 6, temperature=0.8, seed=5, attention_mask=mask, eos_id=TOK.eos_id,
                   pad_id=TOK.pad_id)
    np.testing.assert_array_equal(to_numpy(r.tokens), to_numpy(gen["tokens"])[:, : r.prompt_length + n])
    np.testing.assert_allclose(r.logprobs, gen["logprobs"][:, :n], rtol=1e-10, atol=1e-12)  # same numbers
    expected_ref, _ = response_forward(reference, r.tokens, r.attention_mask, r.prompt_length, 0.8,
                                       response_mask=r.response_mask)
    np.testing.assert_array_equal(r.ref_logprobs, expected_ref["logps"])
    assert r.values is None and r.temperature == 0.8
    np.testing.assert_array_equal(r.raw_scores, count_a(r.prompts, r.completions))
    same = collect_rollout(policy, model(seed=1), TOK, PROMPTS, count_a, max_new_tokens=6, temperature=0.8, rng=5)
    np.testing.assert_array_equal(same.ref_logprobs, same.logprobs)  # a copy of the policy: KL 0


def test_a_response_without_eos_scores_the_penalty_instead():
    r = collect_rollout(model(), model(), TOK, PROMPTS * 4, count_a, max_new_tokens=2, rng=0,
                        missing_eos_penalty=1.5)
    missing = ~r.contains_eos
    assert missing.any() and (~missing).any()  # both kinds occur in this batch
    np.testing.assert_array_equal(r.scores[missing], -1.5)
    np.testing.assert_array_equal(r.scores[~missing], r.raw_scores[~missing])
    no_rule = collect_rollout(model(), model(), TOK, PROMPTS * 4, count_a, max_new_tokens=2, rng=0)
    np.testing.assert_array_equal(no_rule.scores, no_rule.raw_scores)


def test_values_come_from_the_policys_head_or_a_separate_model():
    policy, critic = model(seed=1), model(seed=4)
    shared = collect_rollout(policy, model(), TOK, PROMPTS, count_a, 5, rng=2, value_model=policy)
    separate = collect_rollout(policy, model(), TOK, PROMPTS, count_a, 5, rng=2, value_model=critic)
    args = (shared.tokens, shared.attention_mask, shared.prompt_length, 1.0, ("values",), shared.response_mask)
    np.testing.assert_allclose(shared.values, response_forward(policy, *args)[0]["values"], rtol=1e-12)
    np.testing.assert_allclose(separate.values, response_forward(critic, *args)[0]["values"], rtol=1e-12)
    np.testing.assert_array_equal(shared.logprobs, separate.logprobs)


def test_same_seed_same_rollout_and_a_generator_advances():
    a = collect_rollout(model(), model(), TOK, PROMPTS, count_a, 6, rng=7)
    b = collect_rollout(model(), model(), TOK, PROMPTS, count_a, 6, rng=7)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    rng = np.random.default_rng(7)
    first = collect_rollout(model(), model(), TOK, PROMPTS * 3, count_a, 6, rng=rng)
    second = collect_rollout(model(), model(), TOK, PROMPTS * 3, count_a, 6, rng=rng)
    assert first.completions != second.completions


def test_float32_rollout_keeps_float32():
    r = collect_rollout(model(dtype="float32"), model(dtype="float32"), TOK, PROMPTS, count_a, 4, rng=1,
                        value_model=None)
    assert r.logprobs.dtype == r.ref_logprobs.dtype == np.float32
    assert r.scores.dtype == np.float64


# --------------------------------------------------------------------------- errors
def test_a_non_finite_reward_is_refused_naming_the_completion():
    def bad(prompts, completions):
        out = np.zeros(len(completions))
        out[1] = np.nan
        return out

    with pytest.raises(ValueError, match=r"reward_fn\(prompts, completions\): expected finite values.*completion 1"):
        collect_rollout(model(), model(), TOK, PROMPTS, bad, 4, rng=0)


@pytest.mark.parametrize(
    "reward_fn, match",
    [
        (lambda p, c: np.zeros(len(c) + 1), r"reward_fn: expected a \(5,\) array of numbers"),
        (lambda p, c: ["good"] * len(c), r"reward_fn: expected a \(5,\) array of numbers"),
    ],
)
def test_a_reward_of_the_wrong_shape_is_refused(reward_fn, match):
    with pytest.raises(ValueError, match=match):
        score_completions(reward_fn, PROMPTS, ["x"] * 5, np.ones(5, bool))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(prompts="ab"), ValueError, "prompts: expected a non-empty list of str"),
        (dict(prompts=[]), ValueError, "prompts: expected a non-empty list of str"),
        (dict(prompts=["a", 3]), TypeError, r"prompts\[1\]: expected a str"),
        (dict(max_new_tokens=0), ValueError, "max_new_tokens: expected a positive int"),
        (dict(max_new_tokens=40), ValueError, "exceeds the model's block_size=24"),
        (dict(temperature=0.0), ValueError, "temperature: expected a finite number > 0"),
        (dict(reward_fn="rater"), TypeError, "reward_fn: expected a callable"),
        (dict(missing_eos_penalty=-1.0), ValueError, "missing_eos_penalty: expected a finite number >= 0"),
    ],
)
def test_bad_arguments_raise_naming_them(kwargs, error, match):
    args = dict(policy=model(), reference=model(), tokenizer=TOK, prompts=PROMPTS, reward_fn=count_a,
                max_new_tokens=4)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        collect_rollout(**args)
