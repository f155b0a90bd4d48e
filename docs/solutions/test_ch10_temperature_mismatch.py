"""Chapter 10, exercise 2: score the update at the rollout's temperature, or PPO clips nothing real.

A rollout sampled at temperature 0.7 records log softmax(z / 0.7) of each
token. If the update scored the same tokens with log softmax(z), the very
first ratio rho = exp(new - old), before any weight has moved, would already
be far from 1: tokens the sharpened distribution liked have rho < 1, the
others rho > 1, and PPO's clip would cut updates for a policy change that
never happened. Scored at the same temperature, the first ratio is 1 up to
float rounding and nothing is clipped.
"""

import numpy as np

from alignment_np.data.tokenizer import CharTokenizer
from alignment_np.losses.ppo import ppo_loss
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.rl.rollout import collect_rollout
from alignment_np.trainers.lm_logprobs import response_forward

TEXT = ["the soup was good .", "i found the plot dull .", "the cake was sweet !"]


def setup():
    tok = CharTokenizer.from_text(TEXT)
    # A large initial scale: logits far from uniform, so the temperature matters.
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=1, n_head=2, d_model=16, init_std=0.5)
    policy, reference = TinyGPT(config, seed=0), TinyGPT(config, seed=0)
    prompts = ["the soup was", "i found the plot", "the cake was", "the soup was"] * 4
    return tok, policy, reference, prompts


def first_ratio(temperature_at_update):
    tok, policy, reference, prompts = setup()
    rollout = collect_rollout(policy, reference, tok, prompts, lambda p, c: np.zeros(len(p)),
                              max_new_tokens=20, temperature=0.7, rng=0)
    mask = rollout.response_mask
    out, _ = response_forward(policy, rollout.tokens, rollout.attention_mask, rollout.prompt_length,
                              temperature_at_update, ("logits",), mask)
    ratio = np.exp(out["logps"] - rollout.logprobs)[mask == 1]
    rng = np.random.default_rng(0)
    advantages = rng.choice([-1.0, 1.0], size=mask.shape) * rng.uniform(0.5, 1.5, size=mask.shape)
    _, _, metrics = ppo_loss(out["logps"], rollout.logprobs, advantages, 0.2, mask=mask, return_metrics=True)
    return ratio, metrics["clip_fraction"]


def test_a_mismatched_temperature_clips_a_policy_that_has_not_moved():
    ratio, clip_fraction = first_ratio(temperature_at_update=1.0)
    assert np.abs(ratio - 1).max() > 0.5
    assert clip_fraction > 0.1


def test_the_same_temperature_gives_a_first_ratio_of_one():
    ratio, clip_fraction = first_ratio(temperature_at_update=0.7)
    np.testing.assert_allclose(ratio, 1.0, atol=1e-5)
    assert clip_fraction == 0.0
