"""Tests for PPO for RLHF on the tiny GPT (``alignment_np/trainers/ppo.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from alignment_np.losses.kl import kl_estimate
from alignment_np.trainers.ppo import PPOConfig, PPOTrainer, token_rewards
from rl_helpers import RESPONSE_LENGTH, TRAIN_PROMPTS, assert_learns, sentiment_reward, sft_models


def test_token_rewards_put_the_penalty_on_every_token_and_the_score_on_the_last():
    rng = np.random.default_rng(0)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    logprobs, ref = -rng.uniform(0.1, 3, (2, 3, 5))
    scores = np.array([1.0, -2.0, 0.5])
    for estimator in ("k1", "k3"):
        rewards, kl = token_rewards(scores, logprobs, ref, mask, 0.1, estimator)
        for b in range(3):  # a loop a reader can check by hand
            last = int(mask[b].sum()) - 1
            for t in range(5):
                k = float(kl_estimate(logprobs[b, t : t + 1], ref[b, t : t + 1], estimator)[0]) if mask[b, t] else 0.0
                expected = -0.1 * k + (scores[b] if t == last else 0.0)
                assert rewards[b, t] == pytest.approx(expected, rel=1e-12, abs=1e-15)
                assert kl[b, t] == pytest.approx(k, rel=1e-12, abs=1e-15)


def test_the_default_value_model_is_a_separate_copy_of_the_reference():
    (policy, reference), tok = sft_models()
    trainer = PPOTrainer(policy, reference, sentiment_reward, tok, PPOConfig(response_length=RESPONSE_LENGTH))
    assert not trainer.shared_value_head and trainer.value_model is not reference
    for (name, p), (_, q) in zip(trainer.value_model.named_parameters(), reference.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
        assert not np.shares_memory(p.data, q.data), name
    names = {n for n, _ in trainer.models.named_parameters()}
    assert "value_model.wte" in names and "policy.wte" in names  # both trained, one optimiser
    shared = PPOTrainer(*sft_models()[0], sentiment_reward, tok, PPOConfig(shared_value_trunk=True))
    assert shared.shared_value_head and shared.value_model is None


def test_rollout_and_update_score_tokens_with_the_same_function():
    """One epoch, one minibatch: the update's first forward sees the weights that sampled, at the same
    temperature, so every ratio is 1 (up to float32 rounding of a different batch shape): nothing clips."""
    (policy, reference), tok = sft_models()
    config = PPOConfig(batch_size=16, num_mini_batches=1, num_ppo_epochs=1, temperature=0.7,
                       response_length=RESPONSE_LENGTH, log_every=0)
    metrics = PPOTrainer(policy, reference, sentiment_reward, tok, config).train_step(TRAIN_PROMPTS[:16])
    assert metrics["policy/clipfrac_avg"] == 0.0
    # k3 = (r - 1) - log r of float32 ratios: rounding alone gives ~1e-8; a temperature mismatch ~1e-1
    assert abs(metrics["val/ratio"] - 1.0) < 1e-5 and metrics["policy/approxkl_avg"] < 1e-6
    assert metrics["objective/kl"] == 0.0  # policy == reference before the update: k1 is exactly 0
    assert metrics["objective/rlhf_reward"] == pytest.approx(metrics["objective/scores"]
                                                             + metrics["objective/non_score_reward"])


def test_adaptive_kl_coefficient_follows_the_controller():
    (policy, reference), tok = sft_models()
    config = PPOConfig(batch_size=8, num_mini_batches=2, num_ppo_epochs=2, response_length=RESPONSE_LENGTH,
                       adaptive_kl=True, kl_coef=0.1, kl_target=0.05, kl_horizon=100, log_every=0)
    trainer = PPOTrainer(policy, reference, sentiment_reward, tok, config)
    history = trainer.train(TRAIN_PROMPTS, steps=3, progress=False)
    coef = 0.1
    for step in range(3):  # Ziegler et al. 2019: beta *= 1 + clip(KL / target - 1, +-0.2) * B / horizon
        assert history["objective/kl_coef"][step] == pytest.approx(coef)
        error = np.clip(history["objective/kl"][step] / 0.05 - 1, -0.2, 0.2)
        coef *= 1 + error * 8 / 100
    assert trainer.kl_controller.value == pytest.approx(coef)
    assert history["objective/kl"][-1] > 0.05 and trainer.kl_controller.value > 0.1  # KL above target: beta rose


@pytest.mark.slow
def test_ppo_raises_the_held_out_reward():
    """d_model 32, 2 layers, SFT'd on the corpus; 10 iterations of 32 prompts with the lexicon reward."""
    (policy, reference), tok = sft_models()
    config = PPOConfig(batch_size=32, num_mini_batches=2, num_ppo_epochs=4, learning_rate=3e-4, kl_coef=0.05,
                       response_length=RESPONSE_LENGTH, missing_eos_penalty=1.0, log_every=0)
    before, after, history = assert_learns(PPOTrainer(policy, reference, sentiment_reward, tok, config), 10)
    assert history["objective/kl"][-1] > 0  # the policy moved away from the reference, and says by how much
    assert history["objective/scores"][-1] > history["objective/scores"][0]
