import io
import json
import warnings

import numpy as np
import pandas as pd
import pytest

from analysis.chinchilla import NAMES, ChinchillaResult
from analysis.compare import compare_laws, compare_pairs, crossovers, law_points, match_runs, pairs
from analysis.compute import FlopsPerToken, Frontier, frontiers
from analysis.fit import chinchilla_by_group, fit_groups
from analysis.records import load_runs
from analysis.synthetic import record
from analysis.tables import render
from moe_vs_dense.cli import main


@pytest.fixture(scope="module")
def df(paired_runs):
    with pytest.warns(UserWarning):
        return load_runs([paired_runs])[0]


def test_pairs_match_on_seed_compute_and_tokens(df):
    p = pairs(df)
    assert len(p) == 24 * 3 and set(p["family"]) == {"moe learned E=8"}
    assert (p["run"].str.replace("moe-", "") == p["run_dense"].str.replace("dense-", "")).all()


def test_paired_comparison_verdicts_and_holm(df):
    t = compare_pairs(df).set_index("modality")
    assert t.loc["text", "verdict"] == "moe learned E=8 better"
    assert t.loc["image", "verdict"] == "dense better"
    assert t.loc["dna", "verdict"] == "no significant difference"
    assert t.loc["text", "dL"] == pytest.approx(-0.05, abs=0.006)
    assert t.loc["text", "lower"] < t.loc["text", "dL"] < t.loc["text", "upper"] < 0
    assert (t["p_holm"] >= t["p"]).all()  # Holm only ever raises p
    assert t.loc["dna", "lower"] < 0 < t.loc["dna", "upper"]


def test_law_comparison_and_crossover(df):
    fits = chinchilla_by_group(fit_groups(df, "chinchilla", bootstrap=50))
    fronts = frontiers(df, fits)
    pts = law_points(fronts, df, extrapolate=100)
    first = pts.groupby("modality").first()
    assert first.loc["text", "dL"] < 0 < first.loc["image", "dL"]
    assert list(pts[pts["modality"] == "dna"]["where"]) == [
        "smallest run", "median run", "largest run", "10x beyond largest run (extrapolated)",
        "100x beyond largest run (extrapolated)"]
    for fam in ("dense", "moe"):  # every loss the table prints comes with its interval
        assert (pts[f"L_{fam} lower"] < pts[f"L_{fam}"]).all()
        assert (pts[f"L_{fam}"] < pts[f"L_{fam} upper"]).all()
    assert ((pts["dL lower"] <= pts["dL"]) & (pts["dL"] <= pts["dL upper"])).all()
    assert (pts["verdict"] == np.where(pts["dL upper"] < 0, "moe learned E=8 better", np.where(
        pts["dL lower"] > 0, "dense better", "not resolved"))).all()
    # the MoE equals dense on dna: beyond the runs, no verdict
    dna = pts[pts["modality"] == "dna"]
    assert (dna[dna["where"].str.contains("extrapolated")]["verdict"] == "not resolved").all()
    # the band widens with extrapolation
    assert (dna["dL upper"] - dna["dL lower"]).iloc[-1] > (dna["dL upper"] - dna["dL lower"]).iloc[2]
    laws = compare_laws(fronts, df["C"].min(), df["C"].max() * 100).set_index("modality")
    assert laws.loc["text", "crossover"] in ("none in the range",) or \
        laws.loc["text", "crossover"].startswith("none resolved")
    curve = pd.DataFrame({"C": [1e10, 1e11, 1e12, 1e13], "dL": [-0.2, -0.1, 0.1, 0.3]})
    (x,) = crossovers(curve)
    assert 1e11 < x < 1e12 and x == pytest.approx(10 ** 11.5, rel=0.01)
    assert crossovers(curve.assign(dL=[-1, -1, -1, -1])) == []


@pytest.mark.parametrize("fmt, marker", [("md", "|:"), ("csv", "family,modality"),
                                          ("latex", "\\begin{tabular}")])
def test_table_formats(df, fmt, marker):
    out = render(compare_pairs(df), fmt)
    assert marker in out and "text" in out
    if fmt == "csv":
        assert len(out.strip().splitlines()) == 4


