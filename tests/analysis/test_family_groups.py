"""Each MoE variant (router, expert count, top-k) is its own family against dense, and only runs
on the joint mixture enter the joint comparisons: unimodal dense baselines stay out."""

import numpy as np
import pandas as pd
import pytest

from analysis.compare import compare_pairs, law_points
from analysis.compute import frontiers
from analysis.fit import chinchilla_by_group, fit_groups
from analysis.records import by_family, family_key, record_rows
from analysis.synthetic import record
from tests.analysis.conftest import UNI, law

SHIFT = {"modality": -0.1, "learned": 0.1}  # the modality router beats dense, learned loses


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    recs = []
    for i, (N, D) in enumerate((N, D) for N in (1e5, 3e5, 1e6, 3e6) for D in (3e6, 1e7, 3e7, 1e8)):
        dense = {m: law(N, D / 2, p) * np.exp(rng.normal(0, 0.002)) for m, p in UNI.items()}
        tokens = {m: int(D / 2) for m in UNI}
        recs.append(record(f"dense-{i}", "dense", list(UNI), int(N), tokens, dense))
        for router, e in (("modality", 6), ("learned", 8)):
            recs.append(record(f"{router}-{i}", "moe", list(UNI), int(N), tokens,
                               {m: v + SHIFT[router] for m, v in dense.items()},
                               n_experts=e, router=router, n_total=int(N * e)))
        # a text-only dense baseline (for the bimodal law), far better than the joint runs
        recs.append(record(f"text-only-{i}", "dense", ["text"], int(N), {"text": int(D / 2)},
                           {"text": dense["text"] - 0.3}))
    return pd.DataFrame([r for rec in recs for r in record_rows(rec)]).assign(
        N=lambda x: x["N_active"])


def test_family_key_labels_and_is_idempotent(df):
    keys = set(family_key(df))
    assert keys == {"dense", "moe modality E=6", "moe learned E=8"}
    assert (family_key(by_family(df)) == by_family(df)["family"]).all()


def test_each_router_gets_its_own_paired_verdict(df):
    t = compare_pairs(df).set_index(["modality", "family"])
    assert len(t) == 4 and (t["pairs"] == 16).all() and (t["unpaired"] == 0).all()
    assert t.loc[("text", "moe modality E=6"), "verdict"] == "moe modality E=6 better"
    assert t.loc[("text", "moe learned E=8"), "verdict"] == "dense better"
    assert t.loc[("dna", "moe modality E=6"), "dL"] == pytest.approx(-0.1)
    assert t.loc[("dna", "moe learned E=8"), "dL"] == pytest.approx(0.1)


def test_chinchilla_groups_and_frontiers_split_routers_and_drop_baselines(df):
    fits = chinchilla_by_group(fit_groups(df, "chinchilla", bootstrap=20))
    assert set(fits) == {(f, m) for f in ("dense", "moe modality E=6", "moe learned E=8")
                         for m in UNI}
    assert {fit.nobs for fit in fits.values()} == {16}  # the 16 text-only runs are not in dense
    joint = df[(df["family"] == "dense") & (df["modalities"] == "text+dna")
               & (df["modality"] == "text")]
    resid = np.log(fits[("dense", "text")].predict(joint["N"], joint["D"]) / joint["loss"])
    assert np.abs(resid).max() < 0.02  # the baselines sit 0.3 nats lower: they would pull it off
    pts = law_points(frontiers(df, fits), df, extrapolate=10).set_index(["modality", "family", "where"])
    mid = pts.xs("median run", level="where")
    assert mid.loc[("text", "moe modality E=6"), "dL"] == pytest.approx(-0.1, abs=0.02)
    assert mid.loc[("text", "moe learned E=8"), "dL"] == pytest.approx(0.1, abs=0.02)
    assert mid.loc[("text", "moe learned E=8"), "verdict"] == "dense better"


def test_cli_backtest_groups_like_fit(df, tmp_path, capsys):
    """`fit --holdout-largest` backtests each router as its own family, not one pooled MoE."""
    import json

    from moe_vs_dense.cli import main

    path = tmp_path / "runs.csv"
    df.rename(columns={"N": "params", "D": "tokens", "C": "flops"}).to_csv(path, index=False)
    out = tmp_path / "fit.json"
    assert main(["fit", str(path), "--holdout-largest", "1", "--bootstrap", "20",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["backtest"]
    assert {r["family"] for r in rows} == {"dense", "moe modality E=6", "moe learned E=8"}
