"""Chapter 2, exercise 3: the gradient g (e_y - p) of a confident model.

Certain of the right token (p_y -> 1): the gradient vanishes.
Certain of a wrong token w (p_w -> 1): it tends to g (e_y - e_w).
"""

import numpy as np

from alignment_np.functional.logprobs import token_logprobs_backward, token_logprobs_forward


def gradient_for(logits, token, g=1.0):
    tokens = np.array([[token]])
    _, cache = token_logprobs_forward(logits[None, None, :], tokens)
    return token_logprobs_backward(np.array([[g]], dtype=logits.dtype), cache)[0, 0]


def test_certain_of_the_right_token_means_no_gradient():
    logits = np.array([1e4, 0.0, -1e4], dtype=np.float32)
    grad = gradient_for(logits, token=0)
    assert grad.dtype == np.float32 and np.isfinite(grad).all()
    np.testing.assert_array_equal(grad, np.zeros(3, dtype=np.float32))


def test_certain_of_a_wrong_token_gives_e_y_minus_e_w():
    logits = np.array([1e4, 0.0, -1e4], dtype=np.float32)  # certain of token 0
    g = 2.5
    grad = gradient_for(logits, token=1, g=g)
    e_y, e_w = np.eye(3, dtype=np.float32)[1], np.eye(3, dtype=np.float32)[0]
    np.testing.assert_array_equal(grad, g * (e_y - e_w))


def test_gradient_shrinks_as_confidence_grows():
    norms = [np.abs(gradient_for(np.array([c, 0.0, 0.0]), token=0)).sum() for c in (0.0, 2.0, 5.0, 10.0)]
    assert all(a > b for a, b in zip(norms, norms[1:]))
