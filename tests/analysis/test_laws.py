import numpy as np
import pandas as pd
import pytest

from analysis.bimodal import fit_bimodal
from analysis.chinchilla import Grid
from analysis.errors import AnalysisError
from analysis.fit import fit_groups
from analysis.records import load_runs
from analysis.routed import e_hat, fit_routed
from analysis.synthetic import bimodal_runs, routed_law, routed_points
from analysis.synthetic import interaction_law as synthetic_interaction
from analysis.tables import fits_table
from tests.analysis.conftest import UNI, interaction

UNIMODAL = {m: dict(zip(("E", "A", "B", "alpha", "beta"), p, strict=True)) for m, p in UNI.items()}


def test_bimodal_recovers_interaction_and_barrier(bimodal_runs):
    df, _ = load_runs([bimodal_runs])
    (r,) = fit_groups(df, "bimodal", bootstrap=200)
    assert r.group == {"family": "dense", "pair": "text+dna"}
    N = np.array([1e5, 1e6, 1e7])
    D = np.array([1e7, 1e7, 1e8])
    np.testing.assert_allclose(r.interaction(N, D), interaction(N, D), rtol=0.02, atol=0.006)
    # competition at small scale, synergy at large scale, as in the generating law
    assert {"competition", "synergy"} <= set(r.points["verdict"])
    spans = r.points["verdict"].str.startswith("neither")
    assert ((r.points["lower"] <= 0) & (r.points["upper"] >= 0) == spans).all()
    truth_sign = np.sign(interaction(r.points["N"], r.points["D"]))
    agree = (np.sign(r.points["interaction_fitted"]) == truth_sign).mean()
    assert agree > 0.9
    # the interval of the interaction at every run holds its estimate and is a few 0.01 wide
    p = r.points
    assert ((p["lower"] <= p["interaction_fitted"]) & (p["interaction_fitted"] <= p["upper"])).all()
    assert (p["upper"] - p["lower"]).max() < 0.1
    b = r.barrier(tokens_per_param=20)
    from scipy.optimize import brentq

    true_n = np.exp(brentq(lambda x: interaction(np.exp(x), 20 * np.exp(x)), np.log(1e3), np.log(1e12)))
    assert b["N"] == pytest.approx(true_n, rel=0.5)
    assert b["N_lower"] <= b["N"] <= b["N_upper"]


def test_bimodal_needs_unimodal_baselines(bimodal_runs):
    df, _ = load_runs([bimodal_runs])
    joint_only = df[df["modalities"] != "text"]
    with pytest.raises(AnalysisError, match="no unimodal dense runs of text"):
        fit_bimodal(joint_only, {"family": "dense", "pair": "text+dna"}, bootstrap=0)


def test_routed_law_recovers_coefficients():
    rng = np.random.default_rng(0)
    a, b, c, d, es, em = -0.08, -0.05, 0.004, 1.9, 1.9, 300.0
    rows = []
    for N in (1e6, 3e6, 1e7, 3e7, 1e8):
        for E in (1, 2, 4, 8, 16, 32, 64, 128):
            le = np.log(e_hat(E, es, em))
            loss = np.exp(a * np.log(N) + b * le + c * np.log(N) * le + d + rng.normal(0, 0.001))
            rows.append({"N": N, "E": E, "loss": loss, "family": "moe", "n_experts": E})
    df = pd.DataFrame(rows)
    r = fit_routed(df, {"modality": "text"}, bootstrap=50)
    for k, v in {"a": a, "b": b, "c": c, "d": d}.items():
        assert r.params[k] == pytest.approx(v, abs=0.01)
    pred = r.predict(df["N"], df["E"])
    assert np.abs(np.log(pred / df["loss"])).max() < 0.01
    assert r.ols.params.shape == (4,)
    with pytest.raises(AnalysisError, match="expert count does not vary"):
        fit_routed(df[df["E"] == 8], {"modality": "text"}, bootstrap=0)


