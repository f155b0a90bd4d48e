"""Tests for TinyGPT and GPTConfig (``alignment_np/nn/gpt.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alignment_np.backend import has_cupy_gpu, to_device, to_numpy
from alignment_np.gradcheck import relative_error
from alignment_np.nn.gpt import GPTConfig, TinyGPT, last_token_index, position_ids
from helpers import make_parameters_generic

SMALL = dict(vocab_size=7, block_size=5, n_layer=2, n_head=2, d_model=8)


def small_model(seed=0, init_std=0.3, **overrides):
    """A float64 model whose every parameter is generic (no gamma = 1, no zero bias):
    a larger init std keeps every gradient well above finite-difference noise."""
    config = GPTConfig(**{**SMALL, "dtype": "float64", "init_std": init_std, **overrides})
    model = TinyGPT(config, seed=seed)
    return make_parameters_generic(model, seed)


def make_mask(rng, b, t, style):
    """(B, T) int mask: none / left / right padding / holes, each row with >= 1 real token."""
    if style == "none":
        return None
    mask = np.ones((b, t), dtype=np.int64)
    for row in range(b):
        n_pad = int(rng.integers(0, t))
        if style == "left":
            mask[row, :n_pad] = 0
        elif style == "right":
            mask[row, t - n_pad :] = 0
        else:
            mask[row] = rng.integers(0, 2, t)
            mask[row, rng.integers(0, t)] = 1
    return mask


def random_grads(rng, outputs):
    return {k: rng.standard_normal(v.shape) for k, v in outputs.items()}


def sampled_gradient_check(model, idx, mask, heads, grads, rng, per_tensor=6, h=1e-6):
    """Central differences on a sample of entries of EVERY parameter tensor.

    Half the sampled entries have a non-zero analytic gradient (so a used
    tensor is really checked), half are uniform (so claimed zeros are checked
    too). Returns {name: relative error}.
    """
    model.zero_grad()
    _, cache = model.forward(idx, mask, heads)
    model.backward(grads, cache)

    def objective():
        out, _ = model.forward(idx, mask, heads)
        return sum(float((out[k] * grads[k]).sum()) for k in grads)

    errors = {}
    for name, p in model.named_parameters():
        flat, grad = p.data.reshape(-1), p.grad.reshape(-1)
        nonzero = np.flatnonzero(grad)
        picks = set(rng.choice(nonzero, min(per_tensor // 2, nonzero.size), replace=False).tolist())
        picks |= set(rng.choice(flat.size, min(per_tensor // 2, flat.size), replace=False).tolist())
        ids = np.array(sorted(picks))
        numeric = np.empty(ids.size)
        for n, i in enumerate(ids):
            old = flat[i]
            flat[i] = old + h
            plus = objective()
            flat[i] = old - h
            minus = objective()
            flat[i] = old
            numeric[n] = (plus - minus) / (2 * h)
        analytic = grad[ids]
        if max(np.abs(analytic).max(), np.abs(numeric).max()) < 1e-9:
            errors[name] = 0.0  # both zero: e.g. a head that was not used
        else:
            errors[name] = relative_error(analytic, numeric)
    return errors


HEAD_SETS = st.lists(st.sampled_from(["logits", "values", "rewards"]), min_size=1, max_size=3,
                     unique=True)


@settings(max_examples=8)
@given(st.integers(0, 2**32 - 1), HEAD_SETS, st.sampled_from(["none", "left", "right", "holes"]))
def test_backward_matches_finite_differences_for_every_parameter(seed, heads, style):
    rng = np.random.default_rng(seed)
    model = small_model(seed=int(rng.integers(0, 1000)))
    b, t = int(rng.integers(1, 4)), int(rng.integers(1, 6))
    idx = rng.integers(0, SMALL["vocab_size"], (b, t))
    mask = make_mask(rng, b, t, style)
    outputs, _ = model.forward(idx, mask, heads)
    grads = random_grads(rng, outputs)
    errors = sampled_gradient_check(model, idx, mask, heads, grads, rng)
    assert len(errors) == len(model.parameters())
    bad = {k: e for k, e in errors.items() if not e <= 1e-6}
    assert not bad, f"gradient check failed for {bad}"


def test_unused_heads_get_exactly_zero_gradient():
    rng = np.random.default_rng(1)
    model = small_model()
    idx = rng.integers(0, 7, (2, 5))
    outputs, cache = model.forward(idx, heads=("values",))
    model.zero_grad()
    model.backward(random_grads(rng, outputs), cache)
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert not np.any(grads["reward_head.w"]) and not np.any(grads["reward_head.b"])
    assert np.any(grads["value_head.w"])
    # without the LM head, wte only gets the embedding's share: rows of unseen tokens stay 0
    unseen = sorted(set(range(7)) - set(idx.ravel().tolist()))
    assert not np.any(grads["wte"][unseen])


def test_tied_head_gradient_is_the_sum_of_both_uses():
    """wte.grad = (embedding share) + (LM-head share); each share computed separately."""
    rng = np.random.default_rng(2)
    model = small_model()
    idx = rng.integers(0, 7, (2, 5))
    outputs, cache = model.forward(idx, heads=("logits",))
    dlogits = rng.standard_normal(outputs["logits"].shape)
    model.zero_grad()
    model.backward({"logits": dlogits}, cache)
    total = model.wte.grad.copy()
    h = cache["h"].reshape(-1, 8)
    head_share = dlogits.reshape(-1, 7).T @ h
    # embedding share: d(sum(logits * dlogits)) through the trunk only, by finite differences
    # of a model whose head matrix is frozen to the current wte
    frozen = model.wte.data.copy()

    def objective(wte):
        model.wte.data = wte
        hh, _ = model.trunk_forward(idx)
        model.wte.data = frozen
        return float(((hh.reshape(-1, 8) @ frozen.T) * dlogits.reshape(-1, 7)).sum())

    emb_share = np.zeros_like(frozen)
    for v in np.unique(idx):
        for j in range(8):
            plus, minus = frozen.copy(), frozen.copy()
            plus[v, j] += 1e-6
            minus[v, j] -= 1e-6
            emb_share[v, j] = (objective(plus) - objective(minus)) / 2e-6
    assert relative_error(total, head_share + emb_share) < 1e-7
    assert relative_error(total, head_share) > 1e-3  # both parts matter
    names = [n for n, _ in model.named_parameters()]
    assert "wte" in names and not any("lm_head" in n for n in names)


def test_padded_rows_match_the_unpadded_row_alone():
    rng = np.random.default_rng(3)
    model = small_model(block_size=8)
    heads = ("logits", "values", "rewards")
    tokens = rng.integers(0, 7, 5)
    alone, _ = model.forward(tokens[None], heads=heads)
    garbage = rng.integers(0, 7, 3)  # padding ids: anything, they must not matter
    idx = np.stack([np.concatenate([garbage, tokens]), np.concatenate([tokens, garbage])])
    mask = np.array([[0] * 3 + [1] * 5, [1] * 5 + [0] * 3])
    padded, _ = model.forward(idx, mask, heads)
    for row, real in ((0, slice(3, 8)), (1, slice(0, 5))):
        np.testing.assert_allclose(padded["logits"][row, real], alone["logits"][0], atol=1e-6, rtol=0)
        np.testing.assert_allclose(padded["values"][row, real], alone["values"][0], atol=1e-6, rtol=0)
        np.testing.assert_allclose(padded["rewards"][row], alone["rewards"][0], atol=1e-6, rtol=0)


def test_rewards_are_read_at_the_last_real_token():
    rng = np.random.default_rng(4)
    model = small_model()
    idx = rng.integers(0, 7, (3, 5))
    mask = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    out, cache = model.forward(idx, mask, ("values", "rewards"))
    h = cache["h"]
    for row, last in enumerate([2, 4, 4]):
        expected = h[row, last] @ model.reward_head.w.data[:, 0] + model.reward_head.b.data[0]
        assert math.isclose(out["rewards"][row], expected, rel_tol=1e-12, abs_tol=1e-12)
    np.testing.assert_array_equal(last_token_index(mask), [2, 4, 4])
    np.testing.assert_array_equal(position_ids(mask), [[0, 1, 2, 2, 2], [0, 0, 1, 2, 3], [0, 1, 2, 3, 4]])


@pytest.mark.parametrize("style", ["none", "left"])
def test_incremental_decoding_matches_full_forward(style):
    rng = np.random.default_rng(5)
    model = small_model(block_size=9)
    b, t = 3, 9
    idx = rng.integers(0, 7, (b, t))
    mask = None if style == "none" else np.array(
        [[0, 0, 0] + [1] * 6, [1] * 9, [0] * 5 + [1] * 4]
    )
    full, _ = model.forward(idx, mask)
    kv = model.init_kv_cache(b, t)
    prompt = 5  # a left-padded prompt in one call, then one token at a time
    steps = [model.forward_incremental(idx[:, :prompt], kv, None if mask is None else mask[:, :prompt])]
    for end in range(prompt + 1, t + 1):
        steps.append(model.forward_incremental(idx[:, end - 1 : end], kv,
                                               None if mask is None else mask[:, :end]))
    assert kv["length"] == t
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full["logits"], atol=1e-6, rtol=0)


def test_two_calls_then_two_backwards_equal_one_concatenated_call(xp):
    """Chosen and rejected may each have their own forward and backward."""
    rng = np.random.default_rng(6)
    model = small_model()
    idx1, idx2 = xp.asarray(rng.integers(0, 7, (2, 5))), xp.asarray(rng.integers(0, 7, (2, 5)))
    m1, m2 = xp.asarray([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]), xp.asarray([[1, 1, 1, 0, 0], [1] * 5])
    heads = ("logits", "rewards")
    o1, c1 = model.forward(idx1, m1, heads)
    o2, c2 = model.forward(idx2, m2, heads)
    g1 = {k: xp.asarray(rng.standard_normal(v.shape)) for k, v in o1.items()}
    g2 = {k: xp.asarray(rng.standard_normal(v.shape)) for k, v in o2.items()}
    model.zero_grad()
    model.backward(g2, c2)
    model.backward(g1, c1)
    separate = {n: to_numpy(p.grad).copy() for n, p in model.named_parameters()}
    model.zero_grad()
    o, c = model.forward(xp.concatenate([idx1, idx2]), xp.concatenate([m1, m2]), heads)
    model.backward({k: xp.concatenate([g1[k], g2[k]]) for k in heads}, c)
    for k in heads:
        np.testing.assert_allclose(to_numpy(o[k]), to_numpy(xp.concatenate([o1[k], o2[k]])),
                                   rtol=1e-12, atol=1e-12)
    for n, p in model.named_parameters():
        np.testing.assert_allclose(to_numpy(p.grad), separate[n], rtol=1e-9, atol=1e-12)


def test_backward_does_not_mutate_grads_or_inputs(xp):
    rng = np.random.default_rng(8)
    model = small_model()
    idx = xp.asarray(rng.integers(0, 7, (2, 5)))
    mask = xp.asarray([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    out, cache = model.forward(idx, mask, ("logits", "values", "rewards"))
    grads = {k: xp.asarray(rng.standard_normal(v.shape)) for k, v in out.items()}
    saved = {k: to_numpy(v).copy() for k, v in {**grads, "idx": idx, "mask": mask, "h": cache["h"]}.items()}
    model.backward(grads, cache)
    for k, v in {**grads, "idx": idx, "mask": mask, "h": cache["h"]}.items():
        np.testing.assert_array_equal(to_numpy(v), saved[k], err_msg=k)
    for p in model.parameters():
        for g in grads.values():
            assert not xp.shares_memory(p.grad, g)


@given(st.integers(0, 2**32 - 1))
def test_logits_do_not_depend_on_later_tokens(seed):
    """Causality of the whole model: changing tokens after t leaves positions <= t alone."""
    rng = np.random.default_rng(seed)
    model = small_model(seed=int(rng.integers(0, 1000)))
    idx = rng.integers(0, 7, (2, 5))
    cut = int(rng.integers(0, 4))
    changed = idx.copy()
    changed[:, cut + 1 :] = rng.integers(0, 7, (2, 4 - cut))
    a, _ = model.forward(idx, heads=("logits", "values"))
    b, _ = model.forward(changed, heads=("logits", "values"))
    np.testing.assert_array_equal(a["logits"][:, : cut + 1], b["logits"][:, : cut + 1])
    np.testing.assert_array_equal(a["values"][:, : cut + 1], b["values"][:, : cut + 1])


def test_float32_model_shapes_dtypes_and_parameter_count(xp):
    config = GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, d_model=8)
    model = TinyGPT(config)
    idx = xp.asarray(np.random.default_rng(7).integers(0, 11, (3, 6)))
    out, cache = model.forward(idx, heads=("logits", "values", "rewards"))
    assert out["logits"].shape == (3, 6, 11) and out["values"].shape == (3, 6)
    assert out["rewards"].shape == (3,)
    assert all(v.dtype == np.float32 for v in out.values())
    model.backward({"logits": xp.ones((3, 6, 11), dtype=xp.float32)}, cache)
    assert all(p.grad.dtype == np.float32 for p in model.parameters())
    d, v, t, layers = 8, 11, 6, 2
    per_block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    expected = v * d + t * d + layers * per_block + 2 * d + 2 * (d + 1)
    assert model.num_parameters() == expected


def test_init_is_reproducible_and_scaled():
    config = GPTConfig(vocab_size=50, block_size=16, n_layer=3, n_head=2, d_model=64)
    a, b, c = TinyGPT(config, seed=0), TinyGPT(config, seed=0), TinyGPT(config, seed=1)
    for (n, p), (_, q), (_, r) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data)
    assert not np.array_equal(a.wte.data, c.wte.data)
    assert abs(float(a.wte.data.std()) - 0.02) < 0.002
    proj = a.blocks[0].attn.w_proj.data
    assert abs(float(proj.std()) - 0.02 / math.sqrt(6)) < 0.002


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"vocab_size": 0}, "vocab_size: expected a positive int, got 0"),
        ({"block_size": -3}, "block_size: expected a positive int, got -3"),
        ({"n_layer": 1.5}, "n_layer: expected a positive int, got 1.5"),
        ({"n_head": 3}, "n_head: must divide d_model=8, got n_head=3"),
        ({"d_model": "8"}, "d_model: expected a positive int, got '8'"),
        ({"dtype": "float16"}, r"dtype: expected one of \['float32', 'float64'\], got 'float16'"),
        ({"init_std": 0.0}, "init_std: expected a finite number > 0, got 0.0"),
    ],
)
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{**SMALL, **overrides})


def test_config_accepts_numpy_dtype_and_normalises_it():
    assert GPTConfig(**SMALL, dtype=np.float64).dtype == "float64"
    with pytest.raises(TypeError, match="config: expected a GPTConfig, got dict"):
        TinyGPT(SMALL)


@pytest.mark.parametrize(
    "idx, mask, heads, match",
    [
        (np.zeros((2, 3)), None, ("logits",), "idx: expected an integer dtype, got float64"),
        (np.zeros(3, np.int64), None, ("logits",), r"idx: expected a non-empty \(B, T\) array, got shape \(3,\)"),
        (np.zeros((2, 0), np.int64), None, ("logits",), "idx: expected a non-empty"),
        (np.array([[0, 7]]), None, ("logits",), r"idx: expected token ids in \[0, 7\), got min 0, max 7"),
        (np.array([[-1, 2]]), None, ("logits",), r"idx: .*got min -1"),
        (np.zeros((1, 6), np.int64), None, ("logits",), "idx: sequence length T=6 exceeds block_size=5"),
        (np.zeros((2, 3), np.int64), np.ones((2, 4)), ("logits",), r"attention_mask: expected shape \(2, 3\)"),
        (np.zeros((2, 3), np.int64), np.array([[1, 2, 1], [1, 1, 1]]), ("logits",), "attention_mask: expected only 0/1"),
        (np.zeros((2, 3), np.int64), np.array([[1, 1, 1], [0, 0, 0]]), ("logits",), r"attention_mask: every row .* rows \[1\]"),
        (np.zeros((2, 3), np.int64), None, ("logits", "policy"), "heads: expected a non-empty subset"),
        (np.zeros((2, 3), np.int64), None, (), "heads: expected a non-empty subset"),
    ],
)
def test_forward_rejects_bad_inputs(idx, mask, heads, match):
    model = TinyGPT(GPTConfig(**SMALL))
    with pytest.raises(ValueError, match=match):
        model.forward(idx, mask, heads)


def test_forward_accepts_lists_bools_and_a_single_head_name():
    model = small_model()
    by_list, _ = model.forward([[1, 2, 3]], [[True, True, False]], "values")
    by_array, _ = model.forward(np.array([[1, 2, 3]]), np.array([[1, 1, 0]]), ("values",))
    np.testing.assert_array_equal(by_list["values"], by_array["values"])


def test_backward_rejects_bad_grads():
    model = TinyGPT(GPTConfig(**SMALL))
    idx = np.zeros((2, 3), np.int64)
    out, cache = model.forward(idx, heads=("logits",))
    for grads, match in [
        ({}, "grads: expected a non-empty dict"),
        ({"values": np.zeros((2, 3))}, r"grads: keys \['values'\] were not computed by forward"),
        ({"logits": np.zeros((2, 3))}, r"grads\['logits'\]: expected shape \(2, 3, 7\), got \(2, 3\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            model.backward(grads, cache)


def test_kv_cache_rejects_bad_use():
    model = TinyGPT(GPTConfig(**SMALL))
    with pytest.raises(ValueError, match="max_len: expected <= block_size=5, got 6"):
        model.init_kv_cache(1, 6)
    with pytest.raises(ValueError, match="batch_size: expected a positive int, got 0"):
        model.init_kv_cache(0, 3)
    kv = model.init_kv_cache(2, 3)
    with pytest.raises(ValueError, match="idx_new: expected batch size 2"):
        model.forward_incremental(np.zeros((1, 1), np.int64), kv)
    with pytest.raises(ValueError, match=r"attention_mask: expected shape \(2, 2\)"):
        model.forward_incremental(np.zeros((2, 2), np.int64), kv, np.ones((2, 1)))
    model.forward_incremental(np.zeros((2, 2), np.int64), kv)
    with pytest.raises(ValueError, match="idx_new: 2 new tokens after 2 exceed the cache's max_len=3"):
        model.forward_incremental(np.zeros((2, 2), np.int64), kv)
    with pytest.raises(ValueError, match="kv_cache: expected the dict returned by init_kv_cache"):
        model.forward_incremental(np.zeros((2, 1), np.int64), {})


def test_kv_cache_layout_keys_transposed(xp):
    """init_kv_cache keeps each layer's keys as (B, H, hd, max_len), so that decoding
    reads them in place, and its values as (B, H, max_len, hd)."""
    model = TinyGPT(GPTConfig(**{**SMALL, "n_layer": 3}))
    kv = model.init_kv_cache(2, 4)
    assert len(kv["k"]) == len(kv["v"]) == 3
    for k, v in zip(kv["k"], kv["v"]):
        assert k.shape == (2, 2, 4, 4) and v.shape == (2, 2, 4, 4)  # hd = 8 / 2 = 4
        assert k.dtype == v.dtype == model.wte.data.dtype and not np.any(to_numpy(k))
    wide = TinyGPT(GPTConfig(vocab_size=7, block_size=9, n_layer=1, n_head=2, d_model=6)).init_kv_cache(1, 9)
    assert wide["k"][0].shape == (1, 2, 3, 9) and wide["v"][0].shape == (1, 2, 9, 3)


def test_incremental_decoding_with_an_all_real_mask_takes_the_unmasked_path():
    rng = np.random.default_rng(12)
    model = small_model(block_size=9)
    idx = rng.integers(0, 7, (2, 9))
    plain, masked = model.init_kv_cache(2, 9), model.init_kv_cache(2, 9)
    a = [model.forward_incremental(idx[:, :4], plain)]
    b = [model.forward_incremental(idx[:, :4], masked, np.ones((2, 4), np.int64))]
    for end in range(5, 10):
        a.append(model.forward_incremental(idx[:, end - 1 : end], plain))
        b.append(model.forward_incremental(idx[:, end - 1 : end], masked, np.ones((2, end), bool)))
    np.testing.assert_array_equal(np.concatenate(b, axis=1), np.concatenate(a, axis=1))


@pytest.mark.parametrize("style", ["none", "left"])
def test_incremental_decoding_with_tiled_attention(style):
    """A prompt longer than a query block: the prefill runs as the tiled training forward."""
    from alignment_np.functional import attention

    rng = np.random.default_rng(13)
    model = small_model(block_size=12)
    idx = rng.integers(0, 7, (2, 12))
    mask = None if style == "none" else np.array([[0] * 3 + [1] * 9, [1] * 12])
    saved = attention.TILE_QUERIES, attention.TILE_ELEMENTS
    attention.TILE_QUERIES, attention.TILE_ELEMENTS = 3, 1
    try:
        full, _ = model.forward(idx, mask)
        kv = model.init_kv_cache(2, 12)
        steps = [model.forward_incremental(idx[:, :8], kv, None if mask is None else mask[:, :8])]
        for end in range(9, 13):
            steps.append(model.forward_incremental(idx[:, end - 1 : end], kv,
                                                   None if mask is None else mask[:, :end]))
    finally:
        attention.TILE_QUERIES, attention.TILE_ELEMENTS = saved
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full["logits"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "other, match",
    [
        (dict(n_layer=3), r"kv_cache: holds 3 layers, this model has n_layer=2"),
        (dict(n_layer=1), r"kv_cache: holds 1 layers, this model has n_layer=2"),
        (dict(n_head=1), r"kv_cache: expected keys \(2, 2, 4, 6\) and values \(2, 2, 6, 4\) per layer"),
        (dict(d_model=16), r"kv_cache: expected keys \(2, 2, 4, 6\) .* got \(2, 2, 8, 6\)"),
        (dict(dtype="float64"), r"kv_cache: expected numpy arrays of dtype float32 \(the model's\), got .*float64"),
    ],
)
def test_kv_cache_of_another_model_is_refused(other, match):
    """A cache made by a model of another shape used to be read silently (wrong logits)."""
    shape = dict(vocab_size=7, block_size=6, n_layer=2, n_head=2, d_model=8, dtype="float32")
    model = TinyGPT(GPTConfig(**shape), seed=0)
    kv = TinyGPT(GPTConfig(**{**shape, **other}), seed=0).init_kv_cache(2, 6)
    with pytest.raises(ValueError, match=match):
        model.forward_incremental(np.zeros((2, 2), np.int64), kv)


def test_kv_cache_with_a_bad_length_or_missing_layers_is_refused():
    model = TinyGPT(GPTConfig(vocab_size=7, block_size=6, n_layer=2, n_head=2, d_model=8), seed=0)
    kv = model.init_kv_cache(1, 4)
    for length in (-1, 5, 1.0, True):
        with pytest.raises(ValueError, match=r"kv_cache: 'length' must be an int in \[0, 4\]"):
            model.forward_incremental(np.zeros((1, 1), np.int64), {**kv, "length": length})
    with pytest.raises(ValueError, match="kv_cache: expected the dict returned by init_kv_cache"):
        model.forward_incremental(np.zeros((1, 1), np.int64), {k: v for k, v in kv.items() if k != "max_len"})
    with pytest.raises(ValueError, match="one array per layer"):
        model.forward_incremental(np.zeros((1, 1), np.int64), {**kv, "v": kv["v"][:1]})


@pytest.mark.cupy
@pytest.mark.skipif(not has_cupy_gpu(), reason="CuPy with a CUDA device is not available")
def test_kv_cache_of_another_backend_is_refused():
    model = TinyGPT(GPTConfig(vocab_size=7, block_size=6, n_layer=2, n_head=2, d_model=8), seed=0)
    kv = model.init_kv_cache(1, 4)
    model.to("cupy")
    with pytest.raises(ValueError, match=r"kv_cache: expected cupy arrays"):
        model.forward_incremental(to_device(np.zeros((1, 1), np.int64), "cupy"), kv)


def test_a_forward_that_keeps_no_cache_gives_the_same_outputs_and_holds_one_block_at_a_time():
    # keep_cache=False is for scoring (a rollout, an evaluation): the same outputs, no cache, and
    # each block's activations dropped as soon as the next block has run, so the workspace's
    # peak in use is about one block's instead of every layer's.
    from alignment_np.functional.workspace import Workspace
    import alignment_np.functional.workspace as ws_module

    # Sizes at which every layer's activations are pooled (>= 64 KiB: MLP hidden 1 MiB, x 256 KiB).
    config = GPTConfig(vocab_size=16, block_size=64, d_model=64, n_layer=4, n_head=2)
    model = TinyGPT(config, seed=0)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 16, size=(16, 64))
    mask = np.ones((16, 64), dtype=bool)
    mask[0, :5] = False  # a left-padded row
    heads = ("logits", "values", "rewards")
    peaks = {}
    saved = ws_module._default
    try:
        for keep in (True, False):
            ws_module._default = Workspace()  # a fresh pool, to read this forward's peak alone
            out, cache = model.forward(idx, mask, heads=heads, keep_cache=keep)
            peaks[keep] = ws_module._default._peak_in_use
            if keep:
                kept = {k: v.copy() for k, v in out.items()}
                assert cache is not None
            else:
                assert cache is None
                for k in heads:
                    np.testing.assert_array_equal(out[k], kept[k])
            del out, cache
    finally:
        ws_module._default = saved
    assert peaks[False] < 0.4 * peaks[True]  # measured 6.4 MB against 20.2 MB: about one block of four
    with pytest.raises(TypeError, match="keep_cache"):
        model.forward(idx, mask, keep_cache="no")
