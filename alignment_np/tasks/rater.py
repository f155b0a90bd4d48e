"""The independent rater of the sentiment task: VADER's compound score.

VADER (Hutto & Gilbert 2014, "VADER: A Parsimonious Rule-based Model for
Sentiment Analysis of Social Media Text", ICWSM) scores a text from a lexicon
of about 7,500 words whose valences (-4 to +4) were rated by human annotators,
plus a handful of rules:

* a booster before a word ("very", "extremely") adds 0.293 to its valence, a
  dampener ("slightly") takes 0.293 away;
* a negation ("not") up to three words before a word multiplies it by -0.74;
* "but": words before it count half, words after it 1.5 times;
* each "!" (up to four) adds 0.292 in the direction of the sum; capitals add
  emphasis (the task's lines are lower case, so that rule never fires).

The valences are summed to ``s`` and squashed to ``compound = s / sqrt(s^2 +
15)`` in (-1, 1), rounded to four decimals.

Here it plays the human labeller of RLHF: preferences are collected by its
score, and the policy is evaluated by it. It is independent of the corpus's
grammar (the task chose its words from VADER's lexicon, but VADER's rules, not
the task's labels, decide every score), so "the model's VADER score went up"
is evidence, not a tautology.

``vaderSentiment`` is the optional extra ``tasks``::

    pip install "alignment_np[tasks]"
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

INSTALL_HINT = 'pip install "alignment_np[tasks]"'


class VaderRater:
    """VADER's compound score for a batch of texts: ``rater(texts) -> float64 array (B,)``.

    The analyser reads its lexicon file once, here, and is reused for every
    call. Raises ImportError naming the extra to install when
    ``vaderSentiment`` is missing.
    """

    def __init__(self):
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as e:
            raise ImportError(
                f"the sentiment task's rater needs the package vaderSentiment; install the extra: {INSTALL_HINT}"
            ) from e
        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, text: str) -> float:
        """VADER's compound score of one text, in [-1, 1]."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        return float(self._analyzer.polarity_scores(text)["compound"])

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Compound scores of ``texts`` (a list of B str): float64, shape (B,)."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"texts: expected a list of str, got {type(texts).__name__}")
        out = np.empty(len(texts), dtype=np.float64)
        polarity = self._analyzer.polarity_scores
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}]: expected a str, got {type(text).__name__}")
            out[i] = polarity(text)["compound"]
        return out
