import gzip

import numpy as np
import pytest

from moe_vs_dense.data.formats import read_fasta, read_idx, read_jsonl, read_parquet, write_idx
from moe_vs_dense.errors import UserError
from tests.conftest import FIXTURES


def test_fasta_reads_real_records():
    records = list(read_fasta(FIXTURES / "uniprot_sample.fasta"))
    assert len(records) > 50
    assert all(seq.isalpha() for _, seq in records)
    (header, seq), = read_fasta(FIXTURES / "ecoli_40kb.fna")
    assert len(seq) == 40000 and set(seq) <= set("ACGTN")


@pytest.mark.parametrize(
    "content, line, what",
    [("ACGT\n>x\nACGT\n", 1, "sequence before any '>'"),
     (">x\nACGT\nAC9T\n", 3, "character '9'"),
     ("\n\n", None, "no '>' record")],
)
def test_malformed_fasta(tmp_path, content, line, what):
    path = tmp_path / "bad.fa"
    path.write_text(content)
    with pytest.raises(UserError) as e:
        list(read_fasta(path))
    assert what in str(e.value)
    if line:
        assert f"bad.fa:{line}:" in str(e.value)


def test_idx_round_trip_and_gzip(tmp_path):
    images = read_idx(FIXTURES / "fashion_t10k_120_images.idx")
    assert images.shape == (120, 28, 28)
    write_idx(tmp_path / "x.idx", np.ascontiguousarray(images[:5]))
    (tmp_path / "x.idx.gz").write_bytes(gzip.compress((tmp_path / "x.idx").read_bytes()))
    assert np.array_equal(read_idx(tmp_path / "x.idx.gz"), images[:5])


def test_idx_bad_magic_and_truncation(tmp_path):
    blob = (FIXTURES / "fashion_t10k_120_images.idx").read_bytes()
    (tmp_path / "magic.idx").write_bytes(b"\x01\x02" + blob[2:])
    with pytest.raises(UserError, match="bad magic number"):
        read_idx(tmp_path / "magic.idx")
    (tmp_path / "short.idx").write_bytes(blob[:-100])
    with pytest.raises(UserError, match=r"corrupt IDX: header says shape \(120, 28, 28\)"):
        read_idx(tmp_path / "short.idx")
    with pytest.raises(UserError, match="file not found"):
        read_idx(tmp_path / "absent.idx")


def test_jsonl_bad_line_and_missing_column(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(UserError, match=r"d.jsonl:2: invalid JSON"):
        list(read_jsonl(path, "text"))
    path.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(UserError, match=r"d.jsonl:2: no column 'text'"):
        list(read_jsonl(path, "text"))


def test_parquet_missing_column_and_corrupt(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "d.parquet")
    with pytest.raises(UserError, match="no column 'text'"):
        list(read_parquet(tmp_path / "d.parquet", ["text"]))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match="cannot read parquet"):
        list(read_parquet(tmp_path / "bad.parquet", ["text"]))


@pytest.mark.parametrize("cut", ["half", "garbage", "flipped"])
def test_truncated_or_corrupt_gzip_names_the_file(tmp_path, cut):
    import json

    from moe_vs_dense.data.formats import read_txt

    fasta = (FIXTURES / "ecoli_40kb.fna").read_bytes()
    rows = "".join(json.dumps({"text": line}) + "\n" for line in fasta.decode().splitlines())
    images = FIXTURES / "fashion_t10k_120_images.idx"
    for name, raw, read in (("g.fa.gz", fasta, lambda p: list(read_fasta(p))),
                            ("g.txt.gz", fasta, read_txt),
                            ("g.jsonl.gz", rows.encode(), lambda p: list(read_jsonl(p, "text"))),
                            ("g.idx.gz", images.read_bytes(), read_idx)):
        blob = bytearray(gzip.compress(raw))
        if cut == "half":
            blob = blob[: len(blob) // 2]
        elif cut == "garbage":
            blob = bytearray(b"\x1f\x8b" + b"not a gzip stream")
        else:
            blob[len(blob) // 2] ^= 0xFF
        path = tmp_path / name
        path.write_bytes(bytes(blob))
        with pytest.raises(UserError, match=rf"{name}: corrupt or truncated gzip"):
            read(path)
