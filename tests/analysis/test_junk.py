"""The junk study's report section: pairing runs with and without junk, the intervals, and which
experts the junk takes; on synthetic records (fast) and on tiny real runs (slow)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.junk import combined, junk_experts, junk_pairs, junk_section
from analysis.records import load_docs, load_runs
from analysis.synthetic import record
from tests.analysis.conftest import write


def _study(root, shift: float) -> None:
    """Dense runs on text+image as configs/studies/junk.yaml lays them out: clean at 1M and 1.5M
    tokens in batches of 16 rows, junk (a third of the rows) in batches of 16 and 24 rows at
    both budgets; junk adds `shift` to text and image, and each 1.5x more steps lowers the
    loss by 0.1 ln 1.5, as short runs do."""
    for total in (1_000_000, 1_500_000):
        for junk, batch in ((False, 16), (True, 16), (True, 24)):
            real = total * (2 / 3 if junk else 1)
            steps = round(total / (batch * 256))
            tokens = {"text": int(real / 2), "image": int(real / 2)}
            losses = {m: 2.0 - 0.1 * math.log(real / 1e6) - 0.1 * math.log(steps / 244)
                      + (shift if junk else 0) for m in tokens}
            if junk:
                tokens["junk"], losses["junk"] = int(total / 3), 2.8
            rec = record(f"{'junk' if junk else 'clean'}{batch}-{total}", "dense", list(tokens),
                         100_000, tokens, losses)
            rec["model"].update(d_model=64, n_layers=2)
            rec["tokens"]["steps"] = steps
            write(root, rec)


def test_runs_pair_at_equal_steps_and_equal_real_tokens_or_compute(tmp_path):
    _study(tmp_path, 0.05)
    df, records = load_runs([tmp_path])
    pairs = junk_pairs(df, records, {})
    same = pairs[pairs["comparison"] == "equal real tokens and steps"]
    # clean 1M (500k text, 244 steps) with junk 1.5M in 24-row batches (500k text, 244 steps);
    # junk 1.5M in 16-row batches has the same text tokens but 366 steps, so it is not paired
    assert set(zip(same["run_without"], same["run_with"], strict=True)) == {
        ("clean16-1000000", "junk24-1500000")}
    assert same["dL"].to_numpy() == pytest.approx([0.05, 0.05])  # the shift alone
    compute = pairs[pairs["comparison"] == "equal compute and steps"]
    assert set(zip(compute["run_without"], compute["run_with"], strict=True)) == {
        ("clean16-1000000", "junk16-1000000"), ("clean16-1500000", "junk16-1500000")}
    assert compute["tokens_with"].to_numpy() == pytest.approx(compute["tokens_without"], rel=1e-5)
    # at equal compute the junk run also saw fewer real tokens: dL = shift + 0.1 ln(3/2)
    assert compute["dL"].to_numpy() == pytest.approx(0.05 + 0.1 * math.log(1.5))
    assert "junk" not in set(pairs["modality"])
    # without per-document losses there is no SE, so no interval and no verdict
    assert pairs["se"].isna().all() and pairs["lower"].isna().all()
    table = combined(pairs).set_index(["comparison", "modality"])
    assert table.loc[("equal real tokens and steps", "text"), "verdict"] == "no interval"
    assert table.loc[("equal compute and steps", "text"), "model"].startswith("OLS")


def _pairs(seeds: list[int]) -> pd.DataFrame:
    rows = [{"comparison": "equal real tokens and steps", "family": "dense", "modality": "text",
             "learned": True, "seed": sd, "N": n, "D_without": 5e5, "dL": 0.05 + 0.001 * sd,
             "se": 0.002} for sd in seeds for n in (1e5, 2e5)]
    return pd.DataFrame(rows)


def test_one_seed_gets_an_interval_but_no_verdict():
    """One seed's document-level SE leaves out the variation between seeds: however small p is,
    no verdict; with two seeds the same shift is a verdict."""
    one = combined(_pairs([0])).iloc[0]
    assert one["seeds"] == 1 and one["verdict"] == "no verdict: one seed"
    assert one["lower"] < one["dL"] < one["upper"] and np.isnan(one["p_holm"])
    two = combined(_pairs([0, 1])).iloc[0]
    assert two["seeds"] == 2 and two["verdict"] == "junk hurts" and two["p_holm"] < 0.05


def test_no_junk_study_no_section(tmp_path, paired_runs):
    with pytest.warns(UserWarning, match="skipped 3 record"):  # the fixture's broken runs
        df, records = load_runs([paired_runs])
    assert junk_section(df, records, tmp_path, [paired_runs]) == ([], [])
    only_junk = tmp_path / "only_junk"
    rec = record("j", "dense", ["text", "junk"], 1000, {"text": 10, "junk": 5},
                 {"text": 3.0, "junk": 2.8})
    write(only_junk, rec)
    df, records = load_runs([only_junk])
    assert junk_section(df, records, tmp_path, [only_junk]) == ([], [])  # no clean twin


def test_experts_of_junk_from_routing_counts():
    rec = record("m", "moe", ["text", "junk"], 1000, {"text": 10, "junk": 5},
                 {"text": 3.0, "junk": 2.8}, n_experts=4, router="learned")
    rec["expert_stats"] = [{"layer": 0, "tokens_per_expert": [40, 30, 20, 10],
                            "by_modality": {"text": [40, 0, 20, 10], "junk": [0, 30, 0, 0]}},
                           {"layer": 1, "tokens_per_expert": [50, 25, 25, 0],
                            "by_modality": {"text": [40, 0, 20, 0], "junk": [10, 25, 5, 0]}}]
    table = junk_experts([rec])
    assert table["top_expert"].tolist() == [1, 1]
    assert table["junk_share_top"].to_numpy() == pytest.approx([1.0, 25 / 40])
    assert table["junk_of_top_expert"].to_numpy() == pytest.approx([1.0, 1.0])
    assert table["junk_share_per_expert"].iloc[1] == "0.25 0.62 0.12 0.00"


def _config(tmp_path, junk: bool, tokens: int, batch: int, moe: bool) -> dict:
    from tests.conftest import FIXTURES

    mixture = {"image": {"source": "files", "paths": [
        str(FIXTURES / "fashion_t10k_120_images.idx"), str(FIXTURES / "fashion_t10k_120_labels.idx")]}}
    if junk:
        mixture["junk"] = {"source": "junk", "weight": 1.0, "max_units": 40000, "val_docs": 8}
    model = {"d_model": 16, "n_layers": 1, "n_heads": 2}
    if moe:
        model |= {"family": "moe", "moe": {"router": "learned", "num_experts": 2, "top_k": 1}}
    return {"seed": 0,
            "data": {"dir": str(tmp_path / "data"), "seq_len": 64, "val_fraction": 0.2,
                     "doc_units": 512, "num_proc": 1, "mixture": mixture},
            "model": model,
            "train": {"tokens": tokens, "batch_rows": batch, "threads": 1, "lr": 1e-2},
            "eval": {"every": 1000, "rows": 2, "final_rows": None, "batch_rows": 8},
            "run": {"log_every": 8, "checkpoint_every": 1000}}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """Dense and learned-router runs on 120 Fashion-MNIST images, 32 steps each: without junk
    (4 rows a step), with junk as half the rows at 4 rows a step (equal compute) and at 8 (the
    clean run's 128 image rows, as the sampler's seeded order draws them: equal image tokens)."""
    from moe_vs_dense.config_load import load_config
    from moe_vs_dense.train import train
    from tests.conftest import write_config

    root = tmp_path_factory.mktemp("junk_study")
    for moe in (False, True):
        for junk, batch in ((False, 4), (True, 4), (True, 8)):
            name = f"{'moe' if moe else 'dense'}-{'junk' if junk else 'clean'}-{batch}"
            raw = _config(root, junk, 32 * batch * 64, batch, moe)
            cfg = load_config(write_config(root, raw, f"{name}.yaml"))
            train(cfg, root / "runs" / name, data_root=root / "data", progress=False, prepare=True)
    return root / "runs"


@pytest.mark.slow
def test_section_on_tiny_real_runs(tiny_study, tmp_path):
    df, records = load_runs([tiny_study])
    lines, figs = junk_section(df, records, tmp_path, [tiny_study])
    text = "\n".join(lines)
    assert "## Junk data" in text and len(figs) == 1 and figs[0].is_file()
    # per family: one equal-compute and one equal-real-tokens pair
    assert len(pd.read_csv(tmp_path / "junk_pairs.csv")) == 2 * 2
    df_pairs = junk_pairs(df, records, load_docs([tiny_study]))
    for _, p in df_pairs.iterrows():
        # the document-level dL is the difference of the two runs' own losses (same documents)
        assert p["dL"] == pytest.approx(p["L_with"] - p["L_without"], abs=1e-9)
        assert p["se"] > 0
        if not np.isnan(p["lower"]):
            assert p["lower"] < p["dL"] < p["upper"]
    same = df_pairs[df_pairs["comparison"] == "equal real tokens and steps"]
    assert len(same) == 2 and (same["D_with"] == same["D_without"]).all()
    assert (df_pairs["steps"] == 32).all()
    experts = junk_experts(records)
    assert len(experts) == 2 and (experts["router"] == "learned").all()  # one layer, two junk runs
    assert "junk" in text and "ln 16" in text


@pytest.mark.slow
def test_whole_report_with_junk_runs(tiny_study, tmp_path):
    """The report runs whole on runs with a junk modality: junk stays out of the fits (at its
    unigram floor, said in the notes), its section and figure are in, and the learned router's
    heatmaps have a junk row."""
    from analysis.report import write_report

    text = write_report([tiny_study], tmp_path, bootstrap=20).read_text()
    assert "## Junk data" in text and "![junk_dloss](junk_dloss.png)" in text
    assert (tmp_path / "junk_dloss.png").is_file()
    notes = text[text.index("## Notes"):]
    assert "junk (" in notes  # a junk row left out of the fits: it does not beat its unigram floor
    assert "## Does a learned router separate modalities?" in text
