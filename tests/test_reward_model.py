"""The reward MLP: kernels, the RewardModel wrapper, and the reward-model trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.backend import get_array_module, to_numpy
from alignment_np.data.synthetic import make_preference_features
from alignment_np.gradcheck import check_gradients
from alignment_np.losses.bradley_terry import reward_accuracy, reward_model_loss
from alignment_np.nn.module import Parameter
from alignment_np.nn.reward_mlp import RewardModel, reward_mlp_backward, reward_mlp_forward
from alignment_np.optim import SGD, AdamW
from alignment_np.trainers.reward_model import evaluate_reward_model, train_reward_model

KINK_MARGIN = 0.1  # every pre-activation is at least this far from relu's kink at 0


# -- helpers ---------------------------------------------------------------------


def away_from_kink(x, W1, b1, margin=KINK_MARGIN):
    """b1 shifted, column by column, as little as possible so that |x @ W1 + b1| >= margin.

    Finite differences across relu's kink measure a slope the analytic gradient
    cannot have; moving b1 keeps every pre-activation on one side of it.
    """
    z = x @ W1  # (B, H)
    b1 = b1.copy()
    for j in range(W1.shape[1]):
        kinks = -z[:, j]  # b1[j] values that would put row i exactly on the kink
        candidates = np.concatenate([[b1[j]], kinks - 1.01 * margin, kinks + 1.01 * margin])
        ok = [c for c in candidates if np.min(np.abs(z[:, j] + c)) >= margin]
        b1[j] = min(ok, key=lambda c: abs(c - b1[j]))
    return b1


@st.composite
def mlp_inputs(draw, dtype=np.float64):
    """(x, W1, b1, W2, b2, dr) in float64, built for a trustworthy finite difference.

    Hypothesis draws the shapes and a seed; the values are magnitude times sign
    with magnitudes in [0.1, 2] from a seeded generator. Two ways the oracle
    itself (not the backward pass) could fail are ruled out:
    * a tiny element (say W2 = 1e-8) would make a gradient (db1 = W2 * dr)
      smaller than the rounding noise of the difference, eps * |L| / h ~ 1e-10;
    * "simple" values such as +-1 (where Hypothesis shrinks to) make sums cancel
      exactly, e.g. db2 = sum(dr) = 0, and a true zero against 1e-11 of noise is a
      relative error of 1; continuous random values make that a measure-zero event.
    Then b1 is shifted so that no pre-activation lies near relu's kink.
    """
    B = draw(st.integers(1, 4))
    D = draw(st.integers(1, 5))
    H = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def signed(*shape):
        return (rng.uniform(0.1, 2.0, shape) * rng.choice([-1.0, 1.0], shape)).astype(dtype)

    x, W1, b1, W2, b2, dr = signed(B, D), signed(D, H), signed(H), signed(H, 1), signed(1), signed(B, 1)
    return x, W1, away_from_kink(x, W1, b1), W2, b2, dr


def random_inputs(rng, B=5, D=4, H=7, dtype=np.float64):
    x = rng.standard_normal((B, D)).astype(dtype)
    W1 = rng.standard_normal((D, H)).astype(dtype)
    b1 = rng.standard_normal(H).astype(dtype)
    W2 = rng.standard_normal((H, 1)).astype(dtype)
    b2 = rng.standard_normal(1).astype(dtype)
    dr = rng.standard_normal((B, 1)).astype(dtype)
    return x, W1, b1, W2, b2, dr


def slow_forward_backward(x, W1, b1, W2, b2, dr):
    """The MLP and its backward one scalar at a time: obviously correct, slow."""
    B, D = x.shape
    H = W1.shape[1]
    r = np.zeros((B, 1))
    dx, dW1, db1 = np.zeros((B, D)), np.zeros((D, H)), np.zeros(H)
    dW2, db2 = np.zeros((H, 1)), np.zeros(1)
    for i in range(B):
        r[i, 0] = b2[0]
        for j in range(H):
            a_ij = b1[j] + sum(x[i, k] * W1[k, j] for k in range(D))
            h_ij = a_ij if a_ij > 0 else 0.0
            r[i, 0] += h_ij * W2[j, 0]
            dW2[j, 0] += h_ij * dr[i, 0]
            da_ij = dr[i, 0] * W2[j, 0] if a_ij > 0 else 0.0
            db1[j] += da_ij
            for k in range(D):
                dW1[k, j] += x[i, k] * da_ij
                dx[i, k] += W1[k, j] * da_ij
        db2[0] += dr[i, 0]
    return r, (dx, dW1, db1, dW2, db2)


def model_with(W1, b1, W2, b2):
    """A float64 RewardModel whose parameters are exactly these arrays' values."""
    model = RewardModel(W1.shape[0], W1.shape[1], seed=0, dtype=np.float64)
    model.W1, model.b1, model.W2, model.b2 = W1, b1, W2, b2
    return model


