"""Tests for GRPO on the tiny GPT (``alignment_np/trainers/grpo.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from alignment_np.trainers.grpo import GRPOConfig, GRPOTrainer
from rl_helpers import RESPONSE_LENGTH, TRAIN_PROMPTS, assert_learns, sentiment_reward, sft_models


def test_on_policy_iteration_never_clips_and_reports_trls_metrics():
    """num_iterations = 1, one minibatch: the ratio is 1 (the weights that sampled), nothing clips; the
    first KL to the reference is 0 (the policy is the SFT model)."""
    (policy, reference), tok = sft_models()
    config = GRPOConfig(batch_size=4, num_generations=4, max_completion_length=RESPONSE_LENGTH, log_every=0)
    metrics = GRPOTrainer(policy, reference, sentiment_reward, tok, config).train_step(TRAIN_PROMPTS[:4])
    assert metrics["clip_ratio/region_mean"] == 0.0 and metrics["kl"] < 1e-6
    assert metrics["objective/kl"] == 0.0
    for key in ("reward", "reward_std", "frac_reward_zero_std", "entropy", "completions/mean_length",
                "completions/clipped_ratio", "loss", "grad_norm", "learning_rate"):
        assert np.isfinite(metrics[key]), key
    assert 0.0 <= metrics["frac_reward_zero_std"] <= 1.0


@pytest.mark.parametrize("loss_type", ["dapo", "dr_grpo"])
def test_every_loss_type_trains(loss_type):
    (policy, reference), tok = sft_models()
    config = GRPOConfig(batch_size=4, num_generations=3, num_iterations=2, num_mini_batches=2, loss_type=loss_type,
                        max_completion_length=RESPONSE_LENGTH, log_every=0)
    trainer = GRPOTrainer(policy, reference, sentiment_reward, tok, config)
    before = {n: p.data.copy() for n, p in policy.named_parameters()}
    history = trainer.train(TRAIN_PROMPTS, steps=2, progress=False)
    assert trainer.step == 2 and all(np.isfinite(history["loss"]))
    assert any(not np.array_equal(before[n], p.data) for n, p in policy.named_parameters())
    assert history["clip_ratio/region_mean"][-1] >= 0.0


@pytest.mark.slow
def test_grpo_raises_the_held_out_reward():
    """d_model 32, 2 layers, SFT'd on the corpus; 10 iterations of 8 prompts x 4 completions."""
    (policy, reference), tok = sft_models()
    config = GRPOConfig(batch_size=8, num_generations=4, num_iterations=2, num_mini_batches=2, learning_rate=1e-3,
                        beta=0.04, max_completion_length=RESPONSE_LENGTH, missing_eos_penalty=1.0, log_every=0)
    before, after, history = assert_learns(GRPOTrainer(policy, reference, sentiment_reward, tok, config), 10)
    assert history["objective/kl"][-1] > 0 and history["kl"][-1] > 0  # reported: how far from the reference
