"""Evaluating a policy with error bars (alignment_np/tasks/evaluate.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignment_np.data.corpus import generate_prompts
from alignment_np.functional.stable import log_softmax
from alignment_np.rl.generate import generate
from alignment_np.stats import mean_se, paired_difference, win_rate
from alignment_np.tasks.evaluate import completion_logps, evaluate_policy
from tiny_sft import lexicon_rate, tiny_sft

PROMPTS = generate_prompts(48, seed=11)


def ends_with_full_stop(text: str) -> bool:
    """A stand-in fluency check: the corpus's lines end with " ."."""
    return text.endswith(" .")


def length_rate(prompts, completions):
    """A rater that a policy can game by never stopping: the completion's length."""
    return np.array([len(c) for c in completions], dtype=np.float64)


def no_eos_policy():
    """The tiny SFT model with its <eos> logit pinned to 0: it rarely stops (a reward hacker for length_rate)."""
    model, tok = tiny_sft()
    model.wte.data[tok.eos_id] = 0.0
    return model, tok


# ---------------------------------------------------------------- the numbers are what they say


def test_every_number_is_recomputable_from_the_samples():
    policy, tok = no_eos_policy()
    reference, _ = tiny_sft()
    res = evaluate_policy(policy, reference, tok, PROMPTS, lexicon_rate, ends_with_full_stop, samples_per_prompt=2)
    samples = res["samples"]
    assert res["n"] == len(samples) == 2 * len(PROMPTS) and res["prompts"] == len(PROMPTS)
    assert [s["prompt"] for s in samples] == [p for p in PROMPTS for _ in range(2)]
    score = np.array([s["score"] for s in samples])
    ref_score = np.array([s["reference_score"] for s in samples])
    np.testing.assert_array_equal(score, lexicon_rate([s["prompt"] for s in samples], [s["completion"] for s in samples]))
    np.testing.assert_array_equal(
        ref_score, lexicon_rate([s["prompt"] for s in samples], [s["reference_completion"] for s in samples]))
    assert [s["grammatical"] for s in samples] == [ends_with_full_stop(s["prompt"] + s["completion"]) for s in samples]
    kl = np.array([s["logp"] - s["ref_logp"] for s in samples])
    expected = {
        **mean_se(score).as_dict("score"), **mean_se(ref_score).as_dict("reference_score"),
        **paired_difference(score, ref_score).as_dict("score_diff"), **win_rate(score, ref_score).as_dict("win_rate"),
        **mean_se([float(s["grammatical"]) for s in samples]).as_dict("grammatical"),
        **mean_se(kl).as_dict("kl"), **mean_se([float(s["finished"]) for s in samples]).as_dict("eos_fraction"),
    }
    for key, value in expected.items():
        assert res[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    import json

    json.dumps(res, allow_nan=False)  # JSON-ready, strictly


def test_logps_are_the_models_log_probs_of_the_sampled_tokens():
    """The teacher-forced log-probs equal the sum of the log-probs generate() returned while sampling."""
    model, tok = tiny_sft("float64")
    ids, mask = tok.encode_batch(PROMPTS[:6], add_bos=True, padding_side="left")
    out = generate(model, ids, 20, seed=3, attention_mask=mask, eos_id=tok.eos_id)
    tokens = [row[m.astype(bool)].tolist() for row, m in zip(out["new_tokens"], out["response_mask"])]
    np.testing.assert_allclose(completion_logps(model, tok, PROMPTS[:6], tokens, batch_size=4),
                               out["logprobs"].sum(axis=1), rtol=1e-10)


def test_kl_is_an_unbiased_estimate_of_the_exact_kl():
    """With one new token the sequence KL is the KL of the first-token distributions, computable exactly."""
    policy, tok = tiny_sft()
    policy.ln_f.gamma.data *= 0.5  # flatter next-token distributions than the reference's
    reference, _ = tiny_sft()
    prompt = "the soup was"
    res = evaluate_policy(policy, reference, tok, [prompt], lexicon_rate, ends_with_full_stop,
                          samples_per_prompt=3000, max_new_tokens=1, batch_size=1000)
    ids = np.array([[tok.bos_id] + tok.encode(prompt)])
    logp = log_softmax(policy.forward(ids)[0]["logits"][0, -1].astype(np.float64))
    logq = log_softmax(reference.forward(ids)[0]["logits"][0, -1].astype(np.float64))
    exact = float((np.exp(logp) * (logp - logq)).sum())
    assert exact > 0.01  # the two models really differ here
    assert abs(res["kl"] - exact) < 4 * res["kl_se"]


def test_against_itself_kl_is_exactly_zero_and_the_win_rate_a_coin():
    policy, tok = tiny_sft()
    copy, _ = tiny_sft()  # equal weights, separate memory: evaluated as another model
    a = evaluate_policy(policy, None, tok, PROMPTS, length_rate, ends_with_full_stop, samples_per_prompt=4)
    b = evaluate_policy(policy, policy, tok, PROMPTS, length_rate, ends_with_full_stop, samples_per_prompt=4)
    c = evaluate_policy(policy, copy, tok, PROMPTS, length_rate, ends_with_full_stop, samples_per_prompt=4)
    assert a == b
    for res in (a, c):
        assert res["kl"] == 0.0 and res["kl_se"] == 0.0
        assert all(s["logp"] == s["ref_logp"] for s in res["samples"])
        # the reference's samples are a second, independent draw: not the same texts
        assert any(s["completion"] != s["reference_completion"] for s in res["samples"])
        assert abs(res["win_rate"] - 0.5) < 3 * res["win_rate_se"]
    # a model evaluated alone draws the reference's stream, so its samples are the ones every
    # policy compared with it (same seed) is paired with: c's reference side is a's policy side
    assert [s["reference_completion"] for s in c["samples"]] == [s["completion"] for s in a["samples"]]
    assert c["reference_score"] == a["score"] and c["score"] == a["reference_score"]


def test_the_reference_alone_and_every_comparison_see_the_same_reference_samples():
    policy, tok = no_eos_policy()
    reference, _ = tiny_sft()
    alone = evaluate_policy(reference, None, tok, PROMPTS, lexicon_rate, ends_with_full_stop, seed=4)
    paired = evaluate_policy(policy, reference, tok, PROMPTS, lexicon_rate, ends_with_full_stop, seed=4)
    assert [s["completion"] for s in alone["samples"]] == [s["reference_completion"] for s in paired["samples"]]
    assert alone["score"] == paired["reference_score"] and alone["score_se"] == paired["reference_score_se"]


def test_a_constant_rater_gives_ties_and_a_win_rate_of_one_half():
    policy, tok = no_eos_policy()
    reference, _ = tiny_sft()
    res = evaluate_policy(policy, reference, tok, PROMPTS, lambda p, c: np.ones(len(c)), ends_with_full_stop)
    assert res["win_rate"] == 0.5 and res["win_rate_se"] == 0.0 and res["score_diff"] == 0.0


def test_a_reward_hacker_shows_up_in_every_column():
    """A policy that games a length rater by not stopping: score and win rate up by more than
    two standard errors, fluency and eos down, KL from the reference clearly positive."""
    policy, tok = no_eos_policy()
    reference, _ = tiny_sft()
    prompts = generate_prompts(128, seed=12)
    hacked = evaluate_policy(policy, reference, tok, prompts, length_rate, ends_with_full_stop, seed=1)
    honest = evaluate_policy(reference, None, tok, prompts, length_rate, ends_with_full_stop, seed=1)
    assert hacked["score_diff"] > 2 * hacked["score_diff_se"]
    assert hacked["win_rate"] - 0.5 > 2 * hacked["win_rate_se"]
    assert hacked["kl"] > 2 * hacked["kl_se"] > 0
    gap = honest["grammatical"] - hacked["grammatical"]
    assert gap > 2 * math.hypot(honest["grammatical_se"], hacked["grammatical_se"])
    assert honest["eos_fraction"] - hacked["eos_fraction"] > 2 * math.hypot(honest["eos_fraction_se"],
                                                                             hacked["eos_fraction_se"])
    assert hacked["length_mean"] > honest["length_mean"]


def test_evaluation_is_seeded():
    policy, tok = no_eos_policy()
    reference, _ = tiny_sft()
    run = lambda seed: evaluate_policy(policy, reference, tok, PROMPTS, lexicon_rate, ends_with_full_stop, seed=seed)
    first, again, other = run(5), run(5), run(6)
    assert first == again
    assert [s["completion"] for s in first["samples"]] != [s["completion"] for s in other["samples"]]


def test_a_single_sample_has_no_standard_error_and_says_so():
    policy, tok = tiny_sft()
    res = evaluate_policy(policy, None, tok, ["the soup was"], lexicon_rate, ends_with_full_stop)
    assert res["n"] == 1 and res["score_se"] is None and res["kl_se"] is None


# ---------------------------------------------------------------- bad inputs


def test_bad_arguments_are_clear_errors():
    policy, tok = tiny_sft()
    with pytest.raises(ValueError, match=r"rate: expected \d+ scores, shape \(\d+,\), one per completion"):
        evaluate_policy(policy, None, tok, PROMPTS, lambda p, c: np.zeros(2), ends_with_full_stop)
    with pytest.raises(ValueError, match="rate: returned a non-finite score nan"):
        evaluate_policy(policy, None, tok, PROMPTS, lambda p, c: np.full(len(c), np.nan), ends_with_full_stop)
    with pytest.raises(TypeError, match="is_grammatical: expected a callable"):
        evaluate_policy(policy, None, tok, PROMPTS, lexicon_rate, None)
    with pytest.raises(TypeError, match="rate: expected a callable"):
        evaluate_policy(policy, None, tok, PROMPTS, "vader", ends_with_full_stop)
    with pytest.raises(ValueError, match="samples_per_prompt: expected a positive int, got 0"):
        evaluate_policy(policy, None, tok, PROMPTS, lexicon_rate, ends_with_full_stop, samples_per_prompt=0)
    with pytest.raises(ValueError, match="prompts: expected a non-empty list of str"):
        evaluate_policy(policy, None, tok, [], lexicon_rate, ends_with_full_stop)
    with pytest.raises(TypeError, match="reference: expected a TinyGPT or None, got str"):
        evaluate_policy(policy, "sft.npz", tok, PROMPTS, lexicon_rate, ends_with_full_stop)
    from alignment_np.nn.gpt import GPTConfig, TinyGPT

    other = TinyGPT(GPTConfig(vocab_size=tok.vocab_size + 1, block_size=64, n_layer=1, n_head=2, d_model=8))
    with pytest.raises(ValueError, match="reference: vocab_size .* differs from the policy's"):
        evaluate_policy(policy, other, tok, PROMPTS, lexicon_rate, ends_with_full_stop)
