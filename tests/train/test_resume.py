"""SIGKILL at chosen moments (mid-step, mid-checkpoint write, mid-metrics line, mid-record
write, after the final checkpoint), then the same command resumes and ends bit-identical to an
uninterrupted run. Each killed process is a real `python -m moe_vs_dense train` that sends
itself SIGKILL at that point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from moe_vs_dense.train import checkpoint, train
from tests.train.conftest import ROOT, SMOKE, TINY, tiny

# Runs `moe-vs-dense train ARGS`, killing itself with SIGKILL at the n-th call of POINT.
KILLER = r"""
import os, signal, sys
from moe_vs_dense.train import checkpoint, loop, metrics, record
point, n = sys.argv[1], int(sys.argv[2])
calls = []

def hit():
    calls.append(1)
    return len(calls) == n

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def wrap(module, name, before):
    real = getattr(module, name)
    def f(*a, **k):
        if hit():
            before(*a, **k)
            die()
        return real(*a, **k)
    setattr(module, name, f)

def half_file(obj, f):
    f.write(b"PK\x03\x04 half a checkpoint")
    f.flush()

def half_line(path, line):
    with open(path, "a") as f:
        f.write('{"step": 99, "loss": 1.')

def half_record(path, text):
    path.with_name("." + path.name + ".killed.tmp").write_text(text[: len(text) // 2])

{"step": lambda: wrap(loop, "train_step", lambda *a, **k: None),
 "checkpoint": lambda: wrap(checkpoint.torch, "save", half_file),
 "metrics": lambda: wrap(metrics, "append", half_line),
 "record": lambda: wrap(record, "write_text", half_record),
 "final": lambda: wrap(loop.weights, "save", lambda *a, **k: None)}[point]()
from moe_vs_dense.cli import main
sys.exit(main(sys.argv[3:]))
"""


def run_cli(run_dir, data_root, kill: tuple[str, int] | None = None) -> int:
    args = ["train", str(SMOKE), "--out", str(run_dir), "--data-dir", str(data_root), "--quiet"]
    args += [a for s in TINY for a in ("--set", s)]
    point, n = kill or ("step", 0)
    cmd = [sys.executable, "-c", KILLER, point, str(n), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, timeout=300).returncode


def assert_identical(run_dir, ref_dir, ref: dict) -> None:
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["status"] == "completed"
    assert rec["eval"]["final"] == ref["eval"]["final"]
    assert [c["losses"] for c in rec["eval"]["curve"]] == [c["losses"] for c in ref["eval"]["curve"]]
    a, b = load_file(ref_dir / "model.safetensors"), load_file(run_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == [2, 4, 6, 8]
    assert not [p for p in run_dir.rglob(".*") if p.is_file()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, demo_data):
    out = tmp_path_factory.mktemp("ref") / "run"
    return out, train(tiny(), out, data_root=demo_data, progress=False)


def test_kill_mid_step_and_mid_checkpoint_write_then_resume_is_bit_identical(
        tmp_path, demo_data, reference):
    run = tmp_path / "run"
    assert run_cli(run, demo_data, ("step", 4)) == -signal.SIGKILL  # steps 1-3 done, ckpt at 2
    assert [p.name for p in checkpoint.checkpoints(run)] == ["step-00000002.pt"]
    assert run_cli(run, demo_data, ("checkpoint", 2)) == -signal.SIGKILL  # dies writing step 6
    assert [p.name for p in checkpoint.checkpoints(run)] == ["step-00000002.pt", "step-00000004.pt"]
    assert run_cli(run, demo_data) == 0
    assert_identical(run, *reference)


@pytest.mark.slow
def test_kill_at_every_kind_of_moment_then_resume_is_bit_identical(tmp_path, demo_data, reference):
    run = tmp_path / "run"
    for point in [("checkpoint", 1), ("metrics", 2), ("record", 3), ("step", 2), ("final", 1)]:
        assert run_cli(run, demo_data, point) == -signal.SIGKILL, point
    assert run_cli(run, demo_data) == 0
    assert_identical(run, *reference)


@pytest.mark.slow
def test_kill_from_outside_at_random_moments_then_resume_is_bit_identical(
        tmp_path, demo_data, reference):
    run = tmp_path / "run"
    args = ["train", str(SMOKE), "--out", str(run), "--data-dir", str(demo_data), "--quiet"]
    args += [a for s in TINY for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for delay in (4.0, 5.0, 6.0):
        p = subprocess.Popen([sys.executable, "-m", "moe_vs_dense", *args], env=env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    assert run_cli(run, demo_data) == 0
    assert_identical(run, *reference)