def test_one_bad_group_warns_and_the_rest_fit(paired_runs):
    with pytest.warns(UserWarning):
        df, _ = load_runs([paired_runs])
    df = df[~((df["family"] == "moe") & (df["modality"] == "dna") & (df["N"] > 1e5))]
    with pytest.warns(UserWarning,
                      match=r"group \(family=moe learned E=8, modality=dna, mixture=[a-z+]+\): "
                            r"not identified: 6 runs \(1 size x 3 budgets, 2 each\).*add 2 more sizes"):
        results = fit_groups(df, "chinchilla", bootstrap=0)
    assert len(results) == 5


ROUTED_TRUTH = {"a": -0.08, "b": -0.05, "c": 0.004, "d": 1.9, "E_start": 1.9, "E_max": 300.0}
SMALL_GRID = Grid(alpha=(0.0, 1.0, 2.0), beta=(0.0, 1.0, 2.0), e=(-1.0, 0.0, 1.0),
                  a=(0.0, 10.0, 25.0), b=(0.0, 10.0, 25.0))


@pytest.mark.slow
def test_routed_intervals_cover_the_truth():
    """40 fixed data sets: the 95% intervals of a, of the law's loss at a point inside the data
    and of the gain of 64 experts cover about 95% of the time (benchmarks/coverage.py: 0.96 to
    0.99 for this truth; 39-40 of these 40). The threshold, 30 of 40, sits more than 4 binomial
    standard deviations below that, so no machine's rounding can cross it, while intervals that
    ignore the estimated noise level (pairs bootstrap: 83% for the loss) or the grid search
    fail it more often than not."""
    hits, trials = np.zeros(3), 40
    for t in range(trials):
        df = routed_points(ROUTED_TRUTH, (1e6, 1e7, 1e8), (1, 4, 16, 64), noise=0.003, seed=100 + t)
        r = fit_routed(df, {"modality": "text"}, bootstrap=300, seed=t)
        ci = r.conf_int()
        p = r.predict_interval([3e6], [8]).iloc[0]
        g = r.gain([3e6], [64]).iloc[0]
        gain = routed_law(3e6, 64, ROUTED_TRUTH) / routed_law(3e6, 1, ROUTED_TRUTH)
        hits += [ci.loc["a", "lower"] <= ROUTED_TRUTH["a"] <= ci.loc["a", "upper"],
                 p["lower"] <= routed_law(3e6, 8, ROUTED_TRUTH) <= p["upper"],
                 g["lower"] <= gain <= g["upper"]]
    assert (hits >= 30).all(), hits


def test_routed_says_when_the_runs_cannot_bound_e_max():
    """E_max = 5000 far beyond the largest expert count (16): the profile stays flat up to the
    grid's edge, so E_max's interval is unbounded above and the fit warns; a, the loss at a
    point and the gain keep finite intervals around their estimates."""
    truth = dict(ROUTED_TRUTH, E_max=5000.0)
    df = routed_points(truth, (1e6, 3e6, 1e7, 1e8), (1, 4, 16), noise=0.003, seed=0)
    r = fit_routed(df, {"modality": "text"}, bootstrap=200)
    ci = r.conf_int()
    assert ci.loc["E_max", "upper"] == np.inf
    assert any("E_max is not bounded above" in w for w in r.warnings)
    assert ci.loc["a", "lower"] < r.params["a"] < ci.loc["a", "upper"]
    for out in (r.predict_interval([3e6], [8]), r.gain([3e6], [16]).rename(columns={"ratio": "loss"})):
        assert np.isfinite(out[["lower", "upper"]].to_numpy()).all()
        assert (out["lower"] < out["loss"]).all() and (out["loss"] < out["upper"]).all()