# -- kernels ---------------------------------------------------------------------


@given(mlp_inputs())
def test_reward_mlp_backward_matches_finite_differences(inputs):
    x, W1, b1, W2, b2, dr = inputs
    _, cache = reward_mlp_forward(x, W1, b1, W2, b2)
    grads = reward_mlp_backward(dr, cache)
    check_gradients(
        lambda *args: reward_mlp_forward(*args)[0],
        [x, W1, b1, W2, b2],
        grads,
        dout=dr,
        tol=1e-7,
        names=["x", "W1", "b1", "W2", "b2"],
    )


def test_away_from_kink_moves_every_pre_activation_off_zero(rng):
    # The strategy's guarantee, checked on inputs built to sit on the kink.
    x, W1, b1, _, _, _ = random_inputs(rng)
    b1_on_kink = -(x @ W1)[2]  # row 2's pre-activations are all exactly 0
    shifted = away_from_kink(x, W1, b1_on_kink)
    assert np.min(np.abs(x @ W1 + shifted)) >= KINK_MARGIN


def test_reward_mlp_matches_slow_loop(rng):
    x, W1, b1, W2, b2, dr = random_inputs(rng, B=6, D=3, H=5)
    r, cache = reward_mlp_forward(x, W1, b1, W2, b2)
    grads = reward_mlp_backward(dr, cache)
    r_slow, grads_slow = slow_forward_backward(x, W1, b1, W2, b2, dr)
    np.testing.assert_allclose(r, r_slow, rtol=1e-12, atol=1e-12)
    for name, g, g_slow in zip(["dx", "dW1", "db1", "dW2", "db2"], grads, grads_slow):
        assert g.shape == g_slow.shape, name
        np.testing.assert_allclose(g, g_slow, rtol=1e-12, atol=1e-12, err_msg=name)


def test_reward_mlp_backward_does_not_mutate_or_alias(rng):
    x, W1, b1, W2, b2, dr = random_inputs(rng)
    r, cache = reward_mlp_forward(x, W1, b1, W2, b2)
    inputs = {"x": x, "W1": W1, "b1": b1, "W2": W2, "b2": b2, "dr": dr, "r": r}
    before = {k: v.copy() for k, v in inputs.items()}
    cache_before = {k: v.copy() for k, v in cache.items()}
    grads = reward_mlp_backward(dr, cache)
    for k, v in inputs.items():
        np.testing.assert_array_equal(v, before[k], err_msg=f"{k} was modified")
    for k, v in cache.items():
        np.testing.assert_array_equal(v, cache_before[k], err_msg=f"cache[{k!r}] was modified")
    for g in grads:
        for k, v in list(inputs.items()) + [(f"cache[{k!r}]", v) for k, v in cache.items()]:
            assert not np.shares_memory(g, v), f"a gradient shares memory with {k}"


def test_relu_gradient_at_the_kink_is_zero(rng):
    # relu has no derivative at a = 0; the convention (PyTorch's too) is 0 there.
    x, W1, _, W2, b2, dr = random_inputs(rng, B=3, D=2, H=4)
    b1 = -(x @ W1)[1]  # row 1's pre-activations are exactly 0 (up to rounding)
    _, cache = reward_mlp_forward(x, W1, b1, W2, b2)
    cache["a"][1] = 0.0  # make "up to rounding" exact
    dx, *_ = reward_mlp_backward(dr, cache)
    np.testing.assert_array_equal(dx[1], 0.0)


