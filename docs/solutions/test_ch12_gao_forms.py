"""Chapter 12, exercise 2: fitting Gao et al.'s forms, and trusting the fit's standard errors.

Gao et al. (2022, Eqs. 1 and 2; their alpha, beta are c1, c2 here) describe
the gold score's rise R against d = sqrt(KL) by

    best-of-N:  R(d) = d (c1 - c2 d)          peak at d* = c1 / (2 c2),  R* = c1^2 / (4 c2)
    RL:         R(d) = d (c1 - c2 log d)      peak at d* = exp(c1 / c2 - 1),  R* = c2 d*

Both are linear in (c1, c2): R = X c with the columns d and -d^2 (or
-d log d). With points of known standard errors s_i, weighted least squares
(weights 1 / s_i^2) gives c = (X'WX)^-1 X'W R, and (X'WX)^-1 is its
covariance when the errors are independent and normal: its diagonal's
square roots are the standard errors the figure script reports, and c1 +- 2
SE covers the true c1 about 95% of the time.

On a simulated best-of-N curve (section 12.3's) the best-of-N form fits
better than the RL form, and neither fits exactly: the forms describe, they
are not a law.
"""

import numpy as np
import pytest

from alignment_np.experiments.measure import best_of_n_expectation
from alignment_np.rl.best_of_n import best_of_n_kl

D = np.array([0.4, 0.8, 1.2, 1.6, 2.0, 2.4, 2.8])


def design(d, form):
    return np.column_stack([d, -(d * d if form == "bon" else d * np.log(d))])


def form_value(d, c1, c2, form):
    return d * (c1 - c2 * (d if form == "bon" else np.log(d)))


def wls(d, R, se, form):
    """(c, covariance) of the weighted least-squares fit of ``form`` through R(0) = 0."""
    X, w = design(d, form), 1.0 / se ** 2
    cov = np.linalg.inv((X.T * w) @ X)
    return cov @ ((X.T * w) @ R), cov


@pytest.mark.parametrize("form, c1, c2", [("bon", 1.2, 0.3), ("rl", 0.8, 0.4)])
def test_two_standard_errors_cover_the_truth_95_percent_of_the_time(form, c1, c2):
    rng = np.random.default_rng(3)
    se = 0.02 + 0.03 * D  # noisier far out, as the run's points are
    truth = form_value(D, c1, c2, form)
    repeats, covered = 2000, np.zeros(2)
    for _ in range(repeats):
        c, cov = wls(D, truth + se * rng.normal(size=D.size), se, form)
        covered += np.abs(c - [c1, c2]) < 2 * np.sqrt(np.diag(cov))
    rate = covered / repeats
    assert np.all((rate > 0.935) & (rate < 0.975)), rate  # 0.954, with Monte Carlo error 0.005


@pytest.mark.parametrize("form, c1, c2", [("bon", 1.2, 0.3), ("rl", 0.8, 0.4), ("rl", 1.5, 0.5)])
def test_the_peaks_are_where_the_formulas_put_them(form, c1, c2):
    grid = np.linspace(1e-3, 20.0, 2_000_001)
    values = form_value(grid, c1, c2, form)
    peak = grid[np.argmax(values)]
    d_star = c1 / (2 * c2) if form == "bon" else np.exp(c1 / c2 - 1)
    r_star = c1 ** 2 / (4 * c2) if form == "bon" else c2 * d_star
    assert peak == pytest.approx(d_star, abs=2e-5)
    assert values.max() == pytest.approx(r_star, rel=1e-9)


def test_on_a_best_of_n_curve_the_best_of_n_form_fits_better():
    """Section 12.3's simulation: 2% of outputs fool the proxy; the gold score of best-of-N peaks."""
    rng = np.random.default_rng(1)
    P, N_max = 4000, 64
    gold = rng.normal(size=(P, N_max))
    proxy = gold + 0.5 * rng.normal(size=(P, N_max))
    fooled = rng.random((P, N_max)) < 0.02
    proxy = np.where(fooled, 2.5 + rng.normal(size=(P, N_max)), proxy)
    gold = np.where(fooled, -1.0, gold)
    ns = [2, 4, 8, 16, 32, 64]
    d = np.sqrt([best_of_n_kl(n) for n in ns])
    base = best_of_n_expectation(proxy, gold, 1)
    rises = [best_of_n_expectation(proxy, gold, n) - base for n in ns]  # paired with N = 1, per prompt
    R = np.array([r.mean() for r in rises])
    se = np.array([r.std(ddof=1) / np.sqrt(P) for r in rises])
    residuals = {}
    for form in ("bon", "rl"):
        c, _ = wls(d, R, se, form)
        residuals[form] = float(np.sum(((R - design(d, form) @ c) / se) ** 2))
    assert residuals["bon"] < residuals["rl"]
    # Neither is exact: with 4,000 prompts the points are precise enough to show it (a sum of
    # squared standardised residuals far above its 4 degrees of freedom). The forms are Gao et
    # al.'s empirical description, and a fitted peak depends on how the points are weighted.
    assert residuals["bon"] > 10 * (len(ns) - 2)
