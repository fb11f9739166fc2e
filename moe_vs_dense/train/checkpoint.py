"""Training checkpoints: everything a resumed run needs to continue bit for bit.

One file per checkpoint, `checkpoints/step-00000100.pt`, holding the model, optimizer and
scheduler states, the RNG states and the trainer's own state (step, eval curve, monitors).
Written to a temporary name, flushed to disk, then renamed: a kill at any moment leaves either
the old set of checkpoints or the old set plus the new one. The last `keep` are kept. Loading
takes the newest file that reads; a damaged one is skipped with a warning.
"""

from __future__ import annotations

import errno
import os
import re
import warnings
from pathlib import Path

import torch

from moe_vs_dense.errors import UserError
from moe_vs_dense.io import atomic_path

PATTERN = re.compile(r"step-(\d{8})\.pt")


def directory(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint files, oldest first."""
    d = directory(run_dir)
    return sorted(p for p in d.glob("step-*.pt") if PATTERN.fullmatch(p.name)) if d.is_dir() else []


def clean_partial(run_dir: Path) -> None:
    """Remove the temporary files of writes that were killed (checkpoints, record, weights)."""
    for d in (Path(run_dir), directory(run_dir)):
        for p in d.glob(".*.tmp") if d.is_dir() else []:
            p.unlink(missing_ok=True)


def save(run_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write checkpoint `step` atomically, then drop all but the newest `keep`."""
    path = directory(run_dir) / f"step-{step:08d}.pt"
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        have = checkpoints(run_dir)
        prev = f"the previous checkpoint {have[-1]} still loads" if have else "no earlier checkpoint"
        why = "disk full" if e.errno == errno.ENOSPC else e.strerror or str(e)
        raise UserError(f"{path}: cannot write checkpoint ({why}); {prev}") from None
    for old in checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def rng_state() -> dict:
    out = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def mismatch(expected: dict, saved: dict) -> str | None:
    """How a saved model state differs from the model's own (missing, unexpected and reshaped
    tensors, a few named), or None when it fits."""
    missing = [k for k in expected if k not in saved]
    extra = [k for k in saved if k not in expected]
    shaped = [f"{k} {list(saved[k].shape)} saved, {list(v.shape)} here" for k, v in expected.items()
              if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    parts = [f"{len(v)} {what} (e.g. {', '.join(v[:2])})" for what, v in
             (("missing tensors", missing), ("unexpected tensors", extra),
              ("tensors of another shape", shaped)) if v]
    return "; ".join(parts) or None


def load_latest(run_dir: Path) -> dict | None:
    """The newest readable checkpoint's state, or None when there is none."""
    for path in reversed(checkpoints(run_dir)):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # any unreadable file: fall back to an older one
            warnings.warn(f"{path}: unreadable checkpoint skipped ({e})", stacklevel=2)
    return None
