import numpy as np
import pandas as pd
import pytest

from analysis.bimodal import fit_bimodal
from analysis.errors import AnalysisError
from analysis.fit import fit_groups
from analysis.records import load_runs
from analysis.routed import e_hat, fit_routed
from tests.analysis.conftest import interaction


def test_bimodal_recovers_interaction_and_barrier(bimodal_runs):
    df, _ = load_runs([bimodal_runs])
    (r,) = fit_groups(df, "bimodal", bootstrap=200)
    assert r.group == {"family": "dense", "pair": "text+dna"}
    N = np.array([1e5, 1e6, 1e7])
    D = np.array([1e7, 1e7, 1e8])
    np.testing.assert_allclose(r.interaction(N, D), interaction(N, D), rtol=0.02, atol=0.006)
    # competition at small scale, synergy at large scale, as in the generating law
    assert set(r.points["verdict"]) == {"competition", "synergy"}
    truth_sign = np.sign(interaction(r.points["N"], r.points["D"]))
    agree = (np.sign(r.points["interaction_fitted"]) == truth_sign).mean()
    assert agree > 0.9
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
    with pytest.warns(UserWarning, match=r"group \(family=moe, modality=dna\): every run has N = 1e\+05"):
        results = fit_groups(df, "chinchilla", bootstrap=0)
    assert len(results) == 5


@pytest.mark.slow
def test_routed_intervals_cover_the_truth_at_about_the_nominal_rate():
    a, b, c, d, es, em = -0.08, -0.05, 0.004, 1.9, 1.9, 300.0
    hits, trials = 0, 20
    for t in range(trials):
        rng = np.random.default_rng(100 + t)
        rows = []
        for N in (1e6, 1e7, 1e8):
            for E in (1, 4, 16, 64):
                le = np.log(e_hat(E, es, em))
                loss = np.exp(a * np.log(N) + b * le + c * np.log(N) * le + d + rng.normal(0, 0.003))
                rows.append({"N": N, "E": E, "loss": loss, "family": "moe", "n_experts": E})
        r = fit_routed(pd.DataFrame(rows), {"modality": "text"}, bootstrap=100, seed=t)
        ci = r.conf_int(0.1)
        hits += ci.loc["a", "lower"] <= a <= ci.loc["a", "upper"]
    assert 0.65 <= hits / trials <= 1.0  # nominal 0.9


@pytest.mark.slow
def test_bimodal_intervals_cover_the_truth_at_about_the_nominal_rate(tmp_path):
    from tests.analysis.conftest import INTERACTION, UNI, law

    hits, trials = 0, 10
    for t in range(trials):
        rng = np.random.default_rng(200 + t)
        rows = []
        for k, (N, D) in enumerate([(N, D) for N in (1e5, 1e6, 1e7) for D in (2e6, 2e7, 6e7)]):
            for m, p in UNI.items():
                rows.append({"run": f"u{m}{k}", "family": "dense", "modality": m, "modalities": m,
                             "N": N, "D": D, "loss": law(N, D, p) * np.exp(rng.normal(0, 0.001))})
                rows.append({"run": f"j{k}", "family": "dense", "modality": m,
                             "modalities": "text+dna", "N": N, "D": D / 2,
                             "loss": law(N, D / 2, p) + interaction(N, D) + rng.normal(0, 0.004)})
        r = fit_bimodal(pd.DataFrame(rows), {"family": "dense", "pair": "text+dna"},
                        bootstrap=60, seed=t)
        ci = r.conf_int(0.1)
        hits += ci.loc["C", "lower"] <= INTERACTION["C"] <= ci.loc["C", "upper"]
    assert 0.6 <= hits / trials <= 1.0  # nominal 0.9
