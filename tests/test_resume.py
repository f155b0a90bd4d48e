"""Resuming SFT from a checkpoint continues EXACTLY as if training had never stopped."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from alignment_np.data.tokenizer import CharTokenizer
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.trainers.sft import SFTConfig, SFTTrainer

TOK = CharTokenizer.from_text("ab c.")
PAIRS = [("ab", " c."), ("c", "ab ."), ("a b", "c"), ("", "ba."), ("cc", " a"), ("b.", "bb"), ("a", "a")]
TEXTS = ["ab c.", "c", "a b a", "b.", "cab", "ba c"]
CONFIG = SFTConfig(lr=1e-2, min_lr=1e-3, warmup_steps=3, steps=12, batch_size=3, seed=5, grad_clip=0.5)


def fresh_trainer(config=CONFIG, dtype="float32"):
    model = TinyGPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=16, n_layer=2, n_head=2, d_model=8, dtype=dtype),
                    seed=1)
    return SFTTrainer(model, TOK, config)


def assert_same_state(a: SFTTrainer, b: SFTTrainer) -> None:
    for (name, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)  # bit for bit
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
    assert a.step == b.step and a.epoch == b.epoch
    assert a.data_rng.bit_generator.state == b.data_rng.bit_generator.state


@pytest.mark.parametrize("data", [PAIRS, TEXTS], ids=["pairs", "texts"])
@pytest.mark.parametrize("k", [1, 4, 7])  # 7 pairs in batches of 3: k = 4 and 7 stop mid-epoch
def test_k_steps_save_resume_n_minus_k_equals_n_steps_straight(tmp_path, data, k):
    straight = fresh_trainer()
    history = straight.train(data, progress=False)

    first = fresh_trainer()
    first_history = first.train(data, steps=k, progress=False)
    first.save(tmp_path / "ckpt.npz")
    del first

    resumed = SFTTrainer.resume(tmp_path / "ckpt.npz")  # new model, optimizer, tokenizer, generator
    assert resumed.step == k and resumed.config == CONFIG
    rest = resumed.train(data, progress=False)

    assert_same_state(straight, resumed)
    assert first_history["loss"] + rest["loss"] == history["loss"]
    assert first_history["lr"] + rest["lr"] == history["lr"]


def test_resume_into_a_model_that_was_given(tmp_path):
    trainer = fresh_trainer(dtype="float64")
    trainer.train(PAIRS, steps=3, progress=False)
    trainer.save(tmp_path / "c.npz")
    model = TinyGPT(trainer.model.config, seed=99)  # other weights: they must be overwritten
    resumed = SFTTrainer.resume(tmp_path / "c.npz", model=model)
    assert resumed.model is model
    assert_same_state(trainer, resumed)


def test_save_twice_resume_twice_still_exact(tmp_path):
    straight = fresh_trainer()
    straight.train(TEXTS, progress=False)
    trainer = fresh_trainer()
    for k in (2, 5, 9):
        trainer.train(TEXTS, steps=k - trainer.step, progress=False)
        trainer.save(tmp_path / "c.npz")  # overwritten atomically each time
        trainer = SFTTrainer.resume(tmp_path / "c.npz")
    trainer.train(TEXTS, progress=False)
    assert_same_state(straight, trainer)


def test_a_longer_schedule_can_be_given_on_resume(tmp_path):
    trainer = fresh_trainer()
    trainer.train(PAIRS, progress=False)
    trainer.save(tmp_path / "c.npz")
    longer = dataclasses.replace(CONFIG, steps=20)
    resumed = SFTTrainer.resume(tmp_path / "c.npz", config=longer)
    assert len(resumed.train(PAIRS, progress=False)["loss"]) == 8


def test_resume_refuses_other_data_and_non_sft_checkpoints(tmp_path):
    trainer = fresh_trainer()
    trainer.train(PAIRS, steps=2, progress=False)
    trainer.save(tmp_path / "c.npz")
    resumed = SFTTrainer.resume(tmp_path / "c.npz")
    with pytest.raises(ValueError, match=r"data: this trainer's epoch order covers 7 examples, got 6"):
        resumed.train(TEXTS, progress=False)

    from alignment_np.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "plain.npz", trainer.model, tokenizer=TOK)
    with pytest.raises(ValueError, match=r"plain.npz: not an SFT checkpoint"):
        SFTTrainer.resume(tmp_path / "plain.npz")
    other = TinyGPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=16, n_layer=1, n_head=2, d_model=8))
    with pytest.raises(ValueError, match=r"config disagrees with the model's config.*n_layer"):
        SFTTrainer.resume(tmp_path / "c.npz", model=other)
    with pytest.raises(FileNotFoundError, match=r"missing.npz"):
        SFTTrainer.resume(tmp_path / "missing.npz")