def test_reward_mlp_forward_keeps_pre_activation_intact(rng):
    # relu must not be applied in place: backward needs the signs of a.
    x, W1, b1, W2, b2, _ = random_inputs(rng)
    _, cache = reward_mlp_forward(x, W1, b1, W2, b2)
    np.testing.assert_array_equal(cache["a"], x @ W1 + b1)
    assert (cache["a"] < 0).any()
    assert not np.shares_memory(cache["a"], cache["h"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reward_mlp_dtype_follows_inputs(xp, dtype):
    rng = np.random.default_rng(1)
    arrays = [xp.asarray(a) for a in random_inputs(rng, dtype=dtype)]
    x, W1, b1, W2, b2, dr = arrays
    r, cache = reward_mlp_forward(x, W1, b1, W2, b2)
    assert r.dtype == dtype and r.shape == (x.shape[0], 1)
    assert get_array_module(r) is xp
    for g, p in zip(reward_mlp_backward(dr, cache), [x, W1, b1, W2, b2]):
        assert g.dtype == dtype and g.shape == p.shape
        assert get_array_module(g) is xp


@pytest.mark.torch
def test_reward_mlp_matches_torch_autograd(rng):
    torch = pytest.importorskip("torch")
    x, W1, b1, W2, b2, dr = random_inputs(rng)
    r, cache = reward_mlp_forward(x, W1, b1, W2, b2)
    grads = reward_mlp_backward(dr, cache)
    t = [torch.tensor(a, requires_grad=True) for a in (x, W1, b1, W2, b2)]
    r_t = torch.relu(t[0] @ t[1] + t[2]) @ t[3] + t[4]
    r_t.backward(torch.tensor(dr))
    np.testing.assert_allclose(r, r_t.detach().numpy(), rtol=1e-12, atol=1e-12)
    for g, tt in zip(grads, t):
        np.testing.assert_allclose(g, tt.grad.numpy(), rtol=1e-12, atol=1e-12)


# -- RewardModel: the course's interface on top of Parameters -----------------------


def test_reward_model_interface(xp):
    model = RewardModel(5, hidden_dim=8, seed=0)
    assert model.W1.shape == (5, 8) and model.b1.shape == (8,)
    assert model.W2.shape == (8, 1) and model.b2.shape == (1,)
    assert all(a.dtype == np.float32 for a in (model.W1, model.b1, model.W2, model.b2))
    assert get_array_module(model.W1) is xp
    named = dict(model.named_parameters())
    assert list(named) == ["W1", "b1", "W2", "b2"]
    assert all(isinstance(p, Parameter) for p in named.values())
    # The arrays and grads the course names are the Parameters' own arrays.
    for name, p in named.items():
        assert getattr(model, name) is p.data
        assert model.grads[name] is p.grad
    assert set(model.grads) == {"W1", "b1", "W2", "b2"}
    assert model.num_parameters() == 5 * 8 + 8 + 8 + 1


def test_reward_model_default_hidden_dim_and_dtype_keyword():
    model = RewardModel(3)
    assert model.W1.shape == (3, 256)
    assert RewardModel(3, 4, dtype=np.float64).W2.dtype == np.float64


def test_reward_model_he_initialisation():
    D, H = 256, 256
    model = RewardModel(D, H, seed=3)
    n1 = D * H
    # The sample std of n normal draws has relative standard error 1/sqrt(2n).
    assert abs(model.W1.std() / math.sqrt(2.0 / D) - 1) < 5 / math.sqrt(2 * n1)
    assert abs(model.W1.mean()) < 5 * math.sqrt(2.0 / D) / math.sqrt(n1)
    assert not model.b1.any() and not model.b2.any()
    # W2 has only H entries: check it against its own (wider) sampling error.
    assert abs(model.W2.std() / math.sqrt(2.0 / H) - 1) < 5 / math.sqrt(2 * H)


def test_reward_model_seed_is_deterministic():
    a, b, c = RewardModel(4, 6, seed=7), RewardModel(4, 6, seed=7), RewardModel(4, 6, seed=8)
    np.testing.assert_array_equal(a.W1, b.W1)
    np.testing.assert_array_equal(a.W2, b.W2)
    assert not np.array_equal(a.W1, c.W1)


def test_reward_model_forward_backward_is_the_kernel(rng):
    x, W1, b1, W2, b2, dr = random_inputs(rng)
    model = model_with(W1, b1, W2, b2)
    r = model.forward(x)
    dx = model.backward(dr)
    r_k, cache = reward_mlp_forward(x, W1, b1, W2, b2)
    dx_k, *param_grads = reward_mlp_backward(dr, cache)
    np.testing.assert_array_equal(r, r_k)
    np.testing.assert_array_equal(dx, dx_k)
    for name, g in zip(["W1", "b1", "W2", "b2"], param_grads):
        np.testing.assert_array_equal(model.grads[name], g)


def test_reward_model_backward_accumulates_and_zero_grad_clears(rng):
    x, W1, b1, W2, b2, dr = random_inputs(rng)
    model = model_with(W1, b1, W2, b2)
    model.forward(x)
    model.backward(dr)
    once = {k: v.copy() for k, v in model.grads.items()}
    model.forward(x)
    model.backward(dr)
    for k in once:
        np.testing.assert_allclose(model.grads[k], 2 * once[k], rtol=1e-12)
    model.zero_grad()
    assert all(not g.any() for g in model.grads.values())


def test_reward_model_accepts_flat_grad_reward(rng):
    x, W1, b1, W2, b2, dr = random_inputs(rng)
    model_a, model_b = model_with(W1, b1, W2, b2), model_with(W1, b1, W2, b2)
    model_a.forward(x)
    dx_a = model_a.backward(dr)
    model_b.forward(x)
    dx_b = model_b.backward(dr[:, 0])  # (B,), as reward_model_loss returns for (B,) rewards
    np.testing.assert_array_equal(dx_a, dx_b)
    for k in model_a.grads:
        np.testing.assert_array_equal(model_a.grads[k], model_b.grads[k])


def chosen_rejected_setup(rng, B=4):
    x, W1, b1, W2, b2, _ = random_inputs(rng, B=2 * B)
    return x[:B], x[B:], (W1, b1, W2, b2)


def test_two_stateful_forwards_then_backward_raises(rng):
    x_c, x_r, params = chosen_rejected_setup(rng)
    model = model_with(*params)
    r_c, r_r = model.forward(x_c), model.forward(x_r)
    _, g_c, _ = reward_model_loss(r_c, r_r)
    with pytest.raises(ValueError, match=r"2 forward\(\) calls are pending.*concatenate.*score\(x\)"):
        model.backward(g_c)
    assert all(not g.any() for g in model.grads.values()), "nothing may be accumulated"
    # The ambiguous forwards were discarded: the stateful pattern works again.
    model.forward(x_c)
    model.backward(g_c)
    assert model.grads["W1"].any()


def test_backward_without_pending_forward_raises(rng):
    x_c, _, params = chosen_rejected_setup(rng)
    model = model_with(*params)
    g = np.ones((x_c.shape[0], 1))
    with pytest.raises(ValueError, match="there is none"):
        model.backward(g)
    model.forward(x_c)
    model.backward(g)
    with pytest.raises(ValueError, match="there is none"):  # a forward is backpropagated once
        model.backward(g)


def test_predict_does_not_leave_a_pending_forward(rng):
    x_c, x_r, params = chosen_rejected_setup(rng)
    model = model_with(*params)
    model.predict(x_r)  # evaluation: nothing kept
    r = model.forward(x_c)
    np.testing.assert_array_equal(model.predict(x_c), r)
    model.backward(np.ones_like(r))  # exactly one pending forward: fine


def test_clear_pending_forgets_forwards(rng):
    x_c, x_r, params = chosen_rejected_setup(rng)
    model = model_with(*params)
    model.forward(x_c)
    model.forward(x_r)
    model.clear_pending()
    with pytest.raises(ValueError, match="there is none"):
        model.backward(np.ones((x_c.shape[0], 1)))


def test_explicit_caches_equal_one_concatenated_forward(rng):
    x_c, x_r, params = chosen_rejected_setup(rng)

    # One forward on the concatenation, one backward: the recommended way.
    concat = model_with(*params)
    r = concat.forward(np.concatenate([x_c, x_r]))
    B = x_c.shape[0]
    loss_concat, g_c, g_r = reward_model_loss(r[:B], r[B:])
    dx_concat = concat.backward(np.concatenate([g_c, g_r]))

    # Two explicit-cache calls, backpropagated in the opposite order.
    split = model_with(*params)
    r_c, cache_c = split.score(x_c)
    r_r, cache_r = split.score(x_r)
    loss_split, g_c2, g_r2 = reward_model_loss(r_c, r_r)
    dx_r = split.backward(g_r2, cache_r)
    dx_c = split.backward(g_c2, cache_c)

    assert loss_split == pytest.approx(loss_concat, rel=1e-12)
    np.testing.assert_allclose(np.concatenate([dx_c, dx_r]), dx_concat, rtol=1e-12, atol=1e-15)
    for k in concat.grads:
        np.testing.assert_allclose(split.grads[k], concat.grads[k], rtol=1e-12, atol=1e-15, err_msg=k)


def test_explicit_cache_with_pending_forwards(rng):
    # Explicit caches work whatever stateful forwards are pending, and passing
    # the pending forward's own cache consumes it.
    x_c, x_r, params = chosen_rejected_setup(rng)
    model = model_with(*params)
    g = np.ones((x_c.shape[0], 1))
    r_c, cache_c = model.score(x_c)
    model.forward(x_r)
    model.backward(g, cache_c)  # does not touch the pending forward
    model.backward(g)  # the pending one
    with pytest.raises(ValueError, match="there is none"):
        model.backward(g)
    model.forward(x_r)
    model.backward(g, model._pending)
    with pytest.raises(ValueError, match="there is none"):
        model.backward(g)


def test_reward_model_gradient_check_through_the_class(rng):
    # The wrapper end to end: d(sum(r * dr))/dW1 via the model's own forward.
    x, W1, b1, W2, b2, dr = random_inputs(rng)
    b1 = away_from_kink(x, W1, b1)
    model = model_with(W1, b1, W2, b2)
    model.forward(x)
    dx = model.backward(dr)

    def f(x_, W1_):
        return model_with(W1_, b1, W2, b2).predict(x_)

    check_gradients(f, [x, W1], [dx, model.grads["W1"]], dout=dr, tol=1e-7, names=["x", "W1"])


@pytest.mark.parametrize(
    "x_shape, match",
    [((3, 4), r"expected shape \(B, 5\).*got \(3, 4\)"), ((5,), r"expected shape \(B, 5\).*got \(5,\)"),
     ((2, 3, 5), r"got \(2, 3, 5\)")],
)
def test_reward_model_rejects_wrong_input_shape(x_shape, match):
    model = RewardModel(5, 4, seed=0)
    x = np.zeros(x_shape, dtype=np.float32)
    for call in (model.forward, model.score, model.predict):
        with pytest.raises(ValueError, match=match):
            call(x)


def test_reward_model_rejects_non_array_input():
    with pytest.raises(TypeError, match=r"x: expected an array of shape \(B, 2\), got list"):
        RewardModel(2, 3, seed=0).forward([[1.0, 2.0]])


def test_reward_model_rejects_wrong_grad_reward_shape(rng):
    x_c, _, params = chosen_rejected_setup(rng)
    model = model_with(*params)
    model.forward(x_c)
    with pytest.raises(ValueError, match=r"grad_reward: expected shape \(4, 1\) or \(4,\).*got \(8, 1\)"):
        model.backward(np.ones((8, 1)))


def test_reward_model_rejects_a_bad_cache(rng):
    x_c, _, params = chosen_rejected_setup(rng)
    model = model_with(*params)
    r, _ = model.score(x_c)
    with pytest.raises(TypeError, match="cache: expected the dict returned by score"):
        model.backward(np.ones_like(r), r)  # the rewards passed where the cache belongs


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_dim": 0}, "input_dim: expected a positive int, got 0"),
        ({"input_dim": 2.5}, "input_dim: expected a positive int, got 2.5"),
        ({"input_dim": 3, "hidden_dim": -1}, "hidden_dim: expected a positive int, got -1"),
        ({"input_dim": 3, "dtype": np.int32}, "dtype: expected a floating dtype"),
    ],
)
def test_reward_model_rejects_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RewardModel(**kwargs)


