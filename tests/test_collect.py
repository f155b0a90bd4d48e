"""Preference collection (alignment_np/tasks/collect.py): sample, rate, pick best and worst."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alignment_np.data.corpus import generate_prompts
from alignment_np.data.preferences import load_preferences, save_preferences
from alignment_np.tasks import collect as collect_module
from alignment_np.tasks.collect import check_rater_scores, collect_preferences, flip_labels, sample_completions
from tiny_sft import lexicon_rate, tiny_sft

PROMPTS = list(dict.fromkeys(generate_prompts(200, seed=3)))[:24]  # distinct: pairs are matched by prompt


def letter_rate(prompts, completions):
    """A rater with a wide spread on any text: how many vowels the completion has."""
    return np.array([sum(ch in "aeiou" for ch in c) for c in completions], dtype=np.float64)


class Recorder:
    """Wraps a rater and remembers every (prompt, completion, score) it was asked about."""

    def __init__(self, rate):
        self.rate, self.seen = rate, []

    def __call__(self, prompts, completions):
        scores = self.rate(prompts, completions)
        self.seen.extend(zip(prompts, completions, scores.tolist()))
        return scores


# ---------------------------------------------------------------- sampling


def test_sample_completions_reports_eos_and_text_faithfully():
    model, tok = tiny_sft()
    out = sample_completions(model, tok, PROMPTS, max_new_tokens=12, seed=0, batch_size=10)
    assert len(out["completions"]) == len(PROMPTS)
    # short budget: some rows end, some do not
    assert 0 < out["finished"].sum() < len(PROMPTS)
    assert np.all(out["valid"] <= out["finished"])
    for text, done, n in zip(out["completions"], out["finished"], out["lengths"]):
        assert n == len(text) + done  # one token per character, plus <eos> when emitted
        assert n <= 12
    assert np.all(out["logps"] < 0)
    again = sample_completions(model, tok, PROMPTS, max_new_tokens=12, seed=0, batch_size=10)
    assert again["completions"] == out["completions"]  # seeded


def test_sample_completions_logps_are_the_models_logprobs():
    """The summed log-probs returned equal a teacher-forced forward over <bos> prompt completion <eos>."""
    from alignment_np.trainers.lm_logprobs import policy_logps_forward
    from alignment_np.data.collate import collate_sft

    model, tok = tiny_sft("float64")
    out = sample_completions(model, tok, PROMPTS[:8], seed=1)
    keep = np.flatnonzero(out["valid"])
    batch = collate_sft([(PROMPTS[i], out["completions"][i]) for i in keep], tok, model.config.block_size)
    logps, _ = policy_logps_forward(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                                    targets=batch["targets"])
    np.testing.assert_allclose(logps, out["logps"][keep], rtol=1e-9)


# ---------------------------------------------------------------- end to end


def test_collect_pairs_best_over_worst_of_the_rated_samples():
    model, tok = tiny_sft()
    rater = Recorder(letter_rate)
    pairs, summary = collect_preferences(model, tok, PROMPTS, rater, samples_per_prompt=4, seed=0, batch_size=32)
    assert summary["prompts"] == len(PROMPTS) and summary["samples"] == 4 * len(PROMPTS)
    assert summary["rated"] == len(rater.seen)
    assert summary["pairs"] == len(pairs) > 0
    assert summary["pairs"] + summary["dropped_gap"] + summary["dropped_unfinished"] == len(PROMPTS)
    assert summary["finished"] + summary["unfinished"] == summary["samples"]
    assert summary["eos_fraction"] == summary["finished"] / summary["samples"]
    by_prompt = {}
    for prompt, completion, score in rater.seen:
        by_prompt.setdefault(prompt, []).append((completion, score))
    for pair in pairs:
        seen = by_prompt[pair.prompt]
        best = max(s for _, s in seen)
        worst = min(s for _, s in seen)
        assert pair.meta == {"score_chosen": best, "score_rejected": worst, "flipped": False}
        assert (pair.chosen, best) in seen and (pair.rejected, worst) in seen
        assert best > worst
    scores = np.array([s for _, _, s in rater.seen])
    assert summary["score_mean"] == pytest.approx(scores.mean())
    assert summary["score_max"] == scores.max() and summary["score_min"] == scores.min()
    gaps = [p.meta["score_chosen"] - p.meta["score_rejected"] for p in pairs]
    assert summary["gap_mean"] == pytest.approx(np.mean(gaps)) and summary["gap_min"] == min(gaps)


def test_collect_is_seeded_and_the_seed_matters():
    model, tok = tiny_sft()
    run = lambda seed: collect_preferences(model, tok, PROMPTS, letter_rate, seed=seed)
    a, b, c = run(0), run(0), run(1)
    assert a == b
    assert a[0] != c[0]


def test_pairs_round_trip_through_jsonl_with_their_scores(tmp_path):
    model, tok = tiny_sft()
    pairs, _ = collect_preferences(model, tok, PROMPTS, lexicon_rate, flip_rate=0.5, seed=0)
    save_preferences(pairs, tmp_path / "prefs.jsonl")
    assert load_preferences(tmp_path / "prefs.jsonl") == pairs


def test_min_gap_drops_close_pairs():
    model, tok = tiny_sft()
    pairs0, s0 = collect_preferences(model, tok, PROMPTS, letter_rate, seed=0)
    pairs3, s3 = collect_preferences(model, tok, PROMPTS, letter_rate, seed=0, min_gap=3.0)
    assert all(p.meta["score_chosen"] - p.meta["score_rejected"] >= 3.0 for p in pairs3)
    # the same samples: exactly the pairs with a gap >= 3 survive
    assert pairs3 == [p for p in pairs0 if p.meta["score_chosen"] - p.meta["score_rejected"] >= 3.0]
    assert s3["dropped_gap"] == s0["dropped_gap"] + (len(pairs0) - len(pairs3)) > s0["dropped_gap"]


@pytest.mark.parametrize("flip_rate", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_flip_rate_flips_exactly_that_fraction_and_records_it(flip_rate):
    model, tok = tiny_sft()
    clean, _ = collect_preferences(model, tok, PROMPTS, letter_rate, seed=0)
    noisy, summary = collect_preferences(model, tok, PROMPTS, letter_rate, seed=0, flip_rate=flip_rate)
    n = len(clean)
    expected = math.floor(flip_rate * n + 0.5)
    assert summary["flipped"] == expected == sum(p.meta["flipped"] for p in noisy)
    for c, p in zip(clean, noisy):
        assert p.prompt == c.prompt
        if p.meta["flipped"]:
            assert (p.chosen, p.rejected) == (c.rejected, c.chosen)
            assert p.meta["score_chosen"] == c.meta["score_rejected"] < p.meta["score_rejected"]
        else:
            assert p == c


@pytest.mark.parametrize("flip_rate", [0.0, 0.25, 0.5])
def test_flip_labels_on_clean_pairs_gives_what_collect_gives_with_that_flip_rate(flip_rate):
    model, tok = tiny_sft()
    clean, _ = collect_preferences(model, tok, PROMPTS, letter_rate, seed=4)
    noisy, summary = collect_preferences(model, tok, PROMPTS, letter_rate, seed=4, flip_rate=flip_rate)
    kept = list(clean)
    flipped, n = flip_labels(clean, flip_rate, seed=4)
    assert flipped == noisy and n == summary["flipped"]
    assert clean == kept  # the input list and its pairs are left as they were
    if n:
        with pytest.raises(ValueError, match=r"pairs\[\d+\]: already flipped"):
            flip_labels(flipped, flip_rate, seed=4)
    with pytest.raises(TypeError, match=r"pairs\[0\]: expected a PreferencePair, got tuple"):
        flip_labels([("p", "a", "b")], 0.5)
    with pytest.raises(ValueError, match="flip_rate: expected a number in"):
        flip_labels(clean, 1.5)


def test_collect_with_the_lexicon_rater_prefers_positive_text():
    model, tok = tiny_sft()
    pairs, summary = collect_preferences(model, tok, generate_prompts(64, seed=5), lexicon_rate, seed=0)
    assert len(pairs) > 0
    assert all(lexicon_rate([p.prompt], [p.chosen])[0] > lexicon_rate([p.prompt], [p.rejected])[0] for p in pairs)


# ---------------------------------------------------------------- the selection rules, on designed samples


def fake_samples(completions, finished, valid=None):
    """A stand-in for sample_completions that returns the given rows."""

    def fake(policy, tokenizer, rows, **kwargs):
        assert len(rows) == len(completions)
        fin = np.asarray(finished, bool)
        return {"completions": list(completions), "finished": fin,
                "valid": fin if valid is None else np.asarray(valid, bool),
                "logps": np.zeros(len(rows)), "lengths": np.ones(len(rows), np.int64)}

    return fake


def score_by_table(table):
    return lambda prompts, completions: np.array([table[c] for c in completions], dtype=np.float64)


def test_unfinished_and_invalid_completions_are_never_rated_or_paired(monkeypatch):
    model, tok = tiny_sft()
    # prompt a: the best text "A+" never ended; prompt b: only one finished; prompt c: an invalid one
    completions = ["A+", "a1", "a2", "a3", "b1", "b2", "b3", "b4", "c1", "c<bos>", "c3", "c4"]
    finished = [0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1]
    valid = [0, 1, 1, 1, 1, 0, 0, 0, 1, 0, 1, 1]
    monkeypatch.setattr(collect_module, "sample_completions", fake_samples(completions, finished, valid))
    table = {"A+": 9.0, "a1": 1.0, "a2": 3.0, "a3": 2.0, "b1": 5.0, "c1": 0.0, "c3": 4.0, "c4": 1.0}
    rater = Recorder(score_by_table(table))
    pairs, summary = collect_preferences(model, tok, ["a", "b", "c"], rater, samples_per_prompt=4)
    assert sorted(c for _, c, _ in rater.seen) == ["a1", "a2", "a3", "b1", "c1", "c3", "c4"]
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("a", "a2", "a1"), ("c", "c3", "c1")]
    assert summary["unfinished"] == 4 and summary["invalid"] == 1 and summary["rated"] == 7
    assert summary["dropped_unfinished"] == 1 and summary["eos_fraction"] == 8 / 12


def test_ties_carry_no_preference_and_the_first_best_wins(monkeypatch):
    model, tok = tiny_sft()
    completions = ["x1", "x2", "x3", "y1", "y2", "y3"]
    monkeypatch.setattr(collect_module, "sample_completions", fake_samples(completions, [1] * 6))
    table = {"x1": 2.0, "x2": 2.0, "x3": 2.0, "y1": 1.0, "y2": 5.0, "y3": 5.0}
    pairs, summary = collect_preferences(model, tok, ["x", "y"], score_by_table(table), samples_per_prompt=3)
    assert [(p.chosen, p.rejected) for p in pairs] == [("y2", "y1")]
    assert summary["dropped_gap"] == 1
    _, summary = collect_preferences(model, tok, ["x", "y"], score_by_table(table), samples_per_prompt=3,
                                     min_gap=10.0)
    assert summary["pairs"] == 0 and summary["gap_mean"] is None


# ---------------------------------------------------------------- bad inputs


def test_a_bad_rater_is_refused_naming_it():
    model, tok = tiny_sft()
    with pytest.raises(ValueError, match=r"rate: expected \d+ scores, shape \(\d+,\), one per completion, got shape \(3,\)"):
        collect_preferences(model, tok, PROMPTS, lambda p, c: np.zeros(3))
    with pytest.raises(ValueError, match="rate: returned a non-finite score nan for completion 0"):
        collect_preferences(model, tok, PROMPTS, lambda p, c: np.full(len(c), np.nan))
    with pytest.raises(TypeError, match="rate: expected a callable"):
        collect_preferences(model, tok, PROMPTS, "vader")
    with pytest.raises(ValueError, match="scores: expected 2 scores"):
        check_rater_scores([1.0], 2, name="scores")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(samples_per_prompt=1), ValueError, "samples_per_prompt: expected an int >= 2, got 1"),
        (dict(min_gap=-0.1), ValueError, "min_gap: expected a finite number >= 0"),
        (dict(flip_rate=1.5), ValueError, r"flip_rate: expected a number in \[0, 1\], got 1.5"),
        (dict(flip_rate=float("nan")), ValueError, "flip_rate: expected a number in"),
        (dict(seed=-1), ValueError, "seed: expected an int >= 0, got -1"),
        (dict(temperature=0.0), ValueError, "temperature: expected a finite number > 0"),
        (dict(max_new_tokens=0), ValueError, "max_new_tokens: expected a positive int, got 0"),
        (dict(max_new_tokens=60), ValueError, "max_new_tokens: the longest prompt takes .* exceeds the model's block_size=64"),
        (dict(batch_size=0), ValueError, "batch_size: expected a positive int, got 0"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, match):
    model, tok = tiny_sft()
    with pytest.raises(error, match=match):
        collect_preferences(model, tok, PROMPTS, letter_rate, **kwargs)


def test_bad_prompts_policy_and_tokenizer():
    model, tok = tiny_sft()
    with pytest.raises(ValueError, match="prompts: expected a non-empty list of str"):
        collect_preferences(model, tok, [], letter_rate)
    with pytest.raises(ValueError, match="prompts: expected a non-empty list of str"):
        collect_preferences(model, tok, "the soup was", letter_rate)
    with pytest.raises(TypeError, match=r"prompts\[1\]: expected a str, got int"):
        collect_preferences(model, tok, ["a", 3], letter_rate)
    with pytest.raises(ValueError, match="character 'Z' at position 0"):
        collect_preferences(model, tok, ["Z"], letter_rate)
    with pytest.raises(ValueError, match="prompts: the longest prompt takes 65 tokens"):
        collect_preferences(model, tok, ["a" * 64], letter_rate)
    with pytest.raises(TypeError, match="policy: expected a TinyGPT, got str"):
        collect_preferences("model", tok, PROMPTS, letter_rate)
    from alignment_np.data.tokenizer import CharTokenizer

    with pytest.raises(ValueError, match="tokenizer: vocab_size 6 differs from the model's vocab_size"):
        collect_preferences(model, CharTokenizer.from_text("abc"), ["a"], letter_rate)
