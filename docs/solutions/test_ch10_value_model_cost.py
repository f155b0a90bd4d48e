"""Chapter 10, exercise 3: what a separate value model costs, counted.

From the algorithm of section 10.1, with E = num_ppo_epochs and
M = num_mini_batches, one iteration runs

    rollout:   the policy samples (incremental forwards with the KV cache, not
               counted here), then ONE full forward of the policy, one of the
               reference, and, with a separate critic, one of the value model;
    update:    per minibatch, a forward and a backward of the policy, and, with
               a separate critic, a forward and a backward of the value model.

So a separate value model adds 1 + E M forwards and E M backwards per
iteration (the update costs about twice as much) and doubles the trained
parameters (and AdamW's two moments for each); the shared trunk gets its
values from the policy's own forwards (heads "logits" and "values").
"""

from collections import Counter

import numpy as np
import pytest

from alignment_np.data.tokenizer import CharTokenizer
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.trainers.ppo import PPOConfig, PPOTrainer

E, M = 3, 2


def counted(model, counter, name):
    """``model`` with its forward and backward counted under ``name``."""
    forward, backward = model.forward, model.backward

    def counting_forward(*args, **kwargs):
        counter[f"{name} forward"] += 1
        return forward(*args, **kwargs)

    def counting_backward(*args, **kwargs):
        counter[f"{name} backward"] += 1
        return backward(*args, **kwargs)

    model.forward, model.backward = counting_forward, counting_backward
    return model


@pytest.mark.parametrize("shared", [False, True])
def test_one_iteration_runs_the_forwards_and_backwards_the_algorithm_says(shared):
    tok = CharTokenizer.from_text(["the soup was good .", "the plot was dull ."])
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=40, n_layer=1, n_head=2, d_model=16)
    counter = Counter()
    policy = counted(TinyGPT(config, seed=0), counter, "policy")
    reference = counted(TinyGPT(config, seed=0), counter, "reference")
    value_model = None if shared else counted(TinyGPT(config, seed=0), counter, "value")
    ppo_config = PPOConfig(steps=1, batch_size=4, num_mini_batches=M, num_ppo_epochs=E, response_length=12,
                           shared_value_trunk=shared, log_every=0)
    trainer = PPOTrainer(policy, reference, lambda p, c: np.ones(len(p)), tok, ppo_config, value_model=value_model)
    trainer.train(["the soup was", "the plot was"], progress=False)

    expected = {"policy forward": 1 + E * M, "policy backward": E * M, "reference forward": 1}
    if not shared:
        expected.update({"value forward": 1 + E * M, "value backward": E * M})
    assert dict(counter) == expected

    n = policy.num_parameters()
    trained = sum(p.data.size for p in trainer.optimizer.params)
    assert trained == (n if shared else 2 * n)
