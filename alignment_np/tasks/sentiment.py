"""The sentiment task: a review grammar, its recogniser, and a prompt split.

The pipeline (SFT -> preference collection -> reward model -> DPO / PPO /
GRPO / RLOO -> evaluation) needs three things from a task, and this module
gives each one from *one* set of word lists:

* **a corpus** to fine-tune the tiny GPT on: short reviews of films and food,
  generated from a grammar (no downloads; same seed, same text)::

      the soup was delicious .
      i thought the plot was not funny !
      overall , the ending was very clever and dark .
      the plot was slow , but the ending was superb .
      to me , the pasta was bitter and i hated the bread .

* **prompts**: sentence beginnings that name the thing but not the verdict
  ("the soup was", "i found the plot"), split once and for all into a
  training set (SFT, collection, RL) and a held-out evaluation set;

* **a fluency measure**: ``is_grammatical(text)`` recognises exactly the
  language the grammar generates. The rater (VADER, ``rater.py``) never sees
  it. A policy that learns to please VADER with broken English ("superb superb
  superb !!!") keeps a high rating but fails here, so reward hacking shows up
  as a falling grammatical fraction.

Why not rate with these word lists? The rater must be *independent* of the
hand that wrote the data, or "the model got better" only means "the model got
closer to our own word lists". VADER's lexicon was rated by human annotators
and has its own rules (negation, "but", boosters, "!"). The words below are
chosen from VADER's lexicon so that its scores vary with a spread of
strengths, but VADER's rules, not ours, decide the score.

The language, token by token (tokens are separated by exactly one space;
punctuation is a token of its own: " ,", " .", " !"; all lower case)::

    line      := clause1 end
               | clause1' joiner clause2 end
    end       := "." | "!"                       (one "!" at most, at the very end)
    clause1   := template(noun) adjp             (a pair of adjectives allowed)
    clause1'  := template(noun) adjp1            (a single adjective, in two-clause lines)
    template  := "the N was" | "i thought the N was" | "i found the N"
               | "overall , the N was" | "to me , the N was"
    adjp1     := "not" ADJ | [MODIFIER] ADJ
    adjp      := adjp1 | [MODIFIER] ADJ "and" ADJ
    joiner    := "and" | "but" | ", but"
    clause2   := "the N2 was" adjp1 | "i" ["really"] VERB "the N2"

with these constraints, which the recogniser checks too:

* one domain per line: every noun and adjective is a film word or a food
  word (or an adjective shared by both): "the soup was funny" is rejected;
* the second noun differs from the first; no adjective appears twice;
* a pair of adjectives never has opposite polarities ("good and bad").

What the grammar does *not* require: that "and" joins clauses of one
polarity and "but" clauses of opposite ones. The sampler mostly writes them
so (P_AGREE), but "the soup was good and the pasta was awful" is English, and
a fluency check that demanded the agreement measured the tiny GPT's grasp of
logic across two clauses rather than its fluency: a model trained to a loss
of 0.34 wrote 65% grammatical lines under that rule and 86% without it, the
difference being almost all agreement errors. The price: VADER weighs the
clause after "but" 1.5 times and the one before it 0.5 times, so "fine but
superb" scores above "superb and fine", and a policy that learns to put its
strongest praise after a "but" is rewarded by the rater without breaking the
grammar. That is a reward hack the grammar does not catch (the samples in
the report show it if it happens).

Polarity of a clause: +1, -1 or 0 (a neutral adjective such as "spicy"),
flipped by "not" ("not bad" is +1). The *intended sentiment* of a line is the
polarity of its first clause (of the second when the first is neutral),
except after "but", where the second clause decides when it is not neutral
(the reader takes away what follows "but").
Lines whose two clauses have opposite non-zero polarities are "mixed".

Why a hand-written recogniser and not a lookup of generated samples? The
language has hundreds of millions of lines: no sample covers it, and a model
that writes a valid line the sampler never drew must not be called
ungrammatical.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from ..checks import check_choice, check_nonneg_int

__all__ = [
    "DOMAINS", "NOUNS", "ADJECTIVES", "VERBS", "MODIFIERS", "PROMPT_TEMPLATES", "BLOCK_SIZE",
    "Review", "Parse", "ReviewGrammar", "GRAMMAR", "SentimentTask",
    "is_grammatical", "parse", "line_sentiment",
]

# ------------------------------------------------------------------ the word lists
# Every adjective and verb with a polarity is in VADER's lexicon, with the
# lexicon's valence in the comment: a spread of strengths from weak ("fine",
# 0.8) to strong ("superb", 3.1), so that samples differ in score. Nouns,
# templates and neutral adjectives are not in the lexicon (VADER scores them 0).
DOMAINS = ("film", "food")
NOUNS = {
    "film": ("film", "movie", "plot", "acting", "ending", "music", "story", "script", "cast"),
    "food": ("soup", "pasta", "bread", "cake", "salad", "curry", "pizza", "coffee", "steak"),
}
_SHARED_ADJECTIVES = {
    # fine .8, okay .9, nice 1.8, good 1.9, pleasant 2.3, wonderful 2.7, excellent 2.7, great 3.1, superb 3.1
    +1: ("fine", "okay", "nice", "good", "pleasant", "wonderful", "excellent", "great", "superb"),
    # strange -.8, weak -1.9, awful -2.0, poor -2.1, terrible -2.1, unpleasant -2.1, bad -2.5, horrible -2.5
    -1: ("strange", "weak", "awful", "poor", "terrible", "unpleasant", "bad", "horrible"),
    0: ("simple", "plain", "different"),
}
_DOMAIN_ADJECTIVES = {
    "film": {
        # engaging 1.4, hilarious 1.7, funny 1.9, clever 2.0, thrilling 2.1, exciting 2.2, charming 2.8, brilliant 2.8
        +1: ("engaging", "hilarious", "funny", "clever", "thrilling", "exciting", "charming", "brilliant"),
        # confusing -.9, boring -1.3, ridiculous -1.5, depressing -1.6, annoying -1.7, dull -1.7, stupid -2.4, pathetic -2.7
        -1: ("confusing", "boring", "ridiculous", "depressing", "annoying", "dull", "stupid", "pathetic"),
        0: ("long", "short", "slow", "loud", "quiet", "dark"),
    },
    "food": {
        # warm .9, fresh 1.3, satisfying 2.0, sweet 2.0, yummy 2.4, rich 2.6, delicious 2.7, heavenly 3.0
        +1: ("warm", "fresh", "satisfying", "sweet", "yummy", "rich", "delicious", "heavenly"),
        # hard -.4, tough -.5, bitter -1.8, dirty -1.9, gross -2.1, rotten -2.3, disgusting -2.4, nasty -2.6
        -1: ("hard", "tough", "bitter", "dirty", "gross", "rotten", "disgusting", "nasty"),
        0: ("spicy", "salty", "hot", "crispy", "thick", "creamy"),
    },
}
ADJECTIVES = {
    domain: {p: _SHARED_ADJECTIVES[p] + _DOMAIN_ADJECTIVES[domain][p] for p in (+1, -1, 0)} for domain in DOMAINS
}
# liked 1.8, adored 1.8, enjoyed 2.3, loved 2.9 / disliked -1.7, despised -1.7, loathed -2.1, hated -3.2
VERBS = {+1: ("liked", "adored", "enjoyed", "loved"), -1: ("disliked", "despised", "loathed", "hated")}
# VADER's degree adverbs: five boosters (+0.293 each, "so" a little more) and two dampeners (-0.293).
MODIFIERS = ("very", "really", "so", "quite", "extremely", "slightly", "somewhat")
VERB_ADVERB = "really"  # "i really loved the bread": the one adverb that goes before a verb
NEGATION = "not"
PROMPT_TEMPLATES = (
    "the {noun} was",
    "i thought the {noun} was",
    "i found the {noun}",
    "overall , the {noun} was",
    "to me , the {noun} was",
)
SECOND_CLAUSE = "the {noun} was"  # a copular second clause: ", but the bread was stale"
JOINERS = ("and", "but", ", but")
ENDINGS = (".", "!")

# Every fifth (template, noun) combination is held out for evaluation: see prompt_split.
EVAL_PERIOD = 5

# ------------------------------------------------------------------ sampling probabilities
P_TWO_CLAUSES = 0.55  # a line has two clauses ...
P_BUT = 0.65  # ... joined by "but" (else "and"); half of the "but"s take a comma
P_POLARITY = {+1: 0.4, -1: 0.4, 0: 0.2}  # the first clause's polarity
P_OPPOSITE = 0.8  # after "but", a polar first clause is followed by the opposite polarity (else neutral)
P_AGREE = 0.85  # the second clause follows its joiner's usual sense (above); else any other polarity
P_NOT = 0.2  # "not ADJ"
P_MODIFIER = 0.35  # "very ADJ"
P_PAIR = 0.3  # "ADJ and ADJ" (one-clause lines only)
P_VERB_CLAUSE = 0.3  # "i loved the bread" as the second clause (when it is not neutral)
P_REALLY = 0.3  # "i really loved the bread"
P_EXCLAIM = 0.15  # the line ends " !" rather than " ."


class Review(NamedTuple):
    """One generated line, ``prompt + completion``.

    sentiment: the intended sentiment, +1, -1 or 0 (see the module docstring).
    kind: "positive", "negative", "neutral" or "mixed" (two clauses of
        opposite polarity; ``sentiment`` is then the second clause's).
    """

    prompt: str
    completion: str
    sentiment: int
    kind: str

    @property
    def text(self) -> str:
        return self.prompt + self.completion


class Parse(NamedTuple):
    """What the recogniser found in a grammatical line."""

    domain: str
    polarities: tuple  # one per clause: +1, -1 or 0
    joiner: str | None  # "and", "but", ", but", or None for one clause
    end: str  # "." or "!"
    sentiment: int
    kind: str


def line_sentiment(polarities: Sequence[int], joiner: str | None) -> tuple[int, str]:
    """The intended (sentiment, kind) of a line from its clauses' polarities and joiner."""
    if joiner is None:
        sentiment = polarities[0]
    elif joiner == "and":  # the first clause decides, unless it is neutral
        sentiment = polarities[0] if polarities[0] != 0 else polarities[1]
    else:  # "but": the second clause decides, unless it is neutral
        sentiment = polarities[1] if polarities[1] != 0 else polarities[0]
    if len(polarities) == 2 and polarities[0] * polarities[1] < 0:
        return sentiment, "mixed"
    return sentiment, {+1: "positive", -1: "negative", 0: "neutral"}[sentiment]


# ------------------------------------------------------------------ the grammar
class ReviewGrammar:
    """The review grammar over given word lists: it samples lines and recognises them.

    The module's word lists make the default grammar (``GRAMMAR``); the tests
    build tiny ones to compare the recogniser with a brute-force enumeration.

    nouns: domain -> nouns. adjectives: domain -> {+1, -1, 0} -> adjectives
        (shared ones listed in each domain). verbs: {+1, -1} -> past-tense verbs.
    modifiers: degree adverbs allowed before an adjective. templates: first
        clauses with a "{noun}" slot; must include ``SECOND_CLAUSE``.
    """

    def __init__(self, nouns=NOUNS, adjectives=ADJECTIVES, verbs=VERBS, modifiers=MODIFIERS,
                 templates=PROMPT_TEMPLATES):
        self.nouns = {d: tuple(ws) for d, ws in nouns.items()}
        self.adjectives = {d: {p: tuple(adjectives[d][p]) for p in (+1, -1, 0)} for d in self.nouns}
        self.verbs = {p: tuple(verbs[p]) for p in (+1, -1)}
        self.modifiers = tuple(modifiers)
        self.templates = tuple(tuple(t.split(" ")) for t in templates)
        if tuple(SECOND_CLAUSE.split(" ")) not in self.templates:
            raise ValueError(f"templates must include {SECOND_CLAUSE!r}, got {templates!r}")
        for a in self.templates:  # the parser takes the first template that matches
            for b in self.templates:
                if a != b and len(a) <= len(b) and all(x == y for x, y in zip(a, b)):
                    raise ValueError(f"templates: {' '.join(a)!r} is a prefix of {' '.join(b)!r}")
        # one role per word, or the parser would read a line two ways
        structure = {NEGATION, "and", "but", ",", "i", "the", "was"} | {w for t in self.templates for w in t}
        role_of = {w: "structure word" for w in structure - {"{noun}"}}
        for role, words in (("noun", [n for ns in self.nouns.values() for n in ns]), ("modifier", self.modifiers),
                            ("verb", [v for vs in self.verbs.values() for v in vs])):
            for w in words:
                _check_word(role, w, role_of)
                role_of[w] = role
        for d in self.nouns:
            domain_role = dict(role_of)
            for w in (a for ws in self.adjectives[d].values() for a in ws):
                _check_word(f"{d} adjective", w, domain_role)
                domain_role[w] = f"{d} adjective"
        for d in self.nouns:  # the sampler needs two of each to keep nouns and adjectives distinct
            sizes = [len(self.nouns[d])] + [len(self.adjectives[d][p]) for p in (+1, -1, 0)]
            if min(sizes) < 2:
                raise ValueError(f"domain {d!r}: expected >= 2 nouns and >= 2 adjectives of each polarity, got {sizes}")
        # lookups for the recogniser: word -> domain, (domain, word) -> polarity
        self._noun_domain = {n: d for d, ns in self.nouns.items() for n in ns}
        self._adj_polarity = {(d, a): p for d in self.nouns for p, ws in self.adjectives[d].items() for a in ws}
        self._verb_polarity = {v: p for p, vs in self.verbs.items() for v in vs}
        # every distinct prompt, its template index, domain and noun
        self.prompts = {}
        for d in self.nouns:
            for k, noun in enumerate(self.nouns[d]):
                for t, template in enumerate(self.templates):
                    self.prompts[" ".join(template).format(noun=noun)] = (t, d, k)

    # -------------------------------------------------------------- sampling
    def sample(self, rng: np.random.Generator, prompt: str) -> Review:
        """One line starting with ``prompt`` (a key of ``self.prompts``), drawn with ``rng``."""
        _, domain, k = self.prompts[prompt]
        noun = self.nouns[domain][k]
        used: set = set()  # adjectives already in the line
        p1 = _choose(rng, P_POLARITY)
        if rng.random() >= P_TWO_CLAUSES:
            words = self._sample_adjp(rng, domain, p1, used, pair_ok=True)
            polarities, joiner = (p1,), None
            completion = " ".join(words)
        else:
            words1 = self._sample_adjp(rng, domain, p1, used, pair_ok=False)
            if rng.random() < P_BUT:
                joiner = "but" if rng.random() < 0.5 else ", but"
                if p1 == 0:
                    p2 = 1 if rng.random() < 0.5 else -1
                else:
                    p2 = -p1 if rng.random() < P_OPPOSITE else 0
            else:
                joiner, p2 = "and", p1
            if rng.random() >= P_AGREE:  # the joiner's unusual sense: any of the other polarities
                p2 = _pick(rng, [q for q in (1, -1, 0) if q != p2])
            noun2 = _pick(rng, [n for n in self.nouns[domain] if n != noun])
            if p2 != 0 and rng.random() < P_VERB_CLAUSE:
                really = [VERB_ADVERB] if rng.random() < P_REALLY else []
                words2 = ["i", *really, _pick(rng, self.verbs[p2]), "the", noun2]
            else:
                words2 = [SECOND_CLAUSE.format(noun=noun2), *self._sample_adjp(rng, domain, p2, used, pair_ok=False)]
            polarities = (p1, p2)
            completion = " ".join([*words1, joiner, *words2])
        end = "!" if rng.random() < P_EXCLAIM else "."
        sentiment, kind = line_sentiment(polarities, joiner)
        return Review(prompt, f" {completion} {end}", sentiment, kind)

    def _sample_adjp(self, rng, domain, polarity, used, pair_ok) -> list[str]:
        """An adjective phrase of the given polarity; adds its adjectives to ``used``."""
        table = self.adjectives[domain]

        def adjective(p):
            word = _pick(rng, [a for a in table[p] if a not in used])
            used.add(word)
            return word

        if rng.random() < P_NOT:  # "not bad" is +1; "not spicy" stays 0
            return [NEGATION, adjective(-polarity)]
        words = [_pick(rng, self.modifiers)] if rng.random() < P_MODIFIER else []
        if pair_ok and rng.random() < P_PAIR:
            # two adjectives whose polarities are not opposite; the pair's polarity is the non-zero one
            first, second = (polarity, polarity)
            if polarity != 0:
                u = rng.random()
                first, second = (polarity, 0) if u < 0.2 else (0, polarity) if u < 0.4 else (polarity, polarity)
            return [*words, adjective(first), "and", adjective(second)]
        return [*words, adjective(polarity)]

    # -------------------------------------------------------------- recognising
    def parse(self, text: str) -> Parse | None:
        """The structure of ``text`` if the grammar generates it, else None.

        A hand-written recursive-descent parser over the space-separated
        tokens, following the productions in the module docstring.
        """
        tokens = text.split(" ")  # a double space or an edge space gives an empty token
        if len(tokens) < 3 or tokens[-1] not in ENDINGS:
            return None
        body, end = tokens[:-1], tokens[-1]
        match = self._match_template(body, 0, self.templates)
        if match is None:
            return None
        noun, pos = match
        domain = self._noun_domain[noun]
        used: list[str] = []
        adjp = self._parse_adjp(body, pos, domain, used, pair_ok=True)
        if adjp is None:
            return None
        p1, pos, was_pair = adjp
        if pos == len(body):
            sentiment, kind = line_sentiment((p1,), None)
            return Parse(domain, (p1,), None, end, sentiment, kind)
        if was_pair:  # pairs only in one-clause lines
            return None
        if body[pos] == "and" or body[pos] == "but":
            joiner, pos = body[pos], pos + 1
        elif body[pos : pos + 2] == [",", "but"]:
            joiner, pos = ", but", pos + 2
        else:
            return None
        if body[pos : pos + 1] == ["i"]:  # "i [really] VERB the N2"
            pos += 1
            if body[pos : pos + 1] == [VERB_ADVERB]:
                pos += 1
            if pos >= len(body) or body[pos] not in self._verb_polarity:
                return None
            p2 = self._verb_polarity[body[pos]]
            if body[pos + 1 : pos + 2] != ["the"] or pos + 3 != len(body):
                return None
            noun2 = body[pos + 2]
            if noun2 == noun or self._noun_domain.get(noun2) != domain:
                return None
        else:
            match = self._match_template(body, pos, (tuple(SECOND_CLAUSE.split(" ")),))
            if match is None or match[0] == noun or self._noun_domain[match[0]] != domain:
                return None
            adjp = self._parse_adjp(body, match[1], domain, used, pair_ok=False)
            if adjp is None or adjp[1] != len(body):
                return None
            p2 = adjp[0]
        sentiment, kind = line_sentiment((p1, p2), joiner)
        return Parse(domain, (p1, p2), joiner, end, sentiment, kind)

    def _match_template(self, body, pos, templates):
        """(noun, next position) if one of ``templates`` matches ``body`` at ``pos``, else None."""
        for template in templates:
            words = body[pos : pos + len(template)]
            if len(words) != len(template):
                continue
            noun = words[template.index("{noun}")]
            if noun in self._noun_domain and all(w == t or t == "{noun}" for w, t in zip(words, template)):
                return noun, pos + len(template)
        return None

    def _parse_adjp(self, body, pos, domain, used, pair_ok):
        """(polarity, next position, was a pair) for an adjective phrase at ``pos``, else None."""

        def adjective(i):  # the polarity of body[i] as an adjective of this domain, new in the line
            word = body[i] if i < len(body) else None
            if (domain, word) not in self._adj_polarity or word in used:
                return None
            used.append(word)
            return self._adj_polarity[(domain, word)]

        if body[pos : pos + 1] == [NEGATION]:
            p = adjective(pos + 1)
            return None if p is None else (-p, pos + 2, False)
        if body[pos : pos + 1] and body[pos] in self.modifiers:
            pos += 1
        p = adjective(pos)
        if p is None:
            return None
        pos += 1
        # "and" followed by an adjective is a pair; followed by "the" or "i" it joins a clause
        after = body[pos + 1] if pos + 1 < len(body) else None
        if pair_ok and body[pos : pos + 1] == ["and"] and (domain, after) in self._adj_polarity:
            q = adjective(pos + 1)
            if q is None or p * q < 0:
                return None
            return (p if p != 0 else q), pos + 2, True
        return p, pos, False

    # -------------------------------------------------------------- sizes
    def max_line_chars(self) -> int:
        """An upper bound on the length of any line, in characters (computed from the word lists)."""
        return max(len(p) for p in self.prompts) + self.max_completion_chars()

    def max_completion_chars(self) -> int:
        """An upper bound on the length of any completion, in characters (the leading space included)."""
        words = lambda ws: max(len(w) for w in ws)  # noqa: E731
        adj = max(words(self.adjectives[d][p]) for d in self.nouns for p in (+1, -1, 0))
        noun = max(words(ns) for ns in self.nouns.values())
        modifier = max(len(NEGATION), words(self.modifiers))
        adjp1 = 1 + modifier + 1 + adj  # " very superb"
        pair = 1 + modifier + 1 + adj + len(" and ") + adj
        clause2 = max(len(SECOND_CLAUSE.format(noun="")) + noun + adjp1,
                      len(f"i {VERB_ADVERB} ") + words(self.verbs[+1] + self.verbs[-1]) + len(" the ") + noun)
        two = adjp1 + 1 + max(len(j) for j in JOINERS) + 1 + clause2
        return max(pair, two) + 2  # " ." or " !"

    def prompt_split(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(train, eval): the distinct prompts, split deterministically (no random numbers).

        Prompt (template t, noun k of domain d) is held out when
        ``(t + k + d) % EVAL_PERIOD == 0``: a Latin square over templates and
        nouns. With 5 templates every noun is held out with exactly one
        template and trained with the other four, and every template is held
        out with about one noun in five, in both domains: 18 of the 90 prompts
        (20 %). A held-out prompt ("i found the cake") thus combines a template
        and a noun the model has both seen at the start of training lines, but
        never together, so evaluation measures generalisation rather than
        recall. (A held-out "the cake was" still occurs in training lines as a
        second clause, "..., but the cake was stale": the split is of the
        beginnings the policy is prompted with, not of the vocabulary.)
        """
        train, held_out = [], []
        domains = list(self.nouns)
        for prompt, (t, d, k) in self.prompts.items():
            (held_out if (t + k + domains.index(d)) % EVAL_PERIOD == 0 else train).append(prompt)
        return tuple(train), tuple(held_out)


def _check_word(role: str, word, role_of: dict) -> None:
    if not (isinstance(word, str) and word.isalpha() and word.islower()):
        raise ValueError(f"{role} {word!r}: expected a lower-case word")
    if word in role_of:
        raise ValueError(f"{role} {word!r} is already a {role_of[word]}")


def _pick(rng: np.random.Generator, words):
    return words[int(rng.integers(len(words)))]


def _choose(rng: np.random.Generator, probs: dict):
    u, total = rng.random(), 0.0
    for value, p in probs.items():
        total += p
        if u < total:
            return value
    return value


GRAMMAR = ReviewGrammar()


def is_grammatical(text: str) -> bool:
    """True if the default grammar generates ``text`` (a whole line: prompt + completion).

    Rejected, for example: a repeated word ("the the soup was good ."),
    "!!!", a missing final " .", an unknown or upper-case word, a truncated
    sentence, a film adjective for food ("the soup was funny ."), a double
    space, two positive clauses joined by "but".
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    return GRAMMAR.parse(text) is not None


def parse(text: str) -> Parse | None:
    """The structure of ``text`` (domain, polarities, intended sentiment) if grammatical, else None."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    return GRAMMAR.parse(text)


# ------------------------------------------------------------------ the task
BLOCK_SIZE = 96  # the context of the tiny GPT: <bos> + the longest line + <eos> fits


class SentimentTask:
    """The task every pipeline command runs on: a corpus, prompts, a rater, a fluency check.

    ``get_task("sentiment")`` returns one. Learners meet three roles here that
    real RLHF keeps apart, and the reason for each:

    * ``corpus`` is what the SFT model imitates (training prompts only);
    * ``rate`` is the *judge*: VADER, an analyser with a human-rated lexicon
      that nobody here wrote, playing the human labeller (as a sentiment
      classifier does in the IMDb experiment of the DPO paper, Rafailov et
      al. 2023, Sec. 6.1). It scores prompt + completion in [-1, 1];
    * ``is_grammatical`` is the *fluency check* the judge never sees: a
      policy that maximises VADER's score by writing nonsense is caught here.

    Evaluation uses ``prompts(n, split="eval")``, prompts held out from SFT,
    collection and RL (see ``ReviewGrammar.prompt_split``).

    Attributes: ``name``; ``train_prompts`` / ``eval_prompts`` (the distinct
    prompts of each split); ``block_size`` (96: the longest line plus <bos>
    and <eos> fits); ``max_new_tokens`` (enough for the longest completion
    and its <eos>).
    """

    name = "sentiment"

    def __init__(self, grammar: ReviewGrammar | None = None):
        self.grammar = GRAMMAR if grammar is None else grammar
        self.train_prompts, self.eval_prompts = self.grammar.prompt_split()
        self.block_size = BLOCK_SIZE
        self.max_new_tokens = self.grammar.max_completion_chars() + 1  # + <eos>
        if self.grammar.max_line_chars() + 2 > self.block_size:
            raise ValueError(
                f"grammar: lines of up to {self.grammar.max_line_chars()} characters plus <bos> and <eos> "
                f"do not fit block_size {self.block_size}"
            )
        self._rater = None

    def __repr__(self) -> str:
        return (f"SentimentTask(train_prompts={len(self.train_prompts)}, eval_prompts={len(self.eval_prompts)}, "
                f"block_size={self.block_size}, max_new_tokens={self.max_new_tokens})")

    # -------------------------------------------------------------- data
    def prompt_set(self, split: str = "train") -> tuple[str, ...]:
        """The distinct prompts of ``split`` ("train" or "eval")."""
        check_choice("split", split, ("train", "eval"))
        return self.train_prompts if split == "train" else self.eval_prompts

    def reviews(self, n: int, seed: int = 0, split: str = "train") -> list[Review]:
        """``n`` generated reviews whose prompts come from ``split``; deterministic in ``seed``."""
        n, seed = check_nonneg_int("n", n), check_nonneg_int("seed", seed)
        prompts = self.prompt_set(split)
        rng = np.random.default_rng(seed)
        return [self.grammar.sample(rng, prompts[int(rng.integers(len(prompts)))]) for _ in range(n)]

    def corpus(self, n: int, seed: int = 0) -> list[str]:
        """``n`` lines (prompt + completion, no newline) for SFT, on training prompts only."""
        return [r.text for r in self.reviews(n, seed, "train")]

    def prompts(self, n: int, split: str = "train", seed: int = 0) -> list[str]:
        """``n`` prompts of ``split``, balanced: shuffled passes over the distinct prompts.

        Every prompt of the split appears ``n // len(split)`` or one more
        times, which keeps an evaluation's variance from depending on which
        prompts a draw happened to favour. A longer list extends a shorter one.
        """
        n, seed = check_nonneg_int("n", n), check_nonneg_int("seed", seed)
        distinct = self.prompt_set(split)
        rng = np.random.default_rng(seed)
        out: list[str] = []
        while len(out) < n:
            out.extend(distinct[int(i)] for i in rng.permutation(len(distinct)))
        return out[:n]

    # -------------------------------------------------------------- judging
    @property
    def rater(self):
        """The VADER rater, created on first use (it needs the optional extra ``tasks``)."""
        if self._rater is None:
            from .rater import VaderRater

            self._rater = VaderRater()
        return self._rater

    def rate(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """VADER's compound score of each ``prompt + completion``: float64, shape (B,), in [-1, 1]."""
        return self.rater(_join("rate", prompts, completions))

    def is_grammatical(self, prompt: str, completion: str) -> bool:
        """True if ``prompt + completion`` is a line of the grammar."""
        return bool(self.grammatical([prompt], [completion])[0])

    def grammatical(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """``is_grammatical`` for a batch: bool, shape (B,)."""
        texts = _join("grammatical", prompts, completions)
        return np.array([self.grammar.parse(t) is not None for t in texts], dtype=bool)


def _join(caller: str, prompts, completions) -> list[str]:
    """``prompt + completion`` for each pair, after checking both are equally long sequences of str."""
    for name, seq in (("prompts", prompts), ("completions", completions)):
        if isinstance(seq, str) or not isinstance(seq, Sequence):
            raise TypeError(f"{caller}: {name} must be a list of str, got {type(seq).__name__}")
        for i, s in enumerate(seq):
            if not isinstance(s, str):
                raise TypeError(f"{caller}: {name}[{i}] must be a str, got {type(s).__name__}")
    if len(prompts) != len(completions):
        raise ValueError(f"{caller}: prompts and completions must have the same length, "
                         f"got {len(prompts)} and {len(completions)}")
    return [p + c for p, c in zip(prompts, completions)]
