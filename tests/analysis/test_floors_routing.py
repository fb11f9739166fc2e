"""The report's floors (runs that do not beat their unigram floor leave the law fits) and its
learned-router section (modality x expert shares, mutual information)."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis.answer import above_unigram, answer, at_unigram, unlearned
from analysis.headline import markov_floors
from analysis.plots import modality_expert_shares
from analysis.records import load_runs
from analysis.report import _floors, write_report
from analysis.synthetic import record
from tests.analysis.conftest import UNI, law, write

FLOORS = {"uniform": 20.0, "unigram": 15.0, "bigram": 12.0, "markov": 10.0}  # above every law loss


def _runs(root, stuck_loss: float):
    """Dense and learned-router MoE runs on text and dna over 4 sizes x 3 budgets, with floors;
    the smallest dense run's text loss is `stuck_loss`."""
    k = 0
    for N in (1e5, 3e5, 1e6, 3e6):
        for D in (3e6, 1e7, 3e7):
            for family in ("dense", "moe"):
                losses = {m: law(N, D / 2, p) for m, p in UNI.items()}
                if family == "dense" and k == 0:
                    losses["text"] = stuck_loss
                rec = record(f"{family}-{k}", family, ["text", "dna"], int(N),
                             {m: int(D / 2) for m in UNI}, losses, n_experts=4 if family == "moe" else 0,
                             router="learned", pair_id=f"p{k}")
                rec["schema_version"] = 3
                rec["eval"]["floors"] = {m: dict(FLOORS) for m in UNI}
                if family == "moe":
                    rec["expert_stats"] = [{"layer": 0, "tokens_per_expert": [60, 40, 0, 100],
                                            "by_modality": {"text": [60, 40, 0, 0],
                                                            "dna": [0, 0, 0, 100]},
                                            "modality_expert_mi_bits": 1.0,
                                            "modality_entropy_bits": 1.0}]
                write(root, rec)
            k += 1


def test_a_run_at_its_unigram_floor_leaves_the_fits_and_is_named(tmp_path):
    _runs(tmp_path / "runs", stuck_loss=16.0)
    df, _ = load_runs([tmp_path / "runs"])
    assert (df["floor_bigram"] == 12.0).all()
    notes: list[str] = []
    kept, lines = above_unigram(df, notes), _floors(df)
    assert len(kept) == len(df) - 1
    assert not ((kept["run"] == "dense-0") & (kept["modality"] == "text")).any()
    assert any("dense-0 text (loss 16.000" in n and "vs floor 15.000)" in n for n in notes)
    table = "\n".join(lines)
    assert "## Floors" in table and "| floor_margin" not in table  # a column, not a row
    text = write_report([tmp_path / "runs"], tmp_path / "rep", bootstrap=10).read_text()
    assert "## Floors: what counting the training data achieves" in text
    assert "left out of the law fits" in text
    rows = pd.read_csv(tmp_path / "rep" / "runs.csv")
    assert {"floor_uniform", "floor_unigram", "floor_bigram", "floor_markov"} <= set(rows.columns)
    # the learned-router section: an MI row and a heatmap per MoE run, none for dense runs
    assert "## Does a learned router separate modalities?" in text
    for k in range(12):
        png = tmp_path / "rep" / f"expert_use_moe-{k}.png"
        assert f"]({png.name})" in text and png.read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "rep" / "expert_use_dense-0.png").exists()
    assert text[text.index("## Does a learned router"):].count("| moe-") == 12


def test_a_loss_within_its_se_of_the_floor_has_shown_nothing_learned():
    df = pd.DataFrame({"loss": [2.770, 2.760, 2.770, 2.780],
                       "loss_se": [0.005, 0.005, np.nan, np.nan],
                       "floor_unigram": [2.774] * 4})
    assert at_unigram(df).tolist() == [True, False, False, True]


def test_every_run_beating_its_floor_is_kept(tmp_path):
    _runs(tmp_path / "runs", stuck_loss=14.0)
    df, _ = load_runs([tmp_path / "runs"])
    notes: list[str] = []
    kept = above_unigram(df, notes)
    assert len(kept) == len(df) and not any("left out" in n for n in notes)


def test_a_modality_no_run_learned_gets_no_answer(tmp_path):
    """Junk-like data: every run sits at dna's unigram floor, whose bigram floor lies above it.
    dna leaves the primary table with the reason; text keeps its rows."""
    _runs(tmp_path / "runs", stuck_loss=14.0)
    df, _ = load_runs([tmp_path / "runs"])
    dna = df["modality"] == "dna"
    df.loc[dna, "floor_unigram"] = df.loc[dna, "loss"].min() - 0.01
    df.loc[dna, "floor_bigram"] = df.loc[dna, "floor_unigram"] + 0.5
    why = unlearned(df)
    assert list(why) == ["dna"] and "no run beats its unigram floor" in why["dna"]
    floors = markov_floors(df)
    run = df[dna]["run"].iloc[0]
    assert floors[(run, "dna")] == pytest.approx(df[dna]["floor_unigram"].iloc[0])
    assert floors[(run, "text")] == 12.0  # text's bigram floor is the lower one
    a = answer(df, None, bootstrap=10)
    assert a.caveats == [why["dna"]]
    table = a.primary
    assert set(table["modality"]) == {"text"} and len(table) == 1
    best = df[(df["modality"] == "text") & df["run"].str.startswith("moe")]["loss"].min()
    assert table["margin under floors"].iloc[0] == pytest.approx(12.0 - best)


def test_records_without_floors_are_kept_and_said_so(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "record.json").write_text(json.dumps(
        record("old", "dense", ["text"], 1000, {"text": 10}, {"text": 3.0})))
    df, _ = load_runs([tmp_path])
    notes: list[str] = []
    kept, lines = above_unigram(df, notes), _floors(df)
    assert lines == [] and len(kept) == 1 and "no record has floors" in notes[0]


def test_routing_shares_are_each_modalitys_tokens_per_expert():
    layer = {"by_modality": {"text": [60, 40, 0, 0], "dna": [0, 0, 0, 100]}}
    shares = modality_expert_shares(layer, ["dna", "image", "text"], 4)
    np.testing.assert_allclose(shares[0], [0, 0, 0, 1])
    assert np.isnan(shares[1]).all()
    np.testing.assert_allclose(shares[2], [0.6, 0.4, 0, 0])


@pytest.mark.parametrize("rows", [None, 3])
def test_floor_columns_from_a_csv(tmp_path, rows):
    from analysis.records import load_csv

    path = tmp_path / "runs.csv"
    frame = pd.DataFrame({"params": [1e5, 1e6, 1e7], "tokens": [1e6, 1e7, 1e8],
                          "loss": [3.0, 2.5, 2.0]})
    if rows:
        frame["floor_unigram"] = [3.1, 3.1, 3.1]
    frame.to_csv(path, index=False)
    df = load_csv(path)
    assert df["floor_unigram"].isna().all() == (rows is None)
