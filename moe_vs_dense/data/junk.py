"""The `junk` built-in source: an incompressible stream shaped like a leaked password-hash dump.

Line `i` is `md5(f"{seed}:{i}")` as 32 lowercase hex digits. Nothing is fetched: the lines are a
function of the seed and the counter, made at prepare time. Each hex digit is one token of the
`junk` modality, so no model can beat ln 16 nats/token on held-out lines (lines never repeat);
a model can only memorize training lines it sees more than once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

SEED = 0  # the built-in source's seed
LINES = 1 << 16  # 65,536 lines, 2.1M hex digits; a stream's max_units reads fewer
VERSION = 1  # part of the prepared-data cache key: bump when the lines change


def junk_lines(seed: int = SEED, n: int = LINES) -> Iterator[str]:
    """The first n lines of the dump for `seed`, without line ends."""
    for i in range(n):
        yield hashlib.md5(f"{seed}:{i}".encode(), usedforsecurity=False).hexdigest()


def junk_text(seed: int = SEED, n: int = LINES) -> str:
    """The dump as text: one digest per line."""
    return "".join(line + "\n" for line in junk_lines(seed, n))
