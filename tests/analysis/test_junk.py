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
    """Dense runs on text+image with and without junk (a third of the tokens): clean at 1M and
    1.5M total tokens, junk at 1M and 1.5M; junk adds `shift` to text and image."""
    for total in (1_000_000, 1_500_000):
        for junk in (False, True):
            real = total * (2 / 3 if junk else 1)
            tokens = {"text": int(real / 2), "image": int(real / 2)}
            losses = {m: 2.0 - 0.1 * math.log(real / 1e6) + (shift if junk else 0) for m in tokens}
            if junk:
                tokens["junk"], losses["junk"] = int(total / 3), 2.8
            rec = record(f"{'junk' if junk else 'clean'}-{total}", "dense", list(tokens), 100_000,
                         tokens, losses)
            rec["model"].update(d_model=64, n_layers=2)
            write(root, rec)


def test_runs_pair_at_equal_real_tokens_and_at_equal_compute(tmp_path):
    _study(tmp_path, 0.05)
    df, records = load_runs([tmp_path])
    pairs = junk_pairs(df, records, {})
    same = pairs[pairs["comparison"] == "equal real tokens"]
    # clean 1M (500k text) with junk 1.5M (500k text); nothing else has equal text tokens
    assert set(zip(same["run_without"], same["run_with"], strict=True)) == {("clean-1000000", "junk-1500000")}
    assert same["dL"].to_numpy() == pytest.approx([0.05, 0.05])
    compute = pairs[pairs["comparison"] == "equal compute"]
    assert len(compute) == 4
    assert compute["tokens_with"].to_numpy() == pytest.approx(compute["tokens_without"], rel=1e-5)
    # at equal compute the junk run also saw fewer real tokens: dL = shift + 0.1 ln(3/2)
    assert compute["dL"].to_numpy() == pytest.approx(0.05 + 0.1 * math.log(1.5))
    assert "junk" not in set(pairs["modality"])
    # without per-document losses there is no SE, so no interval and no verdict
    assert pairs["se"].isna().all() and pairs["lower"].isna().all()
    table = combined(pairs).set_index(["comparison", "modality"])
    assert table.loc[("equal real tokens", "text"), "verdict"] == "no interval"  # one pair, no SE
    assert table.loc[("equal compute", "text"), "model"].startswith("OLS")  # scatter of 2 pairs


def test_no_junk_study_no_section(tmp_path, paired_runs):
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


def _config(tmp_path, junk: bool, tokens: int, moe: bool) -> dict:
    from tests.conftest import FIXTURES

    mixture = {"image": {"source": "files", "paths": [
        str(FIXTURES / "fashion_t10k_120_images.idx"), str(FIXTURES / "fashion_t10k_120_labels.idx")]}}
    if junk:
        mixture["junk"] = {"source": "junk", "weight": 0.5, "max_units": 40000, "val_docs": 8}
    model = {"d_model": 16, "n_layers": 1, "n_heads": 2}
    if moe:
        model |= {"family": "moe", "moe": {"router": "learned", "num_experts": 2, "top_k": 1}}
    return {"seed": 0,
            "data": {"dir": str(tmp_path / "data"), "seq_len": 64, "val_fraction": 0.2,
                     "doc_units": 512, "num_proc": 1, "mixture": mixture},
            "model": model,
            "train": {"tokens": tokens, "batch_rows": 4, "threads": 1, "lr": 1e-2},
            "eval": {"every": 1000, "rows": 2, "final_rows": None, "batch_rows": 8},
            "run": {"log_every": 8, "checkpoint_every": 1000}}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """Dense and learned-router runs on 120 Fashion-MNIST images without junk (8k tokens) and with a
    third of junk (8k: equal compute; 11.5k: equal image tokens, 129 image rows against 128, as
    the sampler's seeded order of streams draws them)."""
    from moe_vs_dense.config_load import load_config
    from moe_vs_dense.train import train
    from tests.conftest import write_config

    root = tmp_path_factory.mktemp("junk_study")
    for moe in (False, True):
        for junk, tokens in ((False, 8192), (True, 8192), (True, 11776)):
            name = f"{'moe' if moe else 'dense'}-{'junk' if junk else 'clean'}-{tokens}"
            cfg = load_config(write_config(root, _config(root, junk, tokens, moe), f"{name}.yaml"))
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
    same = df_pairs[df_pairs["comparison"] == "equal real tokens"]
    assert (abs(same["D_with"] / same["D_without"] - 1) <= 0.02).all()
    experts = junk_experts(records)
    assert len(experts) == 2 and (experts["router"] == "learned").all()  # one layer, two junk runs
    assert "junk" in text and "ln 16" in text
