"""`data prepare`: documents -> tokens (datasets map) -> fixed-length packed train/val shards.

Output: `<data dir>/prepared/<hash>/`, where the hash covers the data config (minus paths that do
not change content), the source checksums and the format version, so preparing again is a
cache hit. Per stream and split: `<stream>.<split>.tokens.npy` [rows, seq_len + 1] and
`<stream>.<split>.mods.npy` (modality id per token), memory-mapped at train time; `meta.json`
holds counts per modality, the vocabulary, and per validation row the loss of count models
fitted on the training split (`data/floors.py`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from moe_vs_dense.config import DataConfig
from moe_vs_dense.data.floors import SMOOTHING, stream_floors
from moe_vs_dense.data.sources import documents, source_fingerprint, verify_builtin
from moe_vs_dense.data.tokenizers import Vocab, build_vocab, train_bpe
from moe_vs_dense.errors import UserError
from moe_vs_dense.io import atomic_dir, write_json
from moe_vs_dense.modalities import MODALITIES

FORMAT_VERSION = 3  # 3: floors in meta.json
SPLITS = ("train", "val")


def key_hash(key: str) -> float:
    """A stable uniform number in [0, 1) for a document key."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64


def split_flags(hashes: list[float], fraction: float, min_docs: int = 1) -> np.ndarray:
    """Validation flags: a document is held out when the hash of its key falls below
    `fraction`; with `min_docs` > 1, also at or below the `min_docs`-th lowest hash (documents
    sharing a key, the chunks of one file, stay on one side). With very few documents the
    lowest (highest) hash is forced to val (train) so that both splits are non-empty.
    Deterministic, and a document's split depends only on its own stream."""
    h = np.asarray(hashes)
    val = h < fraction
    if min_docs > 1 and val.sum() < min_docs:
        k = min(min_docs, len(h)) - 1
        cut = np.partition(h, k)[k]
        val |= (h <= cut) if cut < h.max() else (h < cut)
    if not val.any():
        val[np.argmin(h)] = True
    if val.all():
        val[np.argmax(h)] = False
    return val


