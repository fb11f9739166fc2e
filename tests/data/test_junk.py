"""The `junk` built-in source: a deterministic hex-digest dump, its tokenizer, prepare and floors,
a tiny training run on it, and the bad inputs around it."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from moe_vs_dense.config_load import load_config
from moe_vs_dense.data.fetch import fetch
from moe_vs_dense.data.junk import junk_lines, junk_text
from moe_vs_dense.data.prepare import prepare
from moe_vs_dense.data.tokenizers import HexTokenizer, segment
from moe_vs_dense.errors import UserError
from tests.conftest import FIXTURES, write_config


def test_same_seed_same_lines_other_seed_other_lines():
    a, b = list(junk_lines(0, 500)), list(junk_lines(0, 500))
    assert a == b
    other = list(junk_lines(1, 500))
    assert not set(a) & set(other)
    assert len(set(a)) == 500  # no line repeats
    # pinned: a change to the generator must bump data/junk.py VERSION (the cache key)
    assert a[:2] == ["3eac1f3c2ef5215eb9bd13e28ae0975a", "81c9968003396f59b12b6a5a47add5ac"]


def test_lines_are_32_lowercase_hex_digits():
    text = junk_text(3, 200)
    lines = text.split("\n")
    assert lines[-1] == "" and len(lines) == 201
    assert all(re.fullmatch(r"[0-9a-f]{32}", line) for line in lines[:-1])
    digits = np.frombuffer("".join(lines).encode(), np.uint8)
    counts = np.unique(digits, return_counts=True)[1]
    assert len(counts) == 16 and counts.min() > 0.8 * counts.mean()  # every digit, about evenly


def test_hex_tokenizer_drops_line_ends_and_round_trips_the_digits():
    tok = HexTokenizer("junk", offset=100)
    seg = segment("junk", text=junk_text(0, 3))
    ids = tok.encode(seg)
    assert len(ids) == tok.units(seg) == 96 and tok.size == 16
    assert ids.min() >= 100 and ids.max() < 116
    assert tok.decode(ids) == "".join(junk_lines(0, 3))


def _config(tmp_path, weight: float = 0.5, tokens: int = 8192, extra: dict | None = None) -> dict:
    return {
        "seed": 0,
        "data": {"dir": str(tmp_path / "data"), "seq_len": 64, "val_fraction": 0.2,
                 "doc_units": 512, "num_proc": 1, "mixture": {
                     "text": {"source": "files", "paths": [str(FIXTURES / "austen_emma.txt")]},
                     "junk": {"source": "junk", "weight": weight, "max_units": 40000,
                              "val_docs": 8}}},
        "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, **(extra or {})},
        "train": {"tokens": tokens, "batch_rows": 4, "threads": 1, "lr": 3e-3},
        "eval": {"every": 16, "rows": 2, "final_rows": None, "batch_rows": 8},
        "run": {"log_every": 8, "checkpoint_every": 1000},
    }


def test_fetch_has_nothing_to_do_for_junk(tmp_path):
    assert fetch(tmp_path, ["junk"], log=lambda _m: None) == {"junk": "generated"}
    assert not (tmp_path / "raw").exists()


def test_junk_prepares_without_fetch_and_its_floors_say_incompressible(tmp_path):
    cfg = load_config(write_config(tmp_path, _config(tmp_path)))
    out = prepare(cfg.data, tmp_path / "data", log=lambda _m: None)
    meta = json.loads((out / "meta.json").read_text())
    junk = meta["streams"]["junk"]
    units = junk["train"]["modalities"]["junk"]["units"] + junk["val"]["modalities"]["junk"]["units"]
    assert 40000 <= units < 40000 + 512  # hex digits, capped by max_units (one document over)
    floors = junk["val"]["floors"]["junk"]
    per_token = {k: sum(floors[k]) / sum(floors["tokens"]) for k in ("uniform", "unigram", "bigram")}
    assert per_token["uniform"] == pytest.approx(math.log(17))  # 16 digits + end of document
    assert per_token["unigram"] == pytest.approx(math.log(16), abs=0.01)
    assert per_token["bigram"] >= per_token["unigram"] - 0.005  # context does not help
    text = meta["streams"]["text"]["val"]["floors"]["text"]
    assert sum(text["bigram"]) < sum(text["unigram"])  # unlike text
    assert prepare(cfg.data, tmp_path / "data", log=lambda _m: None) == out  # cache hit


def test_junk_source_with_another_modality_is_refused(tmp_path):
    raw = _config(tmp_path)
    raw["data"]["mixture"]["text"] = {"source": "junk"}
    with pytest.raises(UserError, match=r"mixture\.text\.source: 'junk' holds junk data, not text"):
        load_config(write_config(tmp_path, raw))
    raw = _config(tmp_path)
    raw["data"]["mixture"]["junk"] = {"source": "austen"}
    with pytest.raises(UserError, match=r"mixture\.junk\.source: 'austen' holds text data, not junk"):
        load_config(write_config(tmp_path, raw))


@pytest.mark.slow
def test_tiny_runs_track_junk_and_modality_routing_gives_it_its_own_expert(tmp_path):
    from analysis.records import load
    from moe_vs_dense.train import train

    cfg = load_config(write_config(tmp_path, _config(tmp_path)))
    moe_cfg = load_config(write_config(tmp_path, _config(tmp_path, extra={
        "family": "moe", "moe": {"router": "modality", "experts_per_modality": 1}}), "moe.yaml"))
    dense = train(cfg, tmp_path / "dense", data_root=tmp_path / "data", progress=False,
                  prepare=True)
    moe = train(moe_cfg, tmp_path / "moe", data_root=tmp_path / "data", progress=False)
    for rec in (dense, moe):
        assert rec["status"] == "completed" and rec["modalities"] == ["text", "junk"]
        assert set(rec["eval"]["final"]) == {"text", "junk"}
        assert rec["tokens"]["by_modality"]["junk"] == pytest.approx(8192 / 3, rel=0.1)
        assert rec["eval"]["final"]["junk"]["loss"] > math.log(16) - 0.02  # nothing to learn
    (layer,) = moe["expert_stats"]
    experts = {m: int(np.flatnonzero(np.asarray(v) > 0)[0]) for m, v in layer["by_modality"].items()}
    assert all(sum(v > 0 for v in counts) == 1 for counts in layer["by_modality"].values())
    assert experts["junk"] != experts["text"]
    df = load([tmp_path / "dense", tmp_path / "moe"])
    junk = df[df["modality"] == "junk"]
    assert len(junk) == 2 and (junk["floor_unigram"] - math.log(16)).abs().max() < 0.01
