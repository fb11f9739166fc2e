"""Readers for local file formats, each strict: malformed input raises UserError naming file:line."""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from moe_vs_dense.errors import UserError

GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)  # truncated, not gzip, corrupt inside
_FASTA_SEQ = re.compile(r"^[A-Za-z*\-.]+$")
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _open_text(path: Path):
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", errors="strict")
    return path.open("r", errors="strict")


def _bad_gzip(path: Path, e: Exception) -> UserError:
    return UserError(f"{path}: corrupt or truncated gzip ({e})")


def read_fasta(path: Path) -> Iterator[tuple[str, str]]:
    """(header, sequence) records; a sequence line before any '>' or with odd characters fails."""
    header, seq = None, []
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith(";"):
                    continue
                if line.startswith(">"):
                    if header is not None:
                        yield header, "".join(seq)
                    header, seq = line[1:].strip(), []
                elif header is None:
                    raise UserError(f"{path}:{lineno}: malformed FASTA: sequence before any '>' header")
                elif not _FASTA_SEQ.match(line):
                    bad = next(c for c in line if not (c.isalpha() or c in "*-."))
                    raise UserError(f"{path}:{lineno}: malformed FASTA: character {bad!r} in sequence")
                else:
                    seq.append(line)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a text FASTA file ({e.reason})") from None
    except GZIP_ERRORS as e:
        raise _bad_gzip(path, e) from None
    if header is None:
        raise UserError(f"{path}: malformed FASTA: no '>' record found")
    yield header, "".join(seq)


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST format), gzip or plain; checks the magic number and the size."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    blob = path.read_bytes()
    if blob[:2] == b"\x1f\x8b":
        try:
            blob = gzip.decompress(blob)
        except GZIP_ERRORS as e:
            raise _bad_gzip(path, e) from None
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] not in IDX_DTYPES:
        raise UserError(f"{path}: not an IDX file (bad magic number {blob[:4].hex()})")
    ndim = blob[3]
    if ndim == 0 or len(blob) < 4 + 4 * ndim:
        raise UserError(f"{path}: corrupt IDX header")
    shape = tuple(int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[blob[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = blob[4 + 4 * ndim :]
    if len(body) != expected:
        raise UserError(
            f"{path}: corrupt IDX: header says shape {shape} ({expected} bytes), file has {len(body)}"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    path.write_bytes(header + array.tobytes())


def read_jsonl(path: Path, column: str) -> Iterator[dict]:
    with _open_text(path) as f:
        lines = enumerate(f, 1)
        while True:
            try:
                lineno, line = next(lines)
            except StopIteration:
                return
            except GZIP_ERRORS as e:
                raise _bad_gzip(path, e) from None
            except UnicodeDecodeError as e:
                raise UserError(f"{path}: not UTF-8 text ({e.reason})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict) or column not in row:
                raise UserError(f"{path}:{lineno}: no column '{column}' in this row")
            yield row


def read_parquet(path: Path, columns: list[str]) -> Iterator[dict]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise UserError(f"{path}: cannot read parquet ({e})") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise UserError(f"{path}: no column {missing[0]!r}; columns: {table.column_names}")
    yield from table.select(columns).to_pylist()


def read_txt(path: Path) -> str:
    try:
        with _open_text(path) as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except GZIP_ERRORS as e:
        raise _bad_gzip(path, e) from None
