import os
from pathlib import Path

import numpy as np
import pytest

from moe_vs_dense.config_load import load_config
from moe_vs_dense.data.loader import PreparedData
from moe_vs_dense.data.prepare import key_hash, prepare, split_flags, tokens_per_unit
from moe_vs_dense.data.sources import chunk_text
from moe_vs_dense.data.tokenizers import EOD, MODALITY_ID
from moe_vs_dense.errors import UserError
from tests.conftest import FIXTURES, small_mixture, write_config


def _prepare(tmp_path, cfg, overrides=None, name="config.yaml") -> Path:
    c = load_config(write_config(tmp_path, cfg, name), overrides)
    return prepare(c.data, Path(c.data.dir), log=lambda _m: None)


def _docs(arr: np.ndarray) -> list[bytes]:
    """Whole documents (between EODs) of a packed split."""
    flat = np.asarray(arr).reshape(-1)
    ends = np.flatnonzero(flat == EOD)
    return [flat[a + 1 : b].tobytes() for a, b in zip(ends[:-1], ends[1:], strict=True)]


def test_prepare_every_modality_real_fixtures(tmp_path, small_config, speech_wavs):
    small_config["data"]["mixture"] = small_mixture(speech_wavs)
    small_config["data"]["val_fraction"] = 0.34
    out = _prepare(tmp_path, small_config)
    data = PreparedData(out)
    assert data.streams == ["text", "code", "dna", "image", "protein", "speech"]
    for s in data.streams:
        for split in ("train", "val"):
            toks = data.array(s, split)
            mods = data.array(s, split, "mods")
            assert toks.shape == mods.shape == (data.rows(s, split), 65)
            # every token sits in the id range of its modality id (or is EOD)
            for m, tok in data.vocab.tokenizers.items():
                sel = (np.asarray(mods) == MODALITY_ID[m]) & (np.asarray(toks) != EOD)
                assert ((toks[sel] >= tok.offset) & (toks[sel] < tok.offset + tok.size)).all()
        # train and validation share no document
        assert not set(_docs(data.array(s, "train"))) & set(_docs(data.array(s, "val")))
        # floors per validation row and target modality, ordered as a count model must be
        val = data.meta["streams"][s]["val"]
        assert set(val["floors"]) == set(val["modalities"])
        for m, f in val["floors"].items():
            assert len(f["tokens"]) == len(f["unigram"]) == data.rows(s, "val")
            mods = np.asarray(data.array(s, "val", "mods"))[:, 1:]
            assert f["tokens"] == (mods == MODALITY_ID[m]).sum(axis=1).tolist()
            assert sum(f["unigram"]) < sum(f["uniform"]) and sum(f["bigram"]) < sum(f["uniform"])
    # paired image documents end with their label text
    img = data.vocab.show(np.asarray(data.array("image", "train")).reshape(-1)[:2000])
    labels = [shown for m, shown in img if m == "text"]
    assert labels and all(x.strip() in [str(i) for i in range(10)] for x in labels)
    tpu = tokens_per_unit(data.meta)
    assert 1.0 <= tpu["text"] < 1.2 and 1.0 <= tpu["image"] < 1.01 and 1.0 <= tpu["dna"] < 1.01


def test_text_survives_prepare(tmp_path, small_config):
    small_config["data"]["mixture"] = {"text": small_mixture()["text"]}
    data = PreparedData(_prepare(tmp_path, small_config))
    tok = data.vocab.tokenizers["text"]
    emma = (FIXTURES / "austen_emma.txt").read_text()
    for split in ("train", "val"):
        for doc in _docs(data.array("text", split)):
            ids = np.frombuffer(doc, dtype=np.uint16)
            assert tok.decode(ids) in emma


def test_split_is_deterministic_and_cache_hits(tmp_path, small_config):
    first = _prepare(tmp_path, small_config)
    stamp = (first / "meta.json").stat().st_mtime_ns
    again = _prepare(tmp_path, small_config)
    assert again == first and (first / "meta.json").stat().st_mtime_ns == stamp
    other = dict(small_config, data={**small_config["data"], "dir": str(tmp_path / "elsewhere")})
    second = _prepare(tmp_path, other, name="other.yaml")
    assert second.name == first.name  # the key is the content, not the place
    for name in ("dna.val.tokens.npy", "image.train.tokens.npy", "text.val.mods.npy"):
        assert np.array_equal(np.load(first / name), np.load(second / name))
    changed = _prepare(tmp_path, small_config, ["data.seq_len=32"])
    assert changed != first


def test_split_does_not_depend_on_where_files_lie(tmp_path, small_config):
    import shutil

    first = _prepare(tmp_path, small_config)
    moved = tmp_path / "moved"
    for stream in small_config["data"]["mixture"].values():
        new_paths = []
        for p in stream["paths"]:
            target = moved / Path(p).parent.name / Path(p).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, target)
            new_paths.append(str(target))
        stream["paths"] = new_paths
    small_config["data"]["dir"] = str(tmp_path / "data2")
    second = _prepare(tmp_path, small_config, name="moved.yaml")
    for f in sorted(first.glob("*.npy")):
        assert np.array_equal(np.load(f), np.load(second / f.name)), f.name


def test_split_is_stable_and_near_fraction():
    keys = [f"doc{i}" for i in range(20000)]
    flags = split_flags([key_hash(k) for k in keys], 0.1)
    assert abs(np.mean(flags) - 0.1) < 0.01
    assert np.array_equal(flags, split_flags([key_hash(k) for k in keys], 0.1))
    wider = split_flags([key_hash(k) for k in keys], 0.2)
    assert wider[flags].all()  # nested


