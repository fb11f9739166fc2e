"""Bad input through the CLI, in-process: one message naming the problem, exit code 2, no
traceback, and nothing already on disk changed. A new case is one line of `CASES`.

Placeholders in a command: {t} the test's scratch folder (with the files `scene` writes),
{ro} a folder this process cannot write in, {demo} configs/demo.yaml.
"""

from __future__ import annotations

import gzip
import json
import os
import shlex
import tempfile
from pathlib import Path

import pytest

from analysis.synthetic import chinchilla_points, record
from moe_vs_dense.cli import main
from tests.conftest import FIXTURES, ROOT, small_mixture, write_config

DEMO = str(ROOT / "configs" / "demo.yaml")

# (command, exit code, words the message must hold)
CASES = [
    # a key given twice in one mapping, in every YAML the toolkit reads
    ("train {t}/dup.yaml --out {t}/run", 2, ["dup.yaml:5: train: duplicate key", "line 3"]),
    ("model info {t}/dup_child.yaml", 2, ["dup_base.yaml:3: seed: duplicate key", "line 1"]),
    ("model info {t}/dup_replace.yaml", 2, ["dup_replace.yaml:5: data.mixture.text: duplicate"]),
    ("sweep plan {t}/dup_sweep.yaml --no-timing --out {t}/sw", 2,
     ["dup_sweep.yaml:4: tokens: duplicate key", "line 2"]),
    ("model info {demo} --set 'data.tokenizers={{dna: {{k: 2}}, dna: {{k: 3}}}}'", 2,
     ["--set: data.tokenizers.dna: duplicate key, also set in the same value"]),
    # tracebacks where a clear error belongs
    ("fit {t}/text_params.csv", 2, ["text_params.csv: column 'params'", "line(s) 3", "'1e6x'"]),
    ("fit {t}/runs.csv --bootstrap -5", 2, ["--bootstrap", "'-5'"]),
    ("compare {t}/runs --bootstrap -5", 2, ["--bootstrap", "'-5'"]),
    ("fit {t}/runs.csv --json {t}/runs", 2, ["--json", "is a directory"]),
    ("fit {t}/runs.csv --json {ro}/fits.json", 2, ["--json", "cannot write in"]),
    ("report {t}/runs --out {t}/runs.csv", 2, ["--out", "runs.csv: is a file"]),
    ("report {t}/runs --out {ro}/report", 2, ["--out", "cannot write in"]),
    ("data prepare {t}/truncated.yaml", 2, ["genome.fa.gz: corrupt or truncated gzip"]),
    ("demo --out {ro}/demo", 2, ["--out", "cannot write in"]),
    # inputs accepted that should not be
    ("demo --minutes 0 --out {t}/demo", 2, ["--minutes", "positive number"]),
    ("demo --minutes -1 --out {t}/demo", 2, ["--minutes", "positive number"]),
    ("demo --workers 0 --out {t}/demo", 2, ["--workers", "positive whole number"]),
    ("sweep run {t}/sweep.yaml --workers 0 --out {t}/sw", 2, ["--workers", "'0'"]),
    ("sweep run {t}/sweep.yaml --workers -1 --out {t}/sw", 2, ["--workers", "'-1'"]),
    ("sweep run {t}/sweep.yaml --threads 0 --out {t}/sw", 2, ["--threads", "'0'"]),
    ("sweep plan {t}/sweep.yaml --workers 0 --out {t}/sw", 2, ["--workers", "'0'"]),
    ("fit {t}/runs.csv --col parms=tokens", 2, ["--col parms: unknown key", "params, tokens"]),
    ("fit {t}/runs --col params=N", 2, ["--col maps the columns of one CSV"]),
    # messages that mislead
    ("model info {demo} --set data.mixture.video.weight=1", 2,
     ["--set: data.mixture.video: unknown modality"]),
    ("data prepare {demo} --data-dir {t}/empty", 2,
     ["not fetched in", "data fetch", "--data-dir {t}/empty`"]),
    ("data prepare {t}/sub/missing.yaml", 2,
     ["missing.yaml:5: data.mixture.dna.paths.0: file not found", "sub/nohdr.fa"]),
]


