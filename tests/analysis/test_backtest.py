import numpy as np
import pandas as pd
import pytest

from analysis.backtest import backtest, split_largest, summarize
from analysis.chinchilla import NAMES, ChinchillaResult
from analysis.errors import AnalysisError
from analysis.fit import CHINCHILLA, chinchilla_predict
from analysis.prediction import Law, prediction_interval
from analysis.results import LawResult
from analysis.synthetic import HOFFMANN as TRUTH
from analysis.synthetic import chinchilla_points


def runs(n: int, seed: int, noise: float = 0.01, family: str = "dense") -> pd.DataFrame:
    df = chinchilla_points(n, noise=noise, seed=seed)
    return df.assign(family=family, modality="text", run=[f"{family}{i}" for i in range(n)],
                     C=6 * df["N"] * df["D"])


def test_split_holds_out_the_largest_compute_and_its_ties():
    df = pd.DataFrame({"C": [1, 5, 3, 5, 2, 4], "run": list("abcdef")})
    train, held = split_largest(df, 2)
    assert set(held["run"]) == {"b", "d"} and set(train["run"]) == {"a", "c", "e", "f"}
    _, held = split_largest(df, 3)
    assert set(held["run"]) == {"b", "d", "f"}
    with pytest.raises(AnalysisError, match="at least one"):
        split_largest(df, 0)


def _truth_result(boot=None) -> ChinchillaResult:
    params = pd.Series([TRUTH[k] for k in NAMES], index=NAMES)
    return ChinchillaResult("chinchilla", {}, params, boot, 400, 0.0, True, "")


def test_interval_without_refits_is_the_residual_scatter():
    train = runs(400, 0, noise=0.01)
    new = pd.DataFrame({"N": [1e7, 1e10], "D": [1e9, 1e12]})
    pi = prediction_interval(_truth_result(), CHINCHILLA, train, new)
    half = np.log(pi["upper"] / pi["predicted"])
    np.testing.assert_allclose(half, 1.96 * 0.01, rtol=0.2)  # lognormal noise of 1%
    np.testing.assert_allclose(pi["predicted"], chinchilla_predict(_truth_result().params.to_numpy(), new))
    assert "parameter uncertainty is missing" in pi.attrs["method"] and pi["mean_lower"].isna().all()


def test_parameter_uncertainty_widens_the_interval():
    rng = np.random.default_rng(0)
    truth = np.array([TRUTH[k] for k in NAMES])
    boot = truth + rng.normal(0, 1, (500, 5)) * np.array([0.02, 0, 0, 0.01, 0.01])
    train = runs(100, 1, noise=0.01)
    new = pd.DataFrame({"N": [1e7, 1e9, 1e12], "D": [1e9, 1e11, 1e14]})
    pi = prediction_interval(_truth_result(boot), CHINCHILLA, train, new)
    bare = prediction_interval(_truth_result(), CHINCHILLA, train, new)
    # the prediction interval holds the law's interval (up to Monte Carlo noise)
    assert (pi["lower"] < pi["mean_lower"] * 1.002).all() and (pi["mean_upper"] < pi["upper"] * 1.002).all()
    assert ((pi["mean_lower"] < pi["predicted"]) & (pi["predicted"] < pi["mean_upper"])).all()
    assert (pi["upper"] - pi["lower"] > 1.2 * (bare["upper"] - bare["lower"])).all()


def _fit_power(rows: pd.DataFrame, group: dict, bootstrap: int, seed: int) -> LawResult:
    """A toy law, L = c N^-a by OLS in log space: any law plugs into the backtest."""
    x, y = np.log(rows["N"].to_numpy()), np.log(rows["loss"].to_numpy())

    def ols(w):
        slope, icpt = np.polyfit(x, y, 1, w=np.sqrt(w))
        return np.array([np.exp(icpt), -slope])

    rng = np.random.default_rng(seed)
    boot = np.array([ols(np.bincount(rng.integers(0, len(x), len(x)), minlength=len(x)) + 1e-12)
                     for _ in range(bootstrap)]) if bootstrap else None
    return LawResult("power", group, pd.Series(ols(np.ones_like(x)), index=["c", "a"]), boot,
                     len(x), 0.0, True, "ols")


def _predict_power(params, rows):
    p = np.asarray(params, float)
    return p[..., 0, None] * rows["N"].to_numpy(float) ** -p[..., 1, None] if p.ndim > 1 else \
        p[0] * rows["N"].to_numpy(float) ** -p[1]


POWER = Law("power", lambda df: [({"family": f}, g) for f, g in df.groupby("family")], _fit_power,
            _predict_power)


