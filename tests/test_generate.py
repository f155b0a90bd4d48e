"""Tests for sampling with the KV cache (``alignment_np/rl/generate.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignment_np.backend import to_numpy
from alignment_np.functional.stable import log_softmax
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.rl.generate import generate, sample_tokens

V = 11


def make_model(dtype="float64", seed=0, block_size=24):
    # a large init std gives peaked, seed-dependent distributions (more varied samples)
    config = GPTConfig(vocab_size=V, block_size=block_size, n_layer=2, n_head=2, d_model=8, dtype=dtype, init_std=0.5)
    return TinyGPT(config, seed=seed)


MODEL64 = make_model("float64")
MODEL32 = make_model("float32")


def left_padded_prompts(rng, b=4, p=6):
    """(B, P) ids and a left-padding mask; rows have 1..P real tokens (row 0 has all P)."""
    ids = rng.integers(3, V, (b, p))
    mask = np.ones((b, p), dtype=np.int64)
    for row in range(1, b):
        mask[row, : int(rng.integers(0, p))] = 0
    ids[mask == 0] = 0  # pad id
    return ids, mask


def full_forward_logits(model, out):
    """(B, N, V): the logits that scored each new token, from ONE forward over the whole result."""
    p = out["tokens"].shape[1] - out["new_tokens"].shape[1]
    logits = model.forward(out["tokens"], out["attention_mask"])[0]["logits"]
    return logits[:, p - 1 : -1]


# --------------------------------------------------------------------------- cache vs no cache
@given(seed=st.integers(0, 2**31 - 1), temperature=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
       top_k=st.sampled_from([None, 1, 3, V]))
@settings(max_examples=15)
def test_cache_and_no_cache_give_the_same_tokens_and_logprobs_float64(seed, temperature, top_k):
    ids, mask = left_padded_prompts(np.random.default_rng(seed))
    kw = dict(temperature=temperature, top_k=top_k, seed=seed, attention_mask=mask, eos_id=2)
    cached = generate(MODEL64, ids, 12, use_cache=True, **kw)
    full = generate(MODEL64, ids, 12, use_cache=False, **kw)
    for key in ("tokens", "new_tokens", "response_mask", "attention_mask"):
        np.testing.assert_array_equal(cached[key], full[key])
    # The cache multiplies (B, 1, D) rows where the full forward multiplies (B*T, D)
    # matrices: BLAS sums in another order, so log-probs agree to rounding (~1e-15).
    np.testing.assert_allclose(cached["logprobs"], full["logprobs"], rtol=0, atol=1e-12)


def test_cache_and_no_cache_agree_in_float32(rng):
    ids, mask = left_padded_prompts(rng)
    for seed in range(3):
        cached = generate(MODEL32, ids, 12, seed=seed, attention_mask=mask)
        full = generate(MODEL32, ids, 12, seed=seed, attention_mask=mask, use_cache=False)
        np.testing.assert_array_equal(cached["tokens"], full["tokens"])
        assert cached["logprobs"].dtype == np.float32
        np.testing.assert_allclose(cached["logprobs"], full["logprobs"], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- what the log-probs are
@given(seed=st.integers(0, 2**31 - 1), temperature=st.sampled_from([0.0, 0.3, 1.0, 1.7]),
       top_k=st.sampled_from([None, 2, 5]))
@settings(max_examples=15)
def test_logprobs_are_log_softmax_of_the_scaled_full_forward_at_the_sampled_tokens(seed, temperature, top_k):
    ids, mask = left_padded_prompts(np.random.default_rng(seed))
    out = generate(MODEL64, ids, 10, temperature=temperature, top_k=top_k, seed=seed, attention_mask=mask)
    logits = full_forward_logits(MODEL64, out)  # (B, N, V)
    scaled = logits / (temperature if temperature > 0 else 1.0)
    expected = np.take_along_axis(log_softmax(scaled, axis=-1), out["new_tokens"][..., None], -1)[..., 0]
    np.testing.assert_allclose(out["logprobs"], expected, rtol=0, atol=1e-12)
    assert (out["logprobs"] <= 0).all()
    if top_k is not None:  # every sampled token is among the k largest logits of its step
        rank = (logits > np.take_along_axis(logits, out["new_tokens"][..., None], -1)).sum(-1)
        assert (rank < top_k).all()


def test_greedy_is_the_argmax_of_the_full_forward(rng):
    ids, mask = left_padded_prompts(rng)
    out = generate(MODEL64, ids, 14, temperature=0.0, attention_mask=mask)
    logits = full_forward_logits(MODEL64, out)
    np.testing.assert_array_equal(out["new_tokens"], logits.argmax(-1))
    # greedy log-probs are those of the model's own distribution (temperature 1)
    expected = np.take_along_axis(log_softmax(logits, -1), out["new_tokens"][..., None], -1)[..., 0]
    np.testing.assert_allclose(out["logprobs"], expected, atol=1e-12)


def test_top_k_1_is_greedy(rng):
    ids, mask = left_padded_prompts(rng)
    greedy = generate(MODEL64, ids, 14, temperature=0.0, attention_mask=mask)
    for seed in range(3):
        top1 = generate(MODEL64, ids, 14, temperature=1.0, top_k=1, seed=seed, attention_mask=mask)
        np.testing.assert_array_equal(top1["tokens"], greedy["tokens"])
        np.testing.assert_allclose(top1["logprobs"], greedy["logprobs"], atol=1e-12)


def test_left_padded_batch_continues_each_prompt_as_it_would_alone(rng):
    ids, mask = left_padded_prompts(rng, b=5, p=7)
    batch = generate(MODEL64, ids, 10, temperature=0.0, attention_mask=mask)
    for row in range(5):
        alone_ids = ids[row : row + 1, mask[row] == 1]  # the real tokens only, no padding
        alone = generate(MODEL64, alone_ids, 10, temperature=0.0)
        np.testing.assert_array_equal(batch["new_tokens"][row], alone["new_tokens"][0])
        np.testing.assert_allclose(batch["logprobs"][row], alone["logprobs"][0], atol=1e-12)


# --------------------------------------------------------------------------- eos, shapes, seeds
def test_rows_stop_at_eos_then_pad_and_mask(rng):
    ids, mask = left_padded_prompts(rng)
    free = generate(MODEL64, ids, 12, temperature=0.0, attention_mask=mask)
    eos = int(free["new_tokens"][0, 3])  # a token row 0 produces at step 3: use it as eos
    out = generate(MODEL64, ids, 12, temperature=0.0, attention_mask=mask, eos_id=eos, pad_id=0)
    for row in range(ids.shape[0]):
        hits = np.flatnonzero(free["new_tokens"][row] == eos)
        stop = 12 if hits.size == 0 else hits[0] + 1  # tokens kept, eos included
        np.testing.assert_array_equal(out["new_tokens"][row, :stop], free["new_tokens"][row, :stop])
        assert (out["new_tokens"][row, stop:] == 0).all()
        assert out["response_mask"][row].tolist() == [1] * stop + [0] * (12 - stop)
        assert (out["logprobs"][row, stop:] == 0).all()
        assert (out["logprobs"][row, :stop] < 0).all()
    np.testing.assert_array_equal(out["attention_mask"], np.concatenate([mask, out["response_mask"]], 1))
    np.testing.assert_array_equal(out["tokens"][:, ids.shape[1] :], out["new_tokens"])


def test_unpadded_rows_that_stop_early_match_the_full_forward(rng):
    """No padding: the model gets no mask until a row has stopped, then the running mask."""
    ids = rng.integers(3, V, (4, 6))
    free = generate(MODEL64, ids, 12, temperature=0.0)
    eos = int(free["new_tokens"][1, 2])  # row 1 stops within its first three tokens
    stop = int(np.flatnonzero(free["new_tokens"][1] == eos)[0]) + 1  # tokens row 1 keeps, eos included
    seen = []

    class Spy:  # the model, recording the mask it is given at every call
        def __getattr__(self, name):
            return getattr(MODEL64, name)

        def forward_incremental(self, idx_new, kv_cache, attention_mask=None):
            seen.append((kv_cache["length"] + idx_new.shape[1], attention_mask))
            return MODEL64.forward_incremental(idx_new, kv_cache, attention_mask=attention_mask)

    for seed, temperature in ((0, 0.0), (1, 1.0), (2, 1.0)):
        seen.clear()
        kw = dict(temperature=temperature, seed=seed, eos_id=eos)
        cached = generate(Spy(), ids, 12, **kw)
        full = generate(MODEL64, ids, 12, use_cache=False, **kw)
        for key in ("tokens", "new_tokens", "response_mask", "attention_mask"):
            np.testing.assert_array_equal(cached[key], full[key])
        np.testing.assert_allclose(cached["logprobs"], full["logprobs"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(cached["logprobs"], full_forward_logits_logprobs(cached, temperature),
                                   rtol=0, atol=1e-12)
        # every call saw the running mask, or None where that mask was all ones
        for end, mask in seen:
            running = cached["attention_mask"][:, :end]
            if mask is None:
                assert running.all()
            else:
                np.testing.assert_array_equal(mask, running)
        assert seen[0][1] is None  # the prompt: nothing padded
        if temperature == 0:  # greedy: row 1 stops early, and from then on the mask is passed
            assert cached["response_mask"][1].tolist() == [1] * stop + [0] * (12 - stop)
            assert any(mask is not None for _, mask in seen)


def full_forward_logits_logprobs(out, temperature):
    """log_softmax of the full forward (scaled) at the new tokens, 0 after a row's eos."""
    scaled = full_forward_logits(MODEL64, out) / (temperature if temperature > 0 else 1.0)
    logps = np.take_along_axis(log_softmax(scaled, axis=-1), out["new_tokens"][..., None], -1)[..., 0]
    return np.where(out["response_mask"] == 1, logps, 0.0)


