"""Tests for the causal-LM log-prob glue (``alignment_np/trainers/lm_logprobs.py``)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignment_np.backend import to_numpy
from alignment_np.functional.logprobs import compute_log_probs
from alignment_np.gradcheck import check_gradients
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.trainers.lm_logprobs import policy_logps_backward, policy_logps_forward
from helpers import make_parameters_generic

V, BLOCK = 11, 8


def generic_model(seed=0, dtype="float64", n_layer=1, d_model=8, n_head=2):
    """A tiny model whose every parameter is generic (no gamma = 1, no zero bias), so
    that every gradient entry is well above finite-difference noise."""
    config = GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=n_layer, n_head=n_head,
                       d_model=d_model, dtype=dtype, init_std=0.3)
    model = TinyGPT(config, seed=seed)
    return make_parameters_generic(model, seed)


def random_batch(rng, b, t, right_pad=True):
    """ids, attention_mask, loss_mask (B, T) with right padding; each row has >= 2 real
    tokens and counts >= 1 response token (never column 0, never padding)."""
    ids = rng.integers(0, V, (b, t))
    attention = np.zeros((b, t), dtype=np.int64)
    loss = np.zeros((b, t), dtype=np.int64)
    for row in range(b):
        n = int(rng.integers(2, t + 1)) if right_pad else t
        attention[row, :n] = 1
        start = int(rng.integers(1, n))  # the first response token
        loss[row, start:n] = 1
    return ids, attention, loss


def logps_loop(logits, ids, loss_mask, average=False):
    """The slow, obviously correct version: one row, one position at a time, in float64."""
    b_size, t_size, _ = logits.shape
    out = []
    for b in range(b_size):
        total, count = 0.0, 0
        for t in range(1, t_size):  # logits at t - 1 predict token t
            if loss_mask[b, t]:
                z = [float(v) for v in logits[b, t - 1]]
                m = max(z)
                lse = m + math.log(sum(math.exp(v - m) for v in z))
                total += z[int(ids[b, t])] - lse
                count += 1
        out.append(total / count if average else total)
    return np.array(out)


def sampled_entries(model, rng, per_tensor=4):
    """{name: flat indices}: half with a non-zero analytic gradient, half uniform
    (so claimed zeros, e.g. the unused value head, are checked too)."""
    picks = {}
    for name, p in model.named_parameters():
        nonzero = np.flatnonzero(p.grad)
        chosen = set(rng.choice(nonzero, min(per_tensor // 2, nonzero.size), replace=False).tolist())
        chosen |= set(rng.choice(p.data.size, min(per_tensor // 2, p.data.size), replace=False).tolist())
        picks[name] = np.array(sorted(chosen))
    return picks


def check_model_gradient(model, logps_fn, d_logps, rng, per_tensor=4):
    """Finite differences of sum(logps * d_logps) on a few entries of EVERY tensor."""
    params = dict(model.named_parameters())
    for name, ids in sampled_entries(model, rng, per_tensor).items():
        flat = params[name].data.reshape(-1)  # a view: writing into it moves the model
        original = flat[ids].copy()

        def f(values, flat=flat, ids=ids):
            flat[ids] = values
            return logps_fn()

        try:
            check_gradients(f, [original], [params[name].grad.reshape(-1)[ids]], dout=d_logps,
                            tol=1e-6, names=[name])
        finally:
            flat[ids] = original


# ---------------------------------------------------------------- gradients


def collate_layout(ids, attention, loss):
    """The same rows as the collators lay them out: inputs s[:-1], targets s[1:],
    the loss mask aligned with the targets (and -100 where nothing is counted)."""
    targets = np.where(loss[:, 1:] == 1, ids[:, 1:], -100)
    return ids[:, :-1], attention[:, :-1], loss[:, 1:], targets


@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 3),
    t=st.integers(2, BLOCK),
    average=st.booleans(),
    pre_shifted=st.booleans(),
)
def test_gradient_matches_finite_differences(seed, b, t, average, pre_shifted):
    rng = np.random.default_rng(seed)
    model = generic_model(seed % 1000)
    ids, attention, loss = random_batch(rng, b, t)
    targets = None
    if pre_shifted:
        ids, attention, loss, targets = collate_layout(ids, attention, loss)
    d_logps = rng.standard_normal(b)

    def logps():
        return policy_logps_forward(model, ids, attention, loss, average, targets=targets)[0]

    model.zero_grad()
    _, cache = policy_logps_forward(model, ids, attention, loss, average, targets=targets)
    policy_logps_backward(d_logps, cache)
    check_model_gradient(model, logps, d_logps, rng)


def test_backward_accumulates_into_parameter_grads(rng):
    model = generic_model()
    ids, attention, loss = random_batch(rng, 3, BLOCK)
    d_logps = rng.standard_normal(3)
    model.zero_grad()
    _, cache = policy_logps_forward(model, ids, attention, loss)
    policy_logps_backward(d_logps, cache)
    once = {n: p.grad.copy() for n, p in model.named_parameters()}
    policy_logps_backward(d_logps, cache)  # the same cache, backpropagated again
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[name], rtol=1e-12, atol=1e-15, err_msg=name)


# ---------------------------------------------------------------- forward


def test_forward_matches_slow_loop_and_compute_log_probs(xp, rng):
    model = generic_model()
    ids, attention, loss = random_batch(rng, 4, BLOCK)
    ids, attention, loss = xp.asarray(ids), xp.asarray(attention), xp.asarray(loss)
    for average in (False, True):
        logps, _ = policy_logps_forward(model, ids, attention, loss, average)
        logits = to_numpy(model.forward(ids, attention)[0]["logits"])
        expected = logps_loop(logits, to_numpy(ids), to_numpy(loss), average)
        np.testing.assert_allclose(to_numpy(logps), expected, rtol=1e-10)
        via_public = compute_log_probs(xp.asarray(logits), ids, loss, average, shift=True)
        np.testing.assert_allclose(to_numpy(logps), to_numpy(via_public), rtol=1e-12)


@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 4), t=st.integers(2, BLOCK))
def test_pre_shifted_targets_give_the_same_logps(seed, b, t):
    """Scoring s with the shift here, or (s[:-1], s[1:]) as the collators build it, is the same."""
    rng = np.random.default_rng(seed)
    model = generic_model(seed % 7)
    ids, attention, loss = random_batch(rng, b, t)
    shifted_here, _ = policy_logps_forward(model, ids, attention, loss)
    inputs, inputs_mask, target_mask, targets = collate_layout(ids, attention, loss)
    pre_shifted, _ = policy_logps_forward(model, inputs, inputs_mask, target_mask, targets=targets)
    np.testing.assert_allclose(pre_shifted, shifted_here, rtol=1e-10)


@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 4), t=st.integers(2, BLOCK))
def test_logps_are_log_probabilities(seed, b, t):
    """Each logps <= 0; the average is the sum over the counted tokens divided by their number."""
    rng = np.random.default_rng(seed)
    model = generic_model(seed % 7)
    ids, attention, loss = random_batch(rng, b, t)
    total, _ = policy_logps_forward(model, ids, attention, loss)
    mean, _ = policy_logps_forward(model, ids, attention, loss, average=True)
    assert np.all(total <= 0.0)
    np.testing.assert_allclose(mean * loss[:, 1:].sum(axis=1), total, rtol=1e-12)


@given(seed=st.integers(0, 2**31 - 1), b=st.integers(2, 4))
def test_padding_does_not_change_a_rows_logps(seed, b):
    """A row scored alone (no padding) and inside a right-padded batch gives the same logps."""
    rng = np.random.default_rng(seed)
    model = generic_model(seed % 7)
    ids, attention, loss = random_batch(rng, b, BLOCK)
    batch_logps, _ = policy_logps_forward(model, ids, attention, loss)
    for row in range(b):
        n = int(attention[row].sum())
        alone, _ = policy_logps_forward(model, ids[row : row + 1, :n], None, loss[row : row + 1, :n])
        np.testing.assert_allclose(alone[0], batch_logps[row], rtol=1e-10)


def test_only_counted_tokens_matter(rng):
    """Changing a token outside the loss mask changes the context only if it comes
    before a counted token: the last real token of a row is context for nothing."""
    model = generic_model()
    ids, attention, loss = random_batch(rng, 1, BLOCK, right_pad=False)
    loss[:, :] = 0
    loss[0, 3] = 1  # count only token 3: tokens 4.. are not context for it
    before, _ = policy_logps_forward(model, ids, attention, loss)
    changed = ids.copy()
    changed[0, 4:] = (changed[0, 4:] + 1) % V
    after, _ = policy_logps_forward(model, changed, attention, loss)
    assert after[0] == pytest.approx(before[0], rel=1e-12)
    changed[0, 2] = (changed[0, 2] + 1) % V  # a token of the context: the log-prob moves
    moved, _ = policy_logps_forward(model, changed, attention, loss)
    assert moved[0] != pytest.approx(before[0], rel=1e-6)


# ---------------------------------------------------------------- the contract


def _arrays(obj):
    """Every array inside a (nested) cache, with its path."""
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        yield (), obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            for path, a in _arrays(v):
                yield (k,) + path, a
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            for path, a in _arrays(v):
                yield (i,) + path, a


def test_backward_mutates_nothing_and_aliases_nothing(xp, rng):
    model = generic_model()
    ids, attention, loss = (xp.asarray(a) for a in random_batch(rng, 3, BLOCK))
    inputs = [ids.copy(), attention.copy(), loss.copy()]
    _, cache = policy_logps_forward(model, ids, attention, loss)
    d_logps = xp.asarray(rng.standard_normal(3))
    d_copy = d_logps.copy()
    saved = [(path, a.copy()) for path, a in _arrays({k: v for k, v in cache.items() if k != "model"})]
    assert saved, "the cache holds arrays"

    model.zero_grad()
    assert policy_logps_backward(d_logps, cache) is None
    np.testing.assert_array_equal(to_numpy(d_logps), to_numpy(d_copy))
    for (path, before), (_, after) in zip(saved, _arrays({k: v for k, v in cache.items() if k != "model"})):
        np.testing.assert_array_equal(to_numpy(after), to_numpy(before), err_msg=str(path))
    for original, now in zip(inputs, (ids, attention, loss)):
        np.testing.assert_array_equal(to_numpy(now), to_numpy(original))
    # the gradients live in memory of their own: no view of dout, the cache or the weights
    others = [d_logps] + [a for _, a in _arrays(cache["model_cache"])] + [
        a for _, a in _arrays(cache["logps_cache"])
    ]
    for name, p in model.named_parameters():
        if xp is np:
            assert not any(np.shares_memory(p.grad, o) for o in others), name
            assert not np.shares_memory(p.grad, p.data), name


# ---------------------------------------------------------------- extremes


def test_extreme_logits_in_float32_stay_finite():
    """Logits of magnitude ~1e4 in float32: the log-probs and gradients are finite and right."""
    model = generic_model(dtype="float32", d_model=16)
    model.ln_f.gamma.data[...] = 3e3  # h ~ 3e3, logits = h @ wte.T ~ 1e4
    rng = np.random.default_rng(0)
    ids, attention, loss = random_batch(rng, 3, BLOCK)
    logps, cache = policy_logps_forward(model, ids, attention, loss)
    logits = model.forward(ids, attention)[0]["logits"]
    assert float(np.abs(logits).max()) > 1e4  # really extreme
    assert logps.dtype == np.float32 and np.all(np.isfinite(logps)) and np.all(logps <= 0)
    expected = logps_loop(logits.astype(np.float64), ids, loss)
    # float32 log-softmax at |z| ~ 1e4 is exact to about eps * |z| per token
    np.testing.assert_allclose(logps, expected, rtol=1e-5, atol=1e4 * 1e-6 * BLOCK)
    model.zero_grad()
    policy_logps_backward(rng.standard_normal(3).astype(np.float32), cache)
    for name, p in model.named_parameters():
        assert np.all(np.isfinite(p.grad)), name


# ---------------------------------------------------------------- bad inputs


@pytest.fixture
def good():
    model = generic_model()
    ids, attention, loss = random_batch(np.random.default_rng(0), 2, 6)
    attention[:, -1] = 0  # the last column is padding in both rows
    loss[:, -1] = 0
    loss[:, 2] = 1
    return model, ids, attention, loss


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda m, i, a, l: ("model", i, a, l, False), TypeError, "model: expected a causal LM"),
        (lambda m, i, a, l: (m, i[0], a, l, False), ValueError, r"input_ids: expected a \(B, T\)"),
        (lambda m, i, a, l: (m, i.astype(float), a, l, False), TypeError, "input_ids: expected integer"),
        (lambda m, i, a, l: (m, i[:, :1], a[:, :1], l[:, :1], False), ValueError, "T >= 2"),
        (lambda m, i, a, l: (m, i, a, None, False), ValueError, "loss_mask: expected a"),
        (lambda m, i, a, l: (m, i, a, l[:, :-1], False), ValueError, r"loss_mask: expected shape \(B, T\)"),
        (lambda m, i, a, l: (m, i, a, l * 2, False), ValueError, "loss_mask: expected only 0/1"),
        (lambda m, i, a, l: (m, i, a[:1], l, False), ValueError, "attention_mask: expected shape"),
        (lambda m, i, a, l: (m, i, a, l, 1), TypeError, "average: expected a bool"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(good, change, error, match):
    with pytest.raises(error, match=match):
        policy_logps_forward(*change(*good))


def test_loss_mask_counting_the_first_token_raises(good):
    model, ids, attention, loss = good
    loss[1, 0] = 1
    with pytest.raises(ValueError, match=r"column 0 must be 0 .* rows \[1\]"):
        policy_logps_forward(model, ids, attention, loss)


def test_loss_mask_counting_padding_raises(good):
    model, ids, attention, loss = good
    loss[0, -1] = 1  # the last column is padding
    with pytest.raises(ValueError, match="counts a padding position .* row 0, step 5"):
        policy_logps_forward(model, ids, attention, loss)


def test_average_with_an_empty_row_raises(good):
    model, ids, attention, loss = good
    loss[1] = 0
    with pytest.raises(ValueError, match=r"average=True .* rows \[1\] count none"):
        policy_logps_forward(model, ids, attention, loss, average=True)
    policy_logps_forward(model, ids, attention, loss)  # a sum over nothing is fine: 0


def test_out_of_range_ids_raise(good):
    model, ids, attention, loss = good
    ids[0, 1] = V
    with pytest.raises(ValueError, match="token ids in"):
        policy_logps_forward(model, ids, attention, loss)


def test_bad_targets_raise(good):
    model, ids, attention, loss = good
    targets = np.roll(ids, -1, axis=1)
    with pytest.raises(ValueError, match=r"targets: expected shape \(B, T\) = \(2, 6\) like input_ids, got \(2, 5\)"):
        policy_logps_forward(model, ids, attention, loss, targets=targets[:, 1:])
    with pytest.raises(TypeError, match="targets: expected integer token ids, got dtype float64"):
        policy_logps_forward(model, ids, attention, loss, targets=targets.astype(float))
    targets[1, 2] = -100  # counted by loss_mask (column 2 counts in both rows)
    with pytest.raises(ValueError, match=r"targets: expected ids in \[0, 11\) wherever loss_mask counts them, got -100 at row 1, step 2"):
        policy_logps_forward(model, ids, attention, loss, targets=targets)
    loss[:, 0] = 1  # with targets, column 0 is a real prediction (of targets[:, 0])
    targets[1, 2] = 3
    targets[:, -1] = -100  # padding, not counted: allowed
    policy_logps_forward(model, ids, attention, loss, targets=targets)


def test_bad_d_logps_shape_raises(good):
    model, ids, attention, loss = good
    _, cache = policy_logps_forward(model, ids, attention, loss)
    with pytest.raises(ValueError, match=r"d_logps: expected shape \(B,\) = \(2,\), got \(3,\)"):
        policy_logps_backward(np.ones(3), cache)


# ---------------------------------------------------------------- PyTorch oracle


def _torch_gpt_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "torch_gpt.py"
    spec = importlib.util.spec_from_file_location("bench_torch_gpt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.torch
def test_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    tg = _torch_gpt_module()
    model = generic_model(n_layer=2)
    rng = np.random.default_rng(3)
    ids, _, loss = random_batch(rng, 3, BLOCK, right_pad=False)  # full rows: no padding
    d_logps = rng.standard_normal(3)

    model.zero_grad()
    logps, cache = policy_logps_forward(model, ids, None, loss)
    policy_logps_backward(d_logps, cache)

    reference = tg.TorchGPT.from_numpy(model)
    logits = reference(torch.from_numpy(ids))
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    picked = logp.gather(-1, torch.from_numpy(ids[:, 1:, None]))[..., 0]
    torch_logps = (picked * torch.from_numpy(loss[:, 1:]).double()).sum(-1)
    (torch_logps * torch.from_numpy(d_logps)).sum().backward()

    np.testing.assert_allclose(logps, torch_logps.detach().numpy(), rtol=1e-10)
    params = dict(model.named_parameters())
    for name, p in reference.named_parameters():
        np.testing.assert_allclose(
            params[tg.numpy_name(name)].grad, tg.numpy_grad(name, p.grad), rtol=1e-8, atol=1e-12,
            err_msg=name,
        )


# ================================================================ per-token log-probs of a response
from alignment_np.trainers.lm_logprobs import response_backward, response_forward  # noqa: E402

P_MAX, N_MAX = 4, 4  # prompt and response columns of the generated layouts (P + N <= BLOCK)


def response_layout(rng, b, p, n):
    """tokens, attention_mask (B, P + N) and response_mask (B, N) as ``generate`` lays them out:
    a LEFT-padded prompt (>= 1 real token), then a response of 1..N tokens, padding after it."""
    tokens = rng.integers(1, V, (b, p + n))
    attention = np.zeros((b, p + n), dtype=np.int64)
    response = np.zeros((b, n), dtype=np.int64)
    for row in range(b):
        real_prompt = int(rng.integers(1, p + 1))
        attention[row, p - real_prompt : p] = 1
        length = int(rng.integers(1, n + 1))
        attention[row, p : p + length] = 1
        response[row, :length] = 1
        tokens[row, : p - real_prompt] = 0  # pad id
        tokens[row, p + length :] = 0
    return tokens, attention, response


def response_loop(model, tokens, attention, p, temperature):
    """Slow and obviously correct: each row alone, its padding dropped, one position at a time."""
    b, t = tokens.shape
    logps, values = np.zeros((b, t - p)), np.zeros((b, t - p))
    for row in range(b):
        for i in range(t - p):
            if not attention[row, p + i]:
                continue
            prefix = tokens[row, : p + i][attention[row, : p + i] == 1][None]  # real tokens before y_i
            out, _ = model.forward(prefix, None, heads=("logits", "values"))
            z = [float(v) / temperature for v in out["logits"][0, -1]]
            m = max(z)
            logps[row, i] = z[int(tokens[row, p + i])] - (m + math.log(sum(math.exp(v - m) for v in z)))
            values[row, i] = float(out["values"][0, -1])
    return logps, values


@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 3), p=st.integers(1, P_MAX), n=st.integers(1, N_MAX),
       temperature=st.floats(0.5, 2.0))
def test_response_forward_matches_a_slow_loop(seed, b, p, n, temperature):
    rng = np.random.default_rng(seed)
    model = generic_model(seed % 7)
    tokens, attention, response = response_layout(rng, b, p, n)
    out, _ = response_forward(model, tokens, attention, p, temperature, ("logits", "values"), response)
    logps, values = response_loop(model, tokens, attention, p, temperature)
    np.testing.assert_allclose(out["logps"], logps, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["values"], values, rtol=1e-10, atol=1e-12)
    assert np.all(out["logps"] <= 0) and np.all(out["logps"][response == 0] == 0)
    assert np.all(out["values"][response == 0] == 0)
    # the scaled logits are the model's own, divided by the temperature
    logits = model.forward(tokens[:, :-1], attention[:, :-1])[0]["logits"][:, p - 1:]
    np.testing.assert_allclose(out["logits"], logits / temperature, rtol=1e-12)


def test_response_logps_equal_the_samplers_log_probs():
    """generate() scores each token inside the KV-cached loop; one full forward gives the same numbers."""
    from alignment_np.rl.generate import generate

    rng = np.random.default_rng(4)
    model = generic_model(2)
    prompt = rng.integers(1, V, (3, 3))
    mask = np.array([[0, 1, 1], [1, 1, 1], [0, 0, 1]])
    prompt[mask == 0] = 0
    for temperature in (0.7, 1.0, 1.6):
        gen = generate(model, prompt, 5, temperature=temperature, seed=1, attention_mask=mask, eos_id=2)
        out, _ = response_forward(model, gen["tokens"], gen["attention_mask"], 3, temperature,
                                  response_mask=gen["response_mask"])
        np.testing.assert_allclose(out["logps"], gen["logprobs"], rtol=1e-10, atol=1e-12)


@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 3), p=st.integers(1, P_MAX), n=st.integers(1, N_MAX),
       temperature=st.floats(0.5, 2.0), with_mask=st.booleans())
@settings(max_examples=10)  # each example runs ~1000 forwards for the finite differences
def test_response_backward_matches_finite_differences(seed, b, p, n, temperature, with_mask):
    """d/dtheta of sum(logps * g) + sum(scaled logits * G) + sum(values * gv), through the model, in float64."""
    rng = np.random.default_rng(seed)
    model = generic_model(seed % 1000)
    tokens, attention, response = response_layout(rng, b, p, n)
    mask = response if with_mask else None
    if not with_mask:
        attention[:] = 1  # every response column real
    g_logps, g_values = rng.standard_normal((2, b, n))
    g_logits = rng.standard_normal((b, n, V))
    heads = ("logits", "values")

    def total():
        out, _ = response_forward(model, tokens, attention, p, temperature, heads, mask)
        return (out["logps"] * g_logps).sum() + (out["logits"] * g_logits).sum() + (out["values"] * g_values).sum()

    model.zero_grad()
    _, cache = response_forward(model, tokens, attention, p, temperature, heads, mask)
    response_backward(cache, d_logps=g_logps, d_logits=g_logits, d_values=g_values)
    check_model_gradient(model, total, None, rng)


def test_response_backward_each_head_alone_adds_up(rng):
    """Backpropagating the three upstream gradients one at a time accumulates the same total."""
    model = generic_model()
    tokens, attention, response = response_layout(rng, 3, 3, 4)
    g_logps, g_values = rng.standard_normal((2, 3, 4))
    g_logits = rng.standard_normal((3, 4, V))
    model.zero_grad()
    _, cache = response_forward(model, tokens, attention, 3, 0.8, ("logits", "values"), response)
    response_backward(cache, d_logps=g_logps, d_logits=g_logits, d_values=g_values)
    together = {name: p.grad.copy() for name, p in model.named_parameters()}
    model.zero_grad()
    for kwargs in ({"d_logps": g_logps}, {"d_logits": g_logits}, {"d_values": g_values}):
        response_backward(cache, **kwargs)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, together[name], rtol=1e-10, atol=1e-14, err_msg=name)


def test_response_backward_mutates_nothing_and_aliases_nothing(rng):
    model = generic_model()
    tokens, attention, response = response_layout(rng, 3, 3, 4)
    inputs = [tokens.copy(), attention.copy(), response.copy()]
    _, cache = response_forward(model, tokens, attention, 3, 0.9, ("logits", "values"), response)
    g_logps, g_values = rng.standard_normal((2, 3, 4))
    g_logits = rng.standard_normal((3, 4, V))
    upstream = [g_logps.copy(), g_values.copy(), g_logits.copy()]
    saved = [(path, a.copy()) for path, a in _arrays({k: v for k, v in cache.items() if k != "model"})]
    model.zero_grad()
    assert response_backward(cache, d_logps=g_logps, d_logits=g_logits, d_values=g_values) is None
    for before, now in zip(upstream, (g_logps, g_values, g_logits)):
        np.testing.assert_array_equal(now, before)
    for (path, before), (_, after) in zip(saved, _arrays({k: v for k, v in cache.items() if k != "model"})):
        np.testing.assert_array_equal(after, before, err_msg=str(path))
    for before, now in zip(inputs, (tokens, attention, response)):
        np.testing.assert_array_equal(now, before)
    others = [g_logps, g_values, g_logits] + [a for _, a in _arrays({k: v for k, v in cache.items() if k != "model"})]
    for name, p in model.named_parameters():
        assert not any(np.shares_memory(p.grad, o) for o in others), name


def test_response_forward_float32_stays_float32(rng):
    model = generic_model(dtype="float32")
    tokens, attention, response = response_layout(rng, 2, 3, 4)
    out, cache = response_forward(model, tokens, attention, 3, 0.7, ("logits", "values"), response)
    assert all(v.dtype == np.float32 for v in out.values())
    model.zero_grad()
    response_backward(cache, d_logps=np.ones((2, 4), np.float32), d_values=np.ones((2, 4), np.float32))
    assert all(p.grad.dtype == np.float32 for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"prompt_length": 0}, ValueError, "prompt_length: expected an int in"),
        ({"prompt_length": 7}, ValueError, "prompt_length: expected an int in"),
        ({"temperature": 0.0}, ValueError, "temperature: expected a finite number > 0"),
        ({"temperature": float("nan")}, ValueError, "temperature"),
        ({"heads": ("logits", "rewards")}, ValueError, "heads: expected a non-empty subset"),
        ({"heads": ()}, ValueError, "heads: expected a non-empty subset"),
        ({"response_mask": np.ones((2, 3))}, ValueError, r"response_mask: expected shape \(B, T\) = \(2, 4\)"),
        ({"attention_mask": np.full((2, 7), 2)}, ValueError, "attention_mask: expected only 0/1"),
        ({"tokens": np.zeros((2, 7))}, TypeError, "tokens: expected integer token ids"),
        ({"tokens": np.zeros(7, dtype=np.int64)}, ValueError, r"tokens: expected a \(B, P \+ N\) array"),
        ({"model": "gpt"}, TypeError, "model: expected a causal LM"),
    ],
)
def test_response_forward_bad_inputs_raise_naming_the_argument(kwargs, error, match):
    rng = np.random.default_rng(0)
    tokens, attention, response = response_layout(rng, 2, 3, 4)
    args = {"model": generic_model(), "tokens": tokens, "attention_mask": attention, "prompt_length": 3,
            "temperature": 1.0, "heads": ("logits",), "response_mask": response}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        response_forward(**args)


def test_response_backward_refuses_gradients_it_cannot_take(rng):
    model = generic_model()
    tokens, attention, response = response_layout(rng, 2, 3, 4)
    _, cache = response_forward(model, tokens, attention, 3, 1.0, ("logits",), response)
    with pytest.raises(ValueError, match="expected at least one of"):
        response_backward(cache)
    with pytest.raises(ValueError, match="d_values: the forward computed heads"):
        response_backward(cache, d_values=np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"d_logps: expected shape \(2, 4\), got \(2, 3\)"):
        response_backward(cache, d_logps=np.ones((2, 3)))
    _, cache = response_forward(model, tokens, attention, 3, 1.0, ("values",), response)
    with pytest.raises(ValueError, match="d_logps / d_logits: the forward computed heads"):
        response_backward(cache, d_logps=np.ones((2, 4)))


@pytest.mark.torch
def test_response_logps_match_torch_autograd():
    torch = pytest.importorskip("torch")
    tg = _torch_gpt_module()
    model = generic_model(n_layer=2)
    rng = np.random.default_rng(5)
    p, n, temperature = 3, 4, 0.7
    tokens = rng.integers(1, V, (3, p + n))  # no padding: TorchGPT has no attention mask
    g = rng.standard_normal((3, n))
    model.zero_grad()
    out, cache = response_forward(model, tokens, None, p, temperature)
    response_backward(cache, d_logps=g)

    reference = tg.TorchGPT.from_numpy(model)
    logits = reference(torch.from_numpy(tokens[:, :-1]))[:, p - 1:] / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(-1, torch.from_numpy(tokens[:, p:, None]))[..., 0]
    (logp * torch.from_numpy(g)).sum().backward()
    np.testing.assert_allclose(out["logps"], logp.detach().numpy(), rtol=1e-10)
    params = dict(model.named_parameters())
    for name, prm in reference.named_parameters():
        np.testing.assert_allclose(params[tg.numpy_name(name)].grad, tg.numpy_grad(name, prm.grad),
                                   rtol=1e-8, atol=1e-12, err_msg=name)
