import json

import numpy as np
import pandas as pd
import pytest

from analysis.chinchilla import Grid
from analysis.headline import headline, sections
from analysis.law_bank import BASELINE
from analysis.plots_leverage import leverage_vs_compute
from analysis.records import load_runs
from analysis.synthetic import record
from analysis.synthetic_moe import leverage_runs
from moe_vs_dense.cli import main

SMALL = Grid(alpha=(0.2, 0.5), beta=(0.2, 0.5), e=(-1.0, 0.0, 0.5), a=(0.0, 5.0, 10.0), b=(0.0, 5.0, 10.0))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run records of dense and MoE (8 experts) on text, the MoE worth 1.5x its compute."""
    root = tmp_path_factory.mktemp("leverage")
    df = leverage_runs({"text": 1.5}, seed=4, sizes=(1e6, 3e6, 1e7, 3e7), tokens=(2e7, 6e7, 2e8, 6e8))
    for r in df.itertuples():
        rec = record(r.run, r.family, ["text"], int(r.N), {"text": int(r.D)}, {"text": r.loss},
                     n_experts=r.n_experts, pair_id=r.pair, router=r.router, n_total=int(r.N_total))
        (root / r.run).mkdir()
        (root / r.run / "record.json").write_text(json.dumps(rec))
    return root


def test_headline_tables_and_figure(runs, tmp_path):
    df, _ = load_runs([runs])
    h = headline(df, bootstrap=60, grid=SMALL, holdout_largest=2)
    lev = h.leverage
    mid = lev[(lev["where"] == "median observed") & (lev["law"] == "chinchilla")].iloc[0]
    assert mid["lower"] < 1.5 < mid["upper"] and mid["verdict"] == "experts worth more compute"
    assert lev["where"].str.startswith("extrapolated").sum() >= 2
    # one MoE family at one expert count: only Chinchilla is fitted, beside the baseline, unranked
    assert set(h.ranking["law"]) == {"chinchilla", BASELINE}
    assert h.ranking["rank"].tolist() == ["only law fitted", "baseline"]
    assert any("joint" in n and "not identified" in n for n in h.notes)
    assert any("granularity" in n for n in h.notes)  # records carry no granularity: said, not hidden
    free = h.law_free.iloc[0]
    assert free["lower"] < free["EL (runs)"] < free["upper"]
    md, tex = sections(h), sections(h, "latex")
    assert [t for t, _, _ in md] == [t for t, _, _ in tex] and "\\begin{tabular}" in tex[0][2]
    assert "|:" in md[0][2] and "nats" not in md[0][2]  # a ratio of computes, no loss units
    path = leverage_vs_compute(h.fits, h.best_fits, h.law_free, tmp_path / "lev.png")
    assert path.stat().st_size > 10_000


@pytest.mark.slow
def test_compare_leads_with_leverage_and_report_writes_its_tables(runs, tmp_path, capsys):
    assert main(["compare", str(runs), "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert out.index("Efficiency leverage per modality") < out.index("MoE/MoT minus dense")
    assert main(["report", str(runs), "--out", str(tmp_path / "rep"), "--bootstrap", "20"]) == 0
    rep = tmp_path / "rep"
    text = (rep / "report.md").read_text()
    assert "## Efficiency leverage" in text and "leverage_vs_compute.png" in text
    table = pd.read_csv(rep / "leverage.csv")
    assert {"EL", "lower", "upper", "memory ratio"} <= set(table.columns) and "verdict" not in table
    assert np.isfinite(table["EL"]).all() and (rep / "law_bank.tex").read_text().startswith("\\begin")
