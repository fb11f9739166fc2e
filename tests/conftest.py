"""Shared fixtures: small slices of real data (tests/fixtures) and config helpers."""

from __future__ import annotations

import os

# numpy's OpenBLAS with 2 threads makes scipy's many tiny L-BFGS-B steps several times slower
# on a 2-core machine (and much more under load); set before numpy is first imported
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import sysconfig
import wave
from pathlib import Path

import numpy as np
import pytest
import yaml

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_data() -> Path:
    """The data root holding the prepared demo mix, which the README's main job prepares (skips,
    naming the commands, if it is not there)."""
    from moe_vs_dense.config_load import load_config
    from moe_vs_dense.data.fetch import data_dir
    from moe_vs_dense.data.prepare import cache_key
    from moe_vs_dense.errors import UserError

    cfg = load_config(ROOT / "configs" / "demo.yaml")
    root = data_dir(None, cfg.data.dir)
    try:
        ready = (root / "prepared" / cache_key(cfg.data, root) / "meta.json").is_file()
    except UserError:
        ready = False
    if not ready:
        pytest.skip("demo data not prepared: run `moe-vs-dense data fetch && moe-vs-dense data "
                    "prepare configs/demo.yaml`")
    return root


@pytest.fixture(scope="session")
def speech_wavs(tmp_path_factory) -> list[Path]:
    """Three real espeak-ng utterances of Austen sentences, as 16-bit WAV files."""
    from moe_vs_dense.data.fetch import espeak_synthesizer, speech_sentences

    out = tmp_path_factory.mktemp("speech")
    synth = espeak_synthesizer()
    paths = []
    text = (FIXTURES / "austen_emma.txt").read_text()
    for i, sentence in enumerate(speech_sentences(text, 3)):
        samples, rate = synth(sentence, "en-us")
        path = out / f"utt{i}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(np.asarray(samples, dtype="<i2").tobytes())
        paths.append(path)
    return paths


def stdlib_files(n: int = 4) -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [str(root / name) for name in ("textwrap.py", "shlex.py", "fnmatch.py", "bisect.py")[:n]]


def small_mixture(speech_wavs: list[Path] | None = None) -> dict:
    """A mixture over every modality, from the real fixture files."""
    mix = {
        "text": {"source": "files", "paths": [str(FIXTURES / "austen_emma.txt")]},
        "code": {"source": "files", "paths": stdlib_files(), "format": "txt"},
        "dna": {"source": "files", "paths": [str(FIXTURES / "ecoli_40kb.fna")]},
        "image": {"source": "files", "paired": True, "paths": [
            str(FIXTURES / "fashion_t10k_120_images.idx"),
            str(FIXTURES / "fashion_t10k_120_labels.idx")]},
        "protein": {"source": "files", "paths": [str(FIXTURES / "uniprot_sample.fasta")]},
    }
    if speech_wavs:
        mix["speech"] = {"source": "files", "paths": [str(p) for p in speech_wavs], "weight": 0.5}
    return mix


def write_config(tmp_path: Path, cfg: dict, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def small_config(tmp_path) -> dict:
    return {
        "seed": 0,
        "data": {"dir": str(tmp_path / "data"), "seq_len": 64, "val_fraction": 0.2,
                 "doc_units": 512, "num_proc": 1, "mixture": small_mixture()},
    }
