"""Run states and per-run locks: a lock excludes a second holder, dies with its process, and a
run's state follows its record, its lock and its checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from moe_vs_dense.sweep.state import FAILURE, is_locked, run_dir, run_state, try_lock

ROOT = Path(__file__).resolve().parents[2]


def test_a_lock_has_one_holder(tmp_path):
    with try_lock(tmp_path, "r") as first:
        assert first and is_locked(tmp_path, "r")
        with try_lock(tmp_path, "r") as second:
            assert not second
    assert not is_locked(tmp_path, "r")
    with try_lock(tmp_path, "r") as again:
        assert again


def test_a_killed_holder_releases_the_lock(tmp_path):
    code = ("import sys, time; from pathlib import Path; from moe_vs_dense.sweep.state import try_lock\n"
            "with try_lock(Path(sys.argv[1]), 'r') as got:\n"
            "    print(got, flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                         text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert p.stdout.readline().strip() == "True"
        assert is_locked(tmp_path, "r")
        with try_lock(tmp_path, "r") as got:
            assert not got
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        p.stdout.close()
    deadline = time.monotonic() + 10
    while is_locked(tmp_path, "r") and time.monotonic() < deadline:
        time.sleep(0.05)
    with try_lock(tmp_path, "r") as got:
        assert got


def _record(tmp_path, status: str, **extra) -> None:
    d = run_dir(tmp_path, "r")
    d.mkdir(parents=True, exist_ok=True)
    (d / "record.json").write_text(json.dumps({"status": status, **extra}))


def test_states_follow_record_lock_and_checkpoints(tmp_path):
    assert run_state(tmp_path, "r") == ("missing", "")
    (run_dir(tmp_path, "r") / "checkpoints").mkdir(parents=True)
    assert run_state(tmp_path, "r")[0] == "partial"
    _record(tmp_path, "running")
    assert run_state(tmp_path, "r")[0] == "partial"
    with try_lock(tmp_path, "r"):
        assert run_state(tmp_path, "r")[0] == "running"
    _record(tmp_path, "failed", error="UserError: boom")
    assert run_state(tmp_path, "r") == ("failed", "UserError: boom")
    _record(tmp_path, "diverged", diverged_step=12)
    assert run_state(tmp_path, "r") == ("diverged", "at step 12")
    _record(tmp_path, "completed")
    assert run_state(tmp_path, "r") == ("done", "")
    (run_dir(tmp_path, "r") / "record.json").unlink()
    (run_dir(tmp_path, "r") / FAILURE).write_text(json.dumps({"error": "OSError: disk"}))
    assert run_state(tmp_path, "r") == ("failed", "OSError: disk")
