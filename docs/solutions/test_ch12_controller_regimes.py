"""Chapter 12, exercise 5: the adaptive KL controller's three regimes.

With a KL that answers the coefficient at once, KL(beta) = c / beta^2 (the
optimal policy's, to second order in 1 / beta), and zeta_t = log(beta_t /
beta*) the log-error from the coefficient that hits the target, the
controller's error is xi_t = clip((beta*/beta_t)^2 - 1, -0.2, 0.2) =
clip(exp(-2 zeta_t) - 1, -0.2, 0.2), and

    zeta_{t+1} = zeta_t + log(1 + K_beta xi_t) ~= (1 - 2 K_beta) zeta_t

while the error stays inside the clip. So:

* K_beta < 1/2: zeta shrinks geometrically, keeping its sign;
* 1/2 < K_beta < 1: zeta shrinks with alternating sign (a damped oscillation);
* K_beta > 1: |1 - 2 K_beta| > 1, the linear loop diverges, and only the clip
  at +-0.2 holds it: beta keeps jumping by a factor 1 +- 0.2 K_beta, the
  KL oscillating around the target without settling.

K_beta = n_steps / horizon: a horizon shorter than half the batch is too short.
"""

import numpy as np
import pytest

from alignment_np.rl.kl_control import AdaptiveKLController

TARGET, BATCH = 4.0, 64
C = TARGET * 0.1 ** 2  # beta* = 0.1 hits the target


def log_errors(k_beta, iterations=60, start=1.1):
    """zeta_t = log(beta_t / beta*) over the iterations, from beta_0 = start * beta*."""
    controller = AdaptiveKLController(start * 0.1, TARGET, horizon=BATCH / k_beta)
    zetas = []
    for _ in range(iterations):
        zetas.append(np.log(controller.value / 0.1))
        controller.update(C / controller.value ** 2, n_steps=BATCH)
    return np.array(zetas)


@pytest.mark.parametrize("k_beta", [0.25, 0.75])
def test_inside_the_clip_the_error_shrinks_by_one_minus_two_k(k_beta):
    zeta = log_errors(k_beta)
    assert abs(zeta[-1]) < 1e-6 * abs(zeta[0])  # it settles
    # The first steps (10% off: xi = 1 / 1.1^2 - 1 = -0.17, inside the clip) follow 1 - 2 K.
    ratios = zeta[1:6] / zeta[:5]
    np.testing.assert_allclose(ratios, 1 - 2 * k_beta, atol=0.05)
    signs = np.sign(zeta[:10])
    if k_beta < 0.5:
        assert np.all(signs == signs[0])  # monotone
    else:
        assert np.all(signs[1:] == -signs[:-1])  # alternating: overshoot on every update


def test_beyond_k_equal_one_the_clip_holds_it_in_an_oscillation():
    k_beta = 1.5
    zeta = log_errors(k_beta, iterations=400)
    kl_over_target = np.exp(-2 * zeta)
    # It never settles: a hundred iterations later the KL is as far off as ever, on both sides.
    early, late = np.abs(kl_over_target[100:200] - 1), np.abs(kl_over_target[300:] - 1)
    assert late.mean() > 0.1 and late.mean() > 0.5 * early.mean()
    assert kl_over_target[300:].max() > 1.3 and kl_over_target[300:].min() < 0.9
    # ... and it is bounded: no step beyond the clipped factor 1 +- 0.2 K, beta never far off.
    steps = np.exp(np.diff(zeta))
    assert np.all(np.abs(steps - 1) <= 0.2 * k_beta + 1e-12)
    assert np.abs(zeta).max() < 0.5
    # Most steps are the clipped ones: the loop lives at the clip, not in its linear range.
    assert np.mean(np.isclose(np.abs(steps - 1), 0.2 * k_beta)) > 0.5
