"""Memory-mapped prepared data and the mixture sampler that turns a step number into a batch.

The sampler is a pure function of (seed, step): no state to save, resume at any step without
replaying data. Rows are assigned to streams in cycles of `cycle` rows holding exactly the
configured proportions (largest-remainder rounding) in a seeded order; within a stream, rows
are drawn without replacement through a seeded permutation per epoch of that stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from moe_vs_dense.data.tokenizers import Vocab
from moe_vs_dense.errors import UserError


class PreparedData:
    """The shards of one prepared mixture, opened lazily as read-only memmaps."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"{self.path}: no prepared data here (run `moe-vs-dense data prepare`)")
        self.meta = json.loads(meta_path.read_text())
        self.vocab = Vocab.from_json((self.path / "vocab.json").read_text())
        self.seq_len: int = self.meta["seq_len"]
        self.streams: list[str] = list(self.meta["streams"])
        self._arrays: dict[tuple[str, str, str], np.ndarray] = {}

    def array(self, stream: str, split: str, kind: str = "tokens") -> np.ndarray:
        key = (stream, split, kind)
        if key not in self._arrays:
            self._arrays[key] = np.load(self.path / f"{stream}.{split}.{kind}.npy", mmap_mode="r")
        return self._arrays[key]

    def rows(self, stream: str, split: str) -> int:
        return self.meta["streams"][stream][split]["rows"]

    def weights(self) -> dict[str, float]:
        return {s: self.meta["streams"][s]["weight"] for s in self.streams}


def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to `total`, proportional to `weights`."""
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


@dataclass(frozen=True)
class MixtureSampler:
    """Maps global row numbers to (stream index, row in stream), deterministically."""

    rows_per_stream: tuple[int, ...]
    weights: tuple[float, ...]
    seed: int = 0
    cycle: int = 4096

    def __post_init__(self) -> None:
        counts = largest_remainder(np.asarray(self.weights, dtype=np.float64), self.cycle)
        if (counts == 0).any():
            raise UserError("a mixture weight is below 1/4096 of the total; raise it")
        object.__setattr__(self, "counts", counts)

    @lru_cache(maxsize=4)  # noqa: B019 - the sampler is small, frozen and long-lived
    def _cycle(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Stream label and occurrence index (within the cycle) of each position of cycle c."""
        labels = np.repeat(np.arange(len(self.counts)), self.counts)
        labels = np.random.default_rng([self.seed, 1, c]).permutation(labels)
        occ = np.empty(self.cycle, dtype=np.int64)
        for s in range(len(self.counts)):
            where = labels == s
            occ[where] = np.arange(where.sum())
        return labels, occ

    @lru_cache(maxsize=64)  # noqa: B019
    def _perm(self, s: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 2, s, epoch]).permutation(self.rows_per_stream[s])

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Streams and rows for global row numbers start..stop-1."""
        g = np.arange(start, stop)
        streams = np.empty(len(g), dtype=np.int64)
        rows = np.empty(len(g), dtype=np.int64)
        for c in np.unique(g // self.cycle):
            sel = g // self.cycle == c
            labels, occ = self._cycle(int(c))
            pos = g[sel] % self.cycle
            s = labels[pos]
            k = c * self.counts[s] + occ[pos]
            n = np.asarray(self.rows_per_stream)[s]
            epoch, i = k // n, k % n
            streams[sel] = s
            rows[sel] = [self._perm(int(a), int(b))[j] for a, b, j in zip(s, epoch, i, strict=True)]
        return streams, rows

    def seen(self, n_rows: int) -> np.ndarray:
        """Rows drawn from each stream among the first n_rows global rows."""
        full, rest = divmod(n_rows, self.cycle)
        labels, _ = self._cycle(full)
        return full * self.counts + np.bincount(labels[:rest], minlength=len(self.counts))


class MixtureLoader:
    """Training batches: step -> (tokens [B, T+1], modality ids [B, T+1]) as numpy arrays."""

    def __init__(self, data: PreparedData, batch_rows: int, seed: int = 0,
                 weights: dict[str, float] | None = None) -> None:
        self.data = data
        self.batch_rows = batch_rows
        w = weights or data.weights()
        self.sampler = MixtureSampler(
            tuple(data.rows(s, "train") for s in data.streams),
            tuple(float(w[s]) for s in data.streams),
            seed,
        )

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        streams, rows = self.sampler.rows(step * self.batch_rows, (step + 1) * self.batch_rows)
        tokens = np.empty((self.batch_rows, self.data.seq_len + 1), dtype=np.int64)
        mods = np.empty_like(tokens)
        for s, name in enumerate(self.data.streams):
            sel = np.flatnonzero(streams == s)
            if len(sel) == 0:
                continue
            order = np.argsort(rows[sel])  # sorted reads are kinder to the page cache
            tokens[sel[order]] = self.data.array(name, "train")[rows[sel][order]]
            mods[sel[order]] = self.data.array(name, "train", "mods")[rows[sel][order]]
        return tokens, mods


def val_batches(data: PreparedData, stream: str, batch_rows: int, max_rows: int | None = None):
    """The fixed validation rows of a stream, in order, in batches."""
    n = data.rows(stream, "val") if max_rows is None else min(max_rows, data.rows(stream, "val"))
    tokens, mods = data.array(stream, "val"), data.array(stream, "val", "mods")
    for i in range(0, n, batch_rows):
        j = min(n, i + batch_rows)
        yield np.asarray(tokens[i:j], dtype=np.int64), np.asarray(mods[i:j], dtype=np.int64)
