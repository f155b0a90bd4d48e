"""Tests for the modules in ``alignment_np/nn/layers.py``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignment_np.backend import to_numpy
from alignment_np.gradcheck import check_gradients
from alignment_np.nn.layers import (
    GELU,
    MLP,
    Block,
    CausalSelfAttention,
    Embedding,
    LayerNorm,
    Linear,
)
from alignment_np.nn.module import Module

F64 = "float64"


def spread_rows(rng, shape):
    """(..., D) rows with a spread (a shuffled ramp plus small noise): LayerNorm inputs
    whose variance is bounded away from 0, so finite differences stay well conditioned."""
    d = shape[-1]
    n = int(np.prod(shape[:-1]))
    ramp = np.linspace(-1.0, 1.0, d)
    rows = np.stack([rng.permutation(ramp) for _ in range(n)]) * rng.uniform(0.7, 2.0, (n, 1))
    return (rows + rng.uniform(-0.2, 0.2, (n, d)) + rng.uniform(-2, 2, (n, 1))).reshape(shape)


def randomise_affine(module: Module, rng) -> None:
    """gamma = 1 and beta, biases = 0 at init would hide mistakes in their gradients: make them generic."""
    for name, p in module.named_parameters():
        if name.endswith("gamma"):
            p.data[...] = rng.uniform(0.5, 1.5, p.shape) * rng.choice([-1.0, 1.0], p.shape)
        elif name.endswith("beta") or name.endswith("b") or name.startswith("b_") or ".b_" in name:
            p.data[...] = rng.standard_normal(p.shape) * 0.3


def check_module_gradients(module: Module, x, dout, *extra, input_grad: bool = True):
    """Finite differences (float64) for the input and every parameter of ``module``."""
    module.zero_grad()
    out, cache = module.forward(x, *extra)
    dx = module.backward(dout, cache)
    params = list(module.named_parameters())

    def f(x, *datas):
        saved = [p.data for _, p in params]
        for (_, p), data in zip(params, datas):
            p.data = data
        try:
            return module.forward(x, *extra)[0]
        finally:
            for (_, p), data in zip(params, saved):
                p.data = data

    inputs = [x] + [p.data for _, p in params]
    analytic = [dx] + [p.grad for _, p in params]
    names = ["x"] + [n for n, _ in params]
    wrt = list(range(len(inputs))) if input_grad else list(range(1, len(inputs)))
    if not input_grad:
        analytic, names = analytic[1:], names[1:]
    return check_gradients(f, inputs, analytic, dout=dout, wrt=wrt, tol=1e-6, names=names)


def make_mask(rng, b, t, style):
    mask = np.ones((b, t), dtype=np.int64)
    if style == "left":
        mask[0, : t // 2] = 0
    elif style == "right":
        mask[-1, t - t // 2 :] = 0
    return None if style == "none" else mask


SEEDS = st.integers(0, 2**32 - 1)


@given(SEEDS)
def test_linear_gradients(seed):
    rng = np.random.default_rng(seed)
    layer = Linear(3, 4, std=0.7, rng=rng, dtype=F64)
    randomise_affine(layer, rng)
    check_module_gradients(layer, rng.standard_normal((2, 3, 3)), rng.standard_normal((2, 3, 4)))


@given(SEEDS)
def test_layernorm_gradients(seed):
    rng = np.random.default_rng(seed)
    layer = LayerNorm(5, dtype=F64)
    randomise_affine(layer, rng)
    check_module_gradients(layer, spread_rows(rng, (2, 3, 5)), rng.standard_normal((2, 3, 5)))


@given(SEEDS)
def test_gelu_and_embedding_gradients(seed):
    rng = np.random.default_rng(seed)
    check_module_gradients(GELU(), rng.uniform(-3, 3, (2, 4)), rng.standard_normal((2, 4)))
    emb = Embedding(5, 3, std=1.0, rng=rng, dtype=F64)
    idx = rng.integers(0, 5, (2, 6))
    check_module_gradients(emb, idx, rng.standard_normal((2, 6, 3)), input_grad=False)


@settings(max_examples=10)
@given(SEEDS, st.sampled_from(["none", "left", "right"]))
def test_attention_mlp_and_block_gradients(seed, style):
    rng = np.random.default_rng(seed)
    b, t, d, n_head = 2, 4, 6, 2
    mask = make_mask(rng, b, t, style)
    attn = CausalSelfAttention(d, n_head, std=0.5, rng=rng, dtype=F64)
    randomise_affine(attn, rng)
    check_module_gradients(attn, rng.standard_normal((b, t, d)), rng.standard_normal((b, t, d)), mask)
    mlp = MLP(d, std=0.5, rng=rng, dtype=F64)
    randomise_affine(mlp, rng)
    check_module_gradients(mlp, rng.standard_normal((b, t, d)), rng.standard_normal((b, t, d)))
    block = Block(d, n_head, std=0.3, rng=rng, dtype=F64)
    randomise_affine(block, rng)
    check_module_gradients(block, spread_rows(rng, (b, t, d)), rng.standard_normal((b, t, d)), mask)


def test_two_calls_then_two_backwards_equal_one_call_on_the_concatenation(xp):
    """Caches are returned, not stored: chosen and rejected can each have their own pass."""
    rng = np.random.default_rng(0)
    block = Block(8, 2, std=0.3, rng=rng, dtype=F64)
    randomise_affine(block, rng)
    x1 = xp.asarray(spread_rows(rng, (2, 5, 8)))
    x2 = xp.asarray(spread_rows(rng, (3, 5, 8)))
    m1 = xp.asarray(make_mask(rng, 2, 5, "left"))
    m2 = xp.asarray(make_mask(rng, 3, 5, "right"))
    g1, g2 = xp.asarray(rng.standard_normal((2, 5, 8))), xp.asarray(rng.standard_normal((3, 5, 8)))

    block.zero_grad()
    out1, c1 = block.forward(x1, m1)
    out2, c2 = block.forward(x2, m2)
    dx2 = block.backward(g2, c2)
    dx1 = block.backward(g1, c1)
    separate = {n: to_numpy(p.grad).copy() for n, p in block.named_parameters()}

    block.zero_grad()
    out, c = block.forward(xp.concatenate([x1, x2]), xp.concatenate([m1, m2]))
    dx = block.backward(xp.concatenate([g1, g2]), c)
    np.testing.assert_allclose(to_numpy(out), to_numpy(xp.concatenate([out1, out2])), rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(to_numpy(dx), to_numpy(xp.concatenate([dx1, dx2])), rtol=1e-12,
                               atol=1e-12)
    for name, p in block.named_parameters():
        np.testing.assert_allclose(to_numpy(p.grad), separate[name], rtol=1e-10, atol=1e-12)


def test_backward_accumulates_into_grad():
    rng = np.random.default_rng(1)
    layer = Linear(3, 2, rng=rng, dtype=F64)
    x, g = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    _, cache = layer.forward(x)
    layer.backward(g, cache)
    once = layer.w.grad.copy()
    layer.backward(g, cache)
    np.testing.assert_allclose(layer.w.grad, 2 * once, rtol=1e-15)
    layer.zero_grad()
    assert not np.any(layer.w.grad) and not np.any(layer.b.grad)


def test_block_backward_does_not_mutate_or_alias(xp):
    rng = np.random.default_rng(2)
    block = Block(4, 2, rng=rng, dtype=F64)
    x = xp.asarray(spread_rows(rng, (2, 3, 4)))
    out, cache = block.forward(x)
    dout = xp.asarray(rng.standard_normal(out.shape))
    saved = [to_numpy(a).copy() for a in (x, dout, out)]
    dx = block.backward(dout, cache)
    for a, before in zip((x, dout, out), saved):
        np.testing.assert_array_equal(to_numpy(a), before)
    for a in (x, dout, out):
        assert not xp.shares_memory(dx, a)


def test_parameter_names_shapes_and_init(xp):
    rng = np.random.default_rng(3)
    block = Block(8, 2, std=0.02, proj_std=0.005, rng=rng)
    shapes = {n: tuple(p.shape) for n, p in block.named_parameters()}
    assert shapes == {
        "ln1.gamma": (8,), "ln1.beta": (8,),
        "attn.w_qkv": (8, 24), "attn.b_qkv": (24,), "attn.w_proj": (8, 8), "attn.b_proj": (8,),
        "ln2.gamma": (8,), "ln2.beta": (8,),
        "mlp.fc.w": (8, 32), "mlp.fc.b": (32,), "mlp.proj.w": (32, 8), "mlp.proj.b": (8,),
    }  # fmt: skip
    params = dict(block.named_parameters())
    assert all(p.data.dtype == np.float32 for p in params.values())
    assert all(type(p.data) is type(xp.zeros(1)) for p in params.values())
    np.testing.assert_array_equal(to_numpy(params["ln1.gamma"].data), 1.0)
    np.testing.assert_array_equal(to_numpy(params["attn.b_qkv"].data), 0.0)
    # the residual projection is drawn with the smaller std
    assert float(to_numpy(params["mlp.proj.w"].data).std()) < 0.5 * float(
        to_numpy(params["mlp.fc.w"].data).std()
    )
    assert Linear(3, 2, bias=False).b is None and len(Linear(3, 2, bias=False).parameters()) == 1


def test_same_rng_seed_gives_the_same_weights():
    a, b = MLP(4, rng=7), MLP(4, rng=7)
    for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: Linear(0, 3), "d_in: expected a positive int, got 0"),
        (lambda: Linear(3, 2.5), "d_out: expected a positive int, got 2.5"),
        (lambda: Linear(3, True), "d_out: expected a positive int, got True"),
        (lambda: Linear(3, 2, std=-1.0), "std: expected a finite number > 0, got -1.0"),
        (lambda: Linear(3, 2, dtype="int32"), r"dtype: expected one of \['float32', 'float64'\], got 'int32'"),
        (lambda: Linear(3, 2, dtype="nonsense"), "dtype: expected one of"),
        (lambda: Embedding(-2, 3), "num_embeddings: expected a positive int, got -2"),
        (lambda: LayerNorm(4, eps=0.0), "eps: expected a finite number > 0, got 0.0"),
        (lambda: CausalSelfAttention(6, 4), "n_head: must divide d_model=6, got n_head=4"),
        (lambda: Block(8, 0), "n_head: expected a positive int, got 0"),
        (lambda: MLP(8, proj_std=float("nan")), "proj_std|std: expected a finite number"),
    ],
)
def test_bad_constructor_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_forward_inputs():
    rng = np.random.default_rng(4)
    with pytest.raises(ValueError, match=r"x: expected an array of shape \(\.\.\., 3\), got \(2, 4\)"):
        Linear(3, 2).forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"x: expected an array of shape \(\.\.\., 4\)"):
        LayerNorm(4).forward(np.zeros((2, 5), np.float32))
    attn = CausalSelfAttention(4, 2, rng=rng)
    with pytest.raises(ValueError, match=r"x: expected 3 dims \(B, T, 4\), got shape \(5, 4\)"):
        attn.forward(np.zeros((5, 4), np.float32))
    with pytest.raises(ValueError, match=r"attention_mask: expected shape \(2, 3\) \(B, T\), got \(2, 4\)"):
        attn.forward(np.zeros((2, 3, 4), np.float32), np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"attention_mask: expected shape"):
        Block(4, 2).forward(np.zeros((2, 3, 4), np.float32), np.ones(3))
    emb = Embedding(5, 2)
    with pytest.raises(ValueError, match="idx: expected an integer array, got float64"):
        emb.forward(np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"idx: expected values in \[0, 5\), got min 0, max 5"):
        emb.forward(np.array([[0, 5]]))
    with pytest.raises(ValueError, match=r"idx: .*min -1"):
        emb.forward(np.array([[-1, 2]]))


@pytest.mark.parametrize("padded", [False, True])
def test_block_forward_kv_matches_forward_with_a_mask_or_a_prebuilt_bias(xp, padded):
    """Decoding through a Block with its key/value cache gives the last rows of the full
    forward, whether the padding comes as a mask or as the bias a model builds once."""
    from alignment_np.functional.attention import attention_bias, empty_kv_cache

    rng = np.random.default_rng(14)
    block = Block(8, 2, rng=np.random.default_rng(3), dtype=F64)
    randomise_affine(block, rng)
    x = xp.asarray(spread_rows(rng, (2, 6, 8)))
    mask = xp.asarray([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]) if padded else None
    full = to_numpy(block.forward(x, mask)[0])
    by_mask, by_bias = empty_kv_cache(2, 2, 6, 4, x.dtype, xp), empty_kv_cache(2, 2, 6, 4, x.dtype, xp)
    out_mask, out_bias = [], []
    for start, end in ((0, 4), (4, 5), (5, 6)):
        running = None if mask is None else mask[:, :end]
        bias = None if mask is None else attention_bias(end - start, end, running, x.dtype)
        out_mask.append(to_numpy(block.forward_kv(x[:, start:end], *by_mask, start, running)))
        out_bias.append(to_numpy(block.forward_kv(x[:, start:end], *by_bias, start, bias=bias)))
    np.testing.assert_allclose(np.concatenate(out_mask, axis=1), full, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.concatenate(out_bias, axis=1), np.concatenate(out_mask, axis=1))
