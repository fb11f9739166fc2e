from pathlib import Path

import numpy as np
import pytest

from moe_vs_dense.config_load import load_config
from moe_vs_dense.data.loader import MixtureLoader, MixtureSampler, PreparedData, val_batches
from moe_vs_dense.data.prepare import prepare
from tests.conftest import write_config


@pytest.fixture
def prepared(tmp_path, small_config) -> PreparedData:
    small_config["data"]["mixture"]["image"]["weight"] = 2.0
    cfg = load_config(write_config(tmp_path, small_config))
    return PreparedData(prepare(cfg.data, Path(cfg.data.dir), log=lambda _m: None))


def test_sampler_proportions_are_exact_per_cycle():
    s = MixtureSampler((50, 70, 30), (1.0, 2.0, 1.0), seed=3, cycle=4096)
    streams, _ = s.rows(0, 4096 * 3)
    counts = np.bincount(streams, minlength=3)
    assert counts.tolist() == (3 * s.counts).tolist() and s.counts.tolist() == [1024, 2048, 1024]
    assert s.seen(4096 * 3).tolist() == counts.tolist()
    assert s.seen(5000).tolist() == np.bincount(s.rows(0, 5000)[0], minlength=3).tolist()


def test_sampler_covers_each_stream_without_replacement():
    s = MixtureSampler((37, 11), (1.0, 1.0), seed=0, cycle=64)
    streams, rows = s.rows(0, 2 * 37)  # 37 draws of each stream
    first = rows[streams == 0][:37]
    assert sorted(first.tolist()) == list(range(37))  # one epoch of stream 0 = a permutation
    second = rows[streams == 1][:33]
    for epoch in range(3):
        assert sorted(second[epoch * 11 : epoch * 11 + 11].tolist()) == list(range(11))


def test_sampler_resume_matches_uninterrupted_and_seed_matters():
    a = MixtureSampler((100, 200), (1.0, 3.0), seed=1, cycle=256)
    whole = a.rows(0, 1000)
    b = MixtureSampler((100, 200), (1.0, 3.0), seed=1, cycle=256)  # a fresh process
    part = b.rows(640, 1000)
    assert np.array_equal(whole[0][640:], part[0]) and np.array_equal(whole[1][640:], part[1])
    c = MixtureSampler((100, 200), (1.0, 3.0), seed=2, cycle=256)
    assert not np.array_equal(c.rows(0, 1000)[1], whole[1])


def test_loader_batches_are_deterministic_and_resumable(prepared):
    loader = MixtureLoader(prepared, batch_rows=8, seed=0)
    seq = [loader.batch(step) for step in range(12)]
    fresh = MixtureLoader(prepared, batch_rows=8, seed=0)
    tokens, mods = fresh.batch(9)
    assert np.array_equal(tokens, seq[9][0]) and np.array_equal(mods, seq[9][1])
    assert tokens.shape == (8, prepared.seq_len + 1)
    # every row is a real row of the stream its modality says
    stacked = np.concatenate([t for t, _ in seq])
    train_rows = {r.tobytes() for s in prepared.streams
                  for r in np.asarray(prepared.array(s, "train"), dtype=np.int64)}
    assert all(r.tobytes() in train_rows for r in stacked)


def test_val_batches_fixed_and_cover_split(prepared):
    rows = sum(len(t) for t, _ in val_batches(prepared, "dna", 3))
    assert rows == prepared.rows("dna", "val")
    a = [t for t, _ in val_batches(prepared, "dna", 3, max_rows=5)]
    b = [t for t, _ in val_batches(prepared, "dna", 3, max_rows=5)]
    assert sum(len(t) for t in a) == min(5, rows)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
