import numpy as np
import pandas as pd
import pytest

from analysis.chinchilla import objective
from analysis.errors import AnalysisError
from analysis.shared_exponent import (
    bootstrap_restriction,
    joint_objective,
    layout,
    shared_test,
)
from analysis.synthetic import HOFFMANN, chinchilla_points

MOE = dict(HOFFMANN, E=1.60, A=350.0)
DESIGN = {"noise": 0.005, "n_range": (1e6, 1e9), "d_range": (1e8, 1e11)}


def two_families(seed: int, d_alpha: float, n: int = 40) -> pd.DataFrame:
    d = chinchilla_points(n, HOFFMANN, seed=2 * seed, **DESIGN)
    m = chinchilla_points(n, dict(MOE, alpha=MOE["alpha"] + d_alpha), seed=2 * seed + 1, **DESIGN)
    return pd.concat([d.assign(family="dense"), m.assign(family="moe")], ignore_index=True)


def _data(rng, n=12):
    logN, logD = rng.uniform(12, 20, (1, n)), rng.uniform(17, 24, (1, n))
    return logN, logD, rng.uniform(0.5, 1.2, (1, n))


def test_layout_ties_shared_coordinates_once():
    idx = layout(("alpha", "beta"), 2)
    assert idx.max() + 1 == 8
    assert (idx[0, 3:] == idx[1, 3:]).all() and not set(idx[0, :3]) & set(idx[1, :3])
    assert layout((), 2).max() + 1 == 10 and layout(("E", "A", "B", "alpha", "beta"), 2).max() + 1 == 5


def test_joint_objective_sums_families_and_its_gradient_is_exact():
    rng = np.random.default_rng(0)
    data = [_data(rng), _data(rng, 9)]
    idx = layout(("alpha", "beta"), 2)
    theta = rng.normal([0.3, 0.3, 5, 6, 0.5, 5, 6, 0.4], [0.05, 0.05, 1, 1, 0.3, 1, 1, 0.3], (3, 8))
    f, g = joint_objective(theta, idx, data)
    expect = sum(objective(theta[:, idx[k]], *data[k])[0] for k in range(2))
    np.testing.assert_allclose(f, expect, rtol=1e-12)
    h = 1e-6
    for j in range(8):
        step = np.zeros(8)
        step[j] = h
        up, down = joint_objective(theta + step, idx, data)[0], joint_objective(theta - step, idx, data)[0]
        fd = (up - down) / (2 * h)
        np.testing.assert_allclose(g[:, j], fd, rtol=1e-4, atol=1e-9)


def test_bootstrap_statistics_are_nonnegative_and_null_refits_near_the_truth():
    rng = np.random.default_rng(1)
    truth = np.log([406.4, 410.7, 1.69])
    data = []
    for shift in (0.0, -0.1):
        logN = rng.uniform(np.log(1e6), np.log(1e9), (1, 25))
        logD = rng.uniform(np.log(1e8), np.log(1e11), (1, 25))
        mu = np.logaddexp(np.logaddexp(truth[0] - 0.34 * logN, truth[1] - 0.28 * logD), truth[2] + shift)
        data.append((logN, logD, mu + rng.normal(0, 0.01, mu.shape)))
    theta0 = np.array([0.34, 0.28, *truth, *truth[:2], truth[2] - 0.1])
    t_star, boot = bootstrap_restriction(theta0, ("alpha", "beta"), (), data, [0.01, 0.01], 20, seed=0)
    assert t_star.shape == (20,) and (t_star >= 0).all() and t_star.max() > 0
    assert np.median(np.abs(boot[:, 0] - 0.34)) < 0.05  # alpha refits centre on the truth


def test_bad_shared_names_are_a_user_error():
    df = two_families(0, 0.0, n=8)
    with pytest.raises(AnalysisError, match="some but not all"):
        shared_test(df, shared=("gamma",), bootstrap=0, draws=9)
    with pytest.raises(AnalysisError, match="no mot runs"):
        shared_test(df, families=("dense", "mot"), bootstrap=0, draws=9)


@pytest.fixture(scope="module")
def differing():
    return shared_test(two_families(3, 0.10), bootstrap=40, draws=99)


def test_exponents_differing_by_0_1_are_detected(differing):
    r = differing
    assert r.verdict == "exponents differ" and r.exponents.p < 0.02 and r.p_exponents < 0.02
    d = r.differences()
    assert d.loc["alpha_moe - alpha_dense", "lower"] < 0.10 < d.loc["alpha_moe - alpha_dense", "upper"]
    assert d.loc["alpha_moe - alpha_dense", "lower"] > 0  # the interval excludes equal exponents
    text = r.summary()
    assert "parametric bootstrap" in text and "exponents differ" in text
    assert r.to_dict()["tests"][0]["hypothesis"] == "exponents shared"


def test_equal_exponents_offsets_differ():
    r = shared_test(two_families(4, 0.0), bootstrap=0, draws=199, seed=0)
    assert r.exponents.p > 0.05, r.exponents.p
    assert r.offsets.p < 0.02 and r.verdict == "offsets differ"
    sp = r.shared_params().set_index(["family", "param"])["estimate"]
    assert sp[("dense", "alpha")] == sp[("moe", "alpha")]
    assert sp[("dense", "alpha")] == pytest.approx(0.34, abs=0.05)
    assert sp[("moe", "E")] < sp[("dense", "E")]


@pytest.mark.slow
def test_rejection_rates_near_nominal_and_power():
    """Fixed data sets: under equal exponents at most 2 of 6 rejections at 5% (expected 0.3);
    with alpha larger by 0.05, at least 3 of 4 detected (the benchmark's power is above 0.9)."""
    null = [shared_test(two_families(100 + s, 0.0), bootstrap=0, draws=99, seed=s, offsets=False)
            for s in range(6)]
    alt = [shared_test(two_families(200 + s, 0.05), bootstrap=0, draws=99, seed=s, offsets=False)
           for s in range(4)]
    assert sum(r.exponents.p < 0.05 for r in null) <= 2, [r.exponents.p for r in null]
    assert sum(r.exponents.p < 0.05 for r in alt) >= 3, [r.exponents.p for r in alt]


def test_cli_fit_shared_prints_the_test_and_writes_json(tmp_path, capsys):
    import json

    from moe_vs_dense.cli import main

    path = tmp_path / "runs.csv"
    df = two_families(3, 0.10)
    df.rename(columns={"N": "params", "D": "tokens"}).assign(modality="text").to_csv(path, index=False)
    out = tmp_path / "fit.json"
    assert main(["fit", str(path), "--shared", "alpha,beta", "--bootstrap", "20", "--format", "csv",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "parametric bootstrap" in printed and "text,moe,exponents differ" in printed
    body = json.loads(out.read_text())
    assert len(body["fits"]) == 2 and body["shared"][0]["verdict"] == "exponents differ"
    assert main(["fit", str(path), "--shared", "alpha,gamma"]) == 2
    assert "--shared alpha,gamma" in capsys.readouterr().err
