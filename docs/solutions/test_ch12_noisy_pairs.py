"""Chapter 12, exercise 4: n pairs flipped at rate eta are worth n (1 - 2 eta)^2 clean ones.

Section 12.4 derives the Fisher information of a flipped label about the
reward difference z near z = 0: I_eta = (1 - 2 eta)^2 I_0. So a reward model
fitted on n noisy pairs should estimate the true reward about as well as one
fitted on n (1 - 2 eta)^2 clean pairs, and much worse than one fitted on n
clean pairs.

The reward model is linear, r(u) = w . u, on feature vectors u (chapters 3
and 4), the true reward r*(u) = w* . u small enough that most pairs are
close (z near 0, where the derivation holds). The maximum-likelihood w is
found by Newton's method on the Bradley-Terry loss; the package's
``reward_model_loss`` confirms that its gradient vanishes there. What is
compared is the *direction* of w (which decides every ranking, so the
accuracy): the mean squared angle between w and w*. Flipped labels also
shrink |w| (the fitted probabilities are pulled towards 1/2), which changes
no ranking.
"""

import numpy as np

from alignment_np.losses.bradley_terry import reward_model_loss

D, ETA, N, REPEATS = 5, 0.3, 4000, 150


def draw_pairs(rng, w_star, n, eta):
    """(u_chosen, u_rejected), n pairs labelled by Bradley-Terry on w*, then flipped at rate eta."""
    a, b = rng.normal(size=(n, D)), rng.normal(size=(n, D))
    a_wins = rng.random(n) < 1 / (1 + np.exp(-(a - b) @ w_star))
    a_wins ^= rng.random(n) < eta  # a flipped label
    return np.where(a_wins[:, None], a, b), np.where(a_wins[:, None], b, a)


def fit(u_chosen, u_rejected, iterations=30):
    """The maximum-likelihood linear reward: Newton's method on the mean Bradley-Terry loss."""
    delta = u_chosen - u_rejected  # (n, D): the loss depends on w . delta only
    w = np.zeros(D)
    for _ in range(iterations):
        s = 1 / (1 + np.exp(-(delta @ w)))  # P(chosen wins) under w
        gradient = -delta.T @ (1 - s) / len(delta)
        hessian = (delta.T * (s * (1 - s))) @ delta / len(delta)
        w -= np.linalg.solve(hessian, gradient)
    return w


def angle_squared(w, w_star):
    cosine = w @ w_star / np.linalg.norm(w) / np.linalg.norm(w_star)
    return np.arccos(np.clip(cosine, -1.0, 1.0)) ** 2


def test_the_newton_solution_is_where_the_packages_loss_is_flat():
    rng = np.random.default_rng(0)
    w_star = 0.25 * rng.normal(size=D)
    u_c, u_r = draw_pairs(rng, w_star, N, ETA)
    w = fit(u_c, u_r)
    _, grad_c, grad_r = reward_model_loss(u_c @ w, u_r @ w)
    grad_w = u_c.T @ grad_c + u_r.T @ grad_r  # the chain rule through r = w . u
    np.testing.assert_allclose(grad_w, 0.0, atol=1e-12)


def test_noisy_pairs_are_worth_a_fraction_1_minus_2_eta_squared():
    rng = np.random.default_rng(1)
    w_star = 0.25 * rng.normal(size=D)
    equivalent = int(round(N * (1 - 2 * ETA) ** 2))  # 640 clean pairs
    errors = {"noisy": [], "equivalent clean": [], "clean": []}
    norms = {"noisy": [], "clean": []}
    for _ in range(REPEATS):
        for name, n, eta in (("noisy", N, ETA), ("equivalent clean", equivalent, 0.0), ("clean", N, 0.0)):
            w = fit(*draw_pairs(rng, w_star, n, eta))
            errors[name].append(angle_squared(w, w_star))
            if name in norms:
                norms[name].append(np.linalg.norm(w))
    mean = {name: np.mean(v) for name, v in errors.items()}
    ratio = mean["noisy"] / mean["equivalent clean"]
    assert 0.75 < ratio < 1.33, mean
    assert mean["noisy"] > 3 * mean["clean"]  # (1 - 2 eta)^-2 = 6.25 in theory
    # The flips shrink w by about (1 - 2 eta) near z = 0, and leave its direction unbiased.
    shrink = np.mean(norms["noisy"]) / np.mean(norms["clean"])
    assert abs(shrink - (1 - 2 * ETA)) < 0.1