def test_output_shapes_dtypes_and_zero_new_tokens(rng):
    ids, mask = left_padded_prompts(rng)
    out = generate(MODEL32, ids, 5, attention_mask=mask)
    assert out["tokens"].shape == (4, 11) and out["tokens"].dtype == np.int64
    assert out["new_tokens"].shape == out["logprobs"].shape == out["response_mask"].shape == (4, 5)
    assert out["attention_mask"].shape == (4, 11)
    empty = generate(MODEL32, ids, 0, attention_mask=mask)
    assert empty["new_tokens"].shape == (4, 0) and empty["logprobs"].shape == (4, 0)
    np.testing.assert_array_equal(empty["tokens"], ids)


def test_same_seed_same_samples_and_a_generator_is_accepted(rng):
    ids, mask = left_padded_prompts(rng)
    a = generate(MODEL64, ids, 12, seed=7, attention_mask=mask)
    b = generate(MODEL64, ids, 12, seed=7, attention_mask=mask)
    c = generate(MODEL64, ids, 12, seed=8, attention_mask=mask)
    g = generate(MODEL64, ids, 12, seed=np.random.default_rng(7), attention_mask=mask)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_array_equal(a["tokens"], g["tokens"])
    assert (a["tokens"] != c["tokens"]).any()


def test_inputs_are_not_modified_nor_aliased(rng):
    ids, mask = left_padded_prompts(rng)
    ids_copy, mask_copy = ids.copy(), mask.copy()
    out = generate(MODEL64, ids, 6, attention_mask=mask, eos_id=2)
    np.testing.assert_array_equal(ids, ids_copy)
    np.testing.assert_array_equal(mask, mask_copy)
    for value in out.values():
        assert not np.shares_memory(value, ids) and not np.shares_memory(value, mask)
    assert not np.shares_memory(out["new_tokens"], out["tokens"])


