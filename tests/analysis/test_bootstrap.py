"""Bootstrap refits reach the global optimum of the estimate's objective, and one check
(chinchilla.check_bootstrap) refuses degenerate draws and draws of runaway laws."""

import numpy as np
import pandas as pd
import pytest

from analysis.chinchilla import NAMES, ChinchillaResult, check_bootstrap, fit_chinchilla, refit_best
from analysis.identify import NotIdentified
from analysis.law_bank import fit_law
from analysis.leverage import refit_weighted
from analysis.synthetic import chinchilla_law

TRUTH = {"E": 1.2, "A": 300.0, "B": 200.0, "alpha": 0.35, "beta": 0.30}


def grid_runs(sizes=(1e5, 3e5, 1e6, 3e6), budgets=(2e6, 6e6, 2e7), noise=0.01, seed=1) -> pd.DataFrame:
    N, D = (a.ravel() for a in np.meshgrid(sizes, budgets))
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"N": N, "D": D, "loss": chinchilla_law(N, D, TRUTH)
                         * np.exp(rng.normal(0, noise, len(N)))})


def double_well(x_S1: np.ndarray, shift_S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x^2 - 1)^2 + 0.3 (x - shift): a local minimum near +1, the global one near -1."""
    x = x_S1[:, 0] - shift_S
    return (x**2 - 1) ** 2 + 0.3 * x, (4 * x * (x**2 - 1) + 0.3)[:, None]


def test_each_draw_keeps_the_start_that_reaches_its_global_optimum():
    shifts = np.array([0.0, 0.5, -0.25])
    fun = lambda th, b: double_well(th, shifts[b])  # noqa: E731
    alone = refit_best(fun, np.array([[1.0]]), 3)
    both = refit_best(fun, np.array([[1.0], [-1.0]]), 3)
    # from the estimate alone every draw stays in the local basin; with the other optimum too,
    # each reaches its global one (near -1 + its own shift)
    assert (alone[:, 0] - shifts > 0.5).all()
    np.testing.assert_allclose(both[:, 0] - shifts, -1.036, atol=2e-3)


def test_weighted_refits_of_the_observed_runs_return_the_estimate():
    df = grid_runs()
    r = fit_chinchilla(df, bootstrap=0)
    assert r.optima.shape[1] == 5 and np.allclose(r.optima[0], r.theta)
    w = np.ones((3, len(df)))
    w[2, :2], w[2, 2:4] = 0.0, 2.0  # a resample: two runs left out, two drawn twice
    draws = refit_weighted(r, df, w)
    np.testing.assert_allclose(draws[:2], np.tile(r.params[NAMES].to_numpy(), (2, 1)), rtol=1e-4)
    assert not np.allclose(draws[2], draws[0], rtol=1e-4)


def _result(boot: np.ndarray) -> ChinchillaResult:
    est = np.array([1.2, 300.0, 200.0, 0.35, 0.30])
    return ChinchillaResult("chinchilla", {"modality": "text"}, pd.Series(est, index=NAMES), boot,
                            12, 0.0, True, "")


def test_one_bootstrap_check_refuses_degenerate_and_runaway_draws():
    df = grid_runs()
    rng = np.random.default_rng(0)
    est = _result(None).params.to_numpy()
    check_bootstrap(_result(est * np.exp(rng.normal(0, 0.02, (200, 5)))), df)  # passes
    with pytest.raises(NotIdentified, match="degenerate bootstrap"):
        check_bootstrap(_result(np.tile(est * 1.01, (200, 1))), df)
    runaway = est * np.exp(rng.normal(0, 0.02, (200, 5)))
    runaway[:20, 4] = 6.0  # a tenth of the draws: beta far beyond MAX_EXPONENT
    with pytest.raises(NotIdentified, match="interval of beta .* not inside") as e:
        check_bootstrap(_result(runaway), df)
    assert "a larger token budget" in e.value.ident.suggestion


def test_a_bank_law_whose_draws_do_not_vary_is_not_identified():
    df = grid_runs().assign(family="dense", modality="text", n_experts=0)
    with pytest.raises(NotIdentified, match="degenerate bootstrap"):
        fit_law("chinchilla", df, {"modality": "text"}, weights=np.ones((30, len(df))))
    r = fit_law("chinchilla", df, {"modality": "text"}, bootstrap=60)
    ci = r.conf_int()
    assert ((ci["lower"] <= r.params) & (r.params <= ci["upper"])).all()
