"""Chapter 9, exercise 2: one forward of 2B rows is two forwards, and its gradient their sum.

The reward model's batch holds the B chosen rows and then their B rejected
rows. No row attends to another, so a forward over the 2B rows computes for
each row what it would compute alone, and the backward of the concatenated
batch, given d loss / d rewards for all 2B rows, leaves in every parameter
the sum of the two backward passes (chosen alone, rejected alone) with the
same upstream gradients. The gradient of the Bradley-Terry loss with respect
to a trunk parameter is then checked against central differences in float64.
"""

import numpy as np

from alignment_np.gradcheck import check_gradients
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.trainers.reward_lm import pairwise_reward_loss

B, T, V = 3, 7, 11


def batch(rng):
    """2B right-padded rows, chosen first: ids (2B, T) and attention mask (2B, T)."""
    ids = rng.integers(1, V, size=(2 * B, T))
    lengths = rng.integers(3, T + 1, size=2 * B)
    mask = (np.arange(T) < lengths[:, None]).astype(np.int64)
    return ids * mask, mask


def model():
    config = GPTConfig(vocab_size=V, block_size=T, n_layer=2, n_head=2, d_model=8, dtype="float64",
                       init_std=0.3)
    return TinyGPT(config, seed=1)


def gradients(m, ids, mask, d_rewards):
    m.zero_grad()
    _, cache = m.forward(ids, mask, heads=("rewards",))
    m.backward({"rewards": d_rewards}, cache)
    return {name: p.grad.copy() for name, p in m.named_parameters()}


def test_the_concatenated_batch_gives_the_sum_of_the_two_halves():
    rng = np.random.default_rng(0)
    ids, mask = batch(rng)
    m = model()
    rewards = m.forward(ids, mask, heads=("rewards",))[0]["rewards"]
    chosen = m.forward(ids[:B], mask[:B], heads=("rewards",))[0]["rewards"]
    rejected = m.forward(ids[B:], mask[B:], heads=("rewards",))[0]["rewards"]
    np.testing.assert_allclose(rewards, np.concatenate([chosen, rejected]), rtol=1e-12, atol=1e-14)

    _, d_rewards, _ = pairwise_reward_loss(rewards)  # (2B,) d loss / d r
    together = gradients(m, ids, mask, d_rewards)
    alone_c = gradients(m, ids[:B], mask[:B], d_rewards[:B])
    alone_r = gradients(m, ids[B:], mask[B:], d_rewards[B:])
    for name, g in together.items():
        np.testing.assert_allclose(g, alone_c[name] + alone_r[name], rtol=1e-10, atol=1e-14, err_msg=name)
    assert np.abs(together["blocks.0.attn.w_qkv"]).max() > 1e-6  # the trunk did get a gradient
    assert np.abs(together["value_head.w"]).max() == 0.0  # the value head took no part


def test_the_bradley_terry_gradient_of_a_trunk_weight_matches_finite_differences():
    rng = np.random.default_rng(1)
    ids, mask = batch(rng)
    m = model()
    params = dict(m.named_parameters())

    def loss_with(name, value):
        original = params[name].data
        params[name].data = value
        try:
            rewards = m.forward(ids, mask, heads=("rewards",))[0]["rewards"]
            return pairwise_reward_loss(rewards)[0]
        finally:
            params[name].data = original

    rewards = m.forward(ids, mask, heads=("rewards",))[0]["rewards"]
    _, d_rewards, _ = pairwise_reward_loss(rewards)
    grads = gradients(m, ids, mask, d_rewards)
    for name in ("blocks.0.attn.w_qkv", "blocks.1.mlp.fc.w", "wpe", "reward_head.w"):
        check_gradients(lambda w, name=name: loss_with(name, w), [params[name].data.copy()], [grads[name]],
                        names=[name])
