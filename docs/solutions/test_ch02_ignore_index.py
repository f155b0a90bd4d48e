"""Chapter 2, exercise 2: Hugging Face's -100 labels, used directly with a mask.

Masked-out positions may hold any id (they are never gathered), so the labels
themselves serve as tokens; the mask is simply ``labels != -100``.
"""

import numpy as np

from alignment_np.functional.logprobs import SequenceLogProbs, compute_log_probs
from alignment_np.functional.stable import log_softmax

IGNORE = -100


def labels_to_mask(labels):
    """labels: (B, T) ids with -100 where ignored -> mask (B, T) of 0/1."""
    return (labels != IGNORE).astype(np.int64)


def next_token_logps_by_loop(logits, labels):
    """The definition: for every position t >= 1 whose label is kept, log p(labels[t] | logits[t-1])."""
    out = np.zeros(labels.shape[0])
    for b in range(labels.shape[0]):
        for t in range(1, labels.shape[1]):
            if labels[b, t] != IGNORE:
                out[b] += log_softmax(logits[b, t - 1])[labels[b, t]]
    return out


def make_labels():
    rng = np.random.default_rng(0)
    B, T, V = 4, 7, 9
    logits = rng.normal(size=(B, T, V))
    labels = rng.integers(0, V, size=(B, T))
    labels[:, :3] = IGNORE  # the prompt
    labels[1, 5:] = IGNORE  # padding at the end of row 1
    return logits, labels


def test_ignore_index_matches_the_loop():
    logits, labels = make_labels()
    labels_before = labels.copy()
    logps = compute_log_probs(logits, labels, labels_to_mask(labels), shift=True)
    np.testing.assert_array_equal(labels, labels_before)  # nothing rewrote the caller's labels
    np.testing.assert_allclose(logps, next_token_logps_by_loop(logits, labels), rtol=1e-12)


def test_no_gradient_reaches_logits_that_predict_an_ignored_label():
    logits, labels = make_labels()
    scorer = SequenceLogProbs(shift=True)
    _, cache = scorer.forward(logits, labels, labels_to_mask(labels))
    dlogits = scorer.backward(np.ones(labels.shape[0]), cache)
    # logits[:, t - 1] predict labels[:, t]: they get gradient only if that label is kept.
    predicts_ignored = np.zeros(labels.shape, dtype=bool)
    predicts_ignored[:, :-1] = labels[:, 1:] == IGNORE
    predicts_ignored[:, -1] = True  # the last position predicts nothing in the row
    assert (dlogits[predicts_ignored] == 0).all()
    assert (np.abs(dlogits[~predicts_ignored]).sum(axis=-1) > 0).all()