def test_routed_prediction_interval_is_wider_than_the_confidence_interval():
    df = routed_points(ROUTED_TRUTH, (1e6, 1e7, 1e8), (1, 4, 16, 64), noise=0.003, seed=1)
    r = fit_routed(df, {"modality": "text"}, bootstrap=300)
    mean = r.predict_interval([3e6, 3e7], [8, 8])
    new = r.predict_interval([3e6, 3e7], [8, 8], kind="observation")
    assert (new["lower"] < mean["lower"]).all() and (mean["upper"] < new["upper"]).all()
    # a new run scatters by the noise (0.3%): the prediction interval is about +-2 x 0.3% wide
    half = np.log(new["upper"] / new["lower"]) / 2
    assert ((half > 0.003) & (half < 0.02)).all()
    assert (mean["lower"] < mean["loss"]).all() and (mean["loss"] < mean["upper"]).all()


def test_bimodal_says_when_the_data_cannot_identify_C():
    design = [(N, 20 * N * f) for N in (1e5, 3e5, 1e6, 3e6) for f in (0.3, 1, 3)]
    group = {"family": "dense", "pair": "text+dna"}
    # beta = 0.02: over the runs' tokens B / D^beta is a straight line in log D, and C with it
    flat_q = {"C": 0.3, "A": 20.0, "alpha": 0.35, "B": 2.0, "beta": 0.02}
    flat = fit_bimodal(bimodal_runs(UNIMODAL, flat_q, design, 0.003, 0), group, 200, grid=SMALL_GRID)
    assert flat.conf_int().loc["C", "upper"] == np.inf
    assert any(w.startswith("C is not identified by these runs") for w in flat.warnings)
    # the estimate sits on the ridge: neither of C's bounds is set, so no C is printed at all
    assert "C" in flat.withheld()
    assert np.isnan(fits_table([flat])["C"].iloc[0])
    assert flat.to_dict()["params"]["C"]["estimate"] is None
    assert np.isfinite(fits_table([flat])["alpha"].iloc[0])
    # what a reader uses is still identified: the interaction at every run, within 0.15 nats
    p = flat.points
    truth = synthetic_interaction(p["N"], p["D"], flat_q)
    assert ((p["lower"] <= truth + 0.01) & (truth - 0.01 <= p["upper"])).all()
    assert (p["upper"] - p["lower"] < 0.15).all()
    # beta = 0.5 with little noise: C is identified, its interval finite and near the truth
    curved_q = {"C": 0.1, "A": 20.0, "alpha": 0.35, "B": 30.0, "beta": 0.5}
    curved = fit_bimodal(bimodal_runs(UNIMODAL, curved_q, design, 0.0003, 0), group, 200,
                         grid=SMALL_GRID)
    assert curved.unidentified() == {} and curved.withheld() == []
    assert not [w for w in curved.warnings if "not identified" in w]
    lo, hi = curved.conf_int().loc["C"]
    assert 0.0 < lo < hi < 0.2


@pytest.mark.slow
def test_bimodal_intervals_carry_the_unimodal_fits_error():
    """12 fixed data sets from a law with 0.3% noise on every run, unimodal ones included (the
    issue's second design). Before the unimodal fits' error reached the bootstrap, the 95%
    interval of the interaction at the runs covered 18%; now 1.00 at the middle run and 0.93 at
    the smallest (benchmarks/coverage.py). The threshold, 7 of 12, is far from both."""
    q = {"C": 0.1, "A": 20.0, "alpha": 0.35, "B": 30.0, "beta": 0.3}
    design = [(N, 20 * N * f) for N in (1e5, 3e5, 1e6, 3e6) for f in (0.3, 1, 3)]
    hits, trials = 0, 12
    for t in range(trials):
        df = bimodal_runs(UNIMODAL, q, design, noise=0.003, seed=300 + t)
        r = fit_bimodal(df, {"family": "dense", "pair": "text+dna"}, bootstrap=200, seed=t,
                        grid=SMALL_GRID)
        p = r.points.sort_values(["N", "D"]).iloc[len(r.points) // 2]
        hits += p["lower"] <= synthetic_interaction(p["N"], p["D"], q) <= p["upper"]
        assert set(r.unimodal) == {"text", "dna"} and r.unimodal["text"].boot.shape == (200, 5)
    assert hits >= 7, hits