def test_generate_on_the_active_backend(xp):
    model = make_model("float32")  # created on the active backend
    ids = xp.asarray(np.arange(3, 9).reshape(2, 3))
    out = generate(model, ids, 4, seed=0)
    for value in out.values():
        assert isinstance(value, xp.ndarray)
    np.testing.assert_array_equal(to_numpy(out["tokens"][:, :3]), to_numpy(ids))


# --------------------------------------------------------------------------- the sampling kernel
def test_gumbel_max_samples_follow_the_softmax():
    """Gumbel-max: argmax(log p + g) is distributed as p (4 standard errors on 40000 draws)."""
    rng = np.random.default_rng(0)
    z = np.array([1.0, 0.2, -1.0, 2.0, 0.0])
    n = 40_000
    logits = np.tile(z, (n, 1))
    for temperature, top_k in ((1.0, None), (0.5, None), (2.0, 3)):
        tokens, _ = sample_tokens(logits, temperature, top_k, rng.gumbel(size=logits.shape))
        scaled = z / temperature
        if top_k is not None:
            scaled = np.where(scaled >= np.sort(scaled)[-top_k], scaled, -np.inf)
        p = np.exp(scaled - scaled.max())
        p /= p.sum()
        freq = np.bincount(tokens, minlength=z.size) / n
        np.testing.assert_array_less(np.abs(freq - p), 4 * np.sqrt(p * (1 - p) / n) + 1e-12)


