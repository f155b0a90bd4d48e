"""The sentiment task's independent rater (VADER), and how VADER scores the task's grammar.

The measurements here are the robust half of what the task promises: VADER
agrees with the grammar's intended sentiment, "but" hands the verdict to the
second clause, "!" and boosters move the score, samples for one prompt differ
enough to make preferences, and the highest-scoring grammatical lines are
plainly positive reviews (no trick scores higher).
"""

from __future__ import annotations

import itertools
import math
import string
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.tasks import get_task
from alignment_np.tasks.sentiment import GRAMMAR, JOINERS, MODIFIERS, NEGATION, VERB_ADVERB, VERBS, parse

TASK = get_task("sentiment")


def _hide_vader(monkeypatch):
    for name in ("vaderSentiment", "vaderSentiment.vaderSentiment"):
        monkeypatch.setitem(sys.modules, name, None)  # "import vaderSentiment" now raises ImportError


def test_without_vader_the_rater_names_the_extra_to_install(monkeypatch):
    from alignment_np.tasks.rater import VaderRater

    _hide_vader(monkeypatch)
    with pytest.raises(ImportError, match=r'pip install "alignment_np\[tasks\]"'):
        VaderRater()
    task = get_task("sentiment")  # the task itself works without VADER (a fresh one: no rater yet) ...
    assert task.grammatical(["the soup was"], [" good ."]).all()
    with pytest.raises(ImportError, match=r"alignment_np\[tasks\]"):  # ... until it is asked to rate
        task.rate(["the soup was"], [" good ."])


class Rated:
    """Three thousand generated reviews and VADER's scores of them, computed once."""

    def __init__(self, rater):
        self.reviews = TASK.reviews(3000, seed=0)
        self.texts = [r.text for r in self.reviews]
        self.scores = rater(self.texts)
        self.sentiment = np.array([r.sentiment for r in self.reviews])
        self.kind = np.array([r.kind for r in self.reviews])


@pytest.fixture(scope="module")
def vader():
    return pytest.importorskip("vaderSentiment.vaderSentiment")


@pytest.fixture(scope="module")
def rater(vader):
    from alignment_np.tasks.rater import VaderRater

    return VaderRater()


@pytest.fixture(scope="module")
def rated(rater):
    return Rated(rater)


def _compound(s: float) -> float:
    """VADER's squashing of a summed valence s (Hutto & Gilbert 2014), rounded as VADER rounds."""
    return round(s / math.sqrt(s * s + 15), 4)


# ----------------------------------------------------------------- the rater
@pytest.mark.parametrize(
    "text, valence",
    [
        ("the soup was good .", 1.9),  # "good" has valence 1.9 in VADER's lexicon
        ("the soup was not good .", 1.9 * -0.74),  # negation scales by -0.74
        ("the soup was good !", 1.9 + 0.292),  # each "!" adds 0.292
        ("the soup was very good .", 1.9 + 0.293),  # a booster adds 0.293
        ("the soup was bad but the pasta was good .", 0.5 * -2.5 + 1.5 * 1.9),  # "but": 0.5 before, 1.5 after
    ],
)
def test_the_rater_is_vaders_compound_score(rater, text, valence):
    assert rater([text])[0] == _compound(valence) == rater.score(text)


def test_a_batch_of_scores(vader, rater, rated):
    out = rater(rated.texts[:7] + [""])
    assert out.dtype == np.float64 and out.shape == (8,)
    analyser = vader.SentimentIntensityAnalyzer()
    assert out.tolist() == [analyser.polarity_scores(t)["compound"] for t in rated.texts[:7] + [""]]
    assert rater([]).shape == (0,)
    assert rater(tuple(rated.texts[:3])).tolist() == out[:3].tolist()


@given(st.lists(st.text(st.sampled_from([*string.printable, "\u00e9", "\U0001f600", "\U0001f494"]), max_size=60),
                max_size=5))
