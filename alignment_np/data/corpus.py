"""A small review corpus that the repo generates: no downloads, same seed same text.

A tiny character-level GPT has to learn something real in a few minutes on a
laptop CPU, and the RLHF chapter later needs a task with a reward anyone can
check by eye. One little grammar serves both: short reviews of films and food,
each clearly positive or negative::

    the soup was wonderful .
    i found the plot dull and slow .
    i thought the ending was not good .
    i loved the curry .

Every line is ``prompt + response``: a *prompt* that names the thing but not
the verdict ("the film was") and a *response* that gives the verdict
(" not good ."). SFT learns the whole line; the sentiment RLHF task later
gives a prompt and rewards positive responses, scored by ``sentiment_score``.

Structure a model can learn, from the bottom up: the ~28 characters
(lowercase letters, space, full stop); the few hundred words; which adjectives
go with food ("delicious", "stale") and which with films ("funny", "boring");
that "and" joins two words of the same sentiment; that every line ends " .".
``unigram_entropy`` is the loss of a model that learned only the character
frequencies: the SFT loss must fall well below it.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, NamedTuple

import numpy as np

# ------------------------------------------------------------------ the lexicon
MOVIE_NOUNS = ("film", "movie", "plot", "acting", "ending", "music", "story", "script", "cast")
FOOD_NOUNS = ("soup", "pasta", "bread", "cake", "salad", "curry", "pizza", "coffee", "service")
NOUNS = {"movie": MOVIE_NOUNS, "food": FOOD_NOUNS}

# Adjectives by sentiment and domain: "delicious" goes with food, "funny" with films.
POSITIVE_ADJECTIVES = {
    "shared": ("good", "great", "wonderful", "lovely", "superb", "excellent"),
    "movie": ("funny", "moving", "clever", "gripping"),
    "food": ("delicious", "fresh", "tasty", "rich"),
}
NEGATIVE_ADJECTIVES = {
    "shared": ("bad", "awful", "dull", "terrible", "poor", "weak"),
    "movie": ("boring", "silly", "predictable", "slow"),
    "food": ("bland", "stale", "cold", "greasy"),
}
POSITIVE_VERBS = ("loved", "liked", "enjoyed", "adored")
NEGATIVE_VERBS = ("hated", "disliked", "regretted", "loathed")
INTENSIFIERS = ("very", "really", "truly", "so")
NEGATION = "not"

# Every word that carries sentiment: the rater's lexicon (sorted, to print and read).
POSITIVE_WORDS = tuple(sorted({w for ws in POSITIVE_ADJECTIVES.values() for w in ws} | set(POSITIVE_VERBS)))
NEGATIVE_WORDS = tuple(sorted({w for ws in NEGATIVE_ADJECTIVES.values() for w in ws} | set(NEGATIVE_VERBS)))
_POSITIVE, _NEGATIVE = frozenset(POSITIVE_WORDS), frozenset(NEGATIVE_WORDS)  # fast lookup

# Prompts name the thing and stop where the verdict starts.
PROMPT_TEMPLATES = ("the {noun} was", "i found the {noun}", "i thought the {noun} was")

# Probability that a line is "i <verb> the <noun> ." instead of prompt + adjective phrase.
_VERB_LINE_PROB = 0.15


class Review(NamedTuple):
    """One generated line: ``prompt + response`` is the text; sentiment is +1 or -1."""

    prompt: str
    response: str
    sentiment: int

    @property
    def text(self) -> str:
        return self.prompt + self.response


# ------------------------------------------------------------------ generation
def _pick(rng: np.random.Generator, words):
    return words[int(rng.integers(len(words)))]


def _adjectives(sentiment: int, domain: str) -> tuple[str, ...]:
    table = POSITIVE_ADJECTIVES if sentiment > 0 else NEGATIVE_ADJECTIVES
    return table["shared"] + table[domain]


def _verdict(rng: np.random.Generator, sentiment: int, domain: str) -> str:
    """An adjective phrase of the given sentiment, e.g. " dull and slow ." or " not good ."."""
    form = int(rng.integers(4))
    if form == 0:  # " good ."
        return f" {_pick(rng, _adjectives(sentiment, domain))} ."
    if form == 1:  # " good and funny ."  (two different words, same sentiment)
        words = _adjectives(sentiment, domain)
        i, j = rng.choice(len(words), size=2, replace=False)
        return f" {words[int(i)]} and {words[int(j)]} ."
    if form == 2:  # " very good ."
        return f" {_pick(rng, INTENSIFIERS)} {_pick(rng, _adjectives(sentiment, domain))} ."
    # " not bad .": negation flips the adjective, so the line keeps its sentiment
    return f" {NEGATION} {_pick(rng, _adjectives(-sentiment, domain))} ."


def _sample_review(rng: np.random.Generator) -> Review:
    sentiment = 1 if rng.random() < 0.5 else -1
    domain = "movie" if rng.random() < 0.5 else "food"
    noun = _pick(rng, NOUNS[domain])
    if rng.random() < _VERB_LINE_PROB:
        verbs = POSITIVE_VERBS if sentiment > 0 else NEGATIVE_VERBS
        return Review("i", f" {_pick(rng, verbs)} the {noun} .", sentiment)
    prompt = _pick(rng, PROMPT_TEMPLATES).format(noun=noun)
    return Review(prompt, _verdict(rng, sentiment, domain), sentiment)


def _check_count(n, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"{name} must be an int >= 0, got {n!r}")
    return int(n)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return int(seed)


def generate_reviews(n: int, seed: int = 0) -> list[Review]:
    """``n`` reviews with their prompt, response and sentiment; deterministic in ``seed``.

    Half positive, half negative on average; half about films, half about food.
    """
    n = _check_count(n, "n")
    rng = np.random.default_rng(_check_seed(seed))
    return [_sample_review(rng) for _ in range(n)]


def generate_corpus(n_lines: int, seed: int = 0) -> list[str]:
    """``n_lines`` review lines (no newline at the end); the text to pre-train / SFT on."""
    n_lines = _check_count(n_lines, "n_lines")
    return [r.text for r in generate_reviews(n_lines, seed)]


def generate_sft_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (prompt, response) pairs; ``prompt + response`` is a corpus line.

    The same seed gives the same reviews as ``generate_corpus``, split in two.
    """
    return [(r.prompt, r.response) for r in generate_reviews(n, seed)]


