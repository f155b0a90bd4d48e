"""The module contract, checked once for every kernel and module (thinc's table test).

DESIGN.md's contract: a kernel ``name_forward(...) -> (out, cache)`` and
``name_backward(dout, cache) -> grads``; the output's dtype follows the
inputs (float32 stays float32); every gradient has its input's shape and
dtype; backward never mutates its inputs, ``dout`` or the cache, and never
returns a view of them. A module's ``forward`` returns ``(out, cache)`` and
can be called twice before backpropagating each call with its own cache.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from alignment_np.functional import (
    activations,
    attention,
    cross_entropy,
    embedding,
    layernorm,
    linear,
    logprobs,
)
from alignment_np.losses import kl
from alignment_np.nn import layers, reward_mlp, sequence_logprobs
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.functional.stable import log_softmax


def _flat_arrays(obj):
    """Every ndarray inside a (nested) tuple/list/dict cache."""
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _flat_arrays(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _flat_arrays(v)


# Each case: name -> (forward, backward, make(rng, dtype) -> (args, grad_positions)).
# grad_positions: which args the backward's outputs correspond to, in order.
def _linear(rng, dt):
    return [rng.normal(size=(2, 3, 4)).astype(dt), rng.normal(size=(4, 5)).astype(dt), rng.normal(size=5).astype(dt)], [0, 1, 2]


def _embedding(rng, dt):
    return [rng.integers(0, 6, size=(2, 3)), rng.normal(size=(6, 4)).astype(dt)], [1]


def _layernorm(rng, dt):
    return [rng.normal(size=(2, 3, 5)).astype(dt), rng.normal(size=5).astype(dt), rng.normal(size=5).astype(dt)], [0, 1, 2]


def _gelu(rng, dt):
    return [rng.normal(size=(3, 4)).astype(dt)], [0]


def _attention(rng, dt):
    return [rng.normal(size=(2, 4, 12)).astype(dt), 2], [0]


def _cross_entropy(rng, dt):
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    return [rng.normal(size=(2, 3, 5)).astype(dt), rng.integers(0, 5, size=(2, 3)), mask], [0]


def _token_logprobs(rng, dt):
    return [rng.normal(size=(2, 3, 5)).astype(dt), rng.integers(0, 5, size=(2, 3))], [0]


def _sequence_logprobs(rng, dt):
    return [rng.normal(size=(2, 3, 5)).astype(dt), rng.integers(0, 5, size=(2, 3)), np.array([[1, 1, 0], [0, 1, 1]])], [0]


def _reward_mlp(rng, dt):
    return [rng.normal(size=(4, 3)).astype(dt), rng.normal(size=(3, 5)).astype(dt), rng.normal(size=5).astype(dt),
            rng.normal(size=(5, 1)).astype(dt), rng.normal(size=1).astype(dt)], [0, 1, 2, 3, 4]


def _kl(rng, dt):
    return [log_softmax(rng.normal(size=(3, 4))).astype(dt), log_softmax(rng.normal(size=(3, 4))).astype(dt)], [0, 1]


KERNELS = {
    "linear": (linear.linear_forward, linear.linear_backward, _linear),
    "embedding": (embedding.embedding_forward, embedding.embedding_backward, _embedding),
    "layernorm": (layernorm.layernorm_forward, layernorm.layernorm_backward, _layernorm),
    "gelu": (activations.gelu_forward, activations.gelu_backward, _gelu),
    "attention": (attention.attention_forward, attention.attention_backward, _attention),
    "cross_entropy": (cross_entropy.cross_entropy_forward, cross_entropy.cross_entropy_backward, _cross_entropy),
    "token_logprobs": (logprobs.token_logprobs_forward, logprobs.token_logprobs_backward, _token_logprobs),
    "sequence_logprobs": (logprobs.sequence_logprobs_forward, logprobs.sequence_logprobs_backward, _sequence_logprobs),
    "reward_mlp": (reward_mlp.reward_mlp_forward, reward_mlp.reward_mlp_backward, _reward_mlp),
    "kl_divergence": (kl.kl_divergence_forward, kl.kl_divergence_backward, _kl),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_contract(name, dtype):
    forward, backward, make = KERNELS[name]
    rng = np.random.default_rng(0)
    args, grad_positions = make(rng, dtype)
    args_before = copy.deepcopy(args)

    out, cache = forward(*args)
    out = np.asarray(out)
    assert out.dtype == dtype, f"{name}: forward turned {np.dtype(dtype)} into {out.dtype}"
    for a, b in zip(args, args_before):  # forward leaves its inputs alone too
        np.testing.assert_array_equal(a, b)

    dout = rng.normal(size=out.shape).astype(dtype)
    dout_before = dout.copy()
    cache_before = copy.deepcopy(cache)

    grads = backward(dout, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    assert len(grads) == len(grad_positions), f"{name}: {len(grads)} gradients for {len(grad_positions)} inputs"

    np.testing.assert_array_equal(dout, dout_before, err_msg=f"{name}: backward mutated dout")
    for a, b in zip(_flat_arrays(cache), _flat_arrays(cache_before)):
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: backward mutated its cache")
    for a, b in zip(args, args_before):
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: backward mutated an input")

    owned = [a for a in args if isinstance(a, np.ndarray)] + [dout] + list(_flat_arrays(cache))
    for g, pos in zip(grads, grad_positions):
        x = args[pos]
        assert g.shape == x.shape, f"{name}: gradient for input {pos} has shape {g.shape}, input {x.shape}"
        assert g.dtype == dtype, f"{name}: gradient for input {pos} is {g.dtype}, input is {np.dtype(dtype)}"
        for o in owned:
            assert not np.shares_memory(g, o), f"{name}: gradient for input {pos} is a view of an input, dout or the cache"


# Modules: name -> (module factory, input builder). Each is called twice (two
# halves of a batch, as chosen and rejected go through one policy), then
# backpropagated twice with its own cache; the accumulated parameter gradients
# and input gradients must equal those of one call on the whole batch.
def _module_cases():
    kw = dict(dtype="float64")
    return {
        "Linear": (lambda: layers.Linear(4, 3, rng=np.random.default_rng(1), **kw), lambda rng: rng.normal(size=(4, 3, 4))),
        "LayerNorm": (lambda: layers.LayerNorm(5, **kw), lambda rng: rng.normal(size=(4, 3, 5))),
        "GELU": (lambda: layers.GELU(), lambda rng: rng.normal(size=(4, 3, 5))),
        "CausalSelfAttention": (
            lambda: layers.CausalSelfAttention(8, 2, rng=np.random.default_rng(1), **kw),
            lambda rng: rng.normal(size=(4, 3, 8)),
        ),
        "MLP": (lambda: layers.MLP(6, rng=np.random.default_rng(1), **kw), lambda rng: rng.normal(size=(4, 3, 6))),
        "Block": (lambda: layers.Block(8, 2, rng=np.random.default_rng(1), **kw), lambda rng: rng.normal(size=(4, 3, 8))),
        "SequenceLogProbs": (lambda: sequence_logprobs.SequenceLogProbs(), None),
    }


@pytest.mark.parametrize("name", sorted(_module_cases()))
def test_module_called_twice_backpropagates_each_call(name):
    factory, make_x = _module_cases()[name]
    rng = np.random.default_rng(0)
    if name == "SequenceLogProbs":
        logits = rng.normal(size=(4, 3, 5))
        tokens = rng.integers(0, 5, size=(4, 3))
        whole = factory()
        out, cache = whole.forward(logits, tokens)
        d = rng.normal(size=out.shape)
        dx_whole = whole.backward(d, cache)
        halves = factory()
        o1, c1 = halves.forward(logits[:2], tokens[:2])
        o2, c2 = halves.forward(logits[2:], tokens[2:])
        dx2 = halves.backward(d[2:], c2)  # in the other order, on purpose
        dx1 = halves.backward(d[:2], c1)
        np.testing.assert_allclose(np.concatenate([o1, o2]), out, rtol=1e-12)
        np.testing.assert_allclose(np.concatenate([dx1, dx2]), dx_whole, rtol=1e-12)
        return

    x = make_x(rng)
    whole = factory()
    halves = factory()
    halves.load_state_dict(whole.state_dict())
    out, cache = whole.forward(x)
    d = rng.normal(size=out.shape)
    dx_whole = whole.backward(d, cache)

    o1, c1 = halves.forward(x[:2])
    o2, c2 = halves.forward(x[2:])
    dx2 = halves.backward(d[2:], c2)
    dx1 = halves.backward(d[:2], c1)
    np.testing.assert_allclose(np.concatenate([o1, o2]), out, rtol=1e-12)
    np.testing.assert_allclose(np.concatenate([dx1, dx2]), dx_whole, rtol=1e-10, atol=1e-12)
    for (n, p), (_, q) in zip(whole.named_parameters(), halves.named_parameters()):
        np.testing.assert_allclose(q.grad, p.grad, rtol=1e-10, atol=1e-12, err_msg=f"{name}.{n}")

    halves.zero_grad()
    assert all(not np.any(p.grad) for p in halves.parameters())


def test_tinygpt_called_twice_accumulates_like_one_batch():
    cfg = GPTConfig(vocab_size=7, block_size=5, n_layer=2, n_head=2, d_model=8, dtype="float64")
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 7, size=(4, 5))
    mask = np.ones((4, 5), dtype=np.int64)
    mask[1, :2] = 0  # a left-padded row
    whole, halves = TinyGPT(cfg, seed=0), TinyGPT(cfg, seed=0)
    heads = ("logits", "values", "rewards")
    out, cache = whole.forward(idx, mask, heads=heads)
    grads = {k: rng.normal(size=v.shape) for k, v in out.items()}
    whole.backward(grads, cache)
    o1, c1 = halves.forward(idx[:2], mask[:2], heads=heads)
    o2, c2 = halves.forward(idx[2:], mask[2:], heads=heads)
    halves.backward({k: g[2:] for k, g in grads.items()}, c2)
    halves.backward({k: g[:2] for k, g in grads.items()}, c1)
    for k in heads:
        np.testing.assert_allclose(np.concatenate([o1[k], o2[k]]), out[k], rtol=1e-10, atol=1e-12)
    for (n, p), (_, q) in zip(whole.named_parameters(), halves.named_parameters()):
        np.testing.assert_allclose(q.grad, p.grad, rtol=1e-9, atol=1e-12, err_msg=n)


def test_reward_model_explicit_caches_follow_the_contract():
    model = reward_mlp.RewardModel(3, hidden_dim=5, seed=0, dtype=np.float64)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3))
    r, cache = model.score(x)
    assert r.shape == (4, 1)
    d = rng.normal(size=r.shape)
    d0 = d.copy()
    dx = model.backward(d, cache=cache)
    np.testing.assert_array_equal(d, d0)
    assert dx.shape == x.shape and not np.shares_memory(dx, x)
    assert set(model.grads) == {"W1", "b1", "W2", "b2"}


def test_every_public_name_resolves():
    import alignment_np

    for name in alignment_np.__all__:
        assert getattr(alignment_np, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        alignment_np.nonsense  # noqa: B018
