"""Tests for supervised fine-tuning (``alignment_np/trainers/sft.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignment_np.backend import to_numpy
from alignment_np.data.collate import collate_lm, collate_sft
from alignment_np.data.corpus import generate_corpus, generate_prompts, unigram_entropy
from alignment_np.data.tokenizer import CharTokenizer
from alignment_np.gradcheck import check_gradients
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.optim import cosine_schedule
from alignment_np.rl.generate import generate
from alignment_np.trainers.sft import SFTConfig, SFTTrainer, load_model, sft_loss

ALPHABET = "ab c."
TOK = CharTokenizer.from_text(ALPHABET)
PAIRS = [("ab", " c."), ("c", "ab ."), ("a b", "c"), ("", "ba."), ("cc", " a"), ("b.", "bb")]


def tiny_model(dtype="float32", seed=0, init_std=0.02):
    config = GPTConfig(vocab_size=TOK.vocab_size, block_size=16, n_layer=1, n_head=2, d_model=8,
                       dtype=dtype, init_std=init_std)
    return TinyGPT(config, seed=seed)


def global_grad_norm(model):
    return math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in {id(p): p for p in model.parameters()}.values()))


# --------------------------------------------------------------------------- the loss and its gradient
texts_st = st.text(alphabet=ALPHABET, min_size=0, max_size=5)


@given(pairs=st.lists(st.tuples(texts_st, texts_st), min_size=1, max_size=3), seed=st.integers(0, 1000))
@settings(max_examples=8)  # each example runs ~600 forwards for the finite differences
def test_sft_loss_gradient_matches_finite_differences(pairs, seed):
    """The whole path: collate_sft masks -> TinyGPT -> masked cross-entropy -> backward, in float64."""
    model = tiny_model("float64", seed=seed, init_std=0.3)
    batch = collate_sft(pairs, TOK, block_size=16)
    model.zero_grad()
    sft_loss(model, batch, backward=True)
    params = dict(model.named_parameters())
    names = ["wte", "wpe", "blocks.0.attn.w_qkv", "blocks.0.ln1.gamma"]
    for name in names:
        p = params[name]

        def loss_of(value, p=p):
            old = p.data.copy()
            p.data[...] = value
            try:
                return sft_loss(model, batch, backward=False)
            finally:
                p.data[...] = old

        check_gradients(loss_of, [p.data.copy()], [p.grad.copy()], tol=1e-6, names=[name])


def test_sft_loss_counts_only_response_tokens(rng):
    """Obviously correct loop: mean of -log p(target) over response positions."""
    model = tiny_model("float64", init_std=0.3)
    batch = collate_sft(PAIRS, TOK, block_size=16)
    logits = model.forward(batch["input_ids"], batch["attention_mask"])[0]["logits"]
    total, count = 0.0, 0
    for b, (prompt, response) in enumerate(PAIRS):
        for t in range(len(prompt), len(prompt) + len(response) + 1):  # response characters and eos
            z = logits[b, t]
            total -= z[batch["targets"][b, t]] - (z.max() + np.log(np.exp(z - z.max()).sum()))
            count += 1
    np.testing.assert_allclose(sft_loss(model, batch, backward=False), total / count, rtol=1e-12)


@pytest.mark.torch
def test_sft_loss_matches_torch_cross_entropy_with_ignore_index():
    """Hugging Face's convention: labels -100 where the loss does not count (prompt, padding)."""
    torch = pytest.importorskip("torch")
    model = tiny_model("float64", init_std=0.3)
    batch = collate_sft(PAIRS, TOK, block_size=16)
    logits = model.forward(batch["input_ids"], batch["attention_mask"])[0]["logits"]
    labels = np.where(batch["loss_mask"] == 1, batch["targets"], -100)
    expected = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits).reshape(-1, TOK.vocab_size), torch.from_numpy(labels).reshape(-1), ignore_index=-100
    )
    np.testing.assert_allclose(sft_loss(model, batch, backward=False), expected.item(), rtol=1e-12)


def test_sft_loss_without_backward_leaves_gradients_alone():
    model = tiny_model()
    model.zero_grad()
    sft_loss(model, collate_lm(["ab", "c"], TOK, 16), backward=False)
    assert all(not p.grad.any() for p in model.parameters())


# --------------------------------------------------------------------------- one step
def test_train_step_metrics_schedule_and_clipping():
    config = SFTConfig(lr=1e-2, min_lr=1e-3, warmup_steps=2, steps=6, batch_size=3, grad_clip=1e-3)
    trainer = SFTTrainer(tiny_model(), TOK, config)
    batch = collate_sft(PAIRS[:3], TOK, 16)
    for step in range(6):
        metrics = trainer.train_step(batch)
        assert set(metrics) == {"loss", "grad_norm", "lr", "tokens"}
        assert metrics["lr"] == cosine_schedule(step, 1e-2, 2, 6, 1e-3)
        assert metrics["tokens"] == sum(len(y) + 1 for _, y in PAIRS[:3])
        assert metrics["grad_norm"] > 1e-3  # the norm before clipping is reported...
        assert global_grad_norm(trainer.model) == pytest.approx(1e-3, rel=1e-4)  # ...and the step used the clipped one
    assert trainer.step == 6 and trainer.optimizer.t == 6