def _readonly(tmp: Path) -> Path:
    """A folder no file can be created in: a mode-555 one, or for root (whom permission bits
    do not stop) /sys, where the kernel refuses new files."""
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    for folder in (ro, Path("/sys/kernel")):
        try:
            fd, name = tempfile.mkstemp(dir=folder)
        except OSError:
            return folder
        os.close(fd)
        os.unlink(name)
    pytest.skip("no folder here refuses new files")


def scene(tmp: Path) -> None:
    """The inputs the cases read: real fixture data, a few runs' records, and bad files."""
    mix = small_mixture()
    base = {"seed": 0, "data": {"dir": str(tmp / "data"), "seq_len": 64, "doc_units": 512,
                                "num_proc": 1, "mixture": {"text": mix["text"], "dna": mix["dna"]}}}
    write_config(tmp, base, "base.yaml")
    (tmp / "dup.yaml").write_text("base: base.yaml\nmodel: {d_model: 32, n_heads: 2}\n"
                                  "train: {tokens: 60000}\nseed: 1\ntrain: {lr: 0.5}\n")
    (tmp / "dup_base.yaml").write_text("seed: 1\nmodel: {d_model: 32}\nseed: 2\n")
    (tmp / "dup_child.yaml").write_text("base: dup_base.yaml\ndata: {mixture: {text: "
                                        f"{{source: files, paths: [{mix['text']['paths'][0]}]}}}}}}\n")
    (tmp / "dup_replace.yaml").write_text(
        f"base: base.yaml\ndata:\n  mixture: !replace\n    text: {{source: austen}}\n"
        f"    text: {{source: files, paths: [{mix['text']['paths'][0]}]}}\n")
    sweep = ("name: s\ntokens: [1000]\nbase: base.yaml\nsizes: [{d_model: 16, n_layers: 1, "
             "n_heads: 2}]\nfamilies: {dense: {}}\n")
    (tmp / "sweep.yaml").write_text(sweep)
    (tmp / "dup_sweep.yaml").write_text(sweep.replace("base:", "seeds: [0]\ntokens: [2000]\nbase:"))
    points = chinchilla_points(12, seed=1).rename(columns={"N": "params", "D": "tokens"})
    points.to_csv(tmp / "runs.csv", index=False)
    rows = (tmp / "runs.csv").read_text().splitlines()
    rows[2] = "1e6x," + rows[2].split(",", 1)[1]
    (tmp / "text_params.csv").write_text("\n".join(rows) + "\n")
    for i, (n, d) in enumerate([(1e5, 1e6), (3e5, 3e6), (1e6, 1e7)]):
        rec = record(f"dense-{i}", "dense", ["text"], int(n), {"text": int(d)}, {"text": 3.0 - i / 10})
        (tmp / "runs" / rec["run_id"]).mkdir(parents=True)
        (tmp / "runs" / rec["run_id"] / "record.json").write_text(json.dumps(rec))
    genome = gzip.compress((FIXTURES / "ecoli_40kb.fna").read_bytes())
    (tmp / "genome.fa.gz").write_bytes(genome[: len(genome) // 2])
    truncated = {**base, "data": {**base["data"], "mixture": {
        "text": mix["text"], "dna": {"source": "files", "paths": ["genome.fa.gz"]}}}}
    write_config(tmp, truncated, "truncated.yaml")
    (tmp / "empty").mkdir()
    (tmp / "sub").mkdir()
    (tmp / "sub" / "missing.yaml").write_text(
        f"data:\n  mixture:\n    text: {{source: files, paths: [{mix['text']['paths'][0]}]}}\n"
        "    dna:\n      paths: [nohdr.fa]\n      source: files\n")


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command,code,words", CASES, ids=[c[0][:60] for c in CASES])
def test_bad_input(command, code, words, tmp_path, capsys):
    scene(tmp_path)
    fill = {"t": str(tmp_path), "demo": DEMO}
    if "{ro}" in command:
        fill["ro"] = str(_readonly(tmp_path))
    before = _snapshot(tmp_path)
    try:
        got = main([part.format(**fill) for part in shlex.split(command)])
    except SystemExit as e:  # argparse's own usage errors
        got = e.code
    err = capsys.readouterr().err
    assert got == code, err
    assert "Traceback" not in err
    for w in words:
        assert w.format(**fill) in err, err
    assert _snapshot(tmp_path) == before  # nothing written, nothing changed
