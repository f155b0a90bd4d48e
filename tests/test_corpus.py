"""The generated review corpus: determinism, its grammar, entropy, the lexicon rater."""

from __future__ import annotations

import math
import string

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.data import corpus as C
from alignment_np.data.corpus import (
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    PROMPT_TEMPLATES,
    generate_corpus,
    generate_prompts,
    generate_reviews,
    generate_sft_pairs,
    sentiment_score,
    unigram_entropy,
)
from alignment_np.data.tokenizer import CharTokenizer

N = 2000
REVIEWS = generate_reviews(N, seed=0)
LINES = [r.text for r in REVIEWS]
ALL_PROMPTS = {t.format(noun=n) for t in PROMPT_TEMPLATES for n in C.MOVIE_NOUNS + C.FOOD_NOUNS}


# ----------------------------------------------------------------- determinism
def test_same_seed_same_corpus_other_seed_other_corpus():
    assert generate_corpus(N, seed=0) == LINES
    assert generate_corpus(N, seed=1) != LINES
    assert generate_prompts(50, seed=3) == generate_prompts(50, seed=3)
    assert generate_prompts(50, seed=3) != generate_prompts(50, seed=4)


@given(st.integers(0, 2**32), st.integers(0, 30), st.integers(0, 30))
def test_a_longer_corpus_extends_a_shorter_one(seed, n, more):
    assert generate_corpus(n + more, seed=seed)[:n] == generate_corpus(n, seed=seed)


def test_sft_pairs_split_the_corpus_lines():
    pairs = generate_sft_pairs(N, seed=0)
    assert len(pairs) == N
    assert [p + r for p, r in pairs] == LINES
    assert all(r.startswith(" ") and r.endswith(" .") for _, r in pairs)


# ----------------------------------------------------------------- the grammar
def test_lines_use_a_small_character_set():
    chars = set("".join(LINES))
    assert chars <= set(string.ascii_lowercase + " .")
    assert len(chars) <= 28
    # so a tokenizer built on it is tiny and round-trips every line
    tok = CharTokenizer.from_text(LINES)
    assert tok.vocab_size <= 31
    assert all(tok.decode(tok.encode(line)) == line for line in LINES[:200])


def test_every_line_is_a_known_prompt_and_a_sentence_ending_with_a_full_stop():
    for r in REVIEWS:
        assert r.prompt in ALL_PROMPTS or r.prompt == "i"
        assert r.text.endswith(" .") and r.text.count(".") == 1
        assert "  " not in r.text and r.text == r.text.strip()
    assert set(generate_prompts(200, seed=1)) <= ALL_PROMPTS


def test_prompts_leave_the_verdict_open():
    assert all(sentiment_score(p) == 0 for p in ALL_PROMPTS)
    assert all(sentiment_score(p) == 0 for p in generate_prompts(100))


def test_sentiments_and_domains_are_balanced():
    labels = np.array([r.sentiment for r in REVIEWS])
    assert set(labels.tolist()) == {-1, 1}
    assert 0.45 < (labels > 0).mean() < 0.55  # 2000 fair coins: sd 0.011
    movie = np.mean([any(n in r.text.split() for n in C.MOVIE_NOUNS) for r in REVIEWS])
    assert 0.45 < movie < 0.55


def test_domain_adjectives_stay_in_their_domain():
    food_only = set(C.POSITIVE_ADJECTIVES["food"] + C.NEGATIVE_ADJECTIVES["food"])
    movie_only = set(C.POSITIVE_ADJECTIVES["movie"] + C.NEGATIVE_ADJECTIVES["movie"])
    for line in LINES:
        words = set(line.split())
        if words & set(C.MOVIE_NOUNS):
            assert not words & food_only, line
        if words & set(C.FOOD_NOUNS):
            assert not words & movie_only, line


def test_lexicon_is_consistent():
    pos, neg = set(POSITIVE_WORDS), set(NEGATIVE_WORDS)
    assert not pos & neg
    assert list(POSITIVE_WORDS) == sorted(pos) and list(NEGATIVE_WORDS) == sorted(neg)
    nouns = set(C.MOVIE_NOUNS + C.FOOD_NOUNS)
    assert not (pos | neg) & (nouns | set(C.INTENSIFIERS) | {C.NEGATION})
    assert all(w.isalpha() and w.islower() for w in pos | neg | nouns)