def test_sample_tokens_is_stable_for_extreme_float32_logits():
    logits = np.array([[1e4, -1e4, 0.0, 9990.0], [-1e4, -1e4, -1e4 + 5, -1e4]], dtype=np.float32)
    noise = np.random.default_rng(0).gumbel(size=logits.shape).astype(np.float32)
    for temperature in (0.0, 0.5, 1.0):
        tokens, logprobs = sample_tokens(logits, temperature, None, noise)
        assert logprobs.dtype == np.float32
        assert np.isfinite(logprobs).all() and (logprobs <= 0).all()
        np.testing.assert_array_equal(tokens, [0, 2])  # gaps of 10 and 5 dwarf the noise
        assert abs(float(logprobs[1])) < 0.03  # log(1 / (1 + 3 e^-5)) ~ -0.02


def test_sample_tokens_does_not_modify_its_inputs(rng):
    logits = rng.standard_normal((3, V))
    noise = rng.gumbel(size=(3, V))
    logits_copy, noise_copy = logits.copy(), noise.copy()
    tokens, logprobs = sample_tokens(logits, 0.7, 4, noise)
    np.testing.assert_array_equal(logits, logits_copy)
    np.testing.assert_array_equal(noise, noise_copy)
    assert not np.shares_memory(logprobs, logits)


@pytest.mark.torch
def test_logprobs_match_torch_log_softmax(rng):
    torch = pytest.importorskip("torch")
    ids, mask = left_padded_prompts(rng)
    out = generate(MODEL64, ids, 8, temperature=0.7, seed=3, attention_mask=mask)
    logits = torch.from_numpy(full_forward_logits(MODEL64, out))
    expected = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, torch.from_numpy(out["new_tokens"])[..., None])
    np.testing.assert_allclose(out["logprobs"], expected[..., 0].numpy(), atol=1e-12)


# --------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(max_new_tokens=-1), ValueError, r"max_new_tokens: expected an int >= 0, got -1"),
        (dict(max_new_tokens=1.5), ValueError, r"max_new_tokens: expected an int >= 0"),
        (dict(max_new_tokens=22), ValueError, r"max_new_tokens: prompt length 3 \+ max_new_tokens 22 = 25 "
                                              r"exceeds the model's block_size=24"),
        (dict(temperature=-0.1), ValueError, r"temperature: expected a finite number >= 0"),
        (dict(temperature=float("inf")), ValueError, r"temperature: "),
        (dict(top_k=0), ValueError, r"top_k: expected None or an int in \[1, V=11\], got 0"),
        (dict(top_k=12), ValueError, r"top_k: .*got 12"),
        (dict(eos_id=11), ValueError, r"eos_id: expected a token id in \[0, 11\), got 11"),
        (dict(seed=-1), ValueError, r"seed: expected an int >= 0 or a numpy.random.Generator"),
        (dict(use_cache="yes"), TypeError, r"use_cache: expected a bool"),
        (dict(attention_mask=np.ones((2, 4))), ValueError, r"attention_mask: expected shape \(2, 3\)"),
        (dict(attention_mask=np.array([[1, 1, 0], [1, 1, 1]])), ValueError,
         r"attention_mask: expected LEFT padding.*rows \[0\]"),
        (dict(attention_mask=np.array([[0, 2, 1], [1, 1, 1]])), ValueError, r"attention_mask: expected only 0/1"),
        (dict(prompt_ids=np.array([[1, 2, 11], [1, 2, 3]])), ValueError, r"prompt_ids: expected ids in \[0, 11\)"),
        (dict(prompt_ids=np.zeros((2, 3))), ValueError, r"prompt_ids: expected integer token ids"),
        (dict(prompt_ids=np.zeros(3, dtype=np.int64)), ValueError, r"prompt_ids: expected a non-empty \(B, P\)"),
        (dict(model=object()), TypeError, r"model: expected a TinyGPT"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(kwargs, error, match):
    args = dict(model=MODEL64, prompt_ids=np.array([[3, 4, 5], [6, 7, 8]]), max_new_tokens=2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        generate(**args)
