"""`sweep run` on real data: idempotent, two concurrent invocations share the work through the
per-run locks, and a worker killed with SIGKILL mid-run is replaced and its run resumed to the
same result as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from moe_vs_dense.cli import main
from moe_vs_dense.sweep import load_plan
from moe_vs_dense.sweep.state import run_dir, run_state

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def tiny_sweep(tmp_path: Path, tokens: list[int], seeds=(0,)) -> Path:
    sweep = {
        "name": "tiny", "base": str(ROOT / "configs" / "demo.yaml"),
        "set": {"train.batch_rows": 4, "train.threads": 1, "eval.rows": 2, "eval.final_rows": 4,
                "eval.batch_rows": 4, "run.log_every": 2, "run.checkpoint_every": 2},
        "sizes": [{"d_model": 16, "n_layers": 1, "n_heads": 2}],
        "tokens": tokens, "seeds": list(seeds),
        "families": {"dense": {}, "moe_modality": {"set": {"model.family": "moe",
                                                           "model.moe.router": "modality"}}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "moe_vs_dense.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_run_twice_trains_once(tmp_path, demo_data, capsys):
    path = tiny_sweep(tmp_path, [4096, 8192])
    out = tmp_path / "out"
    args = ["sweep", "run", str(path), "--out", str(out), "--workers", "2", "--no-progress"]
    assert main(args) == 0
    _, runs = load_plan(path)
    assert [run_state(out, r.run_id)[0] for r in runs] == ["done"] * 4
    stamps = {r.run_id: (run_dir(out, r.run_id) / "record.json").stat().st_mtime_ns for r in runs}
    capsys.readouterr()
    assert main(args) == 0
    assert "4 of 4 runs already finished; 0 to train" in capsys.readouterr().out
    assert stamps == {r.run_id: (run_dir(out, r.run_id) / "record.json").stat().st_mtime_ns
                      for r in runs}
    assert main(["sweep", "status", str(path), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("4 done")


def test_two_concurrent_invocations_split_the_runs(tmp_path, demo_data):
    path = tiny_sweep(tmp_path, [4096], seeds=(0, 1))
    out = tmp_path / "out"
    procs = [_cli("sweep", "run", str(path), "--out", str(out), "--no-progress") for _ in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    trained = [int(log.split("trained ")[1].split(" run")[0]) for log in logs]
    assert sum(trained) == 4, logs  # every run trained once, by one of the two
    _, runs = load_plan(path)
    for r in runs:
        assert run_state(out, r.run_id)[0] == "done"
        steps = [json.loads(x)["step"] for x in
                 (run_dir(out, r.run_id) / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(steps)


def _worker_pid(parent: int) -> int | None:
    for task in Path(f"/proc/{parent}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"multiprocessing" in cmd and b"resource_tracker" not in cmd:
                return int(child)
    return None


def test_sigkill_of_a_worker_resumes_its_run(tmp_path, demo_data):
    from moe_vs_dense.train import train

    path = tiny_sweep(tmp_path, [4 * 256 * 60])
    out = tmp_path / "out"
    _, runs = load_plan(path)
    proc = _cli("sweep", "run", str(path), "--out", str(out), "--no-progress")
    killed, deadline = None, time.monotonic() + 240
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        for r in runs:
            ckpts = list((run_dir(out, r.run_id) / "checkpoints").glob("step-*.pt"))
            record = run_dir(out, r.run_id) / "record.json"
            if ckpts and not (record.exists() and '"completed"' in record.read_text()):
                pid = _worker_pid(proc.pid)
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    killed = r
                break
        time.sleep(0.02)
    log = proc.communicate(timeout=300)[0]
    assert killed is not None, log
    assert proc.returncode == 0, log
    assert f"worker 0 died (exit code -9) while training {killed.run_id}" in log
    resumed = json.loads((run_dir(out, killed.run_id) / "record.json").read_text())
    reference = train(killed.config, tmp_path / "reference", progress=False)
    assert resumed["status"] == "completed"
    assert resumed["eval"]["final"] == reference["eval"]["final"]
