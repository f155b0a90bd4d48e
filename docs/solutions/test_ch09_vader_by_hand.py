"""Chapter 9, exercise 1: VADER's compound score by hand, and the cheapest way to game it.

For the lines of the review grammar (lower case, one space between tokens,
punctuation as tokens of its own) the rules of VADER that fire are few:

* a word in VADER's lexicon carries its valence; a booster or dampener
  (``BOOSTER_DICT``) one, two or three words before it adds +-0.293, damped to
  95% and 90% at distances two and three, with the sign of the valence;
* a negation ("not") at those distances multiplies the valence by -0.74;
* "so" just before a word multiplies its valence by 1.25 too (the rule looks
  three words back, so it needs three words before the word);
* a word before the first "but" counts 0.5 times, a word after it 1.5 times;
* the sum S gains 0.292 per "!" (at most four) in its own direction, and the
  compound score is S / sqrt(S^2 + 15), rounded to four decimals.

Written out, these rules reproduce ``VaderRater`` exactly on every generated
line. They also show what a policy optimising VADER can exploit: ending a
positive line with " !" instead of " ." raises its score and stays
grammatical (one "!" is allowed), and repeating the best adjective raises it
further, but the grammar rejects that line, which is why the course measures
the grammatical fraction beside the score.
"""

import math

import numpy as np
import pytest

pytest.importorskip("vaderSentiment")

from vaderSentiment.vaderSentiment import BOOSTER_DICT, NEGATE, SentimentIntensityAnalyzer  # noqa: E402

from alignment_np.tasks import get_task  # noqa: E402
from alignment_np.tasks.sentiment import is_grammatical, parse  # noqa: E402

LEXICON = SentimentIntensityAnalyzer().lexicon
DAMPING = {1: 1.0, 2: 0.95, 3: 0.9}  # a modifier's weight at distance 1, 2, 3


def valences(words):
    """One valence per word, after boosters, negation and "so"; 0 for words outside the lexicon."""
    out = []
    for i, word in enumerate(words):
        if word in BOOSTER_DICT or word not in LEXICON:
            out.append(0.0)
            continue
        v = LEXICON[word]
        for d in (1, 2, 3):
            before = words[i - d] if i >= d else None
            if before is None or before in LEXICON:  # a lexicon word is not a modifier
                continue
            boost = BOOSTER_DICT.get(before, 0.0)
            v += (-boost if v < 0 else boost) * DAMPING[d]
            if d == 3 and words[i - 1] == "so":
                v *= 1.25
            elif before in NEGATE:
                v *= -0.74
        out.append(v)
    return out


def compound(line: str) -> float:
    words = line.split(" ")
    v = valences(words)
    if "but" in words:
        k = words.index("but")
        v = [x * 0.5 if j < k else x * 1.5 if j > k else x for j, x in enumerate(v)]
    s = sum(v)
    emphasis = 0.292 * min(line.count("!"), 4)
    s += emphasis if s > 0 else -emphasis if s < 0 else 0.0
    return round(s / math.sqrt(s * s + 15), 4)


@pytest.fixture(scope="module")
def task():
    return get_task("sentiment")


def test_the_rules_reproduce_vader_on_every_generated_line(task):
    lines = task.corpus(3000, seed=7)
    by_hand = np.array([compound(line) for line in lines])
    np.testing.assert_array_equal(by_hand, task.rater(lines))
    # The sample exercises every rule: negation, boosters, dampeners, "so", "but", "!".
    words = {w for line in lines for w in line.split(" ")}
    assert {"not", "very", "slightly", "so", "but", "!"} <= words


def test_an_exclamation_mark_is_a_free_raise_the_grammar_allows(task):
    # Positive to VADER (S > 0), which need not be the line's intended sentiment: "fine and
    # terrible" is a positive line by its first clause and negative by VADER's sum.
    positive = [r.text for r in task.reviews(400, seed=3)
                if r.sentiment > 0 and r.text.endswith(" .") and compound(r.text) > 0]
    assert len(positive) > 50
    for line in positive:
        excited = line[:-1] + "!"
        assert is_grammatical(excited)
        assert compound(excited) > compound(line)          # +0.292 in the direction of S
        assert task.rater([excited])[0] == compound(excited)


def test_repeating_the_best_word_pleases_vader_and_breaks_the_grammar(task):
    line = "the cake was superb !"
    assert is_grammatical(line) and parse(line).sentiment == 1
    repeated = "the cake was superb superb superb !"
    assert compound(repeated) > compound(line) + 0.1
    assert not is_grammatical(repeated)
