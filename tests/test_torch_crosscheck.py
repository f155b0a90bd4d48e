"""Cross-checks against PyTorch autograd (float64): the same TinyGPT, written with
torch's own ops (embedding, layer_norm, gelu, scaled_dot_product_attention,
cross_entropy), loaded with the same weights, must give the same outputs, loss
and every parameter gradient."""

from __future__ import annotations

import numpy as np
import pytest

from alignment_np.functional.activations import gelu_backward, gelu_forward
from alignment_np.functional.attention import attention_backward, attention_forward
from alignment_np.functional.cross_entropy import cross_entropy_backward, cross_entropy_forward
from alignment_np.functional.layernorm import layernorm_backward, layernorm_forward
from alignment_np.nn.gpt import GPTConfig, TinyGPT

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = dict(rtol=1e-6, atol=1e-9)


def torch_attention_mask(mask_np, t):
    """bool (B, 1, T, T), True = may attend: causal, key real, or the query itself."""
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    if mask_np is None:
        return causal
    real = torch.as_tensor(mask_np).bool()[:, None, :]  # (B, 1, T)
    allowed = causal & (real | torch.eye(t, dtype=torch.bool))
    return allowed[:, None]


def torch_gpt(p, config, idx_np, mask_np, heads):
    """The TinyGPT forward in torch ops. p: name -> float64 leaf tensor."""
    b, t = idx_np.shape
    d, n_head = config.d_model, config.n_head
    idx = torch.as_tensor(idx_np)
    if mask_np is None:
        pos = torch.arange(t).expand(b, t)
    else:
        pos = torch.clamp(torch.cumsum(torch.as_tensor(mask_np), dim=1) - 1, min=0)
    x = F.embedding(idx, p["wte"]) + F.embedding(pos, p["wpe"])
    allowed = torch_attention_mask(mask_np, t)
    for i in range(config.n_layer):
        pre = f"blocks.{i}."
        a = F.layer_norm(x, (d,), p[pre + "ln1.gamma"], p[pre + "ln1.beta"], eps=1e-5)
        qkv = a @ p[pre + "attn.w_qkv"] + p[pre + "attn.b_qkv"]
        q, k, v = (z.reshape(b, t, n_head, d // n_head).transpose(1, 2) for z in qkv.split(d, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        y = y.transpose(1, 2).reshape(b, t, d)
        x = x + y @ p[pre + "attn.w_proj"] + p[pre + "attn.b_proj"]
        m = F.layer_norm(x, (d,), p[pre + "ln2.gamma"], p[pre + "ln2.beta"], eps=1e-5)
        m = F.gelu(m @ p[pre + "mlp.fc.w"] + p[pre + "mlp.fc.b"], approximate="tanh")
        x = x + m @ p[pre + "mlp.proj.w"] + p[pre + "mlp.proj.b"]
    h = F.layer_norm(x, (d,), p["ln_f.gamma"], p["ln_f.beta"], eps=1e-5)
    out = {}
    if "logits" in heads:
        out["logits"] = h @ p["wte"].T
    if "values" in heads:
        out["values"] = (h @ p["value_head.w"] + p["value_head.b"])[..., 0]
    if "rewards" in heads:
        if mask_np is None:
            last = torch.full((b,), t - 1)
        else:
            last = torch.as_tensor(t - 1 - np.argmax(mask_np[:, ::-1], axis=1))
        out["rewards"] = (h[torch.arange(b), last] @ p["reward_head.w"] + p["reward_head.b"])[:, 0]
    return out


def make_pair(seed=0):
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=4, d_model=16,
                       dtype="float64", init_std=0.2)
    model = TinyGPT(config, seed=seed)
    rng = np.random.default_rng(seed)
    for name, prm in model.named_parameters():  # generic LayerNorm and bias values
        if name.endswith(("gamma", "beta")) or name.split(".")[-1] in ("b", "b_qkv", "b_proj"):
            prm.data[...] += rng.standard_normal(prm.shape) * 0.2
    params = {n: torch.tensor(prm.data, dtype=torch.float64, requires_grad=True)
              for n, prm in model.named_parameters()}
    return config, model, params


def assert_same_gradients(model, params):
    names = [n for n, _ in model.named_parameters()]
    assert set(names) == set(params)
    for name, prm in model.named_parameters():
        expected = params[name].grad
        expected = np.zeros(prm.shape) if expected is None else expected.numpy()
        np.testing.assert_allclose(prm.grad, expected, err_msg=name, **TOL)


@pytest.mark.parametrize("padded", [False, True])
def test_lm_logits_loss_and_every_gradient_match_torch(padded):
    config, model, params = make_pair(seed=1)
    rng = np.random.default_rng(2)
    b, t = 3, 8
    idx = rng.integers(0, 11, (b, t))
    mask = np.array([[1] * 8, [0, 0, 0] + [1] * 5, [1] * 6 + [0, 0]]) if padded else None
    targets = rng.integers(0, 11, (b, t))
    loss_mask = np.ones((b, t), np.int64) if mask is None else mask.copy()
    loss_mask[:, 0] = 0  # as SFT does for a prompt token

    out, cache = model.forward(idx, mask)
    loss, ce_cache = cross_entropy_forward(out["logits"], targets, loss_mask)
    model.zero_grad()
    model.backward({"logits": cross_entropy_backward(1.0, ce_cache)}, cache)

    t_out = torch_gpt(params, config, idx, mask, ("logits",))
    ignored = torch.as_tensor(np.where(loss_mask == 1, targets, -100))
    t_loss = F.cross_entropy(t_out["logits"].reshape(-1, 11), ignored.reshape(-1), ignore_index=-100)
    t_loss.backward()

    np.testing.assert_allclose(out["logits"], t_out["logits"].detach().numpy(), **TOL)
    np.testing.assert_allclose(float(loss), t_loss.item(), **TOL)
    assert_same_gradients(model, params)


@pytest.mark.parametrize("padded", [False, True])
def test_value_and_reward_heads_match_torch(padded):
    config, model, params = make_pair(seed=3)
    rng = np.random.default_rng(4)
    b, t = 4, 7
    idx = rng.integers(0, 11, (b, t))
    mask = np.array([[1] * 7, [0, 0] + [1] * 5, [1] * 4 + [0] * 3, [0] * 6 + [1]]) if padded else None
    heads = ("logits", "values", "rewards")
    out, cache = model.forward(idx, mask, heads)
    grads = {k: rng.standard_normal(v.shape) for k, v in out.items()}
    model.zero_grad()
    model.backward(grads, cache)

    t_out = torch_gpt(params, config, idx, mask, heads)
    objective = sum((t_out[k] * torch.as_tensor(grads[k])).sum() for k in heads)
    objective.backward()
    for k in heads:
        np.testing.assert_allclose(out[k], t_out[k].detach().numpy(), err_msg=k, **TOL)
    assert_same_gradients(model, params)


def test_kernels_match_torch():
    rng = np.random.default_rng(5)
    # GELU (tanh)
    x = rng.uniform(-5, 5, (4, 6))
    xt = torch.tensor(x, requires_grad=True)
    dout = rng.standard_normal(x.shape)
    F.gelu(xt, approximate="tanh").backward(torch.as_tensor(dout))
    out, cache = gelu_forward(x)
    np.testing.assert_allclose(out, F.gelu(torch.as_tensor(x), approximate="tanh").numpy(), **TOL)
    np.testing.assert_allclose(gelu_backward(dout, cache), xt.grad.numpy(), **TOL)
    # LayerNorm
    gamma, beta = rng.standard_normal(6), rng.standard_normal(6)
    ts = [torch.tensor(a, requires_grad=True) for a in (x, gamma, beta)]
    F.layer_norm(ts[0], (6,), ts[1], ts[2], eps=1e-5).backward(torch.as_tensor(dout))
    out, cache = layernorm_forward(x, gamma, beta)
    for ours, theirs in zip(layernorm_backward(dout, cache), ts):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), **TOL)
    # attention with padding
    b, t, n_head, hd = 2, 5, 2, 3
    qkv = rng.standard_normal((b, t, 3 * n_head * hd))
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    qkv_t = torch.tensor(qkv, requires_grad=True)
    q, k, v = (z.reshape(b, t, n_head, hd).transpose(1, 2) for z in qkv_t.split(n_head * hd, dim=2))
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=torch_attention_mask(mask, t))
    y = y.transpose(1, 2).reshape(b, t, n_head * hd)
    dout = rng.standard_normal(y.shape)
    y.backward(torch.as_tensor(dout))
    out, cache = attention_forward(qkv, n_head, mask)
    np.testing.assert_allclose(out, y.detach().numpy(), **TOL)
    np.testing.assert_allclose(attention_backward(dout, cache), qkv_t.grad.numpy(), **TOL)


def test_cross_entropy_matches_torch_in_float32_at_extreme_logits():
    rng = np.random.default_rng(6)
    logits = (rng.standard_normal((2, 4, 9)) * 1e4).astype(np.float32)
    targets = rng.integers(0, 9, (2, 4))
    lt = torch.tensor(logits, requires_grad=True)
    t_loss = F.cross_entropy(lt.reshape(-1, 9), torch.as_tensor(targets).reshape(-1))
    t_loss.backward()
    loss, cache = cross_entropy_forward(logits, targets)
    np.testing.assert_allclose(float(loss), t_loss.item(), rtol=1e-6)
    np.testing.assert_allclose(cross_entropy_backward(np.float32(1.0), cache), lt.grad.numpy(),
                               rtol=1e-5, atol=1e-7)
