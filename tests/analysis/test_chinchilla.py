import numpy as np
import pandas as pd
import pytest

from analysis.chinchilla import Grid, fit_chinchilla, objective
from analysis.errors import AnalysisError
from analysis.synthetic import HOFFMANN, chinchilla_points

SMALL_GRID = Grid(alpha=(0.0, 1.0, 2.0), beta=(0.0, 1.0, 2.0), e=(-1.0, 0.0, 1.0),
                  a=(0.0, 10.0, 25.0), b=(0.0, 10.0, 25.0))


def test_gradient_matches_finite_differences():
    df = chinchilla_points(40, seed=1)
    logs = [np.log(df[c].to_numpy())[None] for c in ("N", "D", "loss")]
    theta = np.array([[6.0, 6.1, 0.5, 0.3, 0.25]])
    f, g = objective(theta, *logs)
    eps = 1e-6
    for i in range(5):
        step = np.zeros_like(theta)
        step[0, i] = eps
        num = (objective(theta + step, *logs)[0] - objective(theta - step, *logs)[0]) / (2 * eps)
        assert num[0] == pytest.approx(g[0, i], rel=1e-4, abs=1e-9)


def test_recovers_chinchilla_parameters_from_noisy_points():
    df = chinchilla_points(250, noise=0.01, seed=0)
    r = fit_chinchilla(df, bootstrap=100, seed=0)
    assert r.converged and r.nobs == 250
    for k in ("alpha", "beta"):
        assert r.params[k] == pytest.approx(HOFFMANN[k], abs=0.02)
    assert r.params["E"] == pytest.approx(HOFFMANN["E"], rel=0.05)
    ci = r.conf_int()
    assert (ci["lower"] <= r.params).all() and (r.params <= ci["upper"]).all()
    assert (r.bse > 0).all()
    # the law's loss at a point: confidence interval for the law inside the prediction
    # interval for a new run, which spans about +-2 x the 1% noise
    mean = r.predict_interval([1e8], [1e10])
    new = r.predict_interval([1e8], [1e10], kind="observation")
    assert new["lower"][0] < mean["lower"][0] < mean["loss"][0] < mean["upper"][0] < new["upper"][0]
    assert 0.01 < np.log(new["upper"][0] / new["lower"][0]) / 2 < 0.03
    pred = r.predict(df["N"], df["D"])
    assert np.abs(np.log(pred / df["loss"])).mean() < 0.012  # about the noise level


def test_compute_optimal_matches_brute_force_minimum():
    df = chinchilla_points(120, noise=0.005, seed=3)
    r = fit_chinchilla(df, bootstrap=0, grid=SMALL_GRID)
    C = 1e21
    co = r.compute_optimal(C)
    N = np.exp(np.linspace(np.log(1e7), np.log(1e12), 20001))
    brute = N[np.argmin(r.predict(N, C / (6 * N)))]
    assert co["N_opt"].iloc[0] == pytest.approx(brute, rel=2e-3)
    a, b = co.attrs["a"], co.attrs["b"]
    assert a + b == pytest.approx(1.0)


@pytest.mark.slow
def test_intervals_cover_the_truth():
    """24 fixed data sets: 95% intervals of alpha, of the loss at a point and of the frontier
    exponent cover about 95% of the time (benchmarks/coverage.py); the threshold, 16 of 24, is
    more than 4 binomial standard deviations below, beyond any machine's rounding."""
    hits, trials = np.zeros(3), 24
    a_true = HOFFMANN["beta"] / (HOFFMANN["alpha"] + HOFFMANN["beta"])
    loss_true = HOFFMANN["E"] + HOFFMANN["A"] / 3e7 ** HOFFMANN["alpha"] \
        + HOFFMANN["B"] / 3e9 ** HOFFMANN["beta"]
    for s in range(trials):
        df = chinchilla_points(60, noise=0.01, seed=100 + s)
        r = fit_chinchilla(df, bootstrap=200, seed=s, grid=SMALL_GRID)
        ci = r.conf_int()
        p = r.predict_interval([3e7], [3e9]).iloc[0]
        co = r.compute_optimal([1e20]).attrs
        hits += [ci.loc["alpha", "lower"] <= HOFFMANN["alpha"] <= ci.loc["alpha", "upper"],
                 p["lower"] <= loss_true <= p["upper"], co["a_lower"] <= a_true <= co["a_upper"]]
    assert (hits >= 16).all(), hits


def test_warns_when_estimate_is_on_the_grid_edge():
    # a law whose data coefficient log B = 29.9 lies beyond the grid's largest b (25)
    truth = {**HOFFMANN, "beta": 1.5, "B": 1e13}
    df = chinchilla_points(80, truth=truth, noise=0.002, seed=2)
    r = fit_chinchilla(df, bootstrap=0, grid=SMALL_GRID)
    assert r.params["beta"] == pytest.approx(1.5, abs=0.05)
    edge = [w for w in r.warnings if "edge of the start grid [0, 25]" in w]
    assert len(edge) == 1 and edge[0].startswith("b = ")
    assert float(edge[0].split()[2]) == pytest.approx(np.log(1e13), abs=1.0)
    clean = fit_chinchilla(chinchilla_points(80, seed=2), bootstrap=0, grid=SMALL_GRID)
    assert not [w for w in clean.warnings if "edge of the start grid" in w]


@pytest.mark.parametrize("df, match", [
    (chinchilla_points(4), r"not identified: 4 runs \(at 4 sizes and 4 budgets\) for 5 parameters"),
    (chinchilla_points(20).assign(N=1e7), r"\(at 1 size and .*add 2 more sizes"),
    (chinchilla_points(20).assign(D=1e9), r"and 1 token budget\).*add 2 more budgets"),
])
def test_bad_groups(df, match):
    with pytest.raises(AnalysisError, match=match):
        fit_chinchilla(df, {"family": "moe", "modality": "dna"}, bootstrap=0)


def test_json_format(tmp_path):
    import json

    r = fit_chinchilla(chinchilla_points(60, seed=4), {"family": "dense", "modality": "text"},
                       bootstrap=30, grid=SMALL_GRID)
    d = json.loads(r.to_json())
    assert d["group"] == {"family": "dense", "modality": "text"} and d["n_points"] == 60
    assert set(d["params"]) == {"E", "A", "B", "alpha", "beta"}
    for v in d["params"].values():
        assert v["lower"] < v["upper"] and v["std_err"] > 0
        assert v["lower"] - (v["upper"] - v["lower"]) <= v["estimate"]
        assert v["estimate"] <= v["upper"] + (v["upper"] - v["lower"])
    assert isinstance(d["objective"], float) and isinstance(d["converged"], bool)
    assert "summary" not in d and "alpha" in r.summary()
    assert isinstance(pd.Series(r.params), pd.Series)
