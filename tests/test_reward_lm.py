"""The reward model on the transformer (alignment_np/trainers/reward_lm.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignment_np.checks import NonFiniteLossError
from alignment_np.data.corpus import generate_preference_pairs, generate_reviews
from alignment_np.data.preferences import PreferencePair
from alignment_np.gradcheck import check_gradients
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.stats import spearman
from alignment_np.trainers.reward_lm import (
    RewardDataset,
    RewardLMConfig,
    RewardLMTrainer,
    pairwise_reward_loss,
)
from helpers import make_parameters_generic
from tiny_sft import lexicon_rate, tiny_sft

PAIRS = generate_preference_pairs(600, seed=0)
TRAIN, HELD_OUT = PAIRS[:400], PAIRS[400:]


def generic_model(tok, seed, n_layer=1):
    """A float64 model with generic parameters (no gamma = 1, no zero bias) for gradient checks."""
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=n_layer, n_head=2, d_model=8,
                       dtype="float64", init_std=0.3)
    return make_parameters_generic(TinyGPT(config, seed=seed), seed)


# ---------------------------------------------------------------- layout


def test_rows_are_bos_prompt_response_eos_and_the_reward_is_read_at_eos():
    model, tok = tiny_sft("float64")
    trainer = RewardLMTrainer(model, tok)
    pairs = [PreferencePair("the soup was", " good .", " cold and bland ."), ("i", " loved the cake .", " hated it .")]
    data = trainer.prepare(pairs)
    assert isinstance(data, RewardDataset) and data.n_pairs == 2
    texts = [("the soup was", " good ."), ("i", " loved the cake ."), ("the soup was", " cold and bland ."),
             ("i", " hated it .")]
    for row, (prompt, response) in enumerate(texts):
        n = int(data.attention_mask[row].sum())
        ids = data.input_ids[row]
        assert ids[0] == tok.bos_id and ids[n - 1] == tok.eos_id and np.all(ids[n:] == tok.pad_id)
        assert tok.decode(ids[1 : n - 1]) == prompt + response
        # the reward of a padded row equals that of the row alone (read at its <eos>)
        alone, _ = model.forward(ids[None, :n], None, heads=("rewards",))
        padded, _ = model.forward(data.input_ids[row : row + 1], data.attention_mask[row : row + 1], heads=("rewards",))
        np.testing.assert_allclose(padded["rewards"], alone["rewards"], rtol=1e-12)
    np.testing.assert_allclose(trainer.score(*zip(*texts)), trainer.rewards(data.input_ids, data.attention_mask),
                               rtol=1e-12)


def test_a_long_prompt_is_cut_from_the_left_to_fit_with_eos():
    model, tok = tiny_sft()
    data = RewardLMTrainer(model, tok).prepare([("x" * 100 + " the soup was", " good .", " cold .")])
    assert data.input_ids.shape[1] == model.config.block_size  # <bos> ... <eos> fills the block exactly
    assert tok.decode(data.input_ids[0]).endswith("the soup was good .")
    assert data.input_ids[0, -1] == tok.eos_id


# ---------------------------------------------------------------- gradients


@given(
    rewards=st.lists(st.floats(-4, 4), min_size=4, max_size=12).filter(lambda r: len(r) % 2 == 0),
    coef=st.sampled_from([None, 0.0, 0.01, 0.5]),
)
def test_loss_gradient_wrt_rewards_matches_finite_differences(rewards, coef):
    r = np.array(rewards, dtype=np.float64)
    _, grad, metrics = pairwise_reward_loss(r, coef)
    check_gradients(lambda x: pairwise_reward_loss(x, coef)[0], [r], [grad], tol=1e-7)
    b = len(r) // 2
    assert metrics["accuracy"] == np.mean(r[:b] > r[b:]) and metrics["max_reward"] == r.max()


@settings(max_examples=8)  # each example is ~100 forward passes of the model
@given(seed=st.integers(0, 2**31 - 1), coef=st.sampled_from([None, 0.1]), n_layer=st.integers(1, 2))
def test_reward_model_gradient_matches_finite_differences(seed, coef, n_layer):
    """The gradient one step leaves in every parameter tensor equals central differences of
    the batch loss on random padded pairs, at a few entries of each tensor (float64)."""
    _, tok = tiny_sft()
    rng = np.random.default_rng(seed)
    model = generic_model(tok, seed % 1000, n_layer)
    trainer = RewardLMTrainer(model, tok, RewardLMConfig(center_rewards_coefficient=coef))
    chars = tok.chars
    text = lambda lo, hi: "".join(rng.choice(list(chars), int(rng.integers(lo, hi))))
    pairs = [(text(0, 8), text(1, 10), text(1, 10)) for _ in range(3)]  # ragged: real padding
    batch = trainer.prepare(pairs).batch(np.arange(3))
    assert not np.all(batch["attention_mask"] == 1)
    trainer.compute_gradients(batch)

    def loss():
        out, _ = model.forward(batch["input_ids"], batch["attention_mask"], heads=("rewards",))
        return pairwise_reward_loss(out["rewards"], coef)[0]

    grads = {name: p.grad.copy() for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        if name.startswith("value_head"):
            assert not grads[name].any()  # the value head is not on the reward path
            continue
        flat = p.data.reshape(-1)  # a view: writing into it moves the model
        nonzero = np.flatnonzero(grads[name])
        ids = np.union1d(rng.choice(nonzero, min(2, nonzero.size), replace=False),
                         rng.choice(flat.size, min(2, flat.size), replace=False))
        original = flat[ids].copy()

        def f(values, flat=flat, ids=ids):
            flat[ids] = values
            return loss()

        try:
            check_gradients(f, [original], [grads[name].reshape(-1)[ids]], tol=1e-6, names=[name])
        finally:
            flat[ids] = original


@pytest.mark.torch
@pytest.mark.parametrize("coef", [None, 0.2])
def test_reward_model_loss_and_every_gradient_match_torch(coef):
    torch = pytest.importorskip("torch")
    from test_torch_crosscheck import assert_same_gradients, torch_gpt

    _, tok = tiny_sft()
    model = generic_model(tok, 3, n_layer=2)
    trainer = RewardLMTrainer(model, tok, RewardLMConfig(center_rewards_coefficient=coef))
    pairs = [("the soup was", " good .", " cold and bland ."), ("i", " loved it .", " hated the cake ."),
             ("the film was", " not dull .", " slow .")]
    batch = trainer.prepare(pairs).batch(np.arange(3))
    metrics = trainer.compute_gradients(batch)

    params = {n: torch.tensor(p.data, dtype=torch.float64, requires_grad=True) for n, p in model.named_parameters()}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    r = torch_gpt(params, model.config, ids, mask, ("rewards",))["rewards"]
    r_c, r_r = r[:3], r[3:]
    t_loss = -torch.nn.functional.logsigmoid(r_c - r_r).mean()
    if coef:
        t_loss = t_loss + coef * ((r_c + r_r) ** 2).mean()
    t_loss.backward()
    assert metrics["loss"] == pytest.approx(t_loss.item(), rel=1e-10)
    assert_same_gradients(model, params)


def counting(model):
    calls = []
    forward = model.forward

    def fwd(idx, *args, **kwargs):
        calls.append((idx.shape[0], kwargs.get("heads")))
        return forward(idx, *args, **kwargs)

    model.forward = fwd
    return calls


def test_a_step_is_one_forward_of_2B_rows_reading_only_the_reward_head():
    model, tok = tiny_sft()
    trainer = RewardLMTrainer(model, tok, RewardLMConfig(batch_size=8))
    data = trainer.prepare(TRAIN[:40])
    calls = counting(model)
    metrics = trainer.train_step(data.batch(np.arange(8)))
    assert calls == [(16, ("rewards",))]
    assert set(metrics) == {"loss", "accuracy", "margin", "min_reward", "mean_reward", "max_reward", "num_tokens",
                            "grad_norm", "lr"}
    assert metrics["num_tokens"] == int(data.batch(np.arange(8))["attention_mask"].sum()) == trainer.num_tokens


# ---------------------------------------------------------------- learning


def test_the_reward_model_learns_the_preference_and_ranks_like_the_rater():
    model, tok = tiny_sft()
    trainer = RewardLMTrainer(model, tok, RewardLMConfig(steps=60, batch_size=16, lr=3e-3, warmup_steps=5))
    held_out = trainer.prepare(HELD_OUT)
    before = trainer.evaluate(held_out)
    history = trainer.train(TRAIN, progress=False)
    after = trainer.evaluate(held_out)
    assert len(history["loss"]) == 60 and history["step"][-1] == 60
    # chance gives accuracy ~ Binomial(n, 1/2) / n: demand its one-sided 99.9% quantile
    n = held_out.n_pairs
    assert after["accuracy"] > 0.5 + 3.09 * 0.5 / math.sqrt(n)
    assert after["loss"] < before["loss"]
    assert after["accuracy_se"] == pytest.approx(math.sqrt(after["accuracy"] * (1 - after["accuracy"]) / (n - 1)))
    reviews = generate_reviews(300, seed=9)
    prompts, responses = [r.prompt for r in reviews], [r.response for r in reviews]
    assert spearman(trainer.score(prompts, responses), lexicon_rate(prompts, responses)) > 0.1


# ---------------------------------------------------------------- resume, NaN


def assert_same_state(a, b):
    for (name, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
    assert a.step == b.step and a.num_tokens == b.num_tokens and a.order.state() == b.order.state()


@pytest.mark.parametrize("k", [1, 5])  # 14 pairs in batches of 4: step 5 stops mid-epoch
def test_k_steps_save_resume_n_minus_k_equals_n_steps_straight(tmp_path, k):
    config = RewardLMConfig(steps=8, batch_size=4, lr=3e-3, warmup_steps=2, seed=3, center_rewards_coefficient=0.01)

    def fresh():
        model, tok = tiny_sft()
        return RewardLMTrainer(model, tok, config)

    straight = fresh()
    history = straight.train(TRAIN[:14], progress=False)
    first = fresh()
    first_history = first.train(TRAIN[:14], steps=k, progress=False)
    first.metadata["pairs"] = "train.jsonl"
    first.save(tmp_path / "rm.npz")
    resumed = RewardLMTrainer.resume(tmp_path / "rm.npz")
    assert resumed.step == k and resumed.config == config and resumed.metadata == {"pairs": "train.jsonl"}
    rest = resumed.train(TRAIN[:14], progress=False)
    assert_same_state(straight, resumed)
    assert first_history["loss"] + rest["loss"] == history["loss"]
    with pytest.raises(ValueError, match="epoch order covers 14 pairs, got 15"):
        resumed.train(TRAIN[:15], steps=1, progress=False)


def test_a_nan_stops_before_the_update_naming_the_step():
    model, tok = tiny_sft()
    trainer = RewardLMTrainer(model, tok, RewardLMConfig(batch_size=4))
    data = trainer.prepare(TRAIN[:8])
    trainer.train_step(data.batch(np.arange(4)))
    model.reward_head.w.data[0, 0] = np.nan
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    with pytest.raises(NonFiniteLossError, match="step 2: rewards is nan"):
        trainer.train_step(data.batch(np.arange(4)))
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.data, before[name], err_msg=name)
    assert trainer.step == 1


def test_a_non_finite_gradient_norm_stops_before_the_update(monkeypatch):
    from alignment_np.trainers import reward_lm

    model, tok = tiny_sft()
    trainer = RewardLMTrainer(model, tok, RewardLMConfig(batch_size=4))
    data = trainer.prepare(TRAIN[:8])
    before = {n: p.data.copy() for n, p in model.named_parameters()}
    monkeypatch.setattr(reward_lm, "clip_grad_norm", lambda params, limit: float("inf"))
    with pytest.raises(NonFiniteLossError, match="step 1: grad_norm is inf"):
        trainer.train_step(data.batch(np.arange(4)))
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.data, before[name], err_msg=name)
    assert trainer.step == 0 and trainer.num_tokens == 0


def test_the_callback_can_stop_training():
    model, tok = tiny_sft()
    trainer = RewardLMTrainer(model, tok, RewardLMConfig(batch_size=4, steps=10))
    seen = []
    history = trainer.train(TRAIN[:12], progress=False, callback=lambda step, m: seen.append(step) or step == 3)
    assert seen == [1, 2, 3] and trainer.step == 3 and history["step"] == [1, 2, 3]


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("lr", -1.0, "lr: expected a finite number >= 0"),
        ("min_lr", 1.0, "min_lr: expected <= lr"),
        ("steps", 0, "steps: expected a positive int, got 0"),
        ("warmup_steps", 500, "warmup_steps: expected <= steps=200"),
        ("batch_size", True, "batch_size: expected a positive int, got True"),
        ("grad_clip", 0.0, "grad_clip: expected a finite number > 0"),
        ("center_rewards_coefficient", float("nan"), "center_rewards_coefficient: expected a finite number >= 0"),
        ("seed", -2, "seed: expected an int >= 0, got -2"),
    ],
)
def test_bad_config_names_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        RewardLMConfig(**{field: value})


def test_bad_arguments_are_clear_errors(tmp_path):
    model, tok = tiny_sft()
    with pytest.raises(TypeError, match="model: expected a TinyGPT, got str"):
        RewardLMTrainer("sft.npz", tok)
    with pytest.raises(TypeError, match="config: expected a RewardLMConfig, got dict"):
        RewardLMTrainer(model, tok, {"lr": 1e-3})
    trainer = RewardLMTrainer(model, tok)
    with pytest.raises(ValueError, match="pairs: expected a non-empty list"):
        trainer.prepare([])
    batch = trainer.prepare(TRAIN[:4]).batch(np.arange(4))
    with pytest.raises(ValueError, match=r"input_ids must be \(2B, T\)"):
        trainer.train_step({"input_ids": batch["input_ids"][:3], "attention_mask": batch["attention_mask"][:3]})
    with pytest.raises(ValueError, match="batch: missing keys"):
        trainer.train_step({"input_ids": batch["input_ids"]})
    with pytest.raises(ValueError, match="prompts, completions: expected equal"):
        trainer.score(["a"], [])
    from alignment_np.trainers.sft import SFTTrainer

    SFTTrainer(model, tok).save(tmp_path / "sft.npz")
    with pytest.raises(ValueError, match="sft.npz: not a reward-model checkpoint"):
        RewardLMTrainer.resume(tmp_path / "sft.npz")


def test_resume_with_a_longer_schedule(tmp_path):
    model, tok = tiny_sft()
    trainer = RewardLMTrainer(model, tok, RewardLMConfig(steps=3, batch_size=4, warmup_steps=1))
    trainer.train(TRAIN[:8], progress=False)
    trainer.save(tmp_path / "rm.npz")
    resumed = RewardLMTrainer.resume(tmp_path / "rm.npz", config=dataclasses.replace(trainer.config, steps=5))
    assert resumed.train(TRAIN[:8], progress=False)["step"] == [4, 5]
