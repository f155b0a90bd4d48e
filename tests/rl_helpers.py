"""A small SFT model and the stand-in reward, shared by the RL trainers' learning tests.

The model is trained once per test session (a few seconds) and each test gets
its own fresh copies (policy, reference), so no test sees another's updates.
The prompts are split by noun: the evaluation prompts name things the
training prompts never name, so a rise on them is a rise on held-out prompts.
"""

from __future__ import annotations

import functools

import numpy as np

from alignment_np.data.corpus import NOUNS, PROMPT_TEMPLATES, generate_corpus, sentiment_score
from alignment_np.data.tokenizer import CharTokenizer
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.rl.rollout import sample_completions
from alignment_np.trainers.sft import SFTConfig, SFTTrainer

RESPONSE_LENGTH = 30  # tokens; prompts are at most 27 with <bos>, block_size 64


def sentiment_reward(prompts, completions):
    """The corpus's lexicon rater on each completion: +1 per positive word, -1 per negative one."""
    return np.array([sentiment_score(c) for c in completions], dtype=np.float64)


def _prompts(nouns):
    return [t.format(noun=n) for t in PROMPT_TEMPLATES for n in nouns]


ALL_NOUNS = [n for nouns in NOUNS.values() for n in nouns]
EVAL_NOUNS = ALL_NOUNS[::3]  # a third of the films and a third of the foods
TRAIN_PROMPTS = _prompts([n for n in ALL_NOUNS if n not in EVAL_NOUNS])  # 36 prompts
EVAL_PROMPTS = _prompts(EVAL_NOUNS) * 14  # 18 held-out prompts, 252 samples


@functools.lru_cache(maxsize=1)
def _sft_state():
    corpus = generate_corpus(2000, seed=0)
    tokenizer = CharTokenizer.from_text(corpus)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, d_model=32)
    model = TinyGPT(config, seed=0)
    SFTTrainer(model, tokenizer, SFTConfig(steps=250, warmup_steps=20, batch_size=32, lr=1e-2, min_lr=1e-3)).train(
        corpus, progress=False)
    return config, model.state_dict(), tokenizer


def sft_models(n: int = 2):
    """``n`` fresh TinyGPTs holding the SFT weights (policy, reference, ...), and the tokenizer."""
    config, state, tokenizer = _sft_state()
    models = []
    for _ in range(n):
        model = TinyGPT(config)
        model.load_state_dict(state)
        models.append(model)
    return models, tokenizer


def held_out_reward(model, tokenizer, seed: int = 1234):
    """(mean, standard error) of the sentiment of one completion per held-out prompt."""
    samples = sample_completions(model, tokenizer, EVAL_PROMPTS, RESPONSE_LENGTH, 1.0, seed)
    r = sentiment_reward(samples.prompts, samples.completions)
    return float(r.mean()), float(r.std(ddof=1) / np.sqrt(len(r)))


def assert_learns(trainer, iterations: int):
    """Train, then check that the held-out reward rose by more than two standard errors.

    Returns (before, after, history) for the caller's own checks.
    """
    model, tokenizer = trainer.policy, trainer.tokenizer
    before = held_out_reward(model, tokenizer)
    history = trainer.train(TRAIN_PROMPTS, steps=iterations, progress=False)
    after = held_out_reward(model, tokenizer)
    se = float(np.hypot(before[1], after[1]))  # independent samples before and after
    assert after[0] - before[0] > 2 * se, (before, after)
    return before, after, history
