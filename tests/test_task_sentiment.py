"""The sentiment task: its grammar, the recogniser of exactly that grammar, the prompt split, the task object."""

from __future__ import annotations

import itertools
import string
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.data.tokenizer import CharTokenizer
from alignment_np.tasks import TASK_NAMES, get_task
from alignment_np.tasks import sentiment as S
from alignment_np.tasks.sentiment import (
    GRAMMAR,
    SECOND_CLAUSE,
    ReviewGrammar,
    SentimentTask,
    is_grammatical,
    parse,
)

TASK = get_task("sentiment")
REVIEWS = TASK.reviews(5000, seed=0)
LINES = [r.text for r in REVIEWS]
ADJ_DOMAIN = {a: d for d in S.DOMAINS for p in (1, -1, 0) for a in S._DOMAIN_ADJECTIVES[d][p]}  # not shared
ALL_ADJECTIVES = {a for d in S.DOMAINS for p in (1, -1, 0) for a in S.ADJECTIVES[d][p]}
seeds = st.integers(0, 2**32 - 1)


# ----------------------------------------------------------------- a brute-force reference
def enumerate_language(nouns, adjectives, verbs, modifiers, templates):
    """Every line of the grammar, by nested loops over the productions of the module docstring.

    The slow, obviously correct reference for ``ReviewGrammar.parse`` (only
    feasible for a tiny grammar).
    """
    lines = set()
    for domain, domain_nouns in nouns.items():
        adjs = [(a, p) for p in (1, -1, 0) for a in adjectives[domain][p]]

        def adjp1():  # (words, polarity, adjectives used)
            for a, p in adjs:
                yield ["not", a], -p, {a}
                for m in (None, *modifiers):
                    yield ([m] if m else []) + [a], p, {a}

        def pairs():
            for (a, p), (b, q) in itertools.permutations(adjs, 2):
                if p * q >= 0:
                    for m in (None, *modifiers):
                        yield ([m] if m else []) + [a, "and", b], p or q, {a, b}

        for template, noun, end in itertools.product(templates, domain_nouns, ".!"):
            prompt = template.format(noun=noun)
            for words, _, _ in itertools.chain(adjp1(), pairs()):
                lines.add(" ".join([prompt, *words, end]))
            for noun2 in domain_nouns:
                if noun2 == noun:
                    continue
                clause2 = [(["the", noun2, "was", *w], p, used) for w, p, used in adjp1()]
                clause2 += [(["i", *r, v, "the", noun2], p, set()) for p in (1, -1) for v in verbs[p]
                            for r in ([], ["really"])]
                for (w1, p1, u1), (w2, p2, u2) in itertools.product(list(adjp1()), clause2):
                    for joiner in ("and", "but", ", but"):
                        if not (u1 & u2):
                            lines.add(" ".join([prompt, *w1, joiner, *w2, end]))
    return lines


TINY = dict(
    nouns={"film": ("film", "plot"), "food": ("soup", "cake")},
    adjectives={
        "film": {1: ("funny", "good"), -1: ("dull", "bad"), 0: ("long", "dark")},
        "food": {1: ("tasty", "good"), -1: ("stale", "bad"), 0: ("hot", "spicy")},
    },
    verbs={1: ("loved",), -1: ("hated",)},
    modifiers=("very",),
    templates=("the {noun} was", "i found the {noun}"),
)


def test_the_recogniser_accepts_exactly_the_enumerated_language_of_a_tiny_grammar():
    grammar = ReviewGrammar(**TINY)
    language = enumerate_language(**TINY)
    assert len(language) > 5000
    assert all(grammar.parse(line) is not None for line in language)
    # every sample of the sampler is in the language
    rng = np.random.default_rng(0)
    samples = {grammar.sample(rng, p).text for p in list(grammar.prompts) * 250}
    assert samples <= language
    # one-token edits of lines (substitute, insert, delete) are accepted iff in the language
    vocab = sorted({w for line in language for w in line.split(" ")} | {"zebra", "Good", "", "!!!", "good."})
    for line in sorted(language)[::120]:
        tokens = line.split(" ")
        edits = [tokens[:i] + tokens[i + 1 :] for i in range(len(tokens))]
        for i, w in itertools.product(range(len(tokens) + 1), vocab):
            edits.append(tokens[:i] + [w] + tokens[i:])
            if i < len(tokens):
                edits.append(tokens[:i] + [w] + tokens[i + 1 :])
        for edit in edits:
            text = " ".join(edit)
            assert (grammar.parse(text) is not None) == (text in language), text