def test_parameter_setter_writes_in_place_and_checks_shape(rng):
    model = RewardModel(3, 4, seed=0)
    p = dict(model.named_parameters())["W1"]
    new = rng.standard_normal((3, 4))
    model.W1 = new
    assert model.W1 is p.data and model.W1.dtype == np.float32  # same array, dtype kept
    np.testing.assert_array_equal(model.W1, new.astype(np.float32))
    with pytest.raises(ValueError, match=r"RewardModel.W1: expected an array of shape \(3, 4\), got \(4, 3\)"):
        model.W1 = new.T


def test_state_dict_round_trip_and_optimizer_see_the_course_arrays(rng):
    model = RewardModel(3, 4, seed=0)
    other = RewardModel(3, 4, seed=1)
    other.load_state_dict(model.state_dict())
    assert sorted(model.state_dict()) == ["W1", "W2", "b1", "b2"]
    np.testing.assert_array_equal(other.W1, model.W1)
    # An optimizer stepping the Parameters moves the arrays the course reads.
    x = rng.standard_normal((5, 3)).astype(np.float32)
    r = model.forward(x)
    model.backward(np.ones_like(r))
    W1_before, grad = model.W1.copy(), model.grads["W1"].copy()
    SGD(model.parameters(), lr=0.1).step()
    np.testing.assert_allclose(model.W1, W1_before - np.float32(0.1) * grad, rtol=1e-6)


