"""A tiny SFT model of the review corpus, trained once per test process (about 2 s).

The preference-learning tests (collection, reward model, DPO family,
evaluation) need a language model that writes something review-like and
usually ends with <eos>; it does not need to be good. ``tiny_sft(dtype)``
returns a FRESH TinyGPT with the cached trained weights each call, so a test
may train it without touching the next test's model.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from alignment_np.data.corpus import generate_sft_pairs, sentiment_score
from alignment_np.data.tokenizer import CharTokenizer
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.trainers.sft import SFTConfig, SFTTrainer


@lru_cache(maxsize=None)
def _trained():
    data = generate_sft_pairs(2000, seed=0)
    tok = CharTokenizer.from_text([p + r for p, r in data])
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, d_model=32)
    model = TinyGPT(config, seed=0)
    SFTTrainer(model, tok, SFTConfig(steps=150, warmup_steps=10, batch_size=32, lr=1e-2, min_lr=1e-3,
                                     log_every=0)).train(data, progress=False)
    return tok, config, model.state_dict()


def tiny_sft(dtype: str = "float32"):
    """(model, tokenizer): a new TinyGPT holding the trained weights, in ``dtype``."""
    tok, config, state = _trained()
    model = TinyGPT(GPTConfig(**{**config.__dict__, "dtype": dtype}))
    model.load_state_dict({k: v.astype(dtype) for k, v in state.items()})
    return model, tok


def lexicon_rate(prompts, completions) -> np.ndarray:
    """The stand-in rater: the corpus lexicon's score of prompt + completion, float64 (N,)."""
    return np.array([sentiment_score(p + c) for p, c in zip(prompts, completions)], dtype=np.float64)