# ----------------------------------------------------------------- the default grammar
@given(seeds)
def test_every_generated_line_is_grammatical_and_parses_to_its_intended_sentiment(seed):
    for review in TASK.reviews(200, seed=seed):
        found = parse(review.text)
        assert found is not None, review.text
        assert (found.sentiment, found.kind) == (review.sentiment, review.kind)
        assert review.completion.startswith(" ") and review.completion[-2:] in (" .", " !")
        assert review.text.count("!") + review.text.count(".") == 1
        assert review.prompt in TASK.train_prompts


def test_every_production_is_used():
    """Each option of the grammar occurs in 5000 lines: no production is dead."""
    words = Counter(w for line in LINES for w in line.split(" "))
    vocabulary = set(S.MODIFIERS) | set(S.VERBS[1] + S.VERBS[-1]) | ALL_ADJECTIVES
    vocabulary |= {n for ns in S.NOUNS.values() for n in ns} | {"not", "and", "but", ",", ".", "!", "really"}
    vocabulary |= {w for t in S.PROMPT_TEMPLATES for w in t.split(" ") if w != "{noun}"}
    assert set(words) == vocabulary
    parses = [parse(line) for line in LINES]
    assert {q.joiner for q in parses} == {None, "and", "but", ", but"}
    assert {q.kind for q in parses} == {"positive", "negative", "neutral", "mixed"}
    every = {(p, q) for p in (1, -1, 0) for q in (1, -1, 0)}
    assert {q.polarities for q in parses if q.joiner and q.joiner != "and"} == every
    assert {q.polarities for q in parses if q.joiner == "and"} == every
    usual = [q.polarities[0] == q.polarities[1] for q in parses if q.joiner == "and"]
    assert np.mean(usual) > 0.8  # "and" mostly joins clauses of one polarity
    pair_polarities = set()
    for line in LINES:
        tokens = line.split(" ")
        q = parse(line)
        if q.joiner is None and "and" in tokens:
            a, b = tokens[tokens.index("and") - 1], tokens[tokens.index("and") + 1]
            pair_polarities.add((GRAMMAR._adj_polarity[(q.domain, a)], GRAMMAR._adj_polarity[(q.domain, b)]))
    assert pair_polarities == {(1, 1), (1, 0), (0, 1), (-1, -1), (-1, 0), (0, -1), (0, 0)}
    assert any(" but the " in line and " not " in line.split(" but ")[1] for line in LINES)  # "not" in clause 2
    assert any(" i really " in line for line in LINES) and any(line.endswith(" !") for line in LINES)


def test_lines_fit_the_tiny_gpt_and_use_a_small_character_set():
    lengths = np.array([len(line) for line in LINES])
    assert lengths.max() <= GRAMMAR.max_line_chars() and GRAMMAR.max_line_chars() + 2 <= TASK.block_size == 96
    assert 40 <= lengths.mean() <= 60  # short enough to train in minutes, long enough to say something
    assert max(len(r.completion) for r in REVIEWS) + 1 <= TASK.max_new_tokens
    chars = set("".join(LINES))
    assert chars == set(string.ascii_lowercase + " .,!")  # 30 characters
    assert CharTokenizer.from_text(LINES).vocab_size == 33  # with <pad>, <bos>, <eos>


def test_the_mix_of_lines():
    kinds = Counter(r.kind for r in REVIEWS)
    assert kinds["positive"] == pytest.approx(kinds["negative"], rel=0.1)  # balanced
    assert min(kinds.values()) > 0.1 * len(REVIEWS)
    assert 0.5 < np.mean([" but " in line or " and the " in line or " and i " in line for line in LINES]) < 0.6


@pytest.mark.parametrize(
    "text",
    [
        "the soup was delicious .",
        "i thought the plot was not funny !",
        "overall , the ending was very clever and dark .",
        "the plot was slow , but the ending was superb .",
        "to me , the pasta was bitter and i hated the bread .",
        "i found the cast somewhat dull but i really loved the film .",
        "the cake was spicy and the soup was not hot .",
    ],
)
def test_lines_of_the_language_are_accepted(text):
    assert is_grammatical(text)


