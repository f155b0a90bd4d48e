"""PPOBuffer: the rollout memory of one PPO iteration.

PPO alternates two phases. In the *rollout* phase the current policy acts and
every step is recorded: the state s_t, the action a_t, the reward r_t, the
critic's value V(s_t), the log-probability log pi_old(a_t | s_t) of the action
under the policy that chose it, and whether the episode ended at t. In the
*update* phase the buffer turns rewards and values into advantages and returns
with GAE (``compute_gae``) and hands everything over as stacked arrays for a few
epochs of minibatch updates; then it is cleared and the cycle starts again.

One buffer holds one stream of T steps, possibly spanning several episodes:
``done=True`` marks the last step of an episode, and GAE does not bootstrap
across it.

Usage::

    buffer = PPOBuffer(gamma=0.99, lam=0.95)
    for t in range(T):
        buffer.add(state, action, reward, value, log_prob, done)
    advantages, returns = buffer.compute_advantages(last_value=V(s_T))
    states, actions, old_log_probs, advantages, returns = buffer.get()
"""

from __future__ import annotations

from ..backend import get_array_module
from ..checks import check_finite_array, check_float_array
from .gae import _check_unit_interval, compute_gae


def _scalar(name: str, x, finite: bool = True):
    """``x`` as a 0-d array (a Python number or a size-1 array), or ValueError / TypeError.

    finite: refuse NaN and infinities (rewards, values and log-probs feed GAE
    and the PPO loss, which refuse them too: better to say so at the step).
    """
    if isinstance(x, (bool, get_array_module(x).bool_)):
        raise TypeError(f"{name}: expected a number, got bool {x!r}")
    arr = check_float_array(name, x, integers=True)
    if arr.size != 1:
        raise ValueError(f"{name} must be a scalar (one number per step), got shape {tuple(arr.shape)}")
    arr = arr.reshape(())
    if finite:
        check_finite_array(name, arr)
    return arr


def _done(done) -> bool:
    """True, False, 0, 1 and their NumPy / 0-d array forms; ValueError for anything else."""
    try:
        arr = None if isinstance(done, (str, bytes)) else get_array_module(done).asarray(done)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.size != 1 or arr.dtype.kind not in "biuf" or arr.reshape(()) not in (0, 1):
        raise ValueError(f"done must be a boolean (or 0/1), got {done!r}")
    return bool(arr.reshape(()))


def _any_array(name: str, x):
    """``x`` as an array of its own module (an observation or action of any shape), or TypeError."""
    try:
        return get_array_module(x).asarray(x)
    except (TypeError, ValueError) as err:  # e.g. a ragged list
        raise TypeError(f"{name}: expected an array or a number, got {type(x).__name__} that is not one ({err})") from None


class PPOBuffer:
    """Stores one rollout of T steps and computes GAE advantages for it.

    gamma: discount in [0, 1].
    lam:   GAE lambda in [0, 1].

    Stacked arrays (from ``get`` / ``as_arrays``) have T on the first axis:
    states (T, *state_shape), actions (T, *action_shape), rewards, values,
    log_probs, dones, advantages and returns (T,). Their dtypes follow what
    was added (Python floats become float64; float32 arrays stay float32).
    """

    def __init__(self, gamma=0.99, lam=0.95):
        self.gamma = _check_unit_interval("gamma", gamma)
        self.lam = _check_unit_interval("lam", lam)
        self.clear()

    def clear(self) -> None:
        """Forget every stored step (start a new rollout)."""
        self.states = []
        self.actions = []
        self.rewards = []
        self.values = []
        self.log_probs = []
        self.dones = []
        self.advantages = None
        self.returns = None

    def __len__(self) -> int:
        return len(self.rewards)

    def add(self, state, action, reward, value, log_prob, done=False) -> None:
        """Record one step.

        state:    the observation s_t (any shape, the same for every step).
        action:   the action a_t (a token id, an int, or an array).
        reward:   scalar r_t (finite: NaN and infinities raise ValueError).
        value:    scalar V(s_t) from the critic (finite).
        log_prob: scalar log pi_old(a_t | s_t) of the action taken (finite).
        done:     True if the episode ended at this step.
        """
        state = _any_array("state", state)
        action = _any_array("action", action)
        if self.states and state.shape != self.states[0].shape:
            raise ValueError(
                f"state has shape {tuple(state.shape)}, but earlier states in this buffer "
                f"have shape {tuple(self.states[0].shape)}"
            )
        reward = _scalar("reward", reward)
        value = _scalar("value", value)
        log_prob = _scalar("log_prob", log_prob)
        done = _done(done)
        self.states.append(state)
        self.actions.append(action)
        self.rewards.append(reward)
        self.values.append(value)
        self.log_probs.append(log_prob)
        self.dones.append(bool(done))
        # Advantages computed before this step no longer describe the buffer.
        self.advantages = None
        self.returns = None

    def _stack(self, items):
        xp = get_array_module(*items)
        return xp.stack([xp.asarray(item) for item in items])

    def compute_advantages(self, last_value=0.0):
        """GAE over the stored steps; returns ``(advantages, returns)``, each (T,).

        last_value: V(s_T) of the state after the last stored step. It is used
        only if the last step did not end an episode (``done=False``), i.e. the
        rollout was cut off mid-episode and the future must be bootstrapped.
        Raises ValueError on an empty buffer.
        """
        if len(self) == 0:
            raise ValueError("cannot compute advantages of an empty PPOBuffer: add() at least one step first")
        rewards = self._stack(self.rewards)
        values = self._stack(self.values)
        xp = get_array_module(rewards, values)
        dones = xp.asarray(self.dones, dtype=bool)
        self.advantages, self.returns = compute_gae(
            rewards, values, gamma=self.gamma, lam=self.lam, last_value=last_value, dones=dones
        )
        return self.advantages, self.returns

    def as_arrays(self) -> dict:
        """Every stored field stacked along T, plus advantages and returns.

        Keys: states, actions, rewards, values, log_probs, dones, advantages,
        returns. Raises ValueError on an empty buffer and RuntimeError if
        ``compute_advantages`` was not called after the last ``add``.
        """
        if len(self) == 0:
            raise ValueError("the PPOBuffer is empty: add() steps before reading it")
        if self.advantages is None:
            raise RuntimeError(
                "advantages are not computed for the current contents: "
                "call compute_advantages(last_value) after the last add()"
            )
        rewards = self._stack(self.rewards)
        return {
            "states": self._stack(self.states),
            "actions": self._stack(self.actions),
            "rewards": rewards,
            "values": self._stack(self.values),
            "log_probs": self._stack(self.log_probs),
            "dones": get_array_module(rewards).asarray(self.dones, dtype=bool),
            "advantages": self.advantages,
            "returns": self.returns,
        }

    def get(self):
        """``(states, actions, log_probs, advantages, returns)`` stacked along T.

        The five arrays a PPO update needs; see ``as_arrays`` for all fields.
        """
        data = self.as_arrays()
        return data["states"], data["actions"], data["log_probs"], data["advantages"], data["returns"]

    def __repr__(self) -> str:
        return f"PPOBuffer(gamma={self.gamma}, lam={self.lam}, steps={len(self)})"
