"""Output paths checked before any work starts: a bad one fails at once and loses nothing.

Writability is probed by creating (and removing) a temporary file, since permission bits say
nothing to root and nothing about a read-only mount.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from moe_vs_dense.errors import UserError


def _probe(folder: Path, flag: str, path: Path) -> None:
    """`folder` (an existing directory) takes new files; else a UserError naming `flag`."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-check.", dir=folder)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write in {folder} ({e.strerror})") from None
    os.close(fd)
    os.unlink(tmp)


def _can_hold(folder: Path, flag: str, shown: Path) -> None:
    """`folder` exists as a writable directory or can be created in one."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {shown}: {existing} is a file, so no directory can be made there")
    _probe(existing, flag, shown)


def writable_dir(path: str | Path, flag: str) -> Path:
    """`path` is a directory this process can write in, or one it can create; returns it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: is a file, not a directory; name a directory")
    _can_hold(path, flag, path)
    return path


def writable_file(path: str | Path, flag: str) -> Path:
    """`path` is a file this process can write (atomically: a new file beside it, renamed over
    it), in a directory that exists or can be created; returns it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a directory; name a file")
    _can_hold(path.parent, flag, path)
    return path