@pytest.mark.parametrize(
    "text",
    [
        "the soup was delicious",  # no end
        "the soup was delicious.",  # end glued to the word
        "the soup was delicious !!!",
        "the soup was delicious ! !",
        "the soup was delicious . .",
        "the soup was delicious !.",
        "the the soup was delicious .",  # a repeated word
        "the soup was delicious delicious .",
        "the soup was very very delicious .",
        "the soup was delicious and delicious .",
        "the soup was good but the pasta was good .",  # the same adjective twice
        "the soup was good and the soup was fresh .",  # the same noun twice
        "the soup was scrumptious .",  # an unknown word
        "the soup was funny .",  # a film adjective for food
        "the film was good but the soup was bad .",  # two domains in one line
        "the film was good and i loved the soup .",
        "the soup was",  # truncated
        "the soup was good and .",
        "the soup was good , but .",
        "the soup was good but the pasta was .",
        "the soup was  good .",  # a double space
        " the soup was good .",
        "the soup was good . ",
        "The soup was good .",  # upper case
        "the soup was GOOD .",
        "the soup was good and bad .",  # a pair of opposite adjectives
        "the soup was good and fresh and the pasta was rich .",  # a pair in a two-clause line
        "the soup was not very good .",  # "not" takes a bare adjective
        "the soup was very not good .",
        "the soup was good , and the pasta was rich .",  # only "but" takes a comma
        "i really loved the soup .",  # a verb clause cannot start a line
        "the soup was bad but i very loved the pasta .",
        "the soup was bad but i loved pasta .",
        "",
        ".",
    ],
)
def test_near_misses_are_rejected(text):
    assert not is_grammatical(text)


@given(seeds, st.data())
def test_mutations_of_generated_lines_are_rejected(seed, data):
    line = TASK.corpus(1, seed=seed)[0]
    tokens = line.split(" ")
    i = data.draw(st.integers(0, len(tokens) - 1))
    rejected = [
        " ".join(tokens[: i + 1] + [tokens[i]] + tokens[i + 1 :]),  # a repeated word
        line[:-1] + "!!!",
        line[:-2],  # no final " ." / " !"
        line[:-2] + tokens[-1],  # the end glued on
        " ".join(tokens[:i] + ["zebra"] + tokens[i + 1 :]),  # an unknown word
        line.replace(" ", "  ", 1),  # a double space
        " ".join(tokens[:i] + [tokens[i].upper()] + tokens[i + 1 :]) if tokens[i].isalpha() else line.upper(),
    ]
    cut = data.draw(st.integers(1, len(line) - 1))
    rejected.append(line[:cut])  # truncated
    domain = parse(line).domain
    for j, w in enumerate(tokens):  # an adjective of the other domain
        if w in ALL_ADJECTIVES:
            other = [a for a, d in ADJ_DOMAIN.items() if d != domain and a not in tokens]
            rejected.append(" ".join(tokens[:j] + [data.draw(st.sampled_from(other))] + tokens[j + 1 :]))
    for text in rejected:
        assert not is_grammatical(text), text


def test_is_grammatical_refuses_what_is_not_text():
    with pytest.raises(TypeError, match="text: expected a str, got bytes"):
        is_grammatical(b"the soup was good .")
    with pytest.raises(TypeError, match="text: expected a str"):
        parse(None)


def test_a_grammar_is_checked_when_it_is_built():
    with pytest.raises(ValueError, match="templates must include 'the {noun} was'"):
        ReviewGrammar(**{**TINY, "templates": ("i found the {noun}",)})
    with pytest.raises(ValueError, match="is a prefix of"):
        ReviewGrammar(**{**TINY, "templates": (SECOND_CLAUSE, "the {noun} was very")})
    with pytest.raises(ValueError, match="food adjective 'good' is already a food adjective"):
        ReviewGrammar(**{**TINY, "adjectives": {**TINY["adjectives"], "food": {1: ("good", "x"), -1: ("good", "y"),
                                                                                 0: ("a", "b")}}})
    with pytest.raises(ValueError, match="modifier 'film' is already a noun"):
        ReviewGrammar(**{**TINY, "modifiers": ("film",)})
    with pytest.raises(ValueError, match="noun 'Soup': expected a lower-case word"):
        ReviewGrammar(**{**TINY, "nouns": {"film": ("film", "plot"), "food": ("Soup", "cake")}})
    with pytest.raises(ValueError, match=r"domain 'film': expected >= 2 nouns"):
        ReviewGrammar(**{**TINY, "nouns": {"film": ("film",), "food": ("soup", "cake")}})