# -- trainer ---------------------------------------------------------------------


def split_data(n_train, n_test, dim, seed=0):
    data = make_preference_features(n_train + n_test, dim, seed=seed)
    train = (data.x_chosen[:n_train], data.x_rejected[:n_train])
    test = (data.x_chosen[n_train:], data.x_rejected[n_train:])
    # The ceiling on the test pairs: how often the true reward agrees with the label.
    bayes_test = float((data.reward_chosen[n_train:] > data.reward_rejected[n_train:]).mean())
    return train, test, bayes_test


def test_training_lifts_held_out_accuracy_towards_the_bayes_ceiling(xp):
    n_test = 1000
    train, test, bayes = split_data(2000, n_test, dim=8)
    model = RewardModel(8, 64, seed=0)
    before = evaluate_reward_model(model, *test)
    history = train_reward_model(
        model, *train, epochs=15, batch_size=64, optimizer=AdamW(model.parameters(), lr=3e-3), eval_data=test
    )
    after = evaluate_reward_model(model, *test)
    # Clearly above chance: more than half the way from 0.5 to the ceiling, and
    # far outside what guessing gives (4 binomial standard errors at p = 0.5).
    threshold = max(0.5 + 0.5 * (bayes - 0.5), 0.5 + 4 * math.sqrt(0.25 / n_test))
    assert bayes > threshold  # the task itself leaves room above chance
    assert after["accuracy"] > threshold, (after, bayes)
    assert after["accuracy"] > before["accuracy"]
    assert after["loss"] < before["loss"]
    assert after["margin"] > 0
    assert history["loss"][-1] < history["loss"][0]
    assert history["eval_accuracy"][-1] == after["accuracy"]


