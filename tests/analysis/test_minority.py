"""The minority-modality study section: share detection, the paired table, floors, the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.minority import _level, find_study, level_values, minority_section, share_levels
from analysis.records import load_runs
from analysis.report import write_report
from analysis.synthetic import record

SHARES = (0.01, 0.05, 0.25, 0.5)
TOTAL = 4_000_000
# MoE - dense on image shrinks as image's share grows; text is unaffected
SHIFT = {("image", 0.01): -0.15, ("image", 0.05): -0.10, ("image", 0.25): 0.0,
         ("image", 0.5): 0.0, **{("text", s): 0.01 for s in SHARES}}
FLOORS = {"text": {"uniform": 5.5, "unigram": 3.1, "bigram": 2.45, "markov": 1.2},
          "image": {"uniform": 2.9, "unigram": 1.9, "bigram": 1.28, "markov": 1.18}}


def _dense_loss(m: str, share: float) -> float:
    """Image is above its bigram floor at 1% (learned nothing beyond pair counts), below after."""
    image = {0.01: 1.50, 0.05: 1.15, 0.25: 1.0}
    return 2.1 + 0.2 * share if m == "text" else image.get(share, 0.95)


def _run(root: Path, run: str, family: str, tokens: dict, docs: dict, pair: str, N: int,
         experts: int = 0, seed: int = 0) -> None:
    losses = {m: float(d[0].sum() / d[1].sum()) for m, d in docs.items()}
    rec = record(run, family, list(tokens), N, tokens, losses, n_experts=experts, seed=seed,
                 router="modality" if family == "moe" else None, pair_id=pair)
    rec["schema_version"] = 3
    rec["eval"]["floors"] = {m: FLOORS[m] for m in tokens}
    (root / run).mkdir()
    (root / run / "record.json").write_text(json.dumps(rec))
    (root / run / "eval_docs.json").write_text(json.dumps(
        {m: {"nll_sum": d[0].tolist(), "tokens": d[1].tolist()} for m, d in docs.items()}))


def _pair(root: Path, rng, pair: str, shares: dict[str, float], N: int = 100_000,
          total: int = TOTAL, docs: int = 200, seed: int = 0) -> None:
    """A dense run and its modality-routed partner on the same documents; the partner's loss
    differs by SHIFT per document (plus document noise), so dL is known."""
    tokens = {m: int(total * s) for m, s in shares.items()}
    share = shares["image"]
    dense, moe = {}, {}
    for m in shares:
        n = rng.integers(200, 800, docs)
        per_doc = _dense_loss(m, share) + rng.normal(0, 0.3, docs)  # documents differ a lot
        dense[m] = (per_doc * n, n)
        moe[m] = ((per_doc + SHIFT.get((m, share), 0.0) + rng.normal(0, 0.02, docs)) * n, n)
    _run(root, f"{pair}-dense", "dense", tokens, dense, pair, N, seed=seed)
    _run(root, f"{pair}-moe", "moe", tokens, moe, pair, N, experts=2, seed=seed)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Four shares of image beside text at one size and budget, plus one unrelated pair at
    another size with a single share (not part of the study)."""
    root = tmp_path_factory.mktemp("minority")
    rng = np.random.default_rng(5)
    for s in SHARES:
        _pair(root, rng, f"s{s}", {"text": 1 - s, "image": s})
    _pair(root, rng, "other-size", {"text": 0.5, "image": 0.5}, N=400_000)
    return root


def test_share_levels_ignore_sampling_noise():
    assert share_levels(pd.Series([0.01, 0.0101, 0.05, 0.25, 0.2501, 0.5])) == 4
    assert share_levels(pd.Series([0.5, 0.497, 0.503])) == 1
    assert share_levels(pd.Series([], dtype=float)) == 0
    assert level_values(pd.Series([0.0099, 0.0101, 0.0100, 0.5, 0.499])) == pytest.approx([0.01, 0.4995])


def test_a_floor_is_beaten_by_more_than_the_losses_se():
    """As the report's floors table reads it: 1.931 +- 0.021 against a unigram floor of 1.932
    has learned nothing; 1.497 +- 0.019 beats the unigram but not the bigram floor of 1.268."""
    assert _level(1.931, 0.021, 1.932, 1.268) == "none"
    assert _level(1.497, 0.019, 1.932, 1.268) == "unigram"
    assert _level(1.25, 0.019, 1.932, 1.268) == "unigram"
    assert _level(1.24, 0.019, 1.932, 1.268) == "bigram"
    assert _level(1.25, float("nan"), 1.932, 1.268) == "bigram"