def test_cli_fit_json_compare_and_report(paired_runs, tmp_path, capsys):
    out = tmp_path / "fits.json"
    assert main(["fit", str(paired_runs), "--bootstrap", "20", "--json", str(out)]) == 0
    fits = json.loads(out.read_text())
    assert len(fits) == 6 and {f["group"]["family"] for f in fits} == {"dense", "moe learned E=8"}
    for f in fits:
        assert set(f["params"]) == {"E", "A", "B", "alpha", "beta"}
        assert {"estimate", "lower", "upper"} <= set(f["params"]["alpha"])
        assert f["n_points"] == 24 and isinstance(f["converged"], bool)
    assert main(["compare", str(paired_runs), "--bootstrap", "20", "--format", "csv"]) == 0
    printed = capsys.readouterr().out
    assert "moe learned E=8,text" in printed and "100x beyond largest run (extrapolated)" in printed
    # the exponent-or-offset rows: MoE = dense + a constant on text and image, equal on dna
    shared = pd.read_csv(io.StringIO(printed.split("closed testing at 5%:")[1].strip()
                                     .split("\n\n")[0]))
    # secondary in compare: p-values, no verdict column (the primary table's policy is the only one)
    assert "verdict" not in shared
    p = shared.set_index("modality")
    assert p.loc["text", "p_offsets"] < 0.05 <= p.loc["text", "p_exponents"]  # offsets differ
    assert p.loc["dna", "p_offsets"] >= 0.05 and p.loc["dna", "p_exponents"] >= 0.05
    assert p.loc["image", "p_exponents"] >= 0.05 and (shared["p_offsets"] <= 1).all()
    assert "Primary answer" in printed
    assert main(["report", str(paired_runs), "--out", str(tmp_path / "rep"),
                 "--bootstrap", "20"]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "## Exponent or offset" in report and "## Backtest: predicting the 3 largest" in report
    assert "prediction interval" in report
    # the primary answer comes first; the secondary law-based table prints no verdicts
    assert report.index("## Primary answer") < report.index("## Runs")
    assert "Holm's step-down over every such verdict" in report and "not resolved" not in report
    primary = pd.read_csv(tmp_path / "rep" / "primary.csv")
    assert len(primary) == 3 and primary["verdict"].str.endswith("better").sum() == 2
    assert "## MoE/MoT minus dense on matched pairs" in report and "moe learned E=8 better" in report
    assert "C is training FLOPs spent on a modality's tokens" in report
    assert "FLOPs per token ~ 6 N^1.000 (within 0.0% of every run)" in report
    for png in ("loss_vs_compute.png", "delta_vs_compute.png"):
        blob = (tmp_path / "rep" / png).read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) > 10_000
    assert (tmp_path / "rep" / "runs.csv").exists()


def test_cli_bad_csv_exit_2(tmp_path, capsys):
    path = tmp_path / "r.csv"
    path.write_text("p,t,l\n1,2,3\n")
    assert main(["fit", str(path)]) == 2
    err = capsys.readouterr().err
    assert "missing column 'params'" in err and "Traceback" not in err
    assert main(["fit", str(path), "--col", "params=p", "--col", "tokens=t", "--col", "loss=l"]) == 2
    assert "not identified: 1 run (1 size x 1 token budget) for 5 parameters" in capsys.readouterr().err


def _runs(tmp_path, recs: list[dict]) -> pd.DataFrame:
    for rec in recs:
        d = tmp_path / rec["run_id"]
        d.mkdir()
        (d / "record.json").write_text(json.dumps(rec))
    return load_runs([tmp_path])[0]


def _with_flops(rec: dict, flops_per_token: float) -> dict:
    return {**rec, "flops_per_token": flops_per_token,
            "compute": flops_per_token * rec["tokens"]["total"]}


def test_flop_matched_partners_pair_within_one_percent_and_the_rest_are_explained(tmp_path):
    """Learned-router partners 0.466% below their dense run's FLOPs used to be dropped when
    compute, rounded to 3 significant digits, fell on different sides of a rounding edge."""
    recs = []
    for i in range(18):
        fpt = 1.2345e6 * 1.1**i
        tokens = {"text": 1_000_000 + 7919 * i, "dna": 500_000}
        dense = record(f"dense-{i}", "dense", ["text", "dna"], 100_000, tokens,
                       {"text": 2.0 + i / 64, "dna": 1.5}, seed=i % 3)
        moe = record(f"moe-{i}", "moe", ["text", "dna"], 99_500, tokens,
                     {"text": 1.9 + i / 64, "dna": 1.5}, seed=i % 3, router="learned")
        recs += [_with_flops(dense, fpt), _with_flops(moe, fpt * (1 - 0.00466))]
    far = record("moe-far", "moe", ["text", "dna"], 90_000, {"text": 1_000_000, "dna": 500_000},
                 {"text": 1.0, "dna": 1.0}, router="learned")
    recs.append(_with_flops(far, 1.2345e6 * 0.97))
    lone = record("moe-lone", "moe", ["text"], 1000, {"text": 10}, {"text": 3.0}, seed=7,
                  router="learned")
    df = _runs(tmp_path, recs + [lone])
    match, why = match_runs(df)
    assert len(match) == 18 and (match["run"].str[4:] == match["run_dense"].str[6:]).all()
    assert set(why) == {"moe-far", "moe-lone"}
    assert "nearest dense run, dense-0, by -3.00% and +0.00%" in why["moe-far"]
    assert "seed 7 and modalities text" in why["moe-lone"]
    with pytest.warns(UserWarning, match="2 of 20 MoE/MoT run"):
        t = compare_pairs(df).set_index("modality")
    assert t.loc["text", "pairs"] == 18 and t.loc["text", "unpaired"] == 2
    assert t.loc["text", "verdict"] == "moe learned better"


