import numpy as np
import pandas as pd
import pytest

from analysis.chinchilla import Grid, fit_chinchilla, objective
from analysis.errors import AnalysisError
from analysis.synthetic import CHINCHILLA, chinchilla_points

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
        assert r.params[k] == pytest.approx(CHINCHILLA[k], abs=0.02)
    assert r.params["E"] == pytest.approx(CHINCHILLA["E"], rel=0.05)
    ci = r.conf_int()
    assert (ci["lower"] < r.params).all() and (r.params < ci["upper"]).all()
    assert (r.bse > 0).all()
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
def test_intervals_cover_the_truth_at_about_the_nominal_rate():
    hits, trials = 0, 24
    for s in range(trials):
        df = chinchilla_points(60, noise=0.02, seed=100 + s)
        r = fit_chinchilla(df, bootstrap=150, seed=s, grid=SMALL_GRID)
        ci = r.conf_int(0.1)
        hits += ci.loc["alpha", "lower"] <= CHINCHILLA["alpha"] <= ci.loc["alpha", "upper"]
    assert 0.7 <= hits / trials <= 1.0  # nominal 0.9


def test_warns_when_estimate_is_on_the_grid_edge():
    # a law whose data coefficient log B = 29.9 lies beyond the grid's largest b (25)
    truth = {**CHINCHILLA, "beta": 1.5, "B": 1e13}
    df = chinchilla_points(80, truth=truth, noise=0.002, seed=2)
    r = fit_chinchilla(df, bootstrap=0, grid=SMALL_GRID)
    assert r.params["beta"] == pytest.approx(1.5, abs=0.05)
    assert any(w.startswith("b = 29.") and "edge of the start grid [0, 25]" in w for w in r.warnings)
    clean = fit_chinchilla(chinchilla_points(80, seed=2), bootstrap=0, grid=SMALL_GRID)
    assert clean.warnings == []


@pytest.mark.parametrize("df, match", [
    (chinchilla_points(4), "4 points, fewer than the 5 parameters"),
    (chinchilla_points(20).assign(N=1e7), "alpha cannot be fitted from a single model size"),
    (chinchilla_points(20).assign(D=1e9), "beta cannot be fitted"),
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
        assert v["lower"] <= v["estimate"] <= v["upper"]
    assert isinstance(d["objective"], float) and isinstance(d["converged"], bool)
    assert "summary" not in d and "alpha" in r.summary()
    assert isinstance(pd.Series(r.params), pd.Series)