def test_grad_clip_none_never_scales():
    trainer = SFTTrainer(tiny_model(), TOK, SFTConfig(steps=2, warmup_steps=1, grad_clip=None))
    metrics = trainer.train_step(collate_sft(PAIRS, TOK, 16))
    assert global_grad_norm(trainer.model) == pytest.approx(metrics["grad_norm"], rel=1e-5)


def test_repeated_steps_on_one_batch_overfit_it():
    trainer = SFTTrainer(tiny_model(), TOK, SFTConfig(lr=1e-2, min_lr=1e-2, warmup_steps=0, steps=60))
    batch = collate_sft(PAIRS, TOK, 16)
    first = trainer.train_step(batch)["loss"]
    for _ in range(59):
        last = trainer.train_step(batch)["loss"]
    assert last < first / 3


def test_train_step_on_the_active_backend(xp):
    trainer = SFTTrainer(tiny_model(), TOK, SFTConfig(steps=3, warmup_steps=1, batch_size=2))
    history = trainer.train(PAIRS, progress=False)
    assert len(history["loss"]) == 3 and all(math.isfinite(v) for v in history["loss"])
    assert isinstance(trainer.model.wte.data, xp.ndarray)


# --------------------------------------------------------------------------- data order
def test_data_order_is_a_fresh_permutation_each_epoch_and_seeded():
    def indices(seed, steps):
        trainer = SFTTrainer(tiny_model(), TOK, SFTConfig(batch_size=3, seed=seed))
        return np.concatenate([trainer.next_indices(6) for _ in range(steps)])

    a, b, c = indices(0, 6), indices(0, 6), indices(1, 6)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    epochs = a.reshape(3, 6)
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(6))
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled


def test_a_batch_that_crosses_an_epoch_is_topped_up_from_the_next():
    trainer = SFTTrainer(tiny_model(), TOK, SFTConfig(batch_size=4, seed=3))
    first, second = trainer.next_indices(6), trainer.next_indices(6)
    assert len(set(first.tolist()) | set(second[:2].tolist())) == 6  # epoch 1 complete
    assert trainer.epoch == 2


def test_train_runs_to_config_steps_and_returns_history(capsys):
    trainer = SFTTrainer(tiny_model(), TOK, SFTConfig(steps=5, warmup_steps=1, batch_size=2, log_every=2))
    history = trainer.train(PAIRS, progress=False)
    assert history["step"] == [1, 2, 3, 4, 5]
    assert trainer.train(PAIRS, progress=False)["step"] == []  # already at config.steps
    assert capsys.readouterr().out == ""  # progress=False is quiet


def test_train_with_progress_logs_the_loss(capsys):
    trainer = SFTTrainer(tiny_model(), TOK, SFTConfig(steps=4, warmup_steps=1, batch_size=2, log_every=2))
    trainer.train(PAIRS, progress=True)
    out = capsys.readouterr().out
    assert "step     2  loss" in out and "step     4  loss" in out


def test_callback_sees_every_step_and_can_stop_training():
    seen = []
    trainer = SFTTrainer(tiny_model(), TOK, SFTConfig(steps=10, warmup_steps=1, batch_size=2))
    history = trainer.train(PAIRS, progress=False, callback=lambda step, m: seen.append(step) or step == 3)
    assert seen == [1, 2, 3] and trainer.step == 3 and len(history["loss"]) == 3


def test_evaluate_weighs_every_token_equally_whatever_the_batching():
    trainer = SFTTrainer(tiny_model("float64", init_std=0.3), TOK, SFTConfig(batch_size=4))
    values = [trainer.evaluate(PAIRS, batch_size=b) for b in (1, 4, 6)]
    np.testing.assert_allclose(values, values[2], rtol=1e-12)
    assert values[2] == pytest.approx(sft_loss(trainer.model, collate_sft(PAIRS, TOK, 16), backward=False))


def test_eval_every_records_held_out_loss():
    config = SFTConfig(steps=4, warmup_steps=1, batch_size=2, eval_every=2)
    history = SFTTrainer(tiny_model(), TOK, config).train(PAIRS, progress=False, eval_data=PAIRS[:2])
    assert history["eval_step"] == [2, 4] and len(history["eval_loss"]) == 2


