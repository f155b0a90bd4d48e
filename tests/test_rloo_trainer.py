"""Tests for RLOO on the tiny GPT (``alignment_np/trainers/rloo.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from alignment_np.trainers.rloo import RLOOConfig, RLOOTrainer
from rl_helpers import RESPONSE_LENGTH, TRAIN_PROMPTS, assert_learns, sentiment_reward, sft_models


def test_metrics_add_up():
    (policy, reference), tok = sft_models()
    config = RLOOConfig(batch_size=4, rloo_k=2, response_length=RESPONSE_LENGTH, kl_coef=0.2, log_every=0)
    trainer = RLOOTrainer(policy, reference, sentiment_reward, tok, config)
    history = trainer.train(TRAIN_PROMPTS, steps=2, progress=False)
    assert history["objective/kl"][0] == 0.0  # the first rollout: policy == reference
    for step in range(2):
        assert history["objective/non_score_reward"][step] == pytest.approx(-0.2 * history["objective/kl"][step])
        assert history["objective/rlhf_reward"][step] == pytest.approx(
            history["objective/scores"][step] + history["objective/non_score_reward"][step])
    assert history["loss"] == history["loss/policy_avg"] and all(np.isfinite(history["grad_norm"]))


@pytest.mark.slow
def test_rloo_raises_the_held_out_reward():
    """d_model 32, 2 layers, SFT'd on the corpus; 15 iterations of 16 prompts x 4 completions, one step each."""
    (policy, reference), tok = sft_models()
    config = RLOOConfig(batch_size=16, rloo_k=4, learning_rate=1e-3, kl_coef=0.05, response_length=RESPONSE_LENGTH,
                        missing_eos_penalty=1.0, log_every=0)
    before, after, history = assert_learns(RLOOTrainer(policy, reference, sentiment_reward, tok, config), 15)
    assert history["objective/kl"][-1] > 0