def test_find_study_names_the_minority_and_only_its_matched_runs(study):
    df, _ = load_runs([study])
    m, rows = find_study(df)
    assert m == "image"
    assert rows["run"].nunique() == 8 and not rows["run"].str.startswith("other").any()
    image = rows[rows["modality"] == "image"].drop_duplicates("run")
    assert sorted(image["share"].round(4).unique()) == list(SHARES)


def test_no_study_when_shares_only_drift(tmp_path):
    """A demo-like design: fixed weights, two budgets whose sampled shares differ slightly."""
    rng = np.random.default_rng(1)
    for total, s in ((1_000_000, 0.5), (2_000_000, 0.497)):
        _pair(tmp_path, rng, f"t{total}", {"text": 1 - s, "image": s}, total=total)
    df, _ = load_runs([tmp_path])
    assert find_study(df) is None
    assert minority_section(df, tmp_path, [tmp_path]) == ([], [])


def test_without_dense_runs_the_section_says_there_is_nothing_to_pair(tmp_path):
    rng = np.random.default_rng(2)
    for s in (0.01, 0.5):
        _pair(tmp_path, rng, f"s{s}", {"text": 1 - s, "image": s})
        for f in ("record.json", "eval_docs.json"):
            (tmp_path / f"s{s}-dense" / f).unlink()
    df, _ = load_runs([tmp_path])
    lines, figs = minority_section(df, tmp_path, [tmp_path])
    assert lines[1] == "## Minority modality: image at 2 shares of the data" and figs == []
    assert "none of them is dense" in "\n".join(lines)


def test_section_recovers_known_differences_beside_floors(study, tmp_path):
    df, _ = load_runs([study])
    lines, figs = minority_section(df, tmp_path, [study])
    t = pd.read_csv(tmp_path / "minority.csv")
    assert len(t) == 8 and set(t["family"]) == {"moe modality E=2"}
    assert (t["run_partner"] == t["run"].str.replace("-dense", "-moe")).all()
    for _, r in t.iterrows():
        truth = SHIFT[(r["modality"], round(r["image share"], 4))]
        assert r["dL"] == pytest.approx(truth, abs=4 * r["dL_se"])
        assert r["dL lower"] < r["dL"] < r["dL upper"]  # held: every interval holds its estimate
        assert r["dL lower"] - 0.01 < truth < r["dL upper"] + 0.01
    img = t[t["modality"] == "image"].set_index("image share")
    assert (img["role"] == "minority").all() and (t[t["modality"] == "text"]["role"] == "other").all()
    assert img.loc[0.01, "dL upper"] < 0 < img.loc[0.25, "dL upper"]
    assert (img["floor_bigram"] == FLOORS["image"]["bigram"]).all()
    # at 1% neither run beats the image bigram floor, and the section says so for that row only
    assert img.loc[0.01, "below bigram"] == "neither"
    assert (img.loc[[0.05, 0.25, 0.5], "below bigram"] == "both").all()
    said = [x for x in lines if "(floors: unigram" in x]
    assert len(said) == 1 and said[0].startswith("- image at image share 0.01 (floors: unigram 1.900")
    assert "dense 1.52" in said[0] and "less than pair counts give" in said[0]
    text = "\n".join(lines)
    assert "Secondary: no verdict" in text and "Holm" in text
    assert "One seed: the intervals count validation documents only" in text
    assert figs == [tmp_path / "minority.png"] and figs[0].stat().st_size > 10_000


def test_two_seeds_give_a_row_each_and_drop_the_one_seed_caveat(tmp_path):
    rng = np.random.default_rng(4)
    for seed in (0, 1):
        for s in (0.01, 0.5):
            _pair(tmp_path, rng, f"s{s}-seed{seed}", {"text": 1 - s, "image": s}, seed=seed)
    df, _ = load_runs([tmp_path])
    out = tmp_path / "out"
    out.mkdir()
    lines, figs = minority_section(df, out, [tmp_path])
    t = pd.read_csv(out / "minority.csv")
    assert len(t) == 8 and sorted(t["seed"].unique()) == [0, 1]
    assert not any("One seed" in x for x in lines) and len(figs) == 1
    assert "(D / D_total, per level: 0.01, 0.5)" in "\n".join(lines)


def test_report_places_the_section_and_its_figure(study, tmp_path):
    report = write_report([study], tmp_path / "report", bootstrap=20).read_text()
    assert "## Minority modality: image at 4 shares of the data" in report
    assert report.index("## Minority modality") < report.index("## Figures")
    assert "![minority](minority.png)" in report
    # the primary table pools the shares, and says so under it, naming the image shares only
    primary = report[report.index("## Primary answer"):report.index("## Runs")]
    levels = ", ".join(f"{s:.0%}" for s in SHARES)
    assert f"image's share of the training tokens varies across otherwise matched runs ({levels})" in primary
