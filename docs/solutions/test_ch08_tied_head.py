"""Chapter 8, exercise 3: the tied weight's gradient is the sum of its two uses.

Untied copy: the embedding W_emb and a separate head W_head = W_emb (same
values). At that point the tied model's dL/dW_te equals dL/dW_emb + dL/dW_head.
"""

import numpy as np

from alignment_np.gradcheck import check_gradients
from alignment_np.nn.gpt import GPTConfig, TinyGPT


def untied_logits(model, idx, w_emb, w_head):
    """Run the model with the embedding and the head as two separate matrices."""
    tied = model.wte.data
    try:
        model.wte.data = w_emb  # the trunk reads wte for the embedding
        h = model.trunk_forward(idx)[0]  # (B, T, D)
    finally:
        model.wte.data = tied
    return h @ w_head.T  # (B, T, V): the head with its own matrix


def test_tied_gradient_is_the_sum_of_the_untied_ones():
    V, D = 9, 8
    config = GPTConfig(vocab_size=V, block_size=8, n_layer=1, n_head=2, d_model=D, dtype="float64")
    model = TinyGPT(config, seed=0)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, V, size=(2, 6))
    outputs, cache = model.forward(idx)
    dlogits = rng.normal(size=outputs["logits"].shape)
    model.zero_grad()
    model.backward({"logits": dlogits}, cache)
    tied_grad = model.wte.grad.copy()

    w = model.wte.data.copy()
    np.testing.assert_allclose(untied_logits(model, idx, w, w), outputs["logits"], rtol=1e-12)

    # The untied gradients, each by finite differences (the head's also by its formula).
    h = model.trunk_forward(idx)[0]
    head_grad = dlogits.reshape(-1, V).T @ h.reshape(-1, D)  # (V, D): dlogits^T h
    check_gradients(lambda wh: untied_logits(model, idx, w, wh), [w.copy()], [head_grad],
                    dout=dlogits, names=["W_head"])
    emb_grad = tied_grad - head_grad
    check_gradients(lambda we: untied_logits(model, idx, we, w), [w.copy()], [emb_grad],
                    dout=dlogits, names=["W_emb"])
    assert np.abs(emb_grad).max() > 1e-6 and np.abs(head_grad).max() > 1e-6  # both uses matter
