"""Chapter 8, exercise 2: a one-layer TinyGPT learns more than character frequencies.

The unigram entropy of the corpus is the cross-entropy of the best model that
ignores context; a model that falls well below it has learned words.
"""

import numpy as np

from alignment_np.data.collate import collate_lm
from alignment_np.data.corpus import generate_corpus, unigram_entropy
from alignment_np.data.tokenizer import CharTokenizer
from alignment_np.functional.cross_entropy import cross_entropy_backward, cross_entropy_forward
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.optim import AdamW

BLOCK_SIZE = 64


def lm_loss_and_grad(model, batch):
    """Mean cross-entropy of the batch; accumulates the model's gradients."""
    outputs, cache = model.forward(batch["input_ids"], batch["attention_mask"])
    loss, ce_cache = cross_entropy_forward(outputs["logits"], batch["targets"], batch["loss_mask"])
    model.backward({"logits": cross_entropy_backward(1.0, ce_cache)}, cache)
    return float(loss)


def test_loss_falls_below_the_unigram_entropy():
    texts = generate_corpus(2000, seed=0)
    held_out = collate_lm(generate_corpus(64, seed=1), CharTokenizer.from_text(texts), BLOCK_SIZE)
    tok = CharTokenizer.from_text(texts)
    model = TinyGPT(GPTConfig(vocab_size=tok.vocab_size, block_size=BLOCK_SIZE, n_layer=1, n_head=2, d_model=32), seed=0)
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    rng = np.random.default_rng(0)

    losses = []
    for _ in range(50):
        batch = collate_lm([texts[i] for i in rng.choice(len(texts), size=16, replace=False)], tok, BLOCK_SIZE)
        opt.zero_grad()
        losses.append(lm_loss_and_grad(model, batch))
        opt.step()

    outputs, _ = model.forward(held_out["input_ids"], held_out["attention_mask"])
    held_out_loss = float(cross_entropy_forward(outputs["logits"], held_out["targets"], held_out["loss_mask"])[0])
    entropy = unigram_entropy(texts)
    assert losses[0] > np.log(tok.vocab_size) - 0.5  # starts near a uniform guess
    assert held_out_loss < entropy - 1.0  # far below what character counts alone allow