def test_history_has_one_entry_per_epoch():
    train, test, _ = split_data(100, 50, dim=3)
    model = RewardModel(3, 8, seed=0)
    history = train_reward_model(model, *train, 3, 32, SGD(model.parameters(), lr=0.1), eval_data=test)
    assert history["epoch"] == [1, 2, 3]
    for key in ("loss", "accuracy", "margin", "eval_loss", "eval_accuracy", "eval_margin"):
        assert len(history[key]) == 3 and all(isinstance(v, float) for v in history[key]), key
    assert "eval_loss" not in train_reward_model(model, *train, 1, 32, SGD(model.parameters(), lr=0.1))


def test_training_is_deterministic_given_seeds():
    train, _, _ = split_data(200, 1, dim=4)
    runs = []
    for _ in range(2):
        model = RewardModel(4, 8, seed=0)
        h = train_reward_model(model, *train, 2, 16, SGD(model.parameters(), lr=0.1), seed=5)
        runs.append((h, model.state_dict()))
    assert runs[0][0] == runs[1][0]
    for k in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][k], runs[1][1][k])


@pytest.mark.parametrize("loss_margin", [None, 0.5, "per-pair"])
def test_trainer_steps_equal_manual_sgd_steps(rng, loss_margin):
    # Full-batch SGD: each epoch is one step, so the trainer's result can be
    # replayed by hand from the kernels and the loss.
    N, D, H, lr = 12, 3, 5, 0.05
    x_c = rng.standard_normal((N, D))
    x_r = rng.standard_normal((N, D))
    margin = rng.uniform(0, 1, N) if loss_margin == "per-pair" else loss_margin
    model = RewardModel(D, H, seed=0, dtype=np.float64)
    params = [model.W1.copy(), model.b1.copy(), model.W2.copy(), model.b2.copy()]
    history = train_reward_model(model, x_c, x_r, 3, N, SGD(model.parameters(), lr=lr), loss_margin=margin)

    losses = []
    for _ in range(3):
        r, cache = reward_mlp_forward(np.concatenate([x_c, x_r]), *params)
        loss, g_c, g_r = reward_model_loss(r[:N], r[N:], margin=margin)
        losses.append(loss)
        _, *grads = reward_mlp_backward(np.concatenate([g_c, g_r]), cache)
        params = [p - lr * g for p, g in zip(params, grads)]
    for name, p in zip(["W1", "b1", "W2", "b2"], params):
        np.testing.assert_allclose(getattr(model, name), p, rtol=1e-12, atol=1e-14, err_msg=name)
    np.testing.assert_allclose(history["loss"], losses, rtol=1e-12)


