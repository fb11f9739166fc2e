"""The gates set by coverage (benchmarks/coverage.py): a design just above each threshold gives
an interval that holds its estimate and the truth, one just below is refused with what to add."""

import warnings

import numpy as np
import pandas as pd
import pytest

from analysis.backtest import backtest
from analysis.errors import AnalysisError
from analysis.identify import NotIdentified, interval_ok
from analysis.law_bank import JOINT, fit_law, predict_natural
from analysis.leverage import MIN_DISTINCT_DRAWS, law_free_leverage, law_free_ratio
from analysis.prediction import prediction_interval
from analysis.synthetic import chinchilla_law
from analysis.synthetic_moe import JOINT_TRUTH, SIZES, TOKENS, bank_runs, leverage_runs, rows

FAMILY = "moe learned E=8"


def joint_runs(experts: tuple[int, ...], sizes: int = 4, seed: int = 3) -> pd.DataFrame:
    df = bank_runs("joint", seed=seed, sizes=SIZES[:sizes], tokens=TOKENS[:3])
    return df[df["n_experts"].isin(experts)]


def test_joint_law_needs_a_fourth_expert_count():
    with pytest.raises(NotIdentified, match="3 expert counts") as e:
        fit_law("joint", joint_runs((0, 4, 16)), {"modality": "text"}, bootstrap=0)
    assert "add a fourth expert count (for example 64)" in e.value.ident.suggestion


def test_joint_law_on_a_3x3_grid_needs_more_runs():
    """Dense and three expert counts on 3 sizes x 3 budgets: 36 runs, 25 beyond the law's 11
    parameters, where the loss at a point covered 0.875 (MIN_RESID_DF['joint'])."""
    with pytest.raises(NotIdentified, match="36 runs .* at least 37 runs beyond") as e:
        fit_law("joint", joint_runs((0, 4, 16, 64), sizes=3), {"modality": "text"}, bootstrap=0)
    assert e.value.ident.suggestion == ("add 12 or more runs (for example a fourth size, 3.2e+07, "
                                        "at every token budget and expert count)")


def test_joint_law_on_four_expert_counts_covers_the_loss_at_a_point():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = fit_law("joint", joint_runs((0, 4, 16, 64)), {"modality": "text"}, bootstrap=100, seed=3)
    point = rows("moe", [3e6], [6e7], [1.0], "text", n_experts=16, router="learned")
    truth = predict_natural(JOINT, np.array([JOINT_TRUTH[k] for k in JOINT.names]), point)[0]
    pi = prediction_interval(r, JOINT.law(), r.rows, point).iloc[0]
    assert interval_ok(pi["predicted"], pi["mean_lower"], pi["mean_upper"])
    assert pi["mean_lower"] <= truth <= pi["mean_upper"]


def pairs_on_a_line(k: int, seed: int, noise: float = 0.005) -> pd.DataFrame:
    sizes, tokens = 1e6 * 2.0 ** np.arange(k), 2e7 * 2.0 ** np.arange(k)
    df = leverage_runs({"text": 1.5}, seed=seed, noise=noise, sizes=sizes, tokens=tokens)
    return df[np.isclose(df["D"] / df["N"], 20.0)].reset_index(drop=True)


def test_law_free_interval_needs_five_pairs():
    four = law_free_leverage(None, pairs_on_a_line(4, 0), 400, 0, job=("text", FAMILY))
    assert four["distinct draws"] < MIN_DISTINCT_DRAWS and np.isnan(four["lower"])
    clean = pairs_on_a_line(5, 0, noise=0.0)
    d, m = clean[clean["family"] == "dense"], clean[clean["family"] == "moe"]
    truth = law_free_ratio(d["C"], d["loss"], m["C"], m["loss"])[0]
    five = law_free_leverage(None, pairs_on_a_line(5, 1), 400, 1, job=("text", FAMILY))
    assert five["distinct draws"] >= MIN_DISTINCT_DRAWS
    assert interval_ok(five["EL (runs)"], five["lower"], five["upper"])
    assert five["lower"] <= truth <= five["upper"]


def backtest_runs(sizes: tuple[float, ...], held: tuple[tuple[float, float], ...]) -> pd.DataFrame:
    truth = {"E": 1.2, "A": 300.0, "B": 200.0, "alpha": 0.35, "beta": 0.30}
    N, D = (a.ravel() for a in np.meshgrid(sizes, (2e6, 6e6, 2e7)))
    N, D = np.r_[N, [n for n, _ in held]], np.r_[D, [d for _, d in held]]
    loss = chinchilla_law(N, D, truth) * np.exp(np.random.default_rng(2).normal(0, 0.01, len(N)))
    return pd.DataFrame({"N": N, "D": D, "loss": loss, "family": "dense", "modality": "text",
                         "run": [f"r{i}" for i in range(len(N))], "C": 6 * N * D})


def test_backtest_trains_on_the_smallest_accepted_grid_and_refuses_a_smaller_one():
    t = backtest(backtest_runs((1e5, 3e5, 1e6, 3e6), ((1e7, 2e7), (3e6, 6e7), (1e7, 6e7))),
                 3, bootstrap=100)
    assert len(t) == 3 and interval_ok(t["predicted"], t["lower"], t["upper"]).all()
    assert t["covered"].all()
    with pytest.raises(AnalysisError, match="9 runs .3 sizes x 3 budgets.*add 3 or more runs"):
        backtest(backtest_runs((1e5, 3e5, 1e6), ((3e6, 2e7), (1e6, 6e7), (3e6, 6e7))), 3, bootstrap=100)
