"""Compressed runs in the analysis: kept out of the trained runs' table, and the study section's
before/after table, equal-compute comparison and verdicts."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from analysis.compress import claim_rows, compress_section, verdicts
from analysis.records import load_runs
from analysis.synthetic import record

DOCS = 40


def _write(root: Path, rec: dict, nll_per_token: np.ndarray) -> None:
    d = root / rec["run_id"]
    d.mkdir(parents=True)
    (d / "record.json").write_text(json.dumps(rec))
    tokens = np.full(DOCS, 50)
    (d / "eval_docs.json").write_text(json.dumps(
        {"text": {"nll_sum": (nll_per_token * tokens).tolist(), "tokens": tokens.tolist()}}))


def _version(rec: dict, method: str, storage: int, fwd: float, shift: float) -> dict:
    out = copy.deepcopy(rec)
    out["run_id"] = f"{rec['run_id']}__{method}"
    out["schema_version"] = 4
    out["eval"]["final"]["text"]["loss"] += shift
    out["inference"] = {"method": method, "storage_bytes": storage, "flops_per_token": fwd}
    out["compressed"] = {"source_run": rec["run_id"], "method": method}
    return out


@pytest.fixture
def study(tmp_path) -> Path:
    """Dense text runs: small (N 1e4) on 3M tokens and large (N 3e4) on 1M, the same training
    compute; the large one compressed to int4 (storage below the small run's, loss 0.02 up)
    and to int8 (storage above it). Per-document losses: the large fp32 run 0.05 below the
    small one on every document, plus document noise common to both. The large run's MoE
    partner (1.5x its total params) is 0.08 below it, and its int8 version stores less than
    the dense run."""
    rng = np.random.default_rng(0)
    doc_level = rng.normal(2.0, 0.3, DOCS)
    runs = {"small": (10_000, 3_000_000, 0.0), "large": (30_000, 1_000_000, -0.05),
            "tiny": (3_000, 1_000_000, 0.4), "moe": (30_000, 1_000_000, -0.13)}
    for name, (n, d, shift) in runs.items():
        per_doc = doc_level + shift + rng.normal(0, 0.002, DOCS)
        loss = float(per_doc.mean())
        moe = name == "moe"
        rec = record(name, "moe" if moe else "dense", ["text"], n, {"text": d}, {"text": loss},
                     pair_id="p1" if name in ("large", "moe") else None, router="modality",
                     n_experts=2 if moe else 0, n_total=45_000 if moe else n)
        rec["eval"]["final"]["text"]["se"] = 0.05
        rec["eval"]["floors"] = {"text": {"uniform": 5.5, "unigram": 3.0, "bigram": 2.6, "markov": 2.5}}
        _write(tmp_path, rec, per_doc)
        versions = {"large": (("int4", 30_000, 0.02), ("int8", 60_000, 0.001)),
                    "moe": (("int8", 80_000, 0.002),)}.get(name, ())
        for method, storage, extra in versions:
            v = _version(rec, method, storage, 2 * n, extra)
            _write(tmp_path, v, per_doc + extra + rng.normal(0, 0.001, DOCS))
    return tmp_path


def test_compressed_runs_stay_out_of_the_trained_table(study):
    df, records = load_runs([study])
    assert sorted(df["run"].unique()) == ["large", "moe", "small", "tiny"] and len(records) == 4
    assert set(df["method"]) == {"fp32"} and df["source_run"].isna().all()
    # records before schema version 4: fp32 weights, a third of the training FLOPs per token
    assert (df["storage_bytes"] == 4 * df["N_total"]).all()
    assert np.allclose(df["inference_flops_per_token"], df["flops_per_token"] / 3)
    every, _ = load_runs([study], compressed=True)
    assert len(every) == 7
    v = every.set_index("run").loc["large__int4"]
    assert (v["method"], v["source_run"], v["storage_bytes"]) == ("int4", "large", 30_000)
    assert v["C"] == every.set_index("run").loc["large", "C"]  # the source's training


def test_equal_compute_comparison_and_verdicts(study):
    from analysis.records import load_docs

    every, _ = load_runs([study], compressed=True)
    table = verdicts(claim_rows(every, load_docs([study])))
    # tiny's compute is 1/10 of the others: it pairs with nothing
    assert set(table["smaller"]) == {"small"} and set(table["larger"]) == {"large"}
    rows = table.set_index("method")
    assert rows.loc["fp32", "dL"] == pytest.approx(-0.05, abs=0.003)
    assert rows.loc["int4", "dL"] == pytest.approx(-0.03, abs=0.003)
    # document difficulty cancels: the SE is that of the small per-document noise, not 0.3
    assert (table["se"] < 0.002).all()
    assert ((table["lower"] <= table["dL"]) & (table["dL"] <= table["upper"])).all()
    assert rows.loc["int4", "storage_ratio"] == pytest.approx(30_000 / 40_000)
    assert rows.loc["int4", "at"] == "<= storage"
    assert rows.loc["int4", "verdict"] == "larger better"
    assert rows.loc["int8", "at"].startswith("-") and rows.loc["int8", "verdict"] == ""
    assert rows.loc["fp32", "verdict"] == ""  # stores 3x the small run's weights


def test_experts_against_their_dense_partner(study):
    from analysis.records import load_docs

    every, _ = load_runs([study], compressed=True)
    table = verdicts(claim_rows(every, load_docs([study]), partners=True))
    assert set(table["smaller"]) == {"large"} and set(table["method"]) == {"fp32", "int8"}
    rows = table.set_index("method")
    assert rows.loc["int8", "dL"] == pytest.approx(-0.078, abs=0.003)
    assert rows.loc["int8", "storage_ratio"] == pytest.approx(80_000 / 120_000)
    assert rows.loc["int8", "at"] == "<= storage and <= fwd FLOPs"
    assert rows.loc["fp32", "at"] == "<= fwd FLOPs" and set(table["verdict"]) == {"larger better"}


def test_no_verdict_where_a_run_does_not_beat_its_bigram_floor(study):
    from analysis.records import load_docs

    every, _ = load_runs([study], compressed=True)
    every.loc[every["run"] == "small", "floor_bigram"] = 1.0
    table = verdicts(claim_rows(every, load_docs([study])))
    assert (table["verdict"] == "").all() and table["at"].str.contains("bigram").all()


def test_section_and_report(study, tmp_path):
    from analysis.report import write_report

    out = tmp_path / "report"
    out.mkdir()
    df, records = load_runs([study])
    lines, figs = compress_section(df, records, out, [study])
    text = "\n".join(lines)
    assert "## Train large, then compress" in text and "larger better" in text
    import pandas as pd

    ba = pd.read_csv(out / "compress.csv")
    ba = ba[ba["source"] == "large"].set_index("method")
    assert ba.loc["int4", "dL_vs_source"] == pytest.approx(0.02, abs=1e-3)
    assert 0 < ba.loc["int4", "dL_se"] < 0.001 and np.isnan(ba.loc["fp32", "dL_se"])
    assert set(pd.read_csv(out / "compress.csv")["source"]) == {"large", "moe", "small", "tiny"}
    claim = pd.read_csv(out / "compress_claim.csv")
    partner = claim[claim["comparison"].str.startswith("MoE")]
    assert list(partner["method"]) == ["int8"]  # fp32 MoE vs dense is the primary table's
    assert "### Experts compressed against their dense partner" in text
    assert figs and figs[0].is_file() and (out / "compress.csv").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = write_report([study], tmp_path / "full", bootstrap=0)
    report = path.read_text()
    assert report.count("## Train large, then compress") == 1
    assert "large__int4" not in (tmp_path / "full" / "runs.csv").read_text()


def test_no_compressed_runs_no_section(paired_runs, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df, records = load_runs([paired_runs])
    assert compress_section(df, records, tmp_path, [paired_runs]) == ([], [])