def test_load_model_round_trip(tmp_path):
    trainer = SFTTrainer(tiny_model(), TOK, SFTConfig(steps=2, warmup_steps=1, batch_size=2))
    trainer.train(PAIRS, progress=False)
    trainer.save(tmp_path / "m.npz")
    model, tokenizer = load_model(tmp_path / "m.npz")
    assert tokenizer == TOK
    for (name, p), (_, q) in zip(model.named_parameters(), trainer.model.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-1.0), r"lr: expected a finite number >= 0, got -1.0"),
        (dict(lr=1e-3, min_lr=1e-2), r"min_lr: expected <= lr=0.001, got 0.01"),
        (dict(steps=0), r"steps: expected a positive int, got 0"),
        (dict(steps=5, warmup_steps=6), r"warmup_steps: expected <= steps=5, got 6"),
        (dict(batch_size=0), r"batch_size: expected a positive int"),
        (dict(grad_clip=-1.0), r"grad_clip: expected a finite number >= 0"),
        (dict(weight_decay=float("nan")), r"weight_decay: "),
        (dict(betas=(0.9, 1.0)), r"betas: expected two numbers in \[0, 1\)"),
        (dict(seed=-3), r"seed: expected an int >= 0, got -3"),
        (dict(log_every=1.5), r"log_every: expected an int >= 0"),
    ],
)
def test_bad_config_raises_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SFTConfig(**kwargs)


def test_bad_trainer_arguments_raise():
    with pytest.raises(TypeError, match=r"model: expected a TinyGPT, got str"):
        SFTTrainer("gpt", TOK)
    with pytest.raises(TypeError, match=r"tokenizer: expected a CharTokenizer-like object"):
        SFTTrainer(tiny_model(), object())
    with pytest.raises(TypeError, match=r"config: expected an SFTConfig, got dict"):
        SFTTrainer(tiny_model(), TOK, {"lr": 1e-3})
    big = CharTokenizer.from_text("abcdefghijklmnop")
    with pytest.raises(ValueError, match=r"tokenizer: its vocab_size 19 exceeds the model's vocab_size=8"):
        SFTTrainer(tiny_model(), big)
    trainer = SFTTrainer(tiny_model(), TOK)
    with pytest.raises(ValueError, match=r"data: expected a non-empty list"):
        trainer.train([], progress=False)
    with pytest.raises(ValueError, match=r"data\[1\]: expected a str like data\[0\], got \('a', 'b'\)"):
        trainer.train(["ab", ("a", "b")], progress=False)
    with pytest.raises(ValueError, match=r"batch: missing keys \['targets', 'loss_mask'\]"):
        trainer.train_step({"input_ids": np.zeros((1, 2), int), "attention_mask": np.ones((1, 2), int)})
    batch = collate_sft(PAIRS[:3], TOK, 16)  # rows of different lengths: there is padding
    with pytest.raises(ValueError, match=r"batch\['loss_mask'\]: expected shape"):
        trainer.train_step({**batch, "loss_mask": batch["loss_mask"][:, :-1]})
    with pytest.raises(ValueError, match=r"batch\['loss_mask'\]: counts a position where attention_mask is 0"):
        trainer.train_step({**batch, "loss_mask": np.ones_like(batch["loss_mask"])})
    trainer.next_indices(6)
    with pytest.raises(ValueError, match=r"data: this trainer's epoch order covers 6 examples, got 5"):
        trainer.next_indices(5)


# --------------------------------------------------------------------------- it really learns
@pytest.fixture(scope="module")
def trained_on_corpus():
    """A short real run: 200 steps of a 1-layer model on 1000 corpus lines (a few seconds)."""
    lines = generate_corpus(1000, seed=0)
    held_out = [line for line in generate_corpus(200, seed=1) if line not in set(lines)]
    tokenizer = CharTokenizer.from_text(lines + held_out)
    model = TinyGPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=4, d_model=48))
    config = SFTConfig(lr=1e-2, min_lr=1e-3, warmup_steps=10, steps=200, batch_size=32)
    trainer = SFTTrainer(model, tokenizer, config)
    trainer.train(lines, progress=False)
    return trainer, lines, held_out


def test_held_out_loss_falls_well_below_the_unigram_entropy(trained_on_corpus):
    trainer, lines, held_out = trained_on_corpus
    baseline = unigram_entropy(lines)
    assert len(held_out) > 100
    assert trainer.evaluate(held_out) < 0.5 * baseline


def test_greedy_samples_are_mostly_corpus_words(trained_on_corpus):
    trainer, lines, _ = trained_on_corpus
    tok = trainer.tokenizer
    vocabulary = {word for line in lines for word in line.split() if word != "."}  # words, not the full stop
    prompts = generate_prompts(16, seed=5)
    ids, mask = tok.encode_batch(prompts, add_bos=True, padding_side="left")
    out = generate(trainer.model, ids, 32, temperature=0.0, attention_mask=mask, eos_id=tok.eos_id)
    words = [w for row in to_numpy(out["new_tokens"]) for w in tok.decode(row).split() if w != "."]
    assert len(words) >= len(prompts)
    assert np.mean([w in vocabulary for w in words]) > 0.8
