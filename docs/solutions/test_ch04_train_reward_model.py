"""Chapter 4, exercise 1: train a reward model on 200, 1,000 and 5,000 pairs; compare with the ceiling."""

from functools import lru_cache

import numpy as np

from alignment_np.data.synthetic import make_preference_features
from alignment_np.nn.reward_mlp import RewardModel
from alignment_np.optim import AdamW
from alignment_np.trainers.reward_model import evaluate_reward_model, train_reward_model

N_TEST = 2000


@lru_cache(maxsize=None)
def train_on(n_train, seed=0):
    # One draw, split: the reward function depends on the seed only, so the
    # held-out pairs come from the same r* as the training pairs.
    data = make_preference_features(n_pairs=n_train + N_TEST, dim=8, seed=seed)
    train, test = slice(0, n_train), slice(n_train, None)
    model = RewardModel(input_dim=8, hidden_dim=64, seed=0)
    opt = AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    # About the same number of optimizer steps for every size.
    epochs = max(10, 30000 // n_train)
    train_reward_model(model, data.x_chosen[train], data.x_rejected[train], epochs=epochs,
                       batch_size=32, optimizer=opt, seed=0)
    fit = evaluate_reward_model(model, data.x_chosen[train], data.x_rejected[train])
    held_out = evaluate_reward_model(model, data.x_chosen[test], data.x_rejected[test])
    ceiling = {
        "train": float(np.mean(data.reward_chosen[train] > data.reward_rejected[train])),
        "test": float(np.mean(data.reward_chosen[test] > data.reward_rejected[test])),
    }
    return fit, held_out, ceiling


def test_more_pairs_approach_the_ceiling():
    results = {n: train_on(n) for n in (200, 1000, 5000)}
    # Each size has its own held-out pairs; compare each with its own ceiling.
    gaps = {n: r[2]["test"] - r[1]["accuracy"] for n, r in results.items()}
    for n in results:
        assert gaps[n] > -0.03, "held-out accuracy cannot beat the ceiling except by sampling luck"
    assert gaps[200] > gaps[5000] + 0.02  # more data, closer to the ceiling
    assert gaps[5000] < 0.04
    assert results[5000][1]["accuracy"] > 0.8


def test_few_pairs_fit_the_label_noise():
    fit, held_out, ceiling = train_on(200)
    # On its own 200 pairs the model beats the true reward: it has learned
    # which labels were coin flips the wrong way, which cannot generalise.
    assert fit["accuracy"] > ceiling["train"]
    assert held_out["accuracy"] < ceiling["test"]
    assert fit["loss"] < held_out["loss"]