def cache_key(cfg: DataConfig, data: Path) -> str:
    content = cfg.model_dump(exclude={"dir", "num_proc"})
    for stream in content["mixture"].values():
        if stream["val_docs"] is None:  # unset: the key of data prepared before val_docs existed
            del stream["val_docs"]
    content["sources"] = {k: source_fingerprint(s, data) for k, s in cfg.mixture.items()}
    content["format_version"] = FORMAT_VERSION
    blob = json.dumps(content, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _collect(cfg: DataConfig, data: Path, log: Callable[[str], None]) -> dict[str, dict]:
    """Per stream: docs and their split flags, capped at max_units raw units."""
    out = {}
    for name, s in cfg.mixture.items():
        verify_builtin(s, data)
        docs, hashes, units = [], [], 0
        bar = tqdm(desc=f"read {name}", unit="doc", leave=False, mininterval=0.5, disable=None)
        for key, doc in documents(s, data, cfg.doc_units):
            docs.append(doc)
            hashes.append(key_hash(key))
            units += _doc_units(doc, cfg.tokenizers.speech.sample_rate)
            bar.update()
            if s.max_units and units >= s.max_units:
                break
        bar.close()
        if not docs:
            raise UserError(f"data.mixture.{name}: source '{s.source}' produced no documents")
        if len(docs) < 2:
            raise UserError(
                f"data.mixture.{name}: one document cannot be split into train and validation; "
                "add data or lower doc_units"
            )
        if s.val_docs and s.val_docs >= len(docs):
            raise UserError(
                f"data.mixture.{name}.val_docs: {s.val_docs} validation documents leave none "
                f"of the {len(docs)} read for training; raise max_units (or fetch more data) "
                "or lower val_docs"
            )
        out[name] = {"docs": docs, "val": split_flags(hashes, cfg.val_fraction, s.val_docs or 1)}
        log(f"read {name:10s} {len(docs):8d} docs  {units:12,d} {s.modality} units")
    return out


def _doc_units(doc: list[dict], speech_rate: int) -> int:
    """Raw units of a document's first (main) segment: bytes, bases, pixels, samples or hex
    digits (a hash dump's line ends are not units)."""
    seg = doc[0]
    if seg["modality"] == "junk":
        return len(seg["text"]) - seg["text"].count("\n")
    if seg["text"] is not None:
        return len(seg["text"].encode())
    if seg["rate"] is not None:
        return len(seg["data"]) // 2 * speech_rate // seg["rate"]
    return len(seg["data"])


_VOCABS: dict[str, Vocab] = {}


def _tokenize(batch: dict, vocab_json: str) -> dict:
    vocab = _VOCABS.get(vocab_json) or _VOCABS.setdefault(vocab_json, Vocab.from_json(vocab_json))
    ids, mods, units = [], [], []
    for doc in batch["doc"]:
        i, m, u = vocab.encode(doc)
        ids.append(i)
        mods.append(m)
        units.append([u.get(x, 0) for x in MODALITIES])
    return {"ids": ids, "mods": mods, "units": units}


def _token_dtype(vocab: Vocab):
    return np.uint16 if vocab.size <= 65535 else np.int32


def prepare(cfg: DataConfig, data: Path, log: Callable[[str], None] = print) -> Path:
    """Prepare the mixture once; return its directory (a cache hit returns at once)."""
    import datasets

    out = data / "prepared" / cache_key(cfg, data)
    if (out / "meta.json").exists():
        log(f"prepared data is cached: {out}")
        return out
    collected = _collect(cfg, data, log)
    bpe_specs = {}
    for m in ("text", "code"):
        if getattr(cfg.tokenizers, m).kind == "bpe" and m in cfg.modalities:
            texts = (seg["text"] for c in collected.values()
                     for doc, v in zip(c["docs"], c["val"], strict=True) if not v
                     for seg in doc if seg["modality"] == m)
            bpe_specs[m] = train_bpe(texts, getattr(cfg.tokenizers, m).vocab_size)
            log(f"trained byte-level BPE for {m}")
    vocab = build_vocab(cfg.tokenizers, cfg.modalities, bpe_specs)
    row_len = cfg.seq_len + 1
    meta = {"format_version": FORMAT_VERSION, "seq_len": cfg.seq_len, "vocab_size": vocab.size,
            "modalities": cfg.modalities, "floors_method": SMOOTHING, "streams": {}}
    with atomic_dir(out) as tmp:
        for name, c in collected.items():
            ds = datasets.Dataset.from_dict({"doc": c["docs"]})
            n_proc = min(cfg.num_proc, max(1, len(ds) // 64))
            ds = ds.map(_tokenize, batched=True, batch_size=64, num_proc=n_proc,
                        fn_kwargs={"vocab_json": vocab.to_json()}, remove_columns=["doc"],
                        desc=f"tokenize {name}")
            stream_meta = {"modality": cfg.mixture[name].modality,
                           "weight": cfg.mixture[name].weight}
            table = ds.data.table
            for split in SPLITS:
                mask = c["val"] == (split == "val")
                part = table.filter(pa.array(mask))
                ids = part.column("ids").combine_chunks().flatten().to_numpy()
                mods = part.column("mods").combine_chunks().flatten().to_numpy()
                units = np.asarray(part.column("units").to_pylist(), dtype=np.int64).sum(axis=0)
                rows = len(ids) // row_len
                if rows == 0:
                    raise UserError(
                        f"data.mixture.{name}: the {split} split has {len(ids)} tokens, fewer than "
                        f"one sequence of seq_len + 1 = {row_len}; add data, raise max_units or "
                        "val_fraction, or lower seq_len"
                    )
                np.save(tmp / f"{name}.{split}.tokens.npy",
                        ids[: rows * row_len].astype(_token_dtype(vocab)).reshape(rows, row_len))
                np.save(tmp / f"{name}.{split}.mods.npy",
                        mods[: rows * row_len].astype(np.uint8).reshape(rows, row_len))
                counts = np.bincount(mods, minlength=len(MODALITIES))
                stream_meta[split] = {
                    "docs": int(mask.sum()),
                    "rows": rows,
                    "tokens": rows * row_len,
                    "modalities": {
                        m: {"tokens": int(counts[i]), "units": int(units[i])}
                        for i, m in enumerate(MODALITIES) if counts[i]
                    },
                }
            arrays = {split: (np.load(tmp / f"{name}.{split}.tokens.npy"),
                              np.load(tmp / f"{name}.{split}.mods.npy")) for split in SPLITS}
            stream_meta["val"]["floors"] = stream_floors(*arrays["train"], *arrays["val"], vocab)
            meta["streams"][name] = stream_meta
            log(f"packed {name:10s} train {stream_meta['train']['rows']:7d} rows  "
                f"val {stream_meta['val']['rows']:6d} rows of {row_len} tokens")
        (tmp / "vocab.json").write_text(vocab.to_json())
        write_json(tmp / "meta.json", meta)
    return out


def tokens_per_unit(meta: dict, split: str = "val") -> dict[str, float]:
    """Tokens per raw unit for each modality over all streams of a split (for bits/unit)."""
    tokens: dict[str, int] = {}
    units: dict[str, int] = {}
    for s in meta["streams"].values():
        for m, c in s[split]["modalities"].items():
            tokens[m] = tokens.get(m, 0) + c["tokens"]
            units[m] = units.get(m, 0) + c["units"]
    return {m: tokens[m] / units[m] for m in tokens if units[m] > 0}


def bits_per_unit(nats_per_token: float, tokens_per_raw_unit: float) -> float:
    return nats_per_token * tokens_per_raw_unit / math.log(2)
