"""Chapter 5, exercise 2: DPO against RLHF on the same preference labels.

Five responses, a true reward r, a reference pi_ref, beta = 0.5. Labels are
sampled from Bradley-Terry: a random pair (i, j) is shown and i wins with
probability sigmoid(r_i - r_j).

Path A (RLHF): fit a tabular reward model r_hat with the Bradley-Terry loss,
then maximise J(pi) = E_pi[r_hat] - beta KL(pi || pi_ref) by gradient ascent.
Path B (DPO): minimise the DPO loss on the same labels.

Both are tabular (one free parameter per response), so both can be optimised
to convergence: they reach the same policy, and it tends to pi* as labels grow.
"""

from functools import lru_cache

import numpy as np

from alignment_np.functional.stable import log_softmax, log_softmax_backward, sigmoid
from alignment_np.losses.bradley_terry import reward_model_loss
from alignment_np.losses.dpo import dpo_loss
from alignment_np.nn.module import Parameter
from alignment_np.optim import AdamW, cosine_schedule

V, BETA, STEPS = 5, 0.5, 3000
RNG = np.random.default_rng(0)
REWARD = RNG.normal(size=V)
LOG_REF = log_softmax(RNG.normal(size=V))
LOG_PI_STAR = log_softmax(LOG_REF + REWARD / BETA)
I, J = np.nonzero(~np.eye(V, dtype=bool))  # every ordered pair (chosen i, rejected j)


def sample_label_counts(n_labels, seed):
    """counts[k] = how often i = I[k] was chosen over j = J[k] among n_labels sampled comparisons."""
    rng = np.random.default_rng(seed)
    a, b = np.triu_indices(V, k=1)
    shown = rng.integers(len(a), size=n_labels)  # which unordered pair is shown
    a_wins = rng.random(n_labels) < sigmoid(REWARD[a[shown]] - REWARD[b[shown]])
    chosen = np.where(a_wins, a[shown], b[shown])
    rejected = np.where(a_wins, b[shown], a[shown])
    counts = np.zeros(len(I))
    for c, r in zip(chosen, rejected):
        counts[(I == c) & (J == r)] += 1
    return counts


def minimise(grad_fn, init, lr=0.05):
    """AdamW (no decay, cosine-annealed rate) on one Parameter; grad_fn(x) -> d loss / d x.

    The annealing matters: at a constant rate Adam hovers around the optimum
    at a distance set by the rate instead of converging to it.
    """
    param = Parameter(init.copy())
    opt = AdamW([param], lr=lr, weight_decay=0.0)
    for step in range(STEPS):
        opt.lr = cosine_schedule(step, lr, warmup_steps=0, total_steps=STEPS)
        opt.zero_grad()
        param.grad += grad_fn(param.data)
        opt.step()
    return param.data


def weighted(grad_of_mean, counts):
    """dpo_loss / reward_model_loss differentiate the mean over the rows; rescale to the count-weighted mean."""
    return grad_of_mean * len(counts) * counts / counts.sum()


def rlhf(counts):
    # Stage 1: the reward model, by Bradley-Terry maximum likelihood (each ordered pair weighted by its count).
    def reward_grad(r_hat):
        _, g_c, g_r = reward_model_loss(r_hat[I], r_hat[J])
        grad = np.zeros(V)
        np.add.at(grad, I, weighted(g_c, counts))
        np.add.at(grad, J, weighted(g_r, counts))
        return grad

    r_hat = minimise(reward_grad, np.zeros(V))

    # Stage 2: maximise J(pi) = sum_y pi_y q_y with q = r_hat - beta (log pi - log pi_ref).
    # The policy-gradient theorem (the E_pi[grad log pi] term vanishes) gives
    # dJ/dlogits = log_softmax_backward(pi * q, pi); minimise -J.
    def policy_grad(logits):
        log_pi = log_softmax(logits)
        pi = np.exp(log_pi)
        q = r_hat - BETA * (log_pi - LOG_REF)
        return -log_softmax_backward(pi * q, pi)

    return log_softmax(minimise(policy_grad, LOG_REF))


def dpo(counts):
    def grad(logits):
        log_pi = log_softmax(logits)
        _, g_c, g_r, _, _ = dpo_loss(log_pi[I], log_pi[J], LOG_REF[I], LOG_REF[J], beta=BETA)
        dlog_pi = np.zeros(V)
        np.add.at(dlog_pi, I, weighted(g_c, counts))
        np.add.at(dlog_pi, J, weighted(g_r, counts))
        return log_softmax_backward(dlog_pi, np.exp(log_pi))

    return log_softmax(minimise(grad, LOG_REF))


@lru_cache(maxsize=None)
def both(n_labels):
    counts = sample_label_counts(n_labels, seed=n_labels)
    return rlhf(counts), dpo(counts)


def test_rlhf_and_dpo_reach_the_same_policy():
    for n in (200, 20000):
        log_pi_rlhf, log_pi_dpo = both(n)
        np.testing.assert_allclose(log_pi_rlhf, log_pi_dpo, atol=1e-6)


def test_both_approach_the_optimum_as_labels_grow():
    error = {n: np.abs(both(n)[1] - LOG_PI_STAR).max() for n in (200, 20000)}
    assert error[20000] < error[200] / 3
    assert error[20000] < 0.2