def _no_leftovers(root: Path) -> None:
    prepared = root / "prepared"
    leftovers = list(prepared.iterdir()) if prepared.exists() else []
    assert leftovers == [], leftovers


def test_empty_modality_fails_cleanly(tmp_path, small_config):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    small_config["data"]["mixture"]["text"]["paths"] = [str(empty)]
    with pytest.raises(UserError, match="data.mixture.text: source 'files' produced no documents"):
        _prepare(tmp_path, small_config)
    _no_leftovers(tmp_path / "data")


def test_too_little_data_for_a_sequence_fails_cleanly(tmp_path, small_config):
    msg = r"data.mixture.text: the train split has \d+ tokens, fewer than one sequence"
    with pytest.raises(UserError, match=msg):
        _prepare(tmp_path, small_config, ["data.seq_len=60000"])
    _no_leftovers(tmp_path / "data")


def test_missing_and_malformed_files(tmp_path, small_config):
    small_config["data"]["mixture"]["dna"]["paths"] = [str(tmp_path / "nope.fa")]
    with pytest.raises(UserError, match=r"config.yaml:\d+: data.mixture.dna.paths.0: file not found: "
                                        r".*nope.fa"):
        _prepare(tmp_path, small_config)
    bad = tmp_path / "bad.fa"
    bad.write_text(">chr\nACGT\nAC!T\n")
    small_config["data"]["mixture"]["dna"]["paths"] = [str(bad)]
    with pytest.raises(UserError, match=r"bad.fa:3: malformed FASTA"):
        _prepare(tmp_path, small_config)
    _no_leftovers(tmp_path / "data")


def test_hf_dataset_from_local_directory(tmp_path, small_config):
    """The hub path (datasets.load_dataset by name) on a local dataset directory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds_dir = tmp_path / "emma_ds" / "data"
    ds_dir.mkdir(parents=True)
    paragraphs = [p for p in (FIXTURES / "austen_emma.txt").read_text().split("\n\n") if p.strip()]
    pq.write_table(pa.table({"body": paragraphs}), ds_dir / "train-00000-of-00001.parquet")
    small_config["data"]["mixture"] = {
        "text": {"source": "hf", "name": str(tmp_path / "emma_ds"), "column": "body"}}
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    data = PreparedData(_prepare(tmp_path, small_config))
    chunks = sum(len(chunk_text(p, 512)) for p in paragraphs)
    assert data.meta["streams"]["text"]["train"]["docs"] + \
        data.meta["streams"]["text"]["val"]["docs"] == chunks
    small_config["data"]["mixture"]["text"]["column"] = "nope"
    with pytest.raises(UserError, match="no column 'nope'"):
        _prepare(tmp_path, small_config)


def test_split_flags_keep_both_sides_non_empty():
    from moe_vs_dense.data.prepare import split_flags

    assert split_flags([0.9, 0.5, 0.7], 0.1).tolist() == [False, True, False]
    assert split_flags([0.01, 0.02], 0.5).tolist() == [True, False]
    flags = split_flags([0.05, 0.5, 0.01, 0.9], 0.1)
    assert flags.tolist() == [True, False, True, False]  # no forcing when both sides have docs


def test_split_flags_hold_out_at_least_min_docs_by_lowest_hash():
    h = [0.3, 0.05, 0.9, 0.2, 0.6]
    assert split_flags(h, 0.1).tolist() == [False, True, False, False, False]
    assert split_flags(h, 0.1, min_docs=3).tolist() == [True, True, False, True, False]
    # the fraction wins when it already holds out more
    assert split_flags(h, 0.5, min_docs=2).tolist() == [True, True, False, True, False]
    # never everything: the highest hash stays in train
    assert split_flags(h, 0.1, min_docs=5).tolist() == [True, True, False, True, True]
    # documents sharing a key (the chunks of one file) are never split between train and val
    tied = [0.3, 0.05, 0.2, 0.2, 0.2, 0.6]
    assert split_flags(tied, 0.1, min_docs=3).tolist() == [False, True, True, True, True, False]
    assert split_flags([0.4, 0.4, 0.9, 0.9], 0.1, min_docs=3).tolist() == [True, True, False, False]
    assert split_flags([0.4, 0.4, 0.4], 0.1).tolist() == [True, False, False]  # one key: split
    assert split_flags([0.4, 0.4, 0.4], 0.1, min_docs=2).tolist() == [True, False, False]


def test_val_docs_grows_one_streams_validation_split_and_only_that(tmp_path, small_config):
    small_config["data"]["mixture"] = {k: small_mixture()[k] for k in ("text", "dna")}
    base = PreparedData(_prepare(tmp_path, small_config))
    small_config["data"]["mixture"]["text"]["val_docs"] = 12
    grown = PreparedData(_prepare(tmp_path, small_config))
    text_before, text_after = base.meta["streams"]["text"], grown.meta["streams"]["text"]
    assert text_before["val"]["docs"] < 12 == text_after["val"]["docs"]
    assert text_before["val"]["docs"] + text_before["train"]["docs"] == \
        text_after["val"]["docs"] + text_after["train"]["docs"]
    # the old validation documents are still held out; the other stream is unchanged
    assert set(_docs(base.array("text", "val"))) <= set(_docs(grown.array("text", "val")))
    assert np.array_equal(base.array("dna", "val"), grown.array("dna", "val"))
    small_config["data"]["mixture"]["text"]["val_docs"] = 10_000
    with pytest.raises(UserError, match=r"data.mixture.text.val_docs: 10000 validation documents "
                                        r"leave none of the \d+ read"):
        _prepare(tmp_path, small_config)
