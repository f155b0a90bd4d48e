"""Chapter 4, exercise 3: optimising a learned reward (a proxy) against the true one.

Gradient ascent on the features u of held-out responses (``x`` in the code):
u <- u + step * (dr/du - alpha (u - u0)), alpha the weight of the leash (``lam`` below).
Without the leash (alpha = 0) the proxy extrapolates far beyond its training range and
promises much more than it delivers; many responses are over-optimised (their true
reward peaks, then falls while the proxy keeps rising). With the leash the proxy's
promise and the true gain agree.
"""

from functools import lru_cache

import numpy as np

from alignment_np.data.synthetic import make_preference_features, true_reward
from alignment_np.nn.reward_mlp import RewardModel
from alignment_np.optim import AdamW
from alignment_np.trainers.reward_model import train_reward_model

STEPS, STEP_SIZE = 400, 0.05


@lru_cache(maxsize=None)
def trained():
    data = make_preference_features(n_pairs=2000, dim=8, seed=0, dtype=np.float64)
    model = RewardModel(input_dim=8, hidden_dim=64, seed=0, dtype=np.float64)
    opt = AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    train_reward_model(model, data.x_chosen, data.x_rejected, epochs=15, batch_size=64, optimizer=opt, seed=0)
    return model, data


@lru_cache(maxsize=None)
def optimise(lam):
    model, data = trained()
    x0 = np.random.default_rng(7).standard_normal((500, 8))
    x = x0.copy()
    true_path = [true_reward(x, data.teacher)]
    for _ in range(STEPS):
        r, cache = model.score(x)
        model.zero_grad()  # backward accumulates parameter grads; we only want dr/dx
        dr_dx = model.backward(np.ones_like(r), cache)
        x = x + STEP_SIZE * (dr_dx - lam * (x - x0))
        true_path.append(true_reward(x, data.teacher))
    true_path = np.array(true_path)  # (STEPS + 1, N)
    proxy_gain = float(model.predict(x).mean() - model.predict(x0).mean())
    true_gain = float(true_path[-1].mean() - true_path[0].mean())
    over_optimised = float(np.mean(true_path[-1] < true_path.max(axis=0) - 0.1))
    return model.predict(x)[:, 0], proxy_gain, true_gain, over_optimised


def training_range():
    model, data = trained()
    return float(model.predict(np.concatenate([data.x_chosen, data.x_rejected])).max())


def test_unconstrained_optimisation_hacks_the_proxy():
    proxy, proxy_gain, true_gain, over_optimised = optimise(0.0)
    assert proxy.mean() > 5 * training_range()  # far outside anything the proxy was fit on
    assert proxy_gain > 5 * true_gain  # it promises much more than it delivers
    assert over_optimised > 0.2  # many responses went past their true best


def test_leash_keeps_the_proxy_honest():
    proxy, proxy_gain, true_gain, over_optimised = optimise(1.0)
    assert proxy.mean() < training_range()
    assert 0.5 * true_gain < proxy_gain < 2 * true_gain
    assert over_optimised < 0.05
    # The price: a smaller total gain than the unconstrained run's.
    assert 0 < true_gain < optimise(0.0)[2]
