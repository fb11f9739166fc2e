"""Synthetic run directories drawn from known laws (written as schema-valid record.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from analysis.synthetic import record

UNI = {"text": (1.2, 300.0, 200.0, 0.35, 0.30), "dna": (1.3, 150.0, 400.0, 0.30, 0.32)}
INTERACTION = {"C": 0.5, "A": 40.0, "alpha": 0.3, "B": 5.0, "beta": 0.2}


def law(N, D, p):
    E, A, B, al, be = p
    return E + A / N**al + B / D**be


def interaction(N, D, q=INTERACTION):
    return -q["C"] + q["A"] / N ** q["alpha"] + q["B"] / D ** q["beta"]


def write(root: Path, rec: dict) -> None:
    d = root / rec["run_id"]
    d.mkdir(parents=True)
    (d / "record.json").write_text(json.dumps(rec))


@pytest.fixture(scope="session")
def bimodal_runs(tmp_path_factory) -> Path:
    """Unimodal dense runs of text and dna, and joint text+dna runs with a known interaction."""
    root = tmp_path_factory.mktemp("bimodal")
    rng = np.random.default_rng(7)
    k = 0
    for N in (1e5, 3e5, 1e6, 3e6, 1e7):
        for D in (2e6, 6e6, 2e7, 6e7):
            for m, p in UNI.items():
                loss = law(N, D, p) * np.exp(rng.normal(0, 0.002))
                write(root, record(f"uni-{m}-{k}", "dense", [m], int(N), {m: int(D)}, {m: loss}))
            Di = Dj = D / 2
            joint = {m: law(N, D / 2, p) + interaction(N, D) for m, p in UNI.items()}
            noise = rng.normal(0, 0.002, 2)
            write(root, record(f"joint-{k}", "dense", ["text", "dna"], int(N),
                               {"text": int(Di), "dna": int(Dj)},
                               {m: v + e for (m, v), e in zip(joint.items(), noise, strict=True)}))
            k += 1
    return root


@pytest.fixture(scope="session")
def paired_runs(tmp_path_factory) -> Path:
    """Dense and MoE pairs on text, dna and image: MoE better on text, equal on dna, worse on
    image; plus a corrupt, a failed and a schema-invalid record."""
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(3)
    shift = {"text": -0.05, "dna": 0.0, "image": 0.04}
    base = {"text": UNI["text"], "dna": UNI["dna"], "image": (0.9, 80.0, 300.0, 0.28, 0.3)}
    k = 0
    for N in (1e5, 3e5, 1e6, 3e6):
        for D in (3e6, 1e7, 3e7):
            for seed in range(2):
                dense = {m: law(N, D / 3, p) * np.exp(rng.normal(0, 0.003)) for m, p in base.items()}
                moe = {m: v + shift[m] + rng.normal(0, 0.01) for m, v in dense.items()}
                tokens = {m: int(D / 3) for m in base}
                for family, losses in (("dense", dense), ("moe", moe)):
                    write(root, record(f"{family}-{k}", family, list(base), int(N), tokens, losses,
                                       seed=seed, n_experts=8 if family == "moe" else 0,
                                       router="learned", n_total=int(N * (4 if family == "moe" else 1))))
                k += 1
    (root / "corrupt").mkdir()
    (root / "corrupt" / "record.json").write_text('{"schema_version": 1, "run_id": ')
    failed = record("failed-1", "moe", ["text"], 1000, {"text": 10}, {"text": 3.0}, status="failed")
    write(root, failed)
    invalid = record("invalid-1", "moe", ["text"], 1000, {"text": 10}, {"text": 3.0})
    invalid["params"]["active"] = -5
    write(root, invalid)
    return root
