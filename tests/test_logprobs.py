"""Tests for alignment_np.functional.logprobs: token and sequence log-probabilities."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from alignment_np.backend import to_numpy
from alignment_np.functional.logprobs import (
    compute_log_probs,
    sequence_logprobs_backward,
    sequence_logprobs_forward,
    shift_for_causal_lm,
    shift_for_causal_lm_backward,
    token_logprobs_backward,
    token_logprobs_forward,
)
from alignment_np.gradcheck import check_gradients
from alignment_np.nn.sequence_logprobs import SequenceLogProbs

# --------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------

GRAD_SCALE = 3.0


@st.composite
def cases(draw, masked=True, average=False, min_T=1, scale=8.0):
    """(logits (B,T,V) float64, tokens (B,T) int64, mask (B,T) bool or None, dout (B,)).

    Gradient checks use scale=GRAD_SCALE: with logits spread by at most 2*3, a
    near-certain token still has a gradient 1 - p >= e^-6 / (1 + e^-6) ~ 2e-3,
    far above what central differences resolve (~eps / h = 1e-10). Saturated
    rows (spread 20: gradient 2e-9) are the finite-difference analogue of a kink.
    """
    B = draw(st.integers(1, 3))
    T = draw(st.integers(min_T, 4))
    V = draw(st.integers(2, 6))
    finite = dict(allow_nan=False, allow_infinity=False)
    logits = draw(hnp.arrays(np.float64, (B, T, V), elements=st.floats(-scale, scale, **finite)))
    tokens = draw(hnp.arrays(np.int64, (B, T), elements=st.integers(0, V - 1)))
    mask = None
    if masked:
        mask = draw(hnp.arrays(np.bool_, (B, T)))
        if average:  # every row must count a token: switch one on per row
            for b in range(B):
                mask[b, draw(st.integers(0, T - 1))] = True
    dout = draw(hnp.arrays(np.float64, (B,), elements=st.floats(-2, 2, **finite)))
    return logits, tokens, mask, dout


# --------------------------------------------------------------------------
# The slow, obviously correct reference
# --------------------------------------------------------------------------


def loop_sequence_logprobs(logits, tokens, mask=None, average=False):
    """Per sequence: for each counted position, logit of the token minus logsumexp of the row."""
    B, T, V = logits.shape
    out = np.zeros(B)
    for b in range(B):
        total, count = 0.0, 0
        for t in range(T):
            if mask is not None and not mask[b, t]:
                continue
            row = [float(x) for x in logits[b, t]]
            m = max(row)
            lse = m + math.log(sum(math.exp(x - m) for x in row))
            total += row[int(tokens[b, t])] - lse
            count += 1
        out[b] = total / count if average else total
    return out


def loop_sequence_logprobs_backward(dout, logits, tokens, mask=None, average=False):
    """d/dlogits[b,t,v] of sum_b dout[b] * seq_logps[b] = w[b,t] * dout[b] * (onehot - softmax)."""
    B, T, V = logits.shape
    grad = np.zeros((B, T, V))
    for b in range(B):
        counted = [t for t in range(T) if mask is None or mask[b, t]]
        for t in counted:
            row = [float(x) for x in logits[b, t]]
            m = max(row)
            z = sum(math.exp(x - m) for x in row)
            g = dout[b] / (len(counted) if average else 1)
            for v in range(V):
                p = math.exp(row[v] - m) / z
                grad[b, t, v] = g * ((1.0 if v == tokens[b, t] else 0.0) - p)
    return grad


# --------------------------------------------------------------------------
# Gradients against finite differences (float64)
# --------------------------------------------------------------------------


@given(cases(masked=False, scale=GRAD_SCALE), st.data())
def test_token_logprobs_gradient(case, data):
    logits, tokens, _, _ = case
    dout = data.draw(hnp.arrays(np.float64, tokens.shape, elements=st.floats(-2, 2)))
    _, cache = token_logprobs_forward(logits, tokens)
    analytic = token_logprobs_backward(dout, cache)
    check_gradients(
        lambda z: token_logprobs_forward(z, tokens)[0], [logits], [analytic], dout=dout, tol=1e-6
    )


@given(cases(masked=True, scale=GRAD_SCALE), st.booleans())
def test_sequence_logprobs_gradient_with_mask(case, use_mask):
    logits, tokens, mask, dout = case
    mask = mask if use_mask else None
    _, cache = sequence_logprobs_forward(logits, tokens, mask)
    analytic = sequence_logprobs_backward(dout, cache)
    check_gradients(
        lambda z: sequence_logprobs_forward(z, tokens, mask)[0], [logits], [analytic], dout=dout
    )


@given(cases(masked=True, average=True, scale=GRAD_SCALE))
def test_sequence_logprobs_gradient_average(case):
    logits, tokens, mask, dout = case
    _, cache = sequence_logprobs_forward(logits, tokens, mask, average=True)
    analytic = sequence_logprobs_backward(dout, cache)
    check_gradients(
        lambda z: sequence_logprobs_forward(z, tokens, mask, average=True)[0],
        [logits],
        [analytic],
        dout=dout,
    )


@given(cases(masked=True, min_T=2, scale=GRAD_SCALE), st.booleans())
def test_module_with_shift_gradient(case, average):
    logits, tokens, mask, dout = case
    mask[:, 1] = True  # the shifted mask (mask[:, 1:]) must count a token per row
    module = SequenceLogProbs(average=average, shift=True)
    _, cache = module.forward(logits, tokens, mask)
    analytic = module.backward(dout, cache)
    assert analytic.shape == logits.shape
    np.testing.assert_array_equal(analytic[:, -1], 0.0)  # the last logits predict nothing
    check_gradients(lambda z: module.forward(z, tokens, mask)[0], [logits], [analytic], dout=dout)


@given(cases(masked=False, min_T=2))
def test_shift_backward_is_the_adjoint_of_the_slice(case):
    logits, tokens, _, _ = case
    rng = np.random.default_rng(0)
    d_shifted = rng.normal(size=(logits.shape[0], logits.shape[1] - 1, logits.shape[2]))
    analytic = shift_for_causal_lm_backward(d_shifted)
    check_gradients(
        lambda z: shift_for_causal_lm(z, tokens)[0], [logits], [analytic], dout=d_shifted
    )


# --------------------------------------------------------------------------
# The vectorised kernels against the loops
# --------------------------------------------------------------------------


@given(cases(masked=True, average=True), st.booleans(), st.booleans())
def test_vectorised_matches_loop(case, use_mask, average):
    logits, tokens, mask, dout = case
    mask = mask if use_mask else None
    seq, cache = sequence_logprobs_forward(logits, tokens, mask, average)
    expected_seq = loop_sequence_logprobs(logits, tokens, mask, average)
    np.testing.assert_allclose(seq, expected_seq, rtol=1e-12, atol=1e-12)
    grad = sequence_logprobs_backward(dout, cache)
    expected = loop_sequence_logprobs_backward(dout, logits, tokens, mask, average)
    np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-12)


def test_shift_matches_manual_slice(rng):
    logits = rng.normal(size=(2, 5, 4))
    tokens = rng.integers(0, 4, size=(2, 5))
    mask = rng.integers(0, 2, size=(2, 5))
    got = compute_log_probs(logits, tokens, mask, shift=True)
    expected = loop_sequence_logprobs(logits[:, :-1], tokens[:, 1:], mask[:, 1:])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------
# What the math promises
# --------------------------------------------------------------------------


@given(cases(masked=True, average=True, scale=1e3), st.booleans())
def test_log_probs_never_positive(case, average):
    logits, tokens, mask, _ = case
    token_logps, _ = token_logprobs_forward(logits, tokens)
    assert np.all(token_logps <= 0.0)
    assert np.all(compute_log_probs(logits, tokens, mask, average=average) <= 0.0)


@given(cases(masked=False))
def test_probabilities_over_the_vocabulary_sum_to_one(case):
    logits, _, _, _ = case
    B, T, V = logits.shape
    total = np.zeros((B, T))
    for v in range(V):  # score every possible token at every position
        token_logps, _ = token_logprobs_forward(logits, np.full((B, T), v))
        total += np.exp(token_logps)
    np.testing.assert_allclose(total, 1.0, rtol=1e-12)


@given(cases(masked=True, average=True))
def test_average_is_sum_over_count_and_masked_logits_do_not_matter(case):
    logits, tokens, mask, _ = case
    summed = compute_log_probs(logits, tokens, mask)
    averaged = compute_log_probs(logits, tokens, mask, average=True)
    np.testing.assert_allclose(averaged, summed / mask.sum(axis=1), rtol=1e-12)
    # Changing the logits at masked-out positions changes nothing.
    moved = logits + 5.0 * (~mask)[..., None]
    np.testing.assert_allclose(compute_log_probs(moved, tokens, mask), summed, rtol=1e-12, atol=1e-12)


def test_near_certain_token_is_accurate_far_from_zero():
    """Logits around 1e6 (float64): the winner's log-prob is -log1p(e^-10), not 0 +- 1e-10."""
    offset, gap = 1e6, 10.0
    logits = np.array([[[offset, offset - gap]]])
    got = compute_log_probs(logits, np.array([[0]]))[0]
    np.testing.assert_allclose(got, -math.log1p(math.exp(-gap)), rtol=1e-9)


