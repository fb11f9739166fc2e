import json

import pandas as pd
import pytest

from analysis.compare import compare_laws, compare_pairs, crossovers, pairs
from analysis.fit import chinchilla_by_group, fit_groups
from analysis.records import load_runs
from analysis.tables import render
from moe_vs_dense.cli import main


@pytest.fixture(scope="module")
def df(paired_runs):
    with pytest.warns(UserWarning):
        return load_runs([paired_runs])[0]


def test_pairs_match_on_seed_compute_and_tokens(df):
    p = pairs(df)
    assert len(p) == 24 * 3 and set(p["family"]) == {"moe"}
    assert (p["run"].str.replace("moe-", "") == p["run_dense"].str.replace("dense-", "")).all()


def test_paired_comparison_verdicts_and_holm(df):
    t = compare_pairs(df).set_index("modality")
    assert t.loc["text", "verdict"] == "moe better" and t.loc["image", "verdict"] == "dense better"
    assert t.loc["dna", "verdict"] == "no significant difference"
    assert t.loc["text", "dL"] == pytest.approx(-0.05, abs=0.006)
    assert t.loc["text", "lower"] < t.loc["text", "dL"] < t.loc["text", "upper"] < 0
    assert (t["p_holm"] >= t["p"]).all()  # Holm only ever raises p
    assert t.loc["dna", "lower"] < 0 < t.loc["dna", "upper"]


def test_law_comparison_and_crossover(df):
    fits = chinchilla_by_group(fit_groups(df, "chinchilla", bootstrap=50))
    table = compare_laws(fits, df["C"].min(), df["C"].max()).set_index("modality")
    assert table.loc["text", "dL_at_C_min"] < 0 < table.loc["image", "dL_at_C_min"]
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
    assert len(fits) == 6 and {f["group"]["family"] for f in fits} == {"dense", "moe"}
    for f in fits:
        assert set(f["params"]) == {"E", "A", "B", "alpha", "beta"}
        assert {"estimate", "lower", "upper"} <= set(f["params"]["alpha"])
        assert f["n_points"] == 24 and isinstance(f["converged"], bool)
    assert main(["compare", str(paired_runs), "--bootstrap", "20", "--format", "csv"]) == 0
    assert "moe,text" in capsys.readouterr().out
    assert main(["report", str(paired_runs), "--out", str(tmp_path / "rep"),
                 "--bootstrap", "20"]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "## MoE/MoT minus dense on matched pairs" in report and "moe better" in report
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
    assert "1 points, fewer than the 5 parameters" in capsys.readouterr().err