def generate_preference_pairs(n: int, seed: int = 0) -> list:
    """``n`` PreferencePairs: one prompt, a positive verdict chosen over a negative one.

    The stand-in for human labels that prefer kind reviews: the same prompt
    ("the soup was") with a positive response (" so lovely .") as ``chosen``
    and a negative one (" weak and stale .") as ``rejected``, both drawn from
    the corpus grammar, so a model fine-tuned on the corpus can score both.
    """
    from .preferences import PreferencePair

    n = _check_count(n, "n")
    rng = np.random.default_rng(_check_seed(seed))
    pairs = []
    for _ in range(n):
        domain = "movie" if rng.random() < 0.5 else "food"
        prompt = _pick(rng, PROMPT_TEMPLATES).format(noun=_pick(rng, NOUNS[domain]))
        pairs.append(PreferencePair(prompt, _verdict(rng, +1, domain), _verdict(rng, -1, domain)))
    return pairs


def generate_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` prompts such as "the film was" that leave the verdict open (for RLHF)."""
    n = _check_count(n, "n")
    rng = np.random.default_rng(_check_seed(seed))
    prompts = []
    for _ in range(n):
        noun = _pick(rng, NOUNS["movie" if rng.random() < 0.5 else "food"])
        prompts.append(_pick(rng, PROMPT_TEMPLATES).format(noun=noun))
    return prompts


# ------------------------------------------------------------------ measuring
def unigram_entropy(texts: str | Iterable[str]) -> float:
    """Entropy of the character distribution of ``texts``, in nats per character.

        H = - sum_c p(c) log p(c),   p(c) = count(c) / (number of characters)

    This is the cross-entropy loss of the best model that ignores context
    (it always predicts the character frequencies). A model that has learned
    anything about words must do much better; a uniform guess over V symbols
    would score log V. Only the characters of the texts count (no separators).
    """
    if isinstance(texts, str):
        texts = [texts]
    counts: Counter = Counter()
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
        counts.update(text)
    if not counts:
        raise ValueError("texts contain no characters: the entropy of nothing is undefined")
    c = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    p = c / c.sum()
    # Every p > 0 (only characters that occur are counted), so log p is finite.
    return float(-(p * np.log(p)).sum())


def sentiment_score(text: str) -> float:
    """A transparent lexicon rater: +1 per positive word, -1 per negative word.

    "not" flips the sign of the word right after it ("not good" scores -1,
    "not bad" +1). Words are split on whitespace, with . , ! ? stripped.

    This is the stand-in for a human rater in the RLHF chapters: a reward
    anyone can recompute by hand, so a learner can see exactly what the
    policy is being pushed towards (and how it might game it).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    words = [w.strip(".,!?") for w in text.lower().split()]
    score = 0.0
    negate = False
    for w in words:
        value = 1.0 if w in _POSITIVE else -1.0 if w in _NEGATIVE else 0.0
        score += -value if negate else value
        negate = w == NEGATION
    return score