def test_scores_are_finite_and_in_the_unit_interval(rater, texts):
    out = rater(texts)
    assert out.shape == (len(texts),) and np.isfinite(out).all() and (np.abs(out) <= 1).all()


def test_the_rater_refuses_what_is_not_a_list_of_text(rater):
    with pytest.raises(TypeError, match="texts: expected a list of str, got str"):
        rater("the soup was good .")
    with pytest.raises(TypeError, match=r"texts\[1\]: expected a str, got NoneType"):
        rater(["the soup was good .", None])
    with pytest.raises(TypeError, match="text: expected a str, got int"):
        rater.score(3)


def test_the_task_rates_prompt_plus_completion_and_creates_its_rater_once(rated):
    task = get_task("sentiment")
    prompts, completions = [r.prompt for r in rated.reviews[:20]], [r.completion for r in rated.reviews[:20]]
    got = task.rate(prompts, completions)
    assert got.dtype == np.float64 and got.tolist() == rated.scores[:20].tolist()
    assert task.rater is task.rater
    with pytest.raises(ValueError, match="rate: prompts and completions must have the same length"):
        task.rate(prompts, completions[:3])


# ----------------------------------------------------------------- VADER on the task's grammar
def test_vader_agrees_with_the_grammars_intended_sentiment(rated):
    polar = rated.sentiment != 0
    assert np.mean(np.sign(rated.scores[polar]) == rated.sentiment[polar]) > 0.97  # measured 0.99
    for kind in ("positive", "negative"):  # one-sided lines: always the intended sign
        assert (np.sign(rated.scores[rated.kind == kind]) == rated.sentiment[rated.kind == kind]).all()
    assert (rated.scores[rated.kind == "neutral"] == 0).all()  # neutral words are not in VADER's lexicon
    assert rated.scores[rated.kind == "positive"].mean() > 0.4 and rated.scores[rated.kind == "negative"].mean() < -0.4
    assert abs(rated.scores[rated.kind == "mixed"].mean()) < 0.15


def test_the_scores_spread_over_the_whole_range(rated):
    hist, _ = np.histogram(rated.scores, bins=8, range=(-1, 1))
    assert rated.scores.std() > 0.4 and (hist[1:-1] > 0.03 * len(rated.scores)).all()


def test_after_but_the_second_clause_decides(rater, rated):
    mixed_but = [i for i, r in enumerate(rated.reviews) if r.kind == "mixed" and parse(r.text).joiner != "and"]
    second = np.array([parse(rated.texts[i]).polarities[1] for i in mixed_but])
    follows = np.mean(np.sign(rated.scores[mixed_but]) == second)
    as_and = rater([rated.texts[i].replace(", but ", " and ").replace(" but ", " and ") for i in mixed_but])
    assert follows > 0.9  # measured 0.97
    assert follows > np.mean(np.sign(as_and) == second) + 0.3  # with "and" in its place: about a coin toss


def test_an_exclamation_mark_always_strengthens_the_verdict(rater, rated):
    loud = [i for i, t in enumerate(rated.texts) if t.endswith(" !") and rated.scores[i] != 0]
    calm = rater([rated.texts[i][:-1] + "." for i in loud])
    assert len(loud) > 200 and (np.abs(rated.scores[loud]) > np.abs(calm)).all()


def test_boosters_raise_and_dampeners_lower_a_one_clause_verdict(rater, rated):
    for modifiers, sign in ((("very", "really", "so", "quite", "extremely"), 1), (("slightly", "somewhat"), -1)):
        with_mod, without = [], []
        for i, text in enumerate(rated.texts):
            tokens = text.split(" ")
            hits = [j for j, w in enumerate(tokens) if w in modifiers]
            if parse(text).joiner is None and len(hits) == 1 and rated.scores[i] != 0:
                with_mod.append(i)
                without.append(" ".join(tokens[: hits[0]] + tokens[hits[0] + 1 :]))
        change = np.abs(rated.scores[with_mod]) - np.abs(rater(without))
        assert len(with_mod) > 50 and (sign * change > 0).all()


