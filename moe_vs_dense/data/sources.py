"""Documents from a mixture stream's source: built-in fetched data, local files, or the HF hub.

Every reader yields `(key, doc)`: `key` decides the train/validation split (a stable hash, so
the split is fixed and disjoint: everything with one key lands on one side), `doc` is a list of
segments (see `tokenizers.segment`). Keys come from content or from identifiers inside the data
(a FASTA header, a path inside a package), never from where a file lies on disk, so
every machine makes the same split.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from moe_vs_dense.config import StreamConfig
from moe_vs_dense.data import formats, junk
from moe_vs_dense.data.fetch import data_dir, read_manifest, sha256_file, stale_reason
from moe_vs_dense.data.tokenizers import segment
from moe_vs_dense.errors import UserError

Doc = list[dict]
FASHION_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                  "Sneaker", "Bag", "Ankle boot")
DIGIT_LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SUFFIX_FORMAT = {".txt": "txt", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet",
                 ".fa": "fasta", ".fasta": "fasta", ".fna": "fasta", ".faa": "fasta",
                 ".idx": "idx", ".ubyte": "idx"}


def chunk_text(text: str, n: int) -> list[str]:
    """Split text into pieces of at most about n UTF-8 bytes, at line ends where possible."""
    pieces, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        b = len(line.encode())
        if current and size + b > n:
            pieces.append("".join(current))
            current, size = [], 0
        while b > n:  # a single over-long line is cut hard
            pieces.append(line[:n])
            line = line[n:]
            b = len(line.encode())
        current.append(line)
        size += b
    if current:
        pieces.append("".join(current))
    return [p for p in pieces if p.strip()]


def content_key(data: str | bytes) -> str:
    blob = data.encode() if isinstance(data, str) else data
    return "sha1:" + hashlib.sha1(blob).hexdigest()


def _text_docs(modality: str, text: str, n: int, seq_id: str = "") -> Iterator[tuple[str, Doc]]:
    """Documents of about n raw units; DNA chunks are keyed by sequence id and position (so a
    genome splits by region), text pieces by content."""
    if modality == "dna":
        seq = "".join(text.split())
        for i in range(0, len(seq), n):
            yield f"{seq_id}:{i}", [segment("dna", text=seq[i : i + n])]
        return
    for piece in chunk_text(text, n):
        yield content_key(piece), [segment(modality, text=piece)]


def _image_doc(image: np.ndarray, label: str | None, paired: bool) -> tuple[str, Doc]:
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 2:
        raise UserError(f"images must be 2-D grayscale, got shape {image.shape}")
    doc = [segment("image", data=image.tobytes(), shape=list(image.shape))]
    if paired and label is not None:
        doc.append(segment("text", text=f" {label}"))
    return content_key(image.tobytes()), doc


def _speech_doc(samples: np.ndarray, rate: int, transcript: str | None, paired: bool) -> tuple[str, Doc]:
    data = np.asarray(samples, dtype=np.int16).tobytes()
    doc = [segment("speech", data=data, rate=int(rate))]
    if paired and transcript:
        doc.append(segment("text", text=f" {transcript}"))
    return content_key(data), doc


def _to_int16(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating):
        return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)
    return x.astype(np.int16)


# ---------------------------------------------------------------- built-in sources


def fetch_command(name: str, data: Path, force: bool = False) -> str:
    """The command that fetches source `name` into `data` (with --data-dir unless `data` is
    where a plain `data fetch` writes)."""
    where = "" if data == data_dir() else f" --data-dir {shlex.quote(str(data))}"
    return f"`moe-vs-dense data fetch {name}{' --force' if force else ''}{where}`"


def builtin_files(data: Path, name: str) -> list[Path]:
    """The fetched files of a built-in source; a clear error if it was never fetched."""
    entry = read_manifest(data).get(name)
    if entry is None:
        raise UserError(f"source '{name}' is not fetched in {data}; run {fetch_command(name, data)}")
    why = stale_reason(name, entry)
    if why:
        raise UserError(f"source '{name}' in {data} {why}; run {fetch_command(name, data, True)}")
    paths = [data / "raw" / f["path"] for f in entry["files"]]
    for p, f in zip(paths, entry["files"], strict=True):
        if not p.is_file() or p.stat().st_size != f["bytes"]:
            raise UserError(f"{p}: missing or truncated; run {fetch_command(name, data, True)}")
    return paths


def _builtin_docs(s: StreamConfig, data: Path, n: int) -> Iterator[tuple[str, Doc]]:
    if s.source == "junk":  # generated, nothing fetched
        yield from _text_docs("junk", junk.junk_text(), n)
        return
    files = {p.name: p for p in builtin_files(data, s.source)}
    if s.source == "austen":
        yield from _text_docs("text", formats.read_txt(files["austen.txt"]), n)
    elif s.source == "sympy":
        for row in formats.read_jsonl(files["sympy.jsonl"], "text"):
            for piece in chunk_text(row["text"], n):
                yield f"sympy:{row['path']}", [segment("code", text=piece)]
    elif s.source == "ecoli":
        for header, seq in formats.read_fasta(files["ecoli.fna"]):
            yield from _text_docs("dna", seq, n, header)
    elif s.source in ("fashion_mnist", "mnist"):
        names = FASHION_LABELS if s.source == "fashion_mnist" else DIGIT_LABELS
        for part in ("train-", "t10k-", ""):
            if f"{part}images-idx3-ubyte" not in files:
                continue
            images = formats.read_idx(files[f"{part}images-idx3-ubyte"])
            labels = formats.read_idx(files[f"{part}labels-idx1-ubyte"])
            for img, lab in zip(images, labels, strict=True):
                yield _image_doc(img, names[int(lab)], s.paired)
    elif s.source == "espeak":
        audio = np.load(files["audio.npy"], mmap_mode="r")
        for line in files["utterances.jsonl"].read_text().splitlines():
            u = json.loads(line)
            clip = audio[u["start"] : u["start"] + u["length"]]
            yield _speech_doc(clip, u["rate"], u["text"], s.paired)
    elif s.source == "uniprot":
        for _header, seq in formats.read_fasta(files["uniprot.fasta"]):
            yield content_key(seq), [segment("protein", text=seq)]


# ---------------------------------------------------------------- local files


def file_format(path: Path, given: str | None) -> str:
    if given:
        return given
    suffixes = [x for x in path.suffixes if x != ".gz"]
    fmt = SUFFIX_FORMAT.get(suffixes[-1] if suffixes else "")
    if fmt is None and path.suffix.lower() == ".wav":
        return "wav"
    if fmt is None:
        raise UserError(f"{path}: cannot tell the format from the name; set `format:`")
    return fmt


def _file_docs(s: StreamConfig, n: int) -> Iterator[tuple[str, Doc]]:
    paths = [Path(p).expanduser() for p in s.paths]
    for p in paths:
        if not p.exists():
            raise UserError(f"{p}: file not found (data.mixture stream, source: files)")
    modality = s.modality
    fmt0 = file_format(paths[0], s.format)
    if fmt0 == "idx":
        if modality != "image":
            raise UserError(f"{paths[0]}: idx files hold images; the stream's modality is {modality}")
        arrays = [formats.read_idx(p) for p in paths]
        images = [a for a in arrays if a.ndim == 3]
        labels = [a for a in arrays if a.ndim == 1]
        if not images:
            raise UserError(f"{paths[0]}: no 3-D image array among the idx files")
        for j, imgs in enumerate(images):
            labs = labels[j] if j < len(labels) else None
            if labs is not None and len(labs) != len(imgs):
                raise UserError(f"{paths[j]}: {len(imgs)} images but {len(labs)} labels")
            for i, img in enumerate(imgs):
                label = None if labs is None else str(int(labs[i]))
                yield _image_doc(img, label, s.paired)
        return
    for p in paths:
        fmt = file_format(p, s.format)
        if fmt == "txt":
            yield from _text_docs(modality, formats.read_txt(p), n, p.name)
        elif fmt == "fasta":
            if modality not in ("dna", "protein"):
                raise UserError(f"{p}: FASTA holds dna or protein, not {modality}")
            for header, seq in formats.read_fasta(p):
                if modality == "dna":
                    yield from _text_docs("dna", seq, n, header)
                else:
                    yield content_key(seq), [segment("protein", text=seq)]
        elif fmt == "wav":
            yield _speech_doc(*_read_wav(p), None, False)
        else:
            cols = [s.column] + ([s.label_column] if s.label_column else [])
            rows = formats.read_jsonl(p, s.column) if fmt == "jsonl" else formats.read_parquet(p, cols)
            for i, row in enumerate(rows):
                yield from _row_docs(s, row, f"{p.name}:{i}", n)


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    try:
        with wave.open(str(path)) as w:
            if w.getsampwidth() != 2:
                raise UserError(f"{path}: only 16-bit PCM WAV is supported")
            x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
            return x.reshape(-1, w.getnchannels()).mean(axis=1).astype(np.int16), w.getframerate()
    except (wave.Error, EOFError) as e:
        raise UserError(f"{path}: corrupt WAV ({e})") from None


def _row_docs(s: StreamConfig, row: dict, key: str, n: int, label_names=None):
    """Documents from one table row (jsonl, parquet or a HF dataset)."""
    value = row[s.column]
    label = row.get(s.label_column) if s.label_column else None
    if label is not None and label_names is not None:
        label = label_names(label)
    if s.modality == "image":
        if hasattr(value, "convert"):  # a PIL image
            value = np.asarray(value.convert("L"))
        yield _image_doc(np.asarray(value), None if label is None else str(label), s.paired)
    elif s.modality == "speech":
        if not isinstance(value, dict) or "array" not in value:
            raise UserError(f"{key}: speech column '{s.column}' needs {{array, sampling_rate}}")
        transcript = None if label is None else str(label)
        yield _speech_doc(_to_int16(value["array"]), value["sampling_rate"], transcript, s.paired)
    else:
        if not isinstance(value, str):
            raise UserError(f"{key}: column '{s.column}' is {type(value).__name__}, expected text")
        yield from _text_docs(s.modality, value, n, key)  # key: the DNA sequence id


# ---------------------------------------------------------------- Hugging Face datasets


def _hf_docs(s: StreamConfig, n: int) -> Iterator[tuple[str, Doc]]:
    """A dataset by hub name or local directory, through `datasets.load_dataset`."""
    import datasets

    try:
        ds = datasets.load_dataset(s.name, s.subset, split=s.split)
    except Exception as e:  # datasets raises many types: missing, offline, bad files
        raise UserError(f"cannot load dataset '{s.name}' (split {s.split}): {e}") from None
    if s.column not in ds.column_names:
        raise UserError(f"dataset '{s.name}': no column '{s.column}'; columns: {ds.column_names}")
    names = None
    if s.label_column:
        feature = ds.features.get(s.label_column)
        if isinstance(feature, datasets.ClassLabel):
            names = feature.int2str
    for i, row in enumerate(ds):
        yield from _row_docs(s, row, f"{Path(s.name).name}:{s.split}:{i}", n, names)


def documents(s: StreamConfig, data: Path, doc_units: int) -> Iterator[tuple[str, Doc]]:
    """All (key, doc) pairs of a stream, in source order."""
    if s.source == "files":
        return _file_docs(s, doc_units)
    if s.source == "hf":
        return _hf_docs(s, doc_units)
    return _builtin_docs(s, data, doc_units)


def source_fingerprint(s: StreamConfig, data: Path) -> dict:
    """What the prepared cache key depends on: checksums of the source's content and, for a
    built-in source, the package release (or synthesizer) it came from."""

    if s.source == "files":
        paths = [Path(p).expanduser() for p in s.paths]
        for p in paths:
            if not p.is_file():
                raise UserError(f"{p}: file not found (data.mixture stream, source: files)")
        return {"files": [sha256_file(p) for p in paths]}
    if s.source == "hf":
        return {"hf": [s.name, s.subset, s.split]}
    if s.source == "junk":
        return {"generated": {"seed": junk.SEED, "lines": junk.LINES, "version": junk.VERSION}}
    builtin_files(data, s.source)
    entry = read_manifest(data)[s.source]
    return {"builtin": entry["files"], "artifact": entry.get("artifact")}


def verify_builtin(s: StreamConfig, data: Path) -> None:
    """Check a built-in source's files against the sha256 in the manifest."""

    if s.source in ("files", "hf", "junk"):
        return
    entry = read_manifest(data)[s.source]
    for p, f in zip(builtin_files(data, s.source), entry["files"], strict=True):
        if sha256_file(p) != f["sha256"]:
            raise UserError(f"{p}: corrupt (checksum mismatch); run "
                            f"{fetch_command(s.source, data, True)}")
