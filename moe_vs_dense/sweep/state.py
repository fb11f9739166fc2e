"""Where each run of a sweep stands, and the per-run lock that keeps two workers off one run.

Layout under the sweep's output directory: `runs/<run_id>/` (the trainer's run directory),
`configs/<run_id>.yaml` (the run's config, for `moe-vs-dense train`), `locks/<run_id>.lock`.
The lock is an `flock` on the lock file, held while the run trains: the kernel drops it when the
holding process dies, however it dies, so a killed worker never blocks a run.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from moe_vs_dense.config import Config
from moe_vs_dense.errors import UserError

FAILURE = "sweep_failure.json"  # written by a worker when train raised before recording a status
STATES = ("done", "running", "partial", "failed", "diverged", "stale", "missing")


def run_dir(out: Path, run_id: str) -> Path:
    return out / "runs" / run_id


def config_path(out: Path, run_id: str) -> Path:
    return out / "configs" / f"{run_id}.yaml"


def _lock_path(out: Path, run_id: str) -> Path:
    path = out / "locks" / f"{run_id}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def try_lock(out: Path, run_id: str) -> Iterator[bool]:
    """Hold the run's lock for the block if no other process holds it; yields whether it did."""
    fd = os.open(_lock_path(out, run_id), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def is_locked(out: Path, run_id: str) -> bool:
    """Whether a live process holds the run's lock (a probe: a shared lock taken and dropped)."""
    path = out / "locks" / f"{run_id}.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def read_record(out: Path, run_id: str) -> dict | None:
    path = run_dir(out, run_id) / "record.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def stale(out: Path, run_id: str, cfg: Config) -> str | None:
    """How the run directory's config differs from `cfg` ('key: old -> new; ...'), or None when
    it holds `cfg`'s run (or nothing yet). Decided by the trainer's own `rundir.identify`."""
    from moe_vs_dense.train.rundir import identify

    try:
        ident = identify(cfg, run_dir(out, run_id))
    except UserError as e:
        return str(e)
    return "; ".join(ident.diff) if ident.kind in ("longer", "changed") else None


def run_state(out: Path, run_id: str, cfg: Config | None = None) -> tuple[str, str]:
    """(state, detail) of one run: done, running, partial (started, will resume), failed,
    diverged, stale (trained with another config than `cfg`, when given) or missing."""
    differs = stale(out, run_id, cfg) if cfg is not None else None
    if differs:
        return "stale", differs
    record = read_record(out, run_id)
    status = (record or {}).get("status")
    if status == "completed":
        return "done", ""
    if status == "diverged":
        return "diverged", f"at step {record.get('diverged_step')}"
    if is_locked(out, run_id):
        return "running", ""
    if status == "failed":
        return "failed", str(record.get("error") or "")
    failure = run_dir(out, run_id) / FAILURE
    if failure.exists():
        try:
            return "failed", json.loads(failure.read_text()).get("error", "")
        except (OSError, json.JSONDecodeError):
            return "failed", "unreadable failure note"
    if status == "running" or (run_dir(out, run_id) / "checkpoints").is_dir():
        return "partial", ""
    return "missing", ""


def finished(state: str) -> bool:
    """A state the sweep does not train again (failed only with --retry-failed)."""
    return state in ("done", "diverged", "failed")
