"""Chapter 2, exercise 1: padding positions (mask 0) change neither the log-probs nor the gradient."""

import numpy as np
import pytest

from alignment_np.functional.logprobs import (
    compute_log_probs,
    sequence_logprobs_backward,
    sequence_logprobs_forward,
)


@pytest.mark.parametrize("average", [False, True])
@pytest.mark.parametrize("k", [1, 4])
def test_padding_is_invisible(average, k):
    rng = np.random.default_rng(k)
    B, T, V = 3, 5, 7
    logits = rng.normal(size=(B, T, V))
    tokens = rng.integers(0, V, size=(B, T))
    mask = np.ones((B, T), dtype=int)
    mask[:, :2] = 0  # a 2-token prompt

    # Pad every row with k positions: arbitrary (large) logits, arbitrary valid ids, mask 0.
    padded_logits = np.concatenate([logits, rng.normal(scale=50.0, size=(B, k, V))], axis=1)
    padded_tokens = np.concatenate([tokens, rng.integers(0, V, size=(B, k))], axis=1)
    padded_mask = np.concatenate([mask, np.zeros((B, k), dtype=int)], axis=1)

    plain = compute_log_probs(logits, tokens, mask, average=average)
    padded = compute_log_probs(padded_logits, padded_tokens, padded_mask, average=average)
    np.testing.assert_allclose(padded, plain, rtol=1e-12)

    dout = rng.normal(size=B)
    _, cache = sequence_logprobs_forward(padded_logits, padded_tokens, padded_mask, average)
    dlogits = sequence_logprobs_backward(dout, cache)
    assert (dlogits[:, T:] == 0).all()
    _, plain_cache = sequence_logprobs_forward(logits, tokens, mask, average)
    np.testing.assert_allclose(dlogits[:, :T], sequence_logprobs_backward(dout, plain_cache), rtol=1e-12)