def test_adding_a_constant_to_a_row_of_logits_changes_nothing(rng):
    logits = rng.normal(size=(3, 4, 5))
    tokens = rng.integers(0, 5, size=(3, 4))
    shifted = logits + rng.normal(size=(3, 4, 1)) * 100.0
    np.testing.assert_allclose(
        compute_log_probs(shifted, tokens), compute_log_probs(logits, tokens), rtol=1e-10
    )


def test_dtype_follows_the_logits(xp, rng):
    logits = xp.asarray(rng.normal(size=(2, 3, 4)).astype(np.float32))
    tokens = xp.asarray(rng.integers(0, 4, size=(2, 3)))
    module = SequenceLogProbs()
    seq, cache = module.forward(logits, tokens)
    grad = module.backward(xp.ones(2, dtype=xp.float32), cache)
    assert seq.dtype == xp.float32 and grad.dtype == xp.float32
    assert type(seq) is type(logits) and type(grad) is type(logits)


def test_backends_agree_with_numpy(xp, rng):
    logits = rng.normal(size=(2, 4, 6))
    tokens = rng.integers(0, 6, size=(2, 4))
    mask = rng.integers(0, 2, size=(2, 4))
    mask[:, 0] = 1
    dout = rng.normal(size=2)
    module = SequenceLogProbs(average=True)
    seq, cache = module.forward(xp.asarray(logits), xp.asarray(tokens), xp.asarray(mask))
    grad = module.backward(xp.asarray(dout), cache)
    expected_seq = loop_sequence_logprobs(logits, tokens, mask, True)
    expected_grad = loop_sequence_logprobs_backward(dout, logits, tokens, mask, True)
    np.testing.assert_allclose(to_numpy(seq), expected_seq, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(grad), expected_grad, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------
# Extreme inputs
# --------------------------------------------------------------------------


def test_extreme_logits_float32_are_finite(xp, rng):
    B, T, V = 3, 4, 7
    signs = rng.choice([-1.0, 1.0], size=(B, T, V))
    logits64 = signs * 1e4
    logits = xp.asarray(logits64.astype(np.float32))
    tokens_np = rng.integers(0, V, size=(B, T))
    tokens = xp.asarray(tokens_np)
    module = SequenceLogProbs()
    seq, cache = module.forward(logits, tokens)
    grad = module.backward(xp.ones(B, dtype=xp.float32), cache)
    assert seq.dtype == xp.float32
    assert bool(xp.all(xp.isfinite(seq))) and bool(xp.all(xp.isfinite(grad)))
    # float32 keeps these exact enough to match the float64 loop: the kernel
    # subtracts the row max first, so the winner's log-prob does not inherit
    # the rounding of a logsumexp near 1e4 (an ulp there is 1e-3).
    np.testing.assert_allclose(to_numpy(seq), loop_sequence_logprobs(logits64, tokens_np), rtol=1e-6)


def test_extreme_single_row_exact_values():
    logits = np.array([[[1e4, -1e4, 0.0]]], dtype=np.float32)
    logps = np.array(
        [compute_log_probs(logits, np.array([[v]]))[0] for v in range(3)], dtype=np.float64
    )
    expected = loop_sequence_logprobs(logits.astype(np.float64), np.array([[0]]))
    assert logps[0] == pytest.approx(expected[0], abs=1e-6)
    assert logps[1] == pytest.approx(-2e4, rel=1e-7)  # 1e4 - (-1e4) below the winner
    assert np.all(np.isfinite(logps))


# --------------------------------------------------------------------------
# Purity: no mutation, no views
# --------------------------------------------------------------------------


@given(cases(masked=True, average=True), st.booleans())
def test_backward_does_not_mutate_or_alias(case, average):
    logits, tokens, mask, dout = case
    seq, cache = sequence_logprobs_forward(logits, tokens, mask, average)
    saved = (logits.copy(), tokens.copy(), mask.copy(), dout.copy(), copy.deepcopy(cache))
    grad = sequence_logprobs_backward(dout, cache)
    np.testing.assert_array_equal(logits, saved[0])
    np.testing.assert_array_equal(tokens, saved[1])
    np.testing.assert_array_equal(mask, saved[2])
    np.testing.assert_array_equal(dout, saved[3])
    for key in ("weights", "counts"):
        if saved[4][key] is not None:
            np.testing.assert_array_equal(cache[key], saved[4][key])
    for key in ("logp", "tokens"):
        np.testing.assert_array_equal(cache["token_cache"][key], saved[4]["token_cache"][key])
    cached = [cache["weights"], cache["token_cache"]["logp"], cache["token_cache"]["tokens"]]
    for other in [logits, tokens, mask, dout, seq] + cached:
        assert not np.shares_memory(grad, other)


def test_token_backward_does_not_mutate_or_alias(rng):
    logits = rng.normal(size=(2, 3, 5))
    tokens = rng.integers(0, 5, size=(2, 3))
    dout = rng.normal(size=(2, 3))
    _, cache = token_logprobs_forward(logits, tokens)
    logp_before, dout_before = cache["logp"].copy(), dout.copy()
    grad = token_logprobs_backward(dout, cache)
    np.testing.assert_array_equal(cache["logp"], logp_before)
    np.testing.assert_array_equal(dout, dout_before)
    for other in (logits, tokens, dout, cache["logp"]):
        assert not np.shares_memory(grad, other)


def test_shift_backward_does_not_alias(rng):
    d = rng.normal(size=(2, 3, 4))
    before = d.copy()
    out = shift_for_causal_lm_backward(d)
    np.testing.assert_array_equal(d, before)
    assert not np.shares_memory(out, d)


def test_module_called_twice_backpropagates_each_cache(rng):
    """Chosen and rejected go through one module; each backward uses its own cache."""
    module = SequenceLogProbs(shift=True)
    chosen = rng.normal(size=(2, 5, 4)), rng.integers(0, 4, size=(2, 5))
    rejected = rng.normal(size=(2, 5, 4)), rng.integers(0, 4, size=(2, 5))
    g_c, g_r = rng.normal(size=2), rng.normal(size=2)
    out_c, cache_c = module.forward(*chosen)
    out_r, cache_r = module.forward(*rejected)
    d_r = module.backward(g_r, cache_r)  # in the opposite order on purpose
    d_c = module.backward(g_c, cache_c)
    fresh = SequenceLogProbs(shift=True)
    for (logits, tokens), out, d, g in ((chosen, out_c, d_c, g_c), (rejected, out_r, d_r, g_r)):
        ref_out, ref_cache = fresh.forward(logits, tokens)
        np.testing.assert_array_equal(out, ref_out)
        np.testing.assert_array_equal(d, fresh.backward(g, ref_cache))
    assert module.parameters() == []


# --------------------------------------------------------------------------
# Validation at the public boundary
# --------------------------------------------------------------------------


def _ok(rng, B=2, T=3, V=5):
    return rng.normal(size=(B, T, V)), rng.integers(0, V, size=(B, T))


def test_logits_must_be_3d(rng):
    logits, tokens = _ok(rng)
    with pytest.raises(ValueError, match=r"logits must be 3-D \(B, T, V\), got 2-D with shape \(2, 5\)"):
        compute_log_probs(logits[:, 0], tokens)


def test_logits_must_be_float(rng):
    _, tokens = _ok(rng)
    with pytest.raises(TypeError, match="logits must be a float array, got dtype int64"):
        compute_log_probs(np.zeros((2, 3, 5), dtype=np.int64), tokens)


def test_tokens_must_be_integer(rng):
    logits, tokens = _ok(rng)
    with pytest.raises(TypeError, match="tokens must be an integer array.*float64"):
        compute_log_probs(logits, tokens.astype(np.float64))


def test_tokens_shape_must_match(rng):
    logits, tokens = _ok(rng)
    with pytest.raises(ValueError, match=r"tokens must have shape \(B, T\) = \(2, 3\).*got \(2, 2\)"):
        compute_log_probs(logits, tokens[:, :2])


@pytest.mark.parametrize("bad_value", [-1, -100, 5, 17])
def test_token_ids_out_of_range_name_value_and_position(rng, bad_value):
    logits, tokens = _ok(rng)
    tokens[1, 2] = bad_value
    expected = rf"\[0, 5\) wherever mask counts them; got {bad_value} at position \(row 1, step 2\)"
    with pytest.raises(ValueError, match=expected):
        compute_log_probs(logits, tokens)


def test_masked_out_ids_may_be_anything(rng):
    """Like the DPO reference's -100 labels: ids the mask ignores are never gathered."""
    logits, tokens = _ok(rng)
    mask = np.ones((2, 3), dtype=bool)
    mask[0, 2] = mask[1, 0] = False
    padded = tokens.copy()
    padded[0, 2], padded[1, 0] = -100, 99
    np.testing.assert_array_equal(
        compute_log_probs(logits, padded, mask), compute_log_probs(logits, tokens, mask)
    )
    module = SequenceLogProbs()
    _, cache = module.forward(logits, padded, mask)
    _, expected_cache = module.forward(logits, tokens, mask)
    np.testing.assert_array_equal(
        module.backward(np.ones(2), cache), module.backward(np.ones(2), expected_cache)
    )
    padded[1, 1] = -100  # counted: refused
    with pytest.raises(ValueError, match=r"got -100 at position \(row 1, step 1\)"):
        compute_log_probs(logits, padded, mask)


def test_shift_reports_the_callers_position_and_ignores_the_first_token(rng):
    logits, tokens = _ok(rng)
    tokens[:, 0] = -1  # never scored after the shift (no logits predict it)
    compute_log_probs(logits, tokens, shift=True)
    tokens[1, 2] = 7
    with pytest.raises(ValueError, match=r"got 7 at position \(row 1, step 2\)"):
        compute_log_probs(logits, tokens, shift=True)


def test_module_validates_too(rng):
    logits, tokens = _ok(rng)
    tokens[0, 1] = 9
    with pytest.raises(ValueError, match=r"got 9 at position \(row 0, step 1\)"):
        SequenceLogProbs().forward(logits, tokens)


def test_mask_shape_must_match(rng):
    logits, tokens = _ok(rng)
    with pytest.raises(ValueError, match=r"mask must have the shape of tokens \(2, 3\), got \(2, 4\)"):
        compute_log_probs(logits, tokens, np.ones((2, 4)))


def test_mask_must_be_binary(rng):
    logits, tokens = _ok(rng)
    with pytest.raises(ValueError, match="mask must contain only 0 and 1"):
        compute_log_probs(logits, tokens, np.full((2, 3), 0.5))


def test_average_with_an_empty_row_names_the_row(rng):
    logits, tokens = _ok(rng, B=3)
    mask = np.ones((3, 3), dtype=bool)
    mask[2] = False
    with pytest.raises(ValueError, match=r"mask row 2 counts none"):
        compute_log_probs(logits, tokens, mask, average=True)
    # Without averaging an empty row is fine: its log-prob is the empty sum, 0.
    assert compute_log_probs(logits, tokens, mask)[2] == 0.0


def test_average_with_shift_checks_the_shifted_mask(rng):
    logits, tokens = _ok(rng)
    mask = np.array([[1, 0, 0], [1, 1, 1]])  # row 0 counts only position 0, dropped by the shift
    with pytest.raises(ValueError, match="mask row 0 counts none"):
        compute_log_probs(logits, tokens, mask, average=True, shift=True)


def test_shift_needs_two_positions(rng):
    logits, tokens = _ok(rng, T=1)
    with pytest.raises(ValueError, match="shift=True needs T >= 2.*got T = 1"):
        compute_log_probs(logits, tokens, shift=True)


def test_module_arguments_are_checked(rng):
    with pytest.raises(TypeError, match="average: expected a bool, got str"):
        SequenceLogProbs(average="yes")
    with pytest.raises(TypeError, match="shift: expected a bool, got int"):
        SequenceLogProbs(shift=1)
    module = SequenceLogProbs()
    _, cache = module.forward(*_ok(rng))
    with pytest.raises(ValueError, match=r"grad_seq_logps must have shape \(B,\) = \(2,\), got \(3,\)"):
        module.backward(np.ones(3), cache)


# --------------------------------------------------------------------------
# PyTorch as an oracle
# --------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("shift", [False, True])
def test_torch_log_softmax_gather_and_autograd(rng, average, shift):
    torch = pytest.importorskip("torch")
    B, T, V = 3, 6, 11
    logits = rng.normal(size=(B, T, V)) * 3.0
    tokens = rng.integers(0, V, size=(B, T))
    mask = rng.integers(0, 2, size=(B, T))
    mask[:, -2:] = 1
    dout = rng.normal(size=B)

    module = SequenceLogProbs(average=average, shift=shift)
    seq, cache = module.forward(logits, tokens, mask)
    grad = module.backward(dout, cache)

    z = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    y, m = torch.tensor(tokens), torch.tensor(mask, dtype=torch.float64)
    zz, yy, mm = (z[:, :-1], y[:, 1:], m[:, 1:]) if shift else (z, y, m)
    per_token = torch.log_softmax(zz, dim=-1).gather(-1, yy.unsqueeze(-1)).squeeze(-1)
    expected = (per_token * mm).sum(-1)
    if average:
        expected = expected / mm.sum(-1)
    (expected * torch.tensor(dout)).sum().backward()

    np.testing.assert_allclose(seq, expected.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, z.grad.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.torch
def test_torch_extreme_float32(rng):
    torch = pytest.importorskip("torch")
    logits = (rng.choice([-1.0, 1.0], size=(2, 3, 5)) * 1e4).astype(np.float32)
    tokens = rng.integers(0, 5, size=(2, 3))
    token_logps, _ = token_logprobs_forward(logits, tokens)
    log_softmax = torch.log_softmax(torch.tensor(logits), -1)
    expected = log_softmax.gather(-1, torch.tensor(tokens)[..., None])[..., 0]
    np.testing.assert_allclose(token_logps, expected.numpy(), rtol=1e-6)


# --------------------------------------------------------------------------
# Layers: the kernels do not import the module layer above them
# --------------------------------------------------------------------------


def test_sequence_logprobs_lives_in_nn_and_the_old_paths_still_work():
    import alignment_np
    from alignment_np.functional import logprobs as functional_logprobs

    assert SequenceLogProbs.__module__ == "alignment_np.nn.sequence_logprobs"
    assert alignment_np.SequenceLogProbs is SequenceLogProbs
    assert functional_logprobs.SequenceLogProbs is SequenceLogProbs  # the course's old import path
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        functional_logprobs.Nope


def test_importing_the_kernels_loads_nothing_from_the_layers_above():
    import subprocess
    import sys

    code = (
        "import sys, alignment_np.functional.logprobs, alignment_np.functional.stable; "
        "print(sorted(m for m in sys.modules if m.startswith(('alignment_np.nn', 'alignment_np.losses', "
        "'alignment_np.rl', 'alignment_np.trainers'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"tokens": None}, TypeError, r"tokens: expected an array, got NoneType"),
        ({"tokens": [[1, 2, 3], [1]]}, TypeError, r"tokens: expected an array, got list that is not one"),
        ({"logits": {"a": 1}}, TypeError, r"logits: expected an array, got dict"),
        ({"logits": "abc"}, TypeError, r"logits: expected an array, got str"),
        ({"mask": "all"}, TypeError, r"mask: expected an array, got str"),
        ({"logits": np.zeros((2, 3, 4, 1))}, ValueError, r"logits must be 3-D \(B, T, V\), got 4-D"),
    ],
)
def test_wrong_types_name_the_argument(kwargs, exc, match):
    args = {"logits": np.zeros((2, 3, 4)), "tokens": np.zeros((2, 3), dtype=np.int64), "mask": None}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        compute_log_probs(**args)
    with pytest.raises(exc, match=match):
        SequenceLogProbs().forward(**args)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_minus_inf_logits_banned_tokens(dtype):
    # Token 1 is banned (-inf) in every row. Scoring allowed tokens gives finite
    # log-probs and a gradient of exactly 0 at the banned entry; scoring the
    # banned token itself gives -inf, the true log-probability, not a number.
    logits = np.array([[[1e4, -np.inf, 0.0], [0.5, -np.inf, -1e4]]], dtype=dtype)
    tokens = np.array([[0, 2]])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = SequenceLogProbs()
        logps, cache = module.forward(logits, tokens)
        dlogits = module.backward(np.ones(1, dtype=dtype), cache)
    assert logps.dtype == dtype and dlogits.dtype == dtype
    np.testing.assert_allclose(logps, [0.0 + (-1e4 - 0.5)], rtol=1e-6)
    assert np.all(dlogits[..., 1] == 0) and np.all(np.isfinite(dlogits))
    banned = compute_log_probs(logits, np.array([[1, 0]]))
    assert banned[0] == -np.inf


def test_nan_logits_propagate_to_the_log_prob():
    logits = np.zeros((2, 2, 3))
    logits[1, 0, 2] = np.nan
    with np.errstate(invalid="ignore"):
        logps = compute_log_probs(logits, np.zeros((2, 2), dtype=np.int64))
    assert np.isfinite(logps[0]) and np.isnan(logps[1])