def test_identical_differences_are_a_result_not_missing_data(tmp_path):
    recs = []
    for i in range(18):
        tokens = {"text": 1000 * (i + 1)}
        recs += [record(f"dense-{i}", "dense", ["text"], 1000, tokens, {"text": 3.0 - i / 16}),
                 record(f"moe-{i}", "moe", ["text"], 1000, tokens, {"text": 2.875 - i / 16},
                        router="learned")]
    df = _runs(tmp_path, recs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every run has its partner
        row = compare_pairs(df).iloc[0]
    assert row["pairs"] == 18 and row["dL"] == -0.125 and row["lower"] == row["upper"] == -0.125
    assert row["p"] == 0 and row["verdict"] == "moe learned better"
    equal = [{**r, "eval": {"final": {"text": {"loss": 2.5}}}} for r in recs]
    (tmp_path / "equal").mkdir()
    row = compare_pairs(_runs(tmp_path / "equal", equal)).iloc[0]
    assert row["dL"] == 0 and row["p"] == 1 and row["verdict"] == "no significant difference"


TRUTH = pd.Series([1.7, 400.0, 400.0, 0.34, 0.28], index=NAMES)


def _law(N, D):
    E, A, B, al, be = TRUTH
    return E + A / N**al + B / D**be


def test_one_compute_for_runs_frontiers_and_crossovers(tmp_path):
    """C = FLOPs per token x tokens of the modality, everywhere. Runs placed on the frontier
    (two modalities, FLOPs per token far from 6 N) sit on it in the tidy table's C; the frontier
    is the law's minimum at that C by brute force; a crossover lands where brute force puts it."""
    flops = FlopsPerToken(9.0, 0.95)
    fit = ChinchillaResult("chinchilla", {"family": "dense", "modality": "text"}, TRUTH, None,
                           10, 0.0, True, "")
    C = np.array([1e14, 1e16, 1e18])
    N = np.exp(np.linspace(np.log(1e3), np.log(1e12), 400_001))
    brute = [np.min(_law(N, c / flops(N))) for c in C]
    assert Frontier(fit, flops).at(C)["loss_opt"].to_numpy() == pytest.approx(brute, rel=1e-7)

    recs = []
    for i, row in Frontier(fit, flops).at(C).iterrows():
        n, d = round(row["N_opt"]), round(row["D_opt"])
        rec = record(f"dense-{i}", "dense", ["text", "dna"], n, {"text": d, "dna": d},
                     {"text": _law(n, d), "dna": 2.0})
        recs.append(_with_flops(rec, float(flops(n))))
    df = _runs(tmp_path, recs)
    text = df[df["modality"] == "text"]
    assert text["C"].to_numpy() == pytest.approx(C, rel=1e-5)
    assert (df["C_total"] == 2 * df["C"]).all()
    front = frontiers(df, {("dense", "text"): fit})[("dense", "text")]
    assert (front.flops.k, front.flops.s) == pytest.approx((9.0, 0.95), rel=1e-4)
    assert front.at(text["C"])["loss_opt"].to_numpy() == pytest.approx(text["loss"], rel=1e-7)

    # an MoE law 0.02 nats/token better at large N, worse at small N: they cross once
    params = TRUTH.copy()
    params["E"] -= 0.02
    params["A"] *= 1.02
    moe = ChinchillaResult("chinchilla", {"family": "moe", "modality": "text"}, params, None,
                           10, 0.0, True, "")
    fronts = {("dense", "text"): Frontier(fit, flops), ("moe", "text"): Frontier(moe, flops)}
    (x,) = [float(v) for v in compare_laws(fronts, 1e12, 1e22)["crossover_C"].iloc[0].split(",")]
    grid = np.exp(np.linspace(np.log(1e12), np.log(1e22), 41))
    N = N[::10]
    dL = [np.min(_law(N, c / flops(N)) - 0.02 + 0.02 * 400 / N**0.34) - np.min(_law(N, c / flops(N)))
          for c in grid]
    (want,) = crossovers(pd.DataFrame({"C": grid, "dL": dL}))
    assert x == pytest.approx(want, rel=0.05)


def test_frontier_intervals_are_the_fits_own_expanded_intervals():
    """With FLOPs per token = 6 N the frontier is the fit's compute_optimal, intervals included:
    both expand their percentiles for a fit of few points (10 runs, 5 parameters)."""
    rng = np.random.default_rng(0)
    boot = TRUTH.to_numpy() * np.exp(rng.normal(0, 0.03, size=(400, 5)))
    fit = ChinchillaResult("chinchilla", {"family": "dense", "modality": "text"}, TRUTH, boot,
                           10, 0.0, True, "", df_resid=5)
    C = np.array([1e15, 1e18])
    got = Frontier(fit, FlopsPerToken(6.0, 1.0)).at(C)
    want = fit.compute_optimal(C)
    for col in ("loss_opt_lower", "loss_opt_upper", "N_opt_lower", "N_opt_upper"):
        assert got[col].to_numpy() == pytest.approx(want[col].to_numpy(), rel=1e-9)
    plain = ChinchillaResult("chinchilla", fit.group, TRUTH, boot, 10, 0.0, True, "")
    narrow = Frontier(plain, FlopsPerToken(6.0, 1.0)).at(C)
    assert ((got["loss_opt_upper"] - got["loss_opt_lower"])
            > 1.2 * (narrow["loss_opt_upper"] - narrow["loss_opt_lower"])).all()
