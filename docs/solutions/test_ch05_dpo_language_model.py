"""Chapter 5, exercise 1: a full DPO loop with a language model (TinyGPT).

Pairs from the review corpus: for one prompt, a positive verdict is chosen over
a negative one. The policy starts as a copy of the reference; the reference's
log-probs are computed once for the whole dataset. Each step runs ONE forward
and ONE backward on 2B rows (chosen rows first, then rejected), laid out by
``collate_preferences`` (inputs and already-shifted targets):

    input_ids (2B, T) -> TinyGPT -> logits (2B, T, V) -> SequenceLogProbs() on targets -> logps (2B,)
    -> DPOTrainer.compute_loss -> d logps -> SequenceLogProbs.backward -> TinyGPT.backward

(The package's ``DPOLMTrainer`` in ``trainers/dpo_lm.py`` packages the same loop.)
"""

from functools import lru_cache

import numpy as np
import pytest

from alignment_np.data.collate import collate_preferences
from alignment_np.data.corpus import generate_preference_pairs, generate_reviews
from alignment_np.data.tokenizer import CharTokenizer
from alignment_np.functional.logprobs import SequenceLogProbs
from alignment_np.gradcheck import check_gradients
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.optim import AdamW
from alignment_np.trainers.dpo import DPOTrainer

BETA = 0.1


@lru_cache(maxsize=None)
def dataset():
    """(tokenizer, pairs): (prompt, chosen, rejected) with a positive chosen over a negative rejected."""
    pairs = generate_preference_pairs(1000, seed=0)
    tok = CharTokenizer.from_text([r.text for r in generate_reviews(2000, seed=0)])
    return tok, list((p.prompt, p.chosen, p.rejected) for p in pairs)


def to_batch(tok, pairs):
    """(input_ids, attention_mask, targets, loss_mask), each (2B, T): chosen rows, then rejected rows."""
    batch = collate_preferences([p for p, _, _ in pairs], [c for _, c, _ in pairs],
                                [r for _, _, r in pairs], tok, block_size=64)
    return batch["input_ids"], batch["attention_mask"], batch["targets"], batch["loss_mask"]


SCORER = SequenceLogProbs()  # no shift: collate_preferences already aligned targets with the logits


def sequence_logps(model, input_ids, attention_mask, targets, loss_mask):
    """logps (2B,) of the responses (and their eos), and the two caches the backward needs."""
    outputs, model_cache = model.forward(input_ids, attention_mask)
    logps, scorer_cache = SCORER.forward(outputs["logits"], targets, loss_mask)
    return logps, model_cache, scorer_cache


def dpo_step_gradients(policy, trainer, batch, ref_logps):
    """One DPO forward and backward; returns (loss, metrics). Gradients accumulate in policy."""
    B = batch[0].shape[0] // 2
    logps, model_cache, scorer_cache = sequence_logps(policy, *batch)
    loss, metrics, g_c, g_r = trainer.compute_loss(logps[:B], logps[B:], ref_logps[:B], ref_logps[B:])
    dlogits = SCORER.backward(np.concatenate([g_c, g_r]), scorer_cache)
    policy.backward({"logits": dlogits}, model_cache)
    return loss, metrics


def test_one_dpo_step_matches_finite_differences():
    tok, pairs = dataset()
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, d_model=8, dtype="float64")
    reference = TinyGPT(config, seed=0)
    policy = TinyGPT(config, seed=1)  # a policy that already differs from the reference
    batch = to_batch(tok, pairs[:2])
    ref_logps = sequence_logps(reference, *batch)[0]
    trainer = DPOTrainer(beta=BETA)

    policy.zero_grad()
    dpo_step_gradients(policy, trainer, batch, ref_logps)
    params = dict(policy.named_parameters())

    for name in ("wte", "blocks.0.attn.w_qkv", "ln_f.gamma"):
        param = params[name]
        original = param.data

        def loss_of(value, param=param):
            param.data = value
            B = batch[0].shape[0] // 2
            logps = sequence_logps(policy, *batch)[0]
            return trainer.compute_loss(logps[:B], logps[B:], ref_logps[:B], ref_logps[B:])[0]

        try:
            check_gradients(loss_of, [original.copy()], [param.grad.copy()], names=[name])
        finally:
            param.data = original


def test_dpo_training_prefers_positive_reviews_on_held_out_pairs():
    tok, pairs = dataset()
    train, test = pairs[:400], pairs[-100:]
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, d_model=32)
    reference = TinyGPT(config, seed=0)
    policy = TinyGPT(config, seed=0)  # the policy starts AS the reference
    trainer = DPOTrainer(beta=BETA)

    train_batch, test_batch = to_batch(tok, train), to_batch(tok, test)
    # The frozen reference's log-probs: once per dataset, never per step.
    ref_train = sequence_logps(reference, *train_batch)[0]
    ref_test = sequence_logps(reference, *test_batch)[0]
    n_train, n_test = len(train), len(test)

    def held_out():
        logps = sequence_logps(policy, *test_batch)[0]
        return trainer.compute_loss(logps[:n_test], logps[n_test:], ref_test[:n_test], ref_test[n_test:])[1]

    before = held_out()
    assert before["loss"] == pytest.approx(np.log(2.0), abs=1e-5)  # policy == reference: h = 0

    opt = AdamW(policy.parameters(), lr=1e-2, weight_decay=0.0)
    rng = np.random.default_rng(0)
    B = 16
    for _ in range(60):
        idx = rng.choice(n_train, size=B, replace=False)
        rows = np.concatenate([idx, idx + n_train])  # the chosen rows, then their rejected rows
        batch = tuple(a[rows] for a in train_batch)
        opt.zero_grad()
        dpo_step_gradients(policy, trainer, batch, ref_train[rows])
        opt.step()

    after = held_out()
    assert after["loss"] < before["loss"] - 0.1
    assert after["accuracy"] > 0.65
    assert after["reward_margin"] > 0
