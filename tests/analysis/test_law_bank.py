import numpy as np
import pandas as pd
import pytest

from analysis.errors import AnalysisError
from analysis.law_bank import (
    GRANULARITY,
    JOINT,
    e_hat,
    fit_law,
    lse_objective,
    one_se,
    rank_laws,
    reduce_to_chinchilla,
    split,
)
from analysis.synthetic_moe import GRANULARITY_TRUTH, JOINT_TRUTH, bank_runs


def test_lse_gradient_matches_finite_differences():
    df = bank_runs("joint", seed=0, sizes=(1e6, 1e7), tokens=(1e8, 1e9))
    X, logL = JOINT.design(df), np.log(df["loss"].to_numpy())[None]
    theta = JOINT.log_theta(np.array([list(JOINT_TRUTH.values())]))[0] + 0.01
    w = np.arange(len(df), dtype=float)[None] % 3
    f0, g = lse_objective(theta[None], X, logL, w)
    for i in range(len(theta)):
        step = np.zeros_like(theta)
        step[i] = 1e-6
        up, down = (lse_objective((theta + sign * step)[None], X, logL, w)[0] for sign in (1, -1))
        fd = (up - down) / 2e-6
        assert fd[0] == pytest.approx(g[0, i], rel=1e-4, abs=1e-8)


def test_joint_law_is_chinchilla_for_dense_and_at_each_expert_count():
    assert e_hat(1.0) == pytest.approx(1.0) and e_hat(8.0) == pytest.approx(8.0, rel=0.01)
    p = np.array([list(JOINT_TRUTH.values())])
    dense = reduce_to_chinchilla("joint", p, n_experts=1)[0]
    t = JOINT_TRUTH
    np.testing.assert_allclose(dense, [t["E"], t["A"], t["B"], t["alpha"], t["beta"]])
    df = bank_runs("joint", seed=0, noise=0.0)
    moe16 = df[df["n_experts"] == 16]
    E, A, B, al, be = reduce_to_chinchilla("joint", p, n_experts=16)[0]
    np.testing.assert_allclose(E + A / moe16["N"] ** al + B / moe16["D"] ** be, moe16["loss"], rtol=1e-12)
    g = reduce_to_chinchilla("granularity", np.array([list(GRANULARITY_TRUTH.values())]), granularity=4)[0]
    assert g[1] == pytest.approx(GRANULARITY_TRUTH["g"] / 4 ** 0.6 + GRANULARITY_TRUTH["A"])


def test_holdout_keeps_the_largest_compute_out_and_laws_say_what_they_lack():
    df = bank_runs("joint", seed=0)
    train, held = split(df, holdout_largest=2)
    assert train["C"].max() < held["C"].min() and (held["family"] == "moe").all()
    assert held.groupby("n_experts").size().min() >= 2  # every MoE family is judged
    with pytest.raises(AnalysisError, match="needs a 'granularity'"):
        fit_law(GRANULARITY, df, {"modality": "text"}, bootstrap=0)
    with pytest.raises(AnalysisError, match="'n_experts' does not vary"):
        fit_law(JOINT, df[df["family"] == "dense"], {"modality": "text"}, bootstrap=0)


def test_one_se_rule_prefers_what_the_data_cannot_tell_apart():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, 50)
    assert one_se(["a", "b", "c"], [base, base + rng.normal(0, 0.01, 50), base + 1.0]) == [True, True, False]


@pytest.mark.slow
@pytest.mark.parametrize("truth, law", [("joint", JOINT), ("granularity", GRANULARITY)])
def test_bank_law_recovers_its_coefficients(truth, law):
    df = bank_runs(truth, seed=0, noise=0.002)
    r = fit_law(law, df, {"modality": "text"}, bootstrap=40)
    t = JOINT_TRUTH if truth == "joint" else GRANULARITY_TRUTH
    for k in ("alpha", "beta", "E", "gamma"):
        assert r.params[k] == pytest.approx(t[k], rel=0.15, abs=0.01), k
    ci = r.conf_int()
    assert (ci["lower"] <= r.params).all() and (r.params <= ci["upper"]).all()
    rows = law.rows(df)
    assert np.abs(np.log(r.predict(rows) / rows["loss"])).max() < 0.02


@pytest.mark.slow
@pytest.mark.parametrize("truth", ["chinchilla", "joint", "routed", "granularity"])
def test_ranking_puts_the_true_law_first(truth):
    table, scored, _ = rank_laws(bank_runs(truth, seed=100), "text", bootstrap=20)
    assert table["law"].iloc[0] == truth
    assert isinstance(table, pd.DataFrame) and set(scored) == set(table["law"])
    assert table["error / best's"].min() == pytest.approx(1.0)
