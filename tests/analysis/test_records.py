import subprocess
import sys

import pandas as pd
import pytest

from analysis.errors import AnalysisError
from analysis.records import load, load_csv, load_runs


def test_load_runs_skips_bad_records_with_one_warning(paired_runs):
    with pytest.warns(UserWarning) as caught:
        df, records = load_runs([paired_runs])
    msg = str(caught[0].message)
    assert "skipped 3 record(s)" in msg
    assert "corrupt JSON" in msg and "status failed" in msg and "params/active" in msg
    assert df["run"].nunique() == 48 and len(records) == 48
    assert set(df["modality"]) == {"text", "dna", "image"}
    moe = df[df["family"] == "moe"].iloc[0]
    assert moe["N"] == moe["N_active"] and moe["N_total"] == 4 * moe["N_active"]
    with pytest.warns(UserWarning, match="skipped 3"):
        total = load_runs([paired_runs], params="total")[0]
    assert total.query("family == 'moe'")["N"].iloc[0] == moe["N_total"]


def test_csv_with_mapped_columns(tmp_path):
    path = tmp_path / "runs.csv"
    pd.DataFrame({"n_params": [1e6, 2e6], "toks": [1e8, 2e8], "val_loss": [3.1, 2.9],
                  "family": ["dense", "moe"]}).to_csv(path, index=False)
    df = load_csv(path, {"params": "n_params", "tokens": "toks", "loss": "val_loss"})
    assert df["N"].tolist() == [1e6, 2e6] and df["C"].tolist() == [6e14, 2.4e15]
    assert df["family"].tolist() == ["dense", "moe"] and (df["modality"] == "all").all()
    with pytest.raises(AnalysisError, match="missing column 'params'"):
        load_csv(path)


def test_csv_non_positive_values_name_the_line(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("params,tokens,loss\n1e6,1e8,3.0\n-1,1e8,3.0\n2e6,nan,2.0\n")
    with pytest.raises(AnalysisError, match=r"line\(s\) 3, 4"):
        load_csv(path)


def test_missing_inputs():
    with pytest.raises(AnalysisError, match="no such file"):
        load(["/nonexistent/runs.csv"])
    with pytest.raises(AnalysisError, match="no such file or directory"):
        load(["/nonexistent/dir"])


def test_analysis_never_imports_torch():
    code = ("import sys, analysis.report, analysis.fit, analysis.compare, analysis.plots, "
            "analysis.routed, analysis.bimodal; assert 'torch' not in sys.modules, 'torch'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_compute_per_modality_and_total(tmp_path):
    """C is FLOPs per token x the modality's tokens; C_total is x all tokens (the record's
    compute); FLOPs per token is the record's, not 6 N."""
    import json

    from analysis.synthetic import record

    rec = record("r", "dense", ["text", "dna"], 1000, {"text": 300, "dna": 100},
                 {"text": 2.0, "dna": 1.0})
    rec.update(flops_per_token=9000.0, compute=9000.0 * 400)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "record.json").write_text(json.dumps(rec))
    df = load_runs([tmp_path])[0].set_index("modality")
    assert df.loc["text", "C"] == 9000 * 300 and df.loc["dna", "C"] == 9000 * 100
    assert (df["C_total"] == rec["compute"]).all() and df["C"].sum() == rec["compute"]
