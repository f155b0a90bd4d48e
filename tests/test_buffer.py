"""PPOBuffer: storing a rollout, GAE across episode ends, stacking, validation."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from alignment_np.backend import to_numpy
from alignment_np.rl.buffer import PPOBuffer
from alignment_np.rl.gae import compute_gae, compute_gae_reference

FLOATS = st.floats(-5.0, 5.0, allow_nan=False, allow_infinity=False)


def fill(buffer, rewards, values, log_probs, dones, state_dim=3):
    for t in range(len(rewards)):
        state = np.full(state_dim, float(t))
        buffer.add(state, t % 2, rewards[t], values[t], log_probs[t], done=dones[t])


@given(
    T=st.integers(1, 12),
    gamma=st.floats(0.0, 1.0),
    lam=st.floats(0.0, 1.0),
    last_value=FLOATS,
    data=st.data(),
)
def test_compute_advantages_is_gae_with_dones(T, gamma, lam, last_value, data):
    rewards = data.draw(hnp.arrays(np.float64, (T,), elements=FLOATS), label="rewards")
    values = data.draw(hnp.arrays(np.float64, (T,), elements=FLOATS), label="values")
    dones = data.draw(hnp.arrays(np.bool_, (T,)), label="dones")
    buffer = PPOBuffer(gamma=gamma, lam=lam)
    fill(buffer, list(rewards), list(values), list(-np.abs(values)), list(dones))
    adv, ret = buffer.compute_advantages(last_value=last_value)
    adv_ref, ret_ref = compute_gae_reference(rewards, values, gamma, lam, last_value, dones=dones)
    np.testing.assert_allclose(adv, adv_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ret, ret_ref, rtol=1e-12, atol=1e-12)


def test_done_separates_episodes_in_one_buffer():
    # Episode 1: steps 0-2 (done at 2); episode 2: steps 3-4, cut off (bootstrapped).
    rewards, values = [1.0, 0.0, 2.0, -1.0, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]
    dones = [False, False, True, False, False]
    buffer = PPOBuffer(gamma=0.9, lam=0.8)
    fill(buffer, rewards, values, [-1.0] * 5, dones)
    adv, _ = buffer.compute_advantages(last_value=0.7)
    first, _ = compute_gae(np.array(rewards[:3]), np.array(values[:3]), 0.9, 0.8, last_value=0.0)
    second, _ = compute_gae(np.array(rewards[3:]), np.array(values[3:]), 0.9, 0.8, last_value=0.7)
    np.testing.assert_allclose(adv, np.concatenate([first, second]), rtol=1e-12)


def test_get_and_as_arrays_stack_along_time():
    buffer = PPOBuffer()
    fill(buffer, [1.0, 2.0, 3.0], [0.5, 0.4, 0.3], [-0.1, -0.2, -0.3], [False, False, True], state_dim=4)
    assert len(buffer) == 3
    adv, ret = buffer.compute_advantages()
    states, actions, log_probs, advantages, returns = buffer.get()
    assert states.shape == (3, 4) and actions.shape == (3,)
    np.testing.assert_array_equal(states[:, 0], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(actions, [0, 1, 0])
    np.testing.assert_array_equal(log_probs, [-0.1, -0.2, -0.3])
    np.testing.assert_array_equal(advantages, adv)
    np.testing.assert_array_equal(returns, ret)
    data = buffer.as_arrays()
    assert set(data) == {"states", "actions", "rewards", "values", "log_probs", "dones", "advantages", "returns"}
    np.testing.assert_array_equal(data["dones"], [False, False, True])
    np.testing.assert_array_equal(data["returns"], data["advantages"] + data["values"])


def test_dtype_follows_what_was_added():
    buffer = PPOBuffer()
    for t in range(3):
        buffer.add(np.zeros(2, np.float32), t, np.float32(1.0), np.float32(0.5), np.float32(-0.3))
    adv, _ = buffer.compute_advantages(last_value=0.0)
    data = buffer.as_arrays()
    assert adv.dtype == np.float32
    assert data["states"].dtype == np.float32 and data["log_probs"].dtype == np.float32


def test_size_one_arrays_are_accepted_as_scalars():
    buffer = PPOBuffer()
    buffer.add(np.zeros(2), 0, np.array([1.0]), np.array([[0.5]]), np.array(-0.3), done=np.array(True))
    buffer.compute_advantages()
    data = buffer.as_arrays()
    assert data["values"].shape == (1,) and data["dones"][0]


def test_clear_and_add_after_compute_invalidate():
    buffer = PPOBuffer()
    fill(buffer, [1.0, 2.0], [0.0, 0.0], [-1.0, -1.0], [False, False])
    buffer.compute_advantages()
    buffer.add(np.zeros(3), 1, 1.0, 0.0, -1.0)
    with pytest.raises(RuntimeError, match=r"call compute_advantages\(last_value\) after the last add"):
        buffer.get()
    buffer.clear()
    assert len(buffer) == 0
    with pytest.raises(ValueError, match="the PPOBuffer is empty"):
        buffer.get()


def test_buffer_on_both_backends(xp):
    buffer = PPOBuffer(gamma=0.9, lam=0.5)
    rewards, values = [1.0, -1.0, 2.0], [0.2, 0.1, 0.0]
    for t in range(3):
        buffer.add(xp.zeros(2), t, xp.asarray(rewards[t]), xp.asarray(values[t]), xp.asarray(-0.5), done=(t == 2))
    adv, ret = buffer.compute_advantages(last_value=1.0)
    assert type(adv) is type(xp.zeros(1))
    adv_ref, ret_ref = compute_gae_reference(
        np.array(rewards), np.array(values), 0.9, 0.5, 1.0, dones=np.array([0, 0, 1])
    )
    np.testing.assert_allclose(to_numpy(adv), adv_ref, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(ret), ret_ref, rtol=1e-12)
    assert buffer.get()[0].shape == (3, 2)


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"gamma": 1.01}, ValueError, r"gamma must lie in \[0, 1\], got 1.01"),
        ({"gamma": -1}, ValueError, r"gamma must lie in \[0, 1\], got -1"),
        ({"lam": -0.5}, ValueError, r"lam must lie in \[0, 1\], got -0.5"),
        ({"lam": None}, TypeError, r"lam must be a real number in \[0, 1\], got NoneType"),
        ({"gamma": True}, TypeError, r"gamma must be a real number"),
    ],
)
def test_constructor_validates(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        PPOBuffer(**kwargs)


def test_empty_buffer_cannot_compute_advantages():
    with pytest.raises(ValueError, match=r"empty PPOBuffer"):
        PPOBuffer().compute_advantages()


@pytest.mark.parametrize(
    "override, match",
    [
        ({"reward": np.ones(2)}, r"reward must be a scalar \(one number per step\), got shape \(2,\)"),
        ({"value": np.ones((1, 2))}, r"value must be a scalar .*got shape \(1, 2\)"),
        ({"log_prob": []}, r"log_prob must be a scalar .*got shape \(0,\)"),
        ({"done": 2}, r"done must be a boolean \(or 0/1\), got"),
        ({"done": "yes"}, r"done must be a boolean \(or 0/1\), got"),
        ({"state": np.zeros(4)}, r"state has shape \(4,\), but earlier states in this buffer have shape \(3,\)"),
        ({"reward": float("nan")}, r"reward: expected finite values, got nan"),
        ({"value": np.inf}, r"value: expected finite values, got inf"),
        ({"log_prob": np.float32(-np.inf)}, r"log_prob: expected finite values, got -inf"),
        ({"done": None}, r"done must be a boolean \(or 0/1\), got None"),
        ({"done": float("nan")}, r"done must be a boolean \(or 0/1\), got nan"),
    ],
)
def test_add_validates(override, match):
    buffer = PPOBuffer()
    buffer.add(np.zeros(3), 0, 1.0, 0.5, -0.2)
    step = {"state": np.zeros(3), "action": 1, "reward": 1.0, "value": 0.5, "log_prob": -0.2, "done": False}
    step.update(override)
    with pytest.raises(ValueError, match=match):
        buffer.add(**step)
    assert len(buffer) == 1  # a rejected step is not stored


@pytest.mark.parametrize(
    "override, match",
    [
        ({"reward": "1.0"}, r"reward: expected a floating-point array \(or integers\), got str"),
        ({"reward": None}, r"reward: expected a floating-point array \(or integers\), got NoneType"),
        ({"value": True}, r"value: expected a number, got bool True"),
        ({"log_prob": {"lp": -1.0}}, r"log_prob: expected a floating-point array \(or integers\), got dict"),
        ({"state": [[1.0], [2.0, 3.0]]}, r"state: expected an array or a number, got list"),
    ],
)
def test_add_refuses_wrong_types_naming_the_argument(override, match):
    buffer = PPOBuffer()
    step = {"state": np.zeros(3), "action": 1, "reward": 1.0, "value": 0.5, "log_prob": -0.2, "done": False}
    step.update(override)
    with pytest.raises(TypeError, match=match):
        buffer.add(**step)
    assert len(buffer) == 0