def test_samples_for_one_prompt_differ_enough_to_make_preferences(rater):
    """Collection keeps the best and the worst of k samples: they must differ."""
    rng = np.random.default_rng(2)
    prompts = TASK.prompts(500, "train", seed=1)
    scores = rater([GRAMMAR.sample(rng, p).text for p in prompts for _ in range(4)]).reshape(-1, 4)
    gap = scores.max(axis=1) - scores.min(axis=1)
    assert np.mean(gap > 0.1) > 0.97 and np.median(gap) > 0.8  # measured 0.998 and 1.12


def test_the_highest_scoring_grammatical_lines_are_plainly_positive_reviews(rater):
    """No trick of the grammar ("but" after a weak negative, "not" before a negative) beats praise.

    The template and nouns carry no valence, so one prompt per domain stands
    for all. One-clause lines of the film domain are enumerated in full; two-
    clause lines are built from the 6 highest- and lowest-scoring clauses of
    each polarity (VADER adds clause valences, so the extremes are there).
    """
    best = []
    for domain in GRAMMAR.nouns:
        noun, noun2 = GRAMMAR.nouns[domain][:2]
        adjectives = [(a, p) for p in (1, -1, 0) for a in GRAMMAR.adjectives[domain][p]]
        clause1 = [([NEGATION, a], -p, {a}) for a, p in adjectives]
        clause1 += [(([m] if m else []) + [a], p, {a}) for a, p in adjectives for m in (None, *MODIFIERS)]
        lines = [f"the {noun} was {' '.join(w)} !" for w, _, _ in clause1]
        if domain == "film":
            lines += [f"the {noun} was {' '.join(([m] if m else []) + [a, 'and', b])} !"
                      for (a, p), (b, q) in itertools.permutations(adjectives, 2) if p * q >= 0
                      for m in (None, *MODIFIERS)]
        clause2 = [(["the", noun2, "was", *w], p, used) for w, p, used in clause1]
        clause2 += [(["i", *r, v, "the", noun2], p, set()) for p in (1, -1) for v in VERBS[p] for r in ([], [VERB_ADVERB])]
        s1 = rater([f"the {noun} was {' '.join(w)} ." for w, _, _ in clause1])
        s2 = rater([" ".join(w) + " ." for w, _, _ in clause2])

        def extremes(parts, scores):
            keep = []
            for p in (1, -1, 0):
                idx = sorted((i for i, part in enumerate(parts) if part[1] == p), key=lambda i: scores[i])
                keep += [parts[i] for i in idx[:6] + idx[-6:]]
            return keep

        for (w1, p1, u1), (w2, p2, u2) in itertools.product(extremes(clause1, s1), extremes(clause2, s2)):
            for joiner in JOINERS:
                if not (u1 & u2) and (joiner == "and") == (p1 == p2):
                    lines.append(" ".join([f"the {noun} was", *w1, joiner, *w2, "!"]))
        best += zip(rater(lines), lines)
    best.sort(reverse=True)
    assert all(parse(line) is not None for _, line in best)
    assert {parse(line).kind for _, line in best[:100]} == {"positive"}
    top = best[0][0]
    assert top > 0.9  # e.g. "the soup was so superb and the pasta was so great !"
    for name, trick in [
        ("mixed: a weak complaint, then 'but' and praise", lambda q, line: q.kind == "mixed"),
        ("'but' after a neutral clause", lambda q, line: q.joiner not in (None, "and") and q.polarities[0] == 0),
        ("'not' before a negative word", lambda q, line: q.joiner is None and f" {NEGATION} " in line),
    ]:
        score = max(s for s, line in best if trick(parse(line), line))
        assert score < top - 0.03, (name, score, top)