# ----------------------------------------------------------------- prompts and their split
def test_the_prompt_split_is_a_latin_square_over_templates_and_nouns():
    train, held_out = GRAMMAR.prompt_split()
    assert (train, held_out) == GRAMMAR.prompt_split()  # no randomness
    assert set(train) | set(held_out) == set(GRAMMAR.prompts) and not set(train) & set(held_out)
    assert len(GRAMMAR.prompts) == 90 and len(held_out) == 18  # 20 %
    info = [GRAMMAR.prompts[p] for p in held_out]
    assert {d for _, d, _ in info} == set(S.DOMAINS)
    assert Counter((d, k) for _, d, k in info) == Counter({(d, k): 1 for d in S.DOMAINS for k in range(9)})
    trained = [GRAMMAR.prompts[p] for p in train]
    for t, d, k in info:  # a known template and a known noun, never together in training
        assert any(t2 == t for t2, _, _ in trained) and any((d2, k2) == (d, k) for _, d2, k2 in trained)
    for p in held_out:  # no held-out prompt begins a training line
        assert not any(line.startswith(p + " ") for line in LINES)


def test_prompts_are_balanced_deterministic_and_from_their_split():
    prompts = TASK.prompts(100, split="eval", seed=3)
    assert set(prompts) == set(TASK.eval_prompts)
    counts = Counter(prompts).values()
    assert max(counts) - min(counts) <= 1
    assert TASK.prompts(100, split="eval", seed=3) == prompts != TASK.prompts(100, split="eval", seed=4)
    assert TASK.prompts(40, split="eval", seed=3) == prompts[:40]
    assert set(TASK.prompts(500, seed=0)) == set(TASK.train_prompts)
    assert TASK.prompts(0) == []


def test_the_corpus_is_deterministic_and_uses_training_prompts_only():
    assert TASK.corpus(50, seed=0) == LINES[:50]
    assert TASK.corpus(50, seed=1) != LINES[:50]
    assert {r.prompt for r in REVIEWS} == set(TASK.train_prompts)
    eval_reviews = TASK.reviews(300, seed=0, split="eval")
    assert {r.prompt for r in eval_reviews} == set(TASK.eval_prompts)


# ----------------------------------------------------------------- the task object
def test_get_task_and_its_errors():
    assert TASK_NAMES == ("sentiment",)
    assert isinstance(get_task("sentiment"), SentimentTask) and TASK.name == "sentiment"
    with pytest.raises(ValueError, match=r"task: expected one of \['sentiment'\], got 'imdb'"):
        get_task("imdb")
    assert "eval_prompts=18" in repr(TASK)


def test_the_task_checks_its_arguments():
    with pytest.raises(ValueError, match="n: expected an int >= 0, got -1"):
        TASK.corpus(-1)
    with pytest.raises(ValueError, match="seed: expected an int >= 0, got True"):
        TASK.prompts(3, seed=True)
    with pytest.raises(ValueError, match=r"split: expected one of \['eval', 'train'\], got 'test'"):
        TASK.prompts(3, split="test")
    with pytest.raises(TypeError, match="grammatical: prompts must be a list of str, got str"):
        TASK.grammatical("the soup was", [" good ."])
    with pytest.raises(TypeError, match=r"grammatical: completions\[1\] must be a str, got int"):
        TASK.grammatical(["a", "b"], [" good .", 3])
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        TASK.grammatical(["a", "b"], [" good ."])


def test_is_grammatical_joins_prompt_and_completion():
    assert TASK.is_grammatical("the soup was", " good .") is True
    assert TASK.is_grammatical("the soup was", "good .") is False  # the completion brings its space
    assert TASK.is_grammatical("the soup was", " funny .") is False
    got = TASK.grammatical([r.prompt for r in REVIEWS[:50]] + ["the film was"], [r.completion for r in REVIEWS[:50]]
                           + [" good good ."])
    assert got.dtype == bool and got.shape == (51,) and got[:50].all() and not got[50]


def test_importing_the_task_needs_numpy_only():
    code = ("import sys; from alignment_np.tasks import get_task; t = get_task('sentiment'); t.corpus(5); "
            "t.grammatical(['the soup was'], [' good .']); "
            "assert 'vaderSentiment' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