def test_trainer_scores_chosen_and_rejected_in_one_forward():
    train, _, _ = split_data(50, 1, dim=3)
    model = RewardModel(3, 4, seed=0)
    calls = []
    score = model.score

    def spy(x):
        calls.append(x.shape[0])
        return score(x)

    model.score = spy
    train_reward_model(model, *train, epochs=2, batch_size=16, optimizer=SGD(model.parameters(), lr=0.1))
    # 50 pairs in batches of 16: 16, 16, 16, 2 pairs -> forwards of 2B rows, 4 per epoch.
    assert calls == [32, 32, 32, 4] * 2


def test_evaluate_reward_model_matches_loss_and_chunking(xp):
    train, _, _ = split_data(70, 1, dim=3)
    model = RewardModel(3, 6, seed=0)
    metrics = evaluate_reward_model(model, *train)
    r_c, r_r = model.predict(train[0]), model.predict(train[1])
    loss, _, _ = reward_model_loss(r_c, r_r)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-6)
    assert metrics["accuracy"] == reward_accuracy(r_c, r_r)
    assert metrics["margin"] == pytest.approx(float(to_numpy(r_c - r_r).mean()), rel=1e-5)
    chunked = evaluate_reward_model(model, *train, batch_size=16)
    for k in metrics:
        assert chunked[k] == pytest.approx(metrics[k], rel=1e-5, abs=1e-7)
    assert all(not g.any() for g in model.grads.values()), "evaluation must not touch gradients"
    model.forward(train[0])  # and it left no pending forward behind
    model.backward(xp.ones((70, 1), dtype=xp.float32))


class NoStep:
    def zero_grad(self):
        pass