# ----------------------------------------------------------------- entropy
def _entropy_by_hand(texts):
    counts = {}
    total = 0
    for text in texts:
        for ch in text:
            counts[ch] = counts.get(ch, 0) + 1
            total += 1
    h = 0.0
    for c in counts.values():
        p = c / total
        h -= p * math.log(p)
    return h


@given(st.lists(st.text(max_size=20), min_size=1, max_size=6).filter(lambda ts: any(ts)))
def test_unigram_entropy_matches_a_hand_loop(texts):
    assert unigram_entropy(texts) == pytest.approx(_entropy_by_hand(texts), rel=1e-12, abs=1e-15)
    # only the characters count, not how they are split into lines
    assert unigram_entropy("".join(texts)) == pytest.approx(unigram_entropy(texts), rel=1e-12, abs=1e-15)
    assert 0.0 <= unigram_entropy(texts) <= math.log(len(set("".join(texts)))) + 1e-12


@given(st.lists(st.characters(), min_size=1, max_size=30, unique=True).map("".join), st.integers(1, 4))
def test_unigram_entropy_of_a_uniform_text_is_log_k(alphabet, reps):
    assert unigram_entropy([alphabet * reps]) == pytest.approx(math.log(len(alphabet)), abs=1e-12)


def test_unigram_entropy_of_the_corpus():
    h = unigram_entropy(LINES)
    assert h == pytest.approx(_entropy_by_hand(LINES), rel=1e-12)
    # well below a uniform guess over its characters: structure to learn
    assert h < math.log(len(set("".join(LINES)))) - 0.3


# ----------------------------------------------------------------- the rater
@pytest.mark.parametrize(
    "text, score",
    [
        ("the soup was wonderful .", 1),
        ("i found the plot dull and slow .", -2),
        ("the film was not good .", -1),
        ("the curry was not bad .", 1),
        ("i loved the cake .", 1),
        ("i hated the service .", -1),
        ("the film was", 0),
        ("", 0),
        ("Great! The pasta was DELICIOUS, really.", 2),
        ("not not good", -1),  # "not" flips only the next word, and carries no sign to flip
    ],
)
def test_sentiment_score_on_clear_examples(text, score):
    assert sentiment_score(text) == score
    assert isinstance(sentiment_score(text), float)


def test_sentiment_score_agrees_with_every_generated_label():
    for r in REVIEWS:
        assert np.sign(sentiment_score(r.text)) == r.sentiment, r.text


@given(st.lists(st.sampled_from(POSITIVE_WORDS + NEGATIVE_WORDS + ("the", "was", "not")), max_size=8))
def test_sentiment_score_is_a_sum_over_words_with_negation(words):
    by_hand = 0
    for i, w in enumerate(words):
        sign = -1 if i > 0 and words[i - 1] == "not" else 1
        by_hand += sign * ((w in POSITIVE_WORDS) - (w in NEGATIVE_WORDS))
    assert sentiment_score(" ".join(words)) == by_hand


# ----------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "call, exc, message",
    [
        (lambda: generate_corpus(-1), ValueError, "n_lines must be an int >= 0, got -1"),
        (lambda: generate_corpus(2.5), ValueError, "n_lines .* 2.5"),
        (lambda: generate_sft_pairs(True), ValueError, "n must be an int >= 0, got True"),
        (lambda: generate_prompts(3, seed=-2), ValueError, "seed must be an int >= 0, got -2"),
        (lambda: generate_reviews(3, seed="a"), ValueError, "seed .* 'a'"),
        (lambda: unigram_entropy([]), ValueError, "texts contain no characters"),
        (lambda: unigram_entropy(["", ""]), ValueError, "texts contain no characters"),
        (lambda: unigram_entropy(["a", 3]), TypeError, r"texts\[1\] must be a str, got int"),
        (lambda: sentiment_score(["good"]), TypeError, "text must be a str, got list"),
    ],
)
def test_bad_inputs_raise_naming_the_problem(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_preference_pairs_prefer_the_positive_verdict():
    from alignment_np.data.corpus import generate_preference_pairs
    from alignment_np.data.preferences import PreferencePair

    pairs = generate_preference_pairs(200, seed=3)
    assert pairs == generate_preference_pairs(200, seed=3)  # deterministic
    assert all(isinstance(p, PreferencePair) for p in pairs)
    for p in pairs:
        assert sentiment_score(p.prompt + p.chosen) > 0 > sentiment_score(p.prompt + p.rejected), p
    assert len({p.prompt for p in pairs}) > 10  # many prompts, not one