def test_backtest_takes_any_law_and_scores_it():
    rng = np.random.default_rng(2)
    N = np.exp(rng.uniform(np.log(1e6), np.log(1e9), 30))
    df = pd.DataFrame({"family": "dense", "run": [f"r{i}" for i in range(30)], "N": N, "D": 20 * N,
                       "C": 120 * N**2, "loss": 9.0 * N**-0.1 * np.exp(rng.normal(0, 0.01, 30))})
    bt = backtest(df, 4, law=POWER, bootstrap=200)
    assert len(bt) == 4 and (bt["law"] == "power").all() and (bt["beyond"] > 1).all()
    assert bt["covered"].sum() >= 3 and (bt["lower"] < bt["predicted"]).all()
    s = summarize(bt)
    assert s.loc[0, "held_out"] == 4 and s.loc[0, "rms_log_error"] < 0.05


def test_too_few_runs_is_an_error_and_small_groups_are_skipped():
    df = pd.concat([runs(30, 3), runs(9, 4, family="moe")], ignore_index=True)
    with pytest.warns(UserWarning, match="family=moe.*fewer than 8"):
        bt = backtest(df, 3, bootstrap=20)
    assert set(bt["family"]) == {"dense"}
    with pytest.raises(AnalysisError, match="no group has enough runs"):
        backtest(runs(9, 4), 3, bootstrap=0)


def test_chinchilla_backtest_intervals_cover_held_out_runs():
    bt = backtest(runs(40, 5), 3, bootstrap=100)
    assert len(bt) == 3 and (bt["beyond"] >= 1).all()
    assert {"observed", "predicted", "lower", "upper", "covered", "log_error"} <= set(bt.columns)
    assert bt["covered"].sum() >= 2
    assert (np.abs(bt["log_error"]) < 0.05).all()


@pytest.mark.slow
def test_backtest_coverage_near_nominal():
    """Six fixed data sets, 18 held-out runs: at least 14 inside their 95% intervals (17.1
    expected)."""
    bt = pd.concat([backtest(runs(40, 10 + s), 3, bootstrap=100, seed=s) for s in range(6)])
    assert len(bt) == 18 and bt["covered"].sum() >= 14


def test_cli_holdout_largest(tmp_path, capsys):
    import json

    from moe_vs_dense.cli import main

    path = tmp_path / "runs.csv"
    runs(30, 6).rename(columns={"N": "params", "D": "tokens"}).to_csv(path, index=False)
    out = tmp_path / "fit.json"
    assert main(["fit", str(path), "--holdout-largest", "2", "--bootstrap", "20", "--format", "csv",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Backtest: fitted without the 2 largest-compute run(s)" in printed
    rows = json.loads(out.read_text())["backtest"]
    assert len(rows) == 2 and all(r["lower"] < r["predicted"] < r["upper"] for r in rows)
    # the bimodal law predicts an interaction, not a run's loss: nothing to hold out
    assert main(["fit", str(path), "--law", "bimodal", "--holdout-largest", "2"]) == 2
    assert "--holdout-largest backtests chinchilla, routed; not --law bimodal" in capsys.readouterr().err


def test_the_routed_law_backtests_through_the_one_registry():
    """fit.LAWS holds every law `fit` and the report fit; a law that predicts a run's loss (the
    routed law: N and the expert count) is held out and predicted like Chinchilla's."""
    from analysis.fit import LAWS
    from analysis.synthetic import routed_law, routed_points

    truth = {"a": -0.08, "b": -0.05, "c": 0.004, "d": 1.9, "E_start": 1.9, "E_max": 300.0}
    df = routed_points(truth, (1e6, 3e6, 1e7, 3e7, 1e8), (1, 4, 16, 64), noise=0.003, seed=1)
    df = df.assign(modality="text", router="learned", top_k=1, D=2e9, C=6 * df["N"] * 2e9,
                   run=[f"r{i}" for i in range(len(df))])
    bt = backtest(df, 1, LAWS["routed"], bootstrap=100)
    assert len(bt) == 4 and (bt["N"] == 1e8).all()  # the largest size, every expert count
    assert ((bt["lower"] < bt["predicted"]) & (bt["predicted"] < bt["upper"])).all()
    truth_loss = routed_law(bt["N"].to_numpy(), df.set_index("run").loc[bt["run"], "E"].to_numpy(), truth)
    assert (np.abs(np.log(bt["predicted"].to_numpy() / truth_loss)) < 0.02).all()
    with pytest.raises(AnalysisError, match="bimodal law predicts no run's loss"):
        backtest(df, 1, LAWS["bimodal"])