@pytest.mark.parametrize(
    "change, error, match",
    [
        ({"x_rejected": np.zeros((9, 3), np.float32)}, ValueError, r"same shape.*\(10, 3\) and \(9, 3\)"),
        ({"x_chosen": np.zeros(10, np.float32)}, ValueError, r"x_chosen: expected shape \(N, D\), got \(10,\)"),
        ({"epochs": 0}, ValueError, "epochs: expected a positive int, got 0"),
        ({"batch_size": 0}, ValueError, "batch_size: expected a positive int, got 0"),
        ({"optimizer": NoStep()}, TypeError, r"optimizer: .*NoStep has no step\(\)"),
        ({"model": object()}, TypeError, r"model: .*object has no score\(\)"),
        ({"loss_margin": np.zeros(3)}, ValueError, r"loss_margin: .*shape \(10,\).*got \(3,\)"),
        ({"eval_data": np.zeros((10, 3))}, TypeError, "eval_data: expected a pair"),
    ],
)
def test_train_reward_model_rejects_bad_arguments(change, error, match):
    model = RewardModel(3, 4, seed=0)
    args = {
        "model": model,
        "x_chosen": np.zeros((10, 3), np.float32),
        "x_rejected": np.zeros((10, 3), np.float32),
        "epochs": 1,
        "batch_size": 4,
        "optimizer": SGD(model.parameters(), lr=0.1),
    }
    args.update(change)
    with pytest.raises(error, match=match):
        train_reward_model(**args)


def test_same_seed_same_weights_on_every_backend(xp):
    from alignment_np import backend as B
    from alignment_np.backend import to_numpy

    here = RewardModel(4, hidden_dim=6, seed=11)
    B.set_backend("numpy")
    try:
        reference = RewardModel(4, hidden_dim=6, seed=11)
    finally:
        B.set_backend("cupy" if xp is not np else "numpy")
    for name in ("W1", "b1", "W2", "b2"):
        np.testing.assert_array_equal(to_numpy(getattr(here, name)), getattr(reference, name))


# -- non-finite numbers ----------------------------------------------------------


class _DivergesAtCall(RewardModel):
    """A RewardModel whose rewards turn to NaN (or inf) from the n-th score() on: a diverged run."""

    def __init__(self, n, bad, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.n, self.bad, self.calls, self.params_at_bad_call = n, bad, 0, None

    def score(self, x):
        r, cache = super().score(x)
        self.calls += 1
        if self.calls >= self.n:
            self.params_at_bad_call = [p.data.copy() for p in self.parameters()]
            r = r.copy()
            r[0, 0] = self.bad
        return r, cache


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_training_stops_before_the_update_of_a_diverged_step(bad):
    from alignment_np.checks import NonFiniteLossError

    data = make_preference_features(12, 3, seed=0)
    model = _DivergesAtCall(3, bad, 3, 8, seed=0)
    opt = SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match=rf"step 3: reward is {bad} \(not finite\); the update was not applied"):
        train_reward_model(model, data.x_chosen, data.x_rejected, epochs=2, batch_size=4, optimizer=opt)
    # The model still holds the parameters it had when the bad step began: no update was applied.
    for p, before in zip(model.parameters(), model.params_at_bad_call):
        np.testing.assert_array_equal(p.data, before)


@pytest.mark.parametrize("which", ["x_chosen", "x_rejected"])
def test_non_finite_features_are_refused_at_the_start(which):
    data = make_preference_features(6, 3, seed=0)
    x = {"x_chosen": data.x_chosen.copy(), "x_rejected": data.x_rejected.copy()}
    x[which][2, 1] = np.nan
    model = RewardModel(3, 4, seed=0)
    with pytest.raises(ValueError, match=rf"{which}: expected finite values, got nan at index \(2, 1\)"):
        evaluate_reward_model(model, x["x_chosen"], x["x_rejected"])
    with pytest.raises(ValueError, match=rf"{which}: expected finite values"):
        train_reward_model(model, x["x_chosen"], x["x_rejected"], epochs=1, batch_size=2, optimizer=SGD(model.parameters(), lr=0.1))


def test_evaluating_a_model_with_nan_rewards_says_which_half():
    data = make_preference_features(6, 3, seed=0)
    model = RewardModel(3, 4, seed=0)
    model.b2 = np.array([np.nan], dtype=np.float32)
    with pytest.raises(ValueError, match=r"model\(x_chosen\): expected finite values, got nan"):
        evaluate_reward_model(model, data.x_chosen, data.x_rejected)
