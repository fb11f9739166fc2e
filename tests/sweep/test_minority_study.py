"""The minority study's sweep: a mixture-weight axis that pairs dense and separate experts at
each share, at a fixed total budget; and the bad mixture axes a plan refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_vs_dense.data.loader import MixtureSampler
from moe_vs_dense.errors import UserError
from moe_vs_dense.sweep import load_plan
from tests.sweep.test_plan import sweep_file

ROOT = Path(__file__).resolve().parents[2]


def test_minority_study_pairs_dense_and_separate_experts_at_each_share():
    sweep, runs = load_plan(ROOT / "configs" / "studies" / "minority.yaml")
    assert len(runs) == 8 and {r.kind for r in runs} == {"paired"}
    pairs: dict[str, list] = {}
    for r in runs:
        pairs.setdefault(r.pair_id, []).append(r)
    shares = {}
    for pair_id, (dense, moe) in pairs.items():
        assert (dense.family, moe.family) == ("dense", "moe_modality")
        assert moe.config.model.moe.router == "modality" and abs(moe.mismatch) <= 0.01
        # same rows in the same order, same total budget: only the FFN block differs
        assert dense.config.data == moe.config.data and dense.tokens == moe.tokens
        mix = dense.config.data.mixture
        assert set(mix) == {"text", "image"} and not mix["image"].paired
        assert mix["text"].weight + mix["image"].weight == pytest.approx(1.0)
        shares[pair_id] = mix["image"].weight
        # the sampler's rows over the whole run give the image stream its share
        steps = dense.config.train.steps(dense.config.data.seq_len)
        s = MixtureSampler((10**6, 10**6), (mix["text"].weight, mix["image"].weight))
        seen = s.seen(steps * dense.config.train.batch_rows)
        assert seen[1] / seen.sum() == pytest.approx(mix["image"].weight, rel=0.05, abs=0.002)
    assert sorted(shares.values()) == [0.01, 0.05, 0.25, 0.5]
    assert len({r.tokens for r in runs}) == 1  # total tokens held fixed across shares
    assert "d64l2-t4M-s0-image_weight0.01-text_weight0.99" in pairs


def test_a_weight_axis_over_a_missing_stream_is_refused(tmp_path):
    path = sweep_file(tmp_path, axes=[{"data.mixture.speech.weight": [0.1, 0.5]}])
    with pytest.raises(UserError, match=r"axes.0: data.mixture.speech.weight: the mixture has no "
                                        r"stream 'speech' \(streams: text, code, dna, image"):
        load_plan(path)


def test_a_weight_below_the_samplers_resolution_is_refused_at_plan_time(tmp_path):
    path = sweep_file(tmp_path, seeds=[0], tokens=[10000],
                      axes=[{"data.mixture.dna.weight": [0.01, 0.0005]}])
    with pytest.raises(UserError, match=r"run d32l2-t10k-s0-weight0.0005-dense: "
                                        r"data.mixture.dna.weight: 0.0005 is .* below the "
                                        r"sampler's resolution \(1 row in 4096\)"):
        load_plan(path)
    _, runs = load_plan(sweep_file(tmp_path, seeds=[0], tokens=[10000],
                                   axes=[{"data.mixture.dna.weight": [0.01]}]))
    assert {r.config.data.mixture["dna"].weight for r in runs} == {0.01}
