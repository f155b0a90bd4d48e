"""KL controllers: how strongly the policy is pulled back towards the reference.

RLHF maximises the reward model's score minus ``beta * KL(pi || pi_ref)``: the
penalty keeps the policy close to the supervised model, so it keeps writing
fluent text instead of exploiting the reward model. ``beta`` (``kl_coef``) can
be fixed, or adapted so that the measured KL tracks a target.

Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences"
(arXiv:1909.08593), Section 2.2, adapt it with a proportional controller:

    xi_t       = clip(KL_t / KL_target - 1, -0.2, 0.2)
    beta_{t+1} = beta_t * (1 + K_beta * xi_t)

(the paper's error e_t; xi_t in the course's notation).

The paper quotes a constant K_beta = 0.1; its released code
(openai/lm-human-preferences) and TRL set ``K_beta = n_steps / horizon``, so
the step size scales with the batch: after ``horizon`` samples with KL far
from its target, beta has moved by a factor of at most about e^0.2. This
module follows the code. KL above target
raises beta (pull back harder); KL below target lowers it. Clipping the error
at +-20% keeps one wild KL estimate from moving beta far. TRL's
``AdaptiveKLController`` has the same interface: ``.value`` and
``update(current_kl, n_steps)``.
"""

from __future__ import annotations

import math
import numbers


def _positive(name: str, value, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (or >= 0), else TypeError / ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return value


def _check_update_args(current_kl, n_steps) -> tuple[float, int]:
    if isinstance(current_kl, (str, bytes, bool)) or type(current_kl).__name__ == "bool_":
        # float("0.5") and float(True) would succeed: a string or a bool is a mistake, not a KL.
        raise TypeError(
            f"current_kl must be a real number (e.g. the batch's mean KL), got {type(current_kl).__name__} {current_kl!r}"
        )
    try:
        kl = float(current_kl)  # a Python number, a NumPy scalar or a 0-d array
    except (TypeError, ValueError):
        raise TypeError(
            f"current_kl must be a real number (e.g. the batch's mean KL), got {type(current_kl).__name__}"
        ) from None
    if not math.isfinite(kl):
        raise ValueError(f"current_kl must be finite, got {kl!r}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral):
        raise TypeError(f"n_steps must be an int, got {type(n_steps).__name__} {n_steps!r}")
    if n_steps < 0:
        raise ValueError(f"n_steps must be >= 0, got {n_steps}")
    return kl, int(n_steps)


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, Section 2.2).

    init_kl_coef: starting beta, > 0 (Ziegler et al. and TRL use 0.2 or 0.05).
    target:       the KL (in nats per sequence, as measured) to track, > 0.
    horizon:      how many steps it takes to move beta by the clipped error, > 0
                  (10000 in Ziegler et al.).

    ``value`` is the current coefficient.
    """

    def __init__(self, init_kl_coef, target, horizon):
        self.value = _positive("init_kl_coef", init_kl_coef)
        self.target = _positive("target", target)
        self.horizon = _positive("horizon", horizon)

    def update(self, current_kl, n_steps) -> float:
        """Move ``value`` towards the coefficient that gives KL = target; return it.

        current_kl: the KL measured on the latest batch (a number).
        n_steps:    how many samples (or steps) that batch contained, int >= 0.

        The multiplier ``1 + error * n_steps / horizon`` must stay positive:
        with the error clipped at -0.2 that needs n_steps < 5 * horizon;
        otherwise ValueError.
        """
        current_kl, n_steps = _check_update_args(current_kl, n_steps)
        # Proportional error, clipped at +-20% so one outlier batch cannot swing beta.
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        multiplier = 1.0 + error * n_steps / self.horizon  # beta_{t+1} = beta_t (1 + K_beta xi_t), K_beta = n_steps / horizon
        if multiplier <= 0:
            raise ValueError(
                f"n_steps={n_steps} is too large for horizon={self.horizon}: the multiplier "
                f"1 + {error:.3g} * n_steps / horizon = {multiplier:.3g} would make kl_coef non-positive"
            )
        self.value *= multiplier
        return self.value

    def __repr__(self) -> str:
        return f"AdaptiveKLController(value={self.value!r}, target={self.target!r}, horizon={self.horizon!r})"


class FixedKLController:
    """A constant KL coefficient with the interface of ``AdaptiveKLController``.

    kl_coef: beta, >= 0 (0 switches the penalty off).
    """

    def __init__(self, kl_coef):
        self.value = _positive("kl_coef", kl_coef, allow_zero=True)

    def update(self, current_kl, n_steps) -> float:
        """Validate the arguments and leave ``value`` unchanged; return it."""
        _check_update_args(current_kl, n_steps)
        return self.value

    def __repr__(self) -> str:
        return f"FixedKLController(value={self.value!r})"
