"""Tests for DPO on the tiny GPT (``alignment_np/trainers/dpo_lm.py``)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignment_np.backend import to_numpy
from alignment_np.data.corpus import generate_preference_pairs, generate_reviews
from alignment_np.data.preferences import PreferencePair
from alignment_np.data.tokenizer import CharTokenizer
from alignment_np.gradcheck import check_gradients
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.optim import AdamW, clip_grad_norm
from alignment_np.trainers.dpo_lm import DPOConfig, DPOLMTrainer, PreferenceDataset
from alignment_np.trainers.lm_logprobs import policy_logps_forward
from helpers import make_parameters_generic


@lru_cache(maxsize=None)
def corpus_pairs():
    """(tokenizer, pairs): for one prompt, a positive review's verdict chosen over a negative one's."""
    pairs = generate_preference_pairs(1000, seed=0)
    tok = CharTokenizer.from_text([r.text for r in generate_reviews(2000, seed=0)])
    return tok, tuple((p.prompt, p.chosen, p.rejected) for p in pairs)


def model(tok, seed=0, dtype="float32", d_model=32, init_std=0.02):
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2,
                       d_model=d_model, dtype=dtype, init_std=init_std)
    return TinyGPT(config, seed=seed)


def generic_model(tok, seed):
    """A float64 model with generic parameters (no gamma = 1, no zero bias) for gradient checks."""
    m = model(tok, seed, dtype="float64", d_model=8, init_std=0.3)
    return make_parameters_generic(m, seed)


def trainer_for(policy, reference, tok, **config):
    return DPOLMTrainer(policy, reference, tok, DPOConfig(**config))


# ---------------------------------------------------------------- gradients


@settings(max_examples=10)  # each example is ~150 forward passes of the model
@given(
    seed=st.integers(0, 2**31 - 1),
    loss=st.sampled_from([("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0), ("robust", 0.2)]),
    beta=st.floats(0.05, 1.0),
    average_logps=st.booleans(),
)
def test_dpo_step_gradient_matches_finite_differences(seed, loss, beta, average_logps):
    """The gradient one DPO step leaves in the policy equals central differences of the
    batch loss, on a few random entries of every parameter tensor (float64).
    (hinge is left out: its kink at beta h = 1 has no derivative.)"""
    loss_type, label_smoothing = loss
    tok, pairs = corpus_pairs()
    rng = np.random.default_rng(seed)
    policy, reference = generic_model(tok, 1), generic_model(tok, 0)  # the policy already differs
    trainer = trainer_for(policy, reference, tok, beta=beta, loss_type=loss_type,
                          label_smoothing=label_smoothing, average_logps=average_logps)
    picks = rng.choice(len(pairs), 2, replace=False)
    data = trainer.prepare([pairs[i] for i in picks])
    batch = data.batch(np.arange(2))
    trainer.compute_gradients(batch)

    def loss():
        logps, _ = policy_logps_forward(policy, batch["input_ids"], batch["attention_mask"],
                                        batch["loss_mask"], average_logps, targets=batch["targets"])
        return trainer.loss_fn.compute_loss(logps[:2], logps[2:], batch["ref_chosen_logps"],
                                            batch["ref_rejected_logps"])[0]

    for name, p in policy.named_parameters():
        flat = p.data.reshape(-1)  # a view: writing into it moves the policy
        nonzero = np.flatnonzero(p.grad)
        ids = np.union1d(rng.choice(nonzero, min(2, nonzero.size), replace=False),
                         rng.choice(flat.size, min(2, flat.size), replace=False))
        original = flat[ids].copy()

        def f(values, flat=flat, ids=ids):
            flat[ids] = values
            return loss()

        try:
            check_gradients(f, [original], [p.grad.reshape(-1)[ids]], tol=1e-6, names=[name])
        finally:
            flat[ids] = original


# ---------------------------------------------------------------- the step


def counting(model):
    """Wrap model.forward / backward to record the number of rows of each call."""
    calls = {"forward": [], "backward": []}
    forward, backward = model.forward, model.backward

    def fwd(idx, *args, **kwargs):
        calls["forward"].append(idx.shape[0])
        return forward(idx, *args, **kwargs)

    def bwd(grads, cache):
        calls["backward"].append(grads["logits"].shape[0])
        return backward(grads, cache)

    model.forward, model.backward = fwd, bwd
    return calls


def test_train_step_is_one_forward_and_one_backward_over_2B_rows():
    tok, pairs = corpus_pairs()
    policy, reference = model(tok), model(tok)
    trainer = trainer_for(policy, reference, tok, batch_size=8, eval_batch_size=16)
    data = trainer.prepare(list(pairs[:40]))
    policy_calls, reference_calls = counting(policy), counting(reference)
    trainer.train_step(data.batch(np.arange(8)))
    assert policy_calls == {"forward": [16], "backward": [16]}
    assert reference_calls == {"forward": [], "backward": []}


def test_reference_logps_are_computed_once_per_dataset():
    tok, pairs = corpus_pairs()
    policy, reference = model(tok), model(tok, seed=5)
    trainer = trainer_for(policy, reference, tok, batch_size=4, eval_batch_size=8, steps=6)
    calls = counting(reference)
    data = trainer.prepare(list(pairs[:20]))
    # 20 pairs = 40 rows, in forwards of 2 * eval_batch_size = 16 rows: 16 + 16 + 8
    assert calls["forward"] == [16, 16, 8]
    trainer.train(data)
    trainer.evaluate(data)
    assert calls["forward"] == [16, 16, 8] and calls["backward"] == []
    direct, _ = policy_logps_forward(reference, data.input_ids, data.attention_mask, data.loss_mask,
                                     targets=data.targets)
    np.testing.assert_allclose(data.ref_logps, direct, rtol=1e-5)


def test_train_step_is_gradients_then_clip_then_adamw():
    tok, pairs = corpus_pairs()
    reference = model(tok)
    a, b = model(tok, seed=1), model(tok, seed=1)
    config = dict(lr=3e-3, weight_decay=0.01, grad_clip=0.05)
    trainer = trainer_for(a, reference, tok, **config)
    batch = trainer.prepare(list(pairs[:6])).batch(np.arange(6))
    metrics = trainer.train_step(batch)

    manual = trainer_for(b, reference, tok, **config)
    expected = manual.compute_gradients(batch)
    norm = clip_grad_norm(b.parameters(), 0.05)
    assert norm > 0.05  # the clip really acted
    opt = AdamW(b.parameters(), lr=3e-3, weight_decay=0.01)
    opt.step()
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-6)
    assert {k: metrics[k] for k in expected} == expected


def test_train_step_does_not_modify_the_batch(xp):
    tok, pairs = corpus_pairs()
    trainer = trainer_for(model(tok), model(tok, seed=2), tok)
    batch = trainer.prepare(list(pairs[:4])).batch(np.arange(4))
    saved = {k: v.copy() for k, v in batch.items()}
    metrics = trainer.train_step(batch)
    assert all(math.isfinite(v) for v in metrics.values())
    for k, v in batch.items():
        np.testing.assert_array_equal(to_numpy(v), to_numpy(saved[k]), err_msg=k)


def test_train_step_runs_on_the_backend_and_moves_the_policy(xp):
    tok, pairs = corpus_pairs()
    policy, reference = model(tok), model(tok)  # created on the active backend
    trainer = trainer_for(policy, reference, tok, lr=1e-2)
    data = trainer.prepare(list(pairs[:8]))
    assert type(data.input_ids) is type(policy.wte.data)
    before = to_numpy(policy.wte.data).copy()
    trainer.train_step(data.batch(np.arange(8)))
    assert not np.array_equal(to_numpy(policy.wte.data), before)
    np.testing.assert_array_equal(to_numpy(reference.wte.data), to_numpy(model(tok).wte.data))


# ---------------------------------------------------------------- metrics


TRL_NAMES = {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
             "logps/chosen", "logps/rejected"}


def test_metrics_follow_trl_and_agree_with_their_definitions():
    tok, pairs = corpus_pairs()
    beta = 0.3
    policy, reference = model(tok, seed=1, dtype="float64"), model(tok, dtype="float64")
    trainer = trainer_for(policy, reference, tok, beta=beta)
    data = trainer.prepare(list(pairs[:10]))
    batch = data.batch(np.arange(10))
    metrics = trainer.train_step(batch)
    assert set(metrics) == TRL_NAMES | {"grad_norm"}
    ref_c, ref_r = batch["ref_chosen_logps"].mean(), batch["ref_rejected_logps"].mean()
    assert metrics["rewards/chosen"] == pytest.approx(beta * (metrics["logps/chosen"] - ref_c), rel=1e-9)
    assert metrics["rewards/rejected"] == pytest.approx(beta * (metrics["logps/rejected"] - ref_r), rel=1e-9)
    assert metrics["rewards/margins"] == pytest.approx(
        metrics["rewards/chosen"] - metrics["rewards/rejected"], rel=1e-9, abs=1e-12)
    assert 0.0 <= metrics["rewards/accuracies"] <= 1.0
    assert set(trainer.evaluate(data)) == TRL_NAMES


def test_a_policy_equal_to_the_reference_has_loss_log2():
    """h = 0 for every pair: loss = -log sigmoid(0) = log 2, every reward 0, no pair 'won'."""
    tok, pairs = corpus_pairs()
    policy, reference = model(tok, dtype="float64"), model(tok, dtype="float64")
    metrics = trainer_for(policy, reference, tok).evaluate(list(pairs[:30]))
    assert metrics["loss"] == pytest.approx(math.log(2.0), rel=1e-12)
    assert metrics["rewards/chosen"] == metrics["rewards/rejected"] == metrics["rewards/margins"] == 0.0
    assert metrics["rewards/accuracies"] == 0.0


# ---------------------------------------------------------------- learning


def test_dpo_prefers_positive_reviews_on_held_out_pairs():
    tok, pairs = corpus_pairs()
    train = list(pairs[:400])
    seen = set(train)
    held_out = [p for p in pairs[400:] if p not in seen][:200]
    policy, reference = model(tok), model(tok)  # the policy starts AS the reference
    trainer = trainer_for(policy, reference, tok, lr=1e-2, steps=40, batch_size=16)
    train_data, test_data = trainer.prepare(train), trainer.prepare(held_out)

    before = trainer.evaluate(test_data)
    assert before["rewards/margins"] == 0.0  # policy == reference
    trainer.train(train_data)
    after = trainer.evaluate(test_data)

    # If the policy had learned nothing about which verdict is preferred, each held-out
    # pair would be "won" with probability 1/2: accuracy ~ Binomial(n, 1/2) / n. Demand
    # more than its one-sided 99.9% quantile, 1/2 + 3.09 * sqrt(1/4 / n) (0.609 for n = 200).
    n = test_data.n_pairs
    assert after["rewards/accuracies"] > 0.5 + 3.09 * 0.5 / math.sqrt(n)
    assert after["rewards/margins"] > before["rewards/margins"]
    assert after["loss"] < before["loss"]  # below log 2


def test_train_is_reproducible_from_the_seed():
    tok, pairs = corpus_pairs()
    runs = []
    for _ in range(2):
        trainer = trainer_for(model(tok, seed=1), model(tok), tok, steps=3, batch_size=4, seed=7)
        runs.append(trainer.train(trainer.prepare(list(pairs[:10]))))
    assert runs[0] == runs[1]


# ---------------------------------------------------------------- data


def test_tokenize_lays_out_bos_prompt_response_eos_chosen_rows_first():
    tok, _ = corpus_pairs()
    trainer = trainer_for(model(tok), model(tok), tok)
    pairs = [PreferencePair("the soup was", " good .", " cold ."),
             {"prompt": "i", "chosen": " loved the cake .", "rejected": " hated it ."}]
    rows = trainer.tokenize(pairs)
    ids, attention, targets, loss = (rows[k] for k in ("input_ids", "attention_mask", "targets", "loss_mask"))
    responses = [" good .", " loved the cake .", " cold .", " hated it ."]
    prompts = ["the soup was", "i", "the soup was", "i"]
    longest = max(len(p + r) for p, r in zip(prompts, responses)) + 1  # <bos> in, <eos> only a target
    assert ids.shape == attention.shape == targets.shape == loss.shape == (4, longest)
    for row in range(4):
        n = int(attention[row].sum())
        assert ids[row, 0] == tok.bos_id and targets[row, n - 1] == tok.eos_id
        np.testing.assert_array_equal(ids[row, 1:n], targets[row, : n - 1])  # the shift
        assert np.all(ids[row, n:] == tok.pad_id)
        assert tok.decode(targets[row, loss[row] == 1]) == responses[row]  # <eos> counted, decoded as ""
        assert int(loss[row].sum()) == len(responses[row]) + 1
        assert tok.decode(ids[row, : n - int(loss[row].sum()) + 1]) == prompts[row]


def test_batch_drops_all_padding_columns_without_changing_logps():
    tok, pairs = corpus_pairs()
    policy, reference = model(tok, dtype="float64"), model(tok, seed=3, dtype="float64")
    data = trainer_for(policy, reference, tok).prepare(list(pairs[:30]))
    idx = np.array([3, 7])
    batch = data.batch(idx)
    rows = np.concatenate([idx, idx + 30])
    assert batch["input_ids"].shape[1] == int(data.attention_mask[rows].sum(axis=1).max())
    assert batch["input_ids"].shape[1] < data.input_ids.shape[1]
    trimmed, _ = policy_logps_forward(policy, batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                                      targets=batch["targets"])
    full, _ = policy_logps_forward(policy, data.input_ids[rows], data.attention_mask[rows], data.loss_mask[rows],
                                   targets=data.targets[rows])
    np.testing.assert_allclose(trimmed, full, rtol=1e-10)
    np.testing.assert_array_equal(batch["ref_chosen_logps"], data.ref_logps[idx])
    np.testing.assert_array_equal(batch["ref_rejected_logps"], data.ref_logps[idx + 30])


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("beta", 0.0, "beta: expected a finite number > 0, got 0.0"),
        ("beta", float("nan"), "beta: expected a finite number > 0"),
        ("loss_type", "kto", r"loss_type: expected one of \['hinge', 'ipo', 'orpo', 'robust', 'sigmoid', 'simpo'\], got 'kto'"),
        ("label_smoothing", 0.5, r"label_smoothing: expected a number in \[0, 0.5\), got 0.5"),
        ("lr", -1e-3, "lr: expected a finite number >= 0"),
        ("weight_decay", float("inf"), "weight_decay: expected a finite number >= 0"),
        ("steps", 0, "steps: expected a positive int, got 0"),
        ("batch_size", 2.5, "batch_size: expected a positive int, got 2.5"),
        ("eval_batch_size", True, "eval_batch_size: expected a positive int, got True"),
        ("grad_clip", -1.0, "grad_clip: expected a finite number > 0"),
        ("seed", -1, "seed: expected an int >= 0, got -1"),
    ],
)
def test_bad_config_raises_naming_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        DPOConfig(**{field: value})


def test_label_smoothing_with_a_loss_that_ignores_it_raises():
    with pytest.raises(ValueError, match="label_smoothing applies only to loss_type in .* loss_type='ipo'"):
        DPOConfig(loss_type="ipo", label_smoothing=0.1)


def test_average_logps_must_be_a_bool():
    with pytest.raises(TypeError, match="average_logps: expected a bool, got str"):
        DPOConfig(average_logps="yes")


def test_bad_trainer_arguments_raise():
    tok, _ = corpus_pairs()
    policy = model(tok)
    with pytest.raises(ValueError, match="reference: must be a separate, frozen model"):
        DPOLMTrainer(policy, policy, tok)
    with pytest.raises(TypeError, match="reference: expected a TinyGPT, got str"):
        DPOLMTrainer(policy, "ref", tok)
    with pytest.raises(TypeError, match="config: expected a DPOConfig, got dict"):
        DPOLMTrainer(policy, model(tok), tok, {"beta": 0.1})
    small = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"share one vocabulary, got vocab_size \d+ \(policy\), \d+ \(reference\), 6 \(tokenizer\)"):
        DPOLMTrainer(policy, model(tok), small)


def test_bad_pairs_raise_naming_the_pair():
    tok, _ = corpus_pairs()
    trainer = trainer_for(model(tok), model(tok), tok)
    with pytest.raises(ValueError, match="pairs: expected a non-empty list"):
        trainer.prepare([])
    with pytest.raises(ValueError, match=r"pairs\[1\]: expected a PreferencePair"):
        trainer.prepare([("a", "b", "c"), ("a", "b")])
    with pytest.raises(ValueError, match=r"pairs\[0\]: missing keys \['rejected'\]"):
        trainer.prepare([{"prompt": "a", "chosen": "b"}])
    with pytest.raises(TypeError, match=r"pairs\[0\]: prompt, chosen and rejected must be str"):
        trainer.prepare([("a", 1, "c")])
    with pytest.raises(ValueError, match=r"pair 0 \(rejected\): the response alone encodes to 64 tokens"):
        trainer.prepare([("the soup was", " good .", " " * 64)])
    # a prompt too long for block_size = 64 is cut from the left, keeping its end
    rows = trainer.tokenize([("x" * 100 + " the soup was", " good .", " cold .")])
    assert rows["input_ids"].shape[1] == 64
    assert tok.decode(rows["input_ids"][0]).endswith("the soup was good .")


def test_bad_batches_and_indices_raise():
    tok, pairs = corpus_pairs()
    trainer = trainer_for(model(tok), model(tok), tok)
    data = trainer.prepare(list(pairs[:4]))
    batch = data.batch(np.arange(4))
    with pytest.raises(ValueError, match=r"batch: missing keys \['loss_mask'\]"):
        trainer.train_step({k: v for k, v in batch.items() if k != "loss_mask"})
    with pytest.raises(ValueError, match=r"input_ids must have 2B = 6 rows .* got shape \(8, "):
        trainer.train_step({**batch, "ref_chosen_logps": batch["ref_chosen_logps"][:3],
                            "ref_rejected_logps": batch["ref_rejected_logps"][:3]})
    with pytest.raises(ValueError, match="ref_chosen_logps and ref_rejected_logps must both be"):
        trainer.train_step({**batch, "ref_rejected_logps": batch["ref_rejected_logps"][:3]})
    with pytest.raises(TypeError, match="batch: expected a dict"):
        trainer.train_step(list(batch.values()))
    with pytest.raises(ValueError, match=r"indices: expected a non-empty array of ints in \[0, 4\)"):
        data.batch([4])
    with pytest.raises(ValueError, match="pairs: expected a non-empty list of preference pairs"):
        trainer.train("pairs.jsonl", progress=False)
    assert isinstance(data, PreferenceDataset) and len(data) == 4


# ---------------------------------------------------------------- SimPO, ORPO, averaging


def test_average_logps_follows_each_loss_types_convention():
    assert [DPOConfig(loss_type=t).averaged for t in ("sigmoid", "hinge", "robust", "ipo", "simpo", "orpo")] == [
        False, False, False, True, True, True]
    assert DPOConfig(loss_type="ipo", average_logps=False).averaged is False  # Azar et al.'s summed IPO
    assert DPOConfig(loss_type="sigmoid", average_logps=True).averaged is True
    # None is kept, so replacing the loss type does not carry another type's convention along
    import dataclasses

    assert dataclasses.replace(DPOConfig(), loss_type="ipo").averaged is True
    for loss_type in ("simpo", "orpo"):
        with pytest.raises(ValueError, match=f"average_logps: loss_type='{loss_type}' is defined on length-averaged"):
            DPOConfig(loss_type=loss_type, average_logps=False)
    with pytest.raises(ValueError, match="label_smoothing applies only to .* loss_type='orpo'"):
        DPOConfig(loss_type="orpo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="simpo_gamma: expected a finite number >= 0"):
        DPOConfig(loss_type="simpo", simpo_gamma=-1.0)


def test_ipo_sees_averaged_logps_in_the_policy_and_the_reference():
    tok, pairs = corpus_pairs()
    policy, reference = model(tok, seed=1, dtype="float64"), model(tok, dtype="float64")
    trainer = trainer_for(policy, reference, tok, loss_type="ipo")
    data = trainer.prepare(list(pairs[:6]))
    averaged, _ = policy_logps_forward(reference, data.input_ids, data.attention_mask, data.loss_mask,
                                       average=True, targets=data.targets)
    np.testing.assert_allclose(data.ref_logps, averaged, rtol=1e-12)
    metrics = trainer.evaluate(data)
    pol, _ = policy_logps_forward(policy, data.input_ids, data.attention_mask, data.loss_mask,
                                  average=True, targets=data.targets)
    assert metrics["logps/chosen"] == pytest.approx(float(pol[:6].mean()), rel=1e-12)


@pytest.mark.parametrize("loss_type", ["simpo", "orpo"])
def test_reference_free_losses_never_run_a_reference(loss_type):
    tok, pairs = corpus_pairs()
    policy, reference = model(tok, seed=1), model(tok)
    calls = counting(reference)
    for ref in (None, reference):
        trainer = trainer_for(policy, ref, tok, loss_type=loss_type, beta=2.0 if loss_type == "simpo" else 0.1,
                              batch_size=4, steps=2)
        data = trainer.prepare(list(pairs[:8]))
        assert data.ref_logps is None and "ref_chosen_logps" not in data.batch(np.arange(2))
        trainer.train(data, progress=False)
        trainer.evaluate(data)
    assert calls == {"forward": [], "backward": []}


def test_a_reference_is_required_for_the_dpo_family():
    tok, _ = corpus_pairs()
    with pytest.raises(ValueError, match="reference: loss_type='sigmoid' compares the policy with a frozen reference"):
        DPOLMTrainer(model(tok), None, tok)


@pytest.mark.parametrize("loss_type", ["simpo", "orpo"])
def test_simpo_and_orpo_metrics_follow_trl(loss_type):
    tok, pairs = corpus_pairs()
    beta = 2.0 if loss_type == "simpo" else 0.25
    trainer = trainer_for(model(tok, seed=1, dtype="float64"), None, tok, loss_type=loss_type, beta=beta,
                          simpo_gamma=0.7)
    data = trainer.prepare(list(pairs[:10]))
    metrics = trainer.train_step(data.batch(np.arange(10)))
    names = TRL_NAMES | {"grad_norm"} | ({"nll_loss", "log_odds_ratio", "log_odds_chosen"} if loss_type == "orpo" else set())
    assert set(metrics) == names
    assert metrics["rewards/chosen"] == pytest.approx(beta * metrics["logps/chosen"], rel=1e-12)
    assert metrics["rewards/margins"] == pytest.approx(metrics["rewards/chosen"] - metrics["rewards/rejected"], abs=1e-12)
    if loss_type == "orpo":
        assert metrics["nll_loss"] == pytest.approx(-metrics["logps/chosen"], rel=1e-12)
        assert metrics["loss"] == pytest.approx(metrics["nll_loss"] - beta * metrics["log_odds_ratio"], rel=1e-12)
    else:  # SimPO's loss at the margin: -log sigmoid(beta (avg_c - avg_r) - gamma), averaged over pairs
        assert metrics["loss"] > 0


@settings(max_examples=8)
@given(seed=st.integers(0, 2**31 - 1), loss=st.sampled_from(["simpo", "orpo"]), beta=st.floats(0.1, 2.5),
       label_smoothing=st.sampled_from([0.0, 0.2]))
def test_simpo_and_orpo_steps_match_finite_differences(seed, loss, beta, label_smoothing):
    """Through the whole model: the gradient of a SimPO or ORPO step equals central
    differences of the batch loss on a few entries of every parameter tensor (float64)."""
    tok, pairs = corpus_pairs()
    rng = np.random.default_rng(seed)
    policy = generic_model(tok, 1)
    trainer = trainer_for(policy, None, tok, loss_type=loss, beta=beta,
                          label_smoothing=label_smoothing if loss == "simpo" else 0.0)
    data = trainer.prepare([pairs[i] for i in rng.choice(len(pairs), 2, replace=False)])
    batch = data.batch(np.arange(2))
    trainer.compute_gradients(batch)

    def loss_value():
        logps, _ = policy_logps_forward(policy, batch["input_ids"], batch["attention_mask"], batch["loss_mask"],
                                        True, targets=batch["targets"])
        return trainer.loss(logps)[0]["loss"]

    for name, p in policy.named_parameters():
        flat = p.data.reshape(-1)
        nonzero = np.flatnonzero(p.grad)
        if nonzero.size == 0:
            continue  # value and reward heads: not on the log-prob path
        ids = np.union1d(rng.choice(nonzero, min(2, nonzero.size), replace=False),
                         rng.choice(flat.size, min(2, flat.size), replace=False))
        original = flat[ids].copy()

        def f(values, flat=flat, ids=ids):
            flat[ids] = values
            return loss_value()

        try:
            check_gradients(f, [original], [p.grad.reshape(-1)[ids]], tol=1e-6, names=[name])
        finally:
            flat[ids] = original


@pytest.mark.torch
@pytest.mark.parametrize("loss_type", ["simpo", "orpo", "ipo"])
def test_a_step_matches_torch_autograd_through_the_model(loss_type):
    """The loss and every parameter gradient of one step, against the same computation in torch."""
    torch = pytest.importorskip("torch")
    from test_torch_crosscheck import assert_same_gradients, torch_gpt

    tok, pairs = corpus_pairs()
    policy, reference = generic_model(tok, 2), generic_model(tok, 5)
    beta, gamma = (2.0, 0.6) if loss_type == "simpo" else (0.3, 0.5)
    trainer = trainer_for(policy, None if loss_type != "ipo" else reference, tok, loss_type=loss_type, beta=beta,
                          simpo_gamma=gamma)
    data = trainer.prepare(list(pairs[:3]))
    batch = data.batch(np.arange(3))
    metrics = trainer.compute_gradients(batch)

    params = {n: torch.tensor(p.data, requires_grad=True) for n, p in policy.named_parameters()}
    logits = torch_gpt(params, policy.config, batch["input_ids"], batch["attention_mask"], ("logits",))["logits"]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, torch.as_tensor(batch["targets"])[..., None])[..., 0]
    mask = torch.as_tensor(batch["loss_mask"], dtype=torch.float64)
    avg = (logp * mask).sum(-1) / mask.sum(-1)  # (2B,) length-averaged
    c, r = avg[:3], avg[3:]
    F = torch.nn.functional
    if loss_type == "simpo":  # Meng et al. 2024, Eq. 6
        t_loss = -F.logsigmoid(beta * (c - r) - gamma).mean()
    elif loss_type == "orpo":  # Hong et al. 2024, Eq. 6-7
        log_odds = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
        t_loss = (-c - beta * F.logsigmoid(log_odds)).mean()
    else:  # IPO on averaged log-probs (TRL), Azar et al. 2023, Eq. 17
        ref = torch.as_tensor(data.ref_logps)
        h = (c - ref[:3]) - (r - ref[3:])
        t_loss = ((h - 1 / (2 * beta)) ** 2).mean()
    t_loss.backward()
    assert metrics["loss"] == pytest.approx(t_loss.item(), rel=1e-10)
    assert_same_gradients(policy, params)


@pytest.mark.parametrize("loss_type, beta", [("simpo", 2.0), ("orpo", 0.5)])
def test_simpo_and_orpo_learn_the_preference_on_held_out_pairs(loss_type, beta):
    tok, pairs = corpus_pairs()
    train = list(pairs[:400])
    seen = set(train)
    held_out = [p for p in pairs[400:] if p not in seen][:200]
    policy, _ = model(tok), None
    trainer = trainer_for(policy, None, tok, loss_type=loss_type, beta=beta, lr=1e-2, steps=40, batch_size=16)
    test_data = trainer.prepare(held_out)
    before = trainer.evaluate(test_data)
    trainer.train(train, progress=False)
    after = trainer.evaluate(test_data)
    n = test_data.n_pairs
    assert after["rewards/accuracies"] > 0.5 + 3.09 * 0.5 / math.sqrt(n)
    assert after["rewards/margins"] > before["rewards/margins"]
    assert after["loss"] < before["loss"]


# ---------------------------------------------------------------- a reference that is the policy in disguise


def test_a_reference_sharing_a_parameter_or_memory_with_the_policy_is_refused():
    tok, _ = corpus_pairs()
    policy = model(tok)
    shared_parameter = model(tok)
    shared_parameter.blocks[0].attn.w_qkv = policy.blocks[0].attn.w_qkv
    with pytest.raises(ValueError, match="reference: its parameter 'blocks.0.attn.w_qkv' is the policy's parameter"):
        DPOLMTrainer(policy, shared_parameter, tok)
    shared_memory = model(tok)
    shared_memory.wte.data = policy.wte.data[:]  # a view: another array object, the same memory
    with pytest.raises(ValueError, match="reference: its parameter 'wte' shares memory with the policy's 'wte'"):
        DPOLMTrainer(policy, shared_memory, tok)
    for loss_type in ("simpo", "orpo"):  # refused even where the reference would never run
        with pytest.raises(ValueError, match="shares memory"):
            DPOLMTrainer(policy, shared_memory, tok, DPOConfig(loss_type=loss_type))
    copy = model(tok)
    copy.load_state_dict(policy.state_dict())
    DPOLMTrainer(policy, copy, tok)  # equal values in separate memory: fine


# ---------------------------------------------------------------- protocol: train, resume, NaN


def assert_same_state(a, b):
    for (name, p), (_, q) in zip(a.policy.named_parameters(), b.policy.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    for key in sa:
        np.testing.assert_array_equal(sa[key], sb[key], err_msg=key)
    assert a.step == b.step and a.order.state() == b.order.state()


@pytest.mark.parametrize("loss_type", ["sigmoid", "orpo"])
@pytest.mark.parametrize("k", [2, 5])  # 14 pairs in batches of 4: step 5 stops mid-epoch
def test_k_steps_save_resume_n_minus_k_equals_n_steps_straight(tmp_path, loss_type, k):
    tok, pairs = corpus_pairs()
    reference = None if loss_type == "orpo" else model(tok, seed=4)
    config = DPOConfig(loss_type=loss_type, steps=8, batch_size=4, lr=3e-3, seed=2)

    def fresh():
        return DPOLMTrainer(model(tok, seed=1), reference, tok, config)

    data = list(pairs[:14])
    straight = fresh()
    history = straight.train(data, progress=False)
    first = fresh()
    first_history = first.train(data, steps=k, progress=False)
    first.metadata["pairs"] = "prefs.jsonl"
    first.save(tmp_path / "dpo.npz")
    resumed = DPOLMTrainer.resume(tmp_path / "dpo.npz", reference=reference)
    assert resumed.step == k and resumed.config == config and resumed.metadata == {"pairs": "prefs.jsonl"}
    rest = resumed.train(data, progress=False)
    assert_same_state(straight, resumed)
    assert first_history["loss"] + rest["loss"] == history["loss"]
    assert history["step"] == list(range(1, 9))


def test_resume_refuses_another_reference_and_other_checkpoints(tmp_path):
    tok, pairs = corpus_pairs()
    trainer = trainer_for(model(tok, seed=1), model(tok, seed=4), tok, batch_size=4)
    trainer.train(list(pairs[:8]), steps=1, progress=False)
    trainer.save(tmp_path / "dpo.npz")
    with pytest.raises(ValueError, match="reference: its weights differ from those the run .* was trained against"):
        DPOLMTrainer.resume(tmp_path / "dpo.npz", reference=model(tok, seed=5))
    with pytest.raises(ValueError, match="reference: loss_type='sigmoid' compares the policy"):
        DPOLMTrainer.resume(tmp_path / "dpo.npz")
    from alignment_np.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "plain.npz", model(tok), tokenizer=tok)
    with pytest.raises(ValueError, match="plain.npz: not a DPO checkpoint"):
        DPOLMTrainer.resume(tmp_path / "plain.npz", reference=model(tok))


def test_a_nan_stops_before_the_update_naming_the_step():
    from alignment_np.checks import NonFiniteLossError

    tok, pairs = corpus_pairs()
    policy = model(tok, seed=1)
    trainer = trainer_for(policy, model(tok), tok, batch_size=4)
    data = trainer.prepare(list(pairs[:8]))
    trainer.train_step(data.batch(np.arange(4)))
    policy.ln_f.gamma.data[0] = np.nan
    before = {n: p.data.copy() for n, p in policy.named_parameters()}
    with pytest.raises(NonFiniteLossError, match="step 2: logps is nan"):
        trainer.train_step(data.batch(np.arange(4)))
    for name, p in policy.named_parameters():
        np.testing.assert_array_equal(p.data, before[name], err_msg=name)
    assert trainer.step == 1


def test_the_callback_can_stop_training_and_progress_can_be_silenced(capsys):
    tok, pairs = corpus_pairs()
    trainer = trainer_for(model(tok, seed=1), model(tok), tok, batch_size=4, steps=10)
    history = trainer.train(list(pairs[:12]), progress=False, callback=lambda step, m: step == 3)
    assert trainer.step == 3 and history["step"] == [1, 2, 3]
    assert capsys.readouterr().err == ""
    assert len(trainer.train(list(pairs[:12]), progress=False)["step"]) == 7  # up to config.steps
