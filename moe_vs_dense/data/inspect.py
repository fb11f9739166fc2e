"""`data inspect`: per stream and modality, documents, tokens, raw units, the floors (count models
of the training split on all validation rows) and a decoded sample."""

from __future__ import annotations

import numpy as np

from moe_vs_dense.data.floors import KINDS, floors_over
from moe_vs_dense.data.loader import PreparedData
from moe_vs_dense.data.prepare import bits_per_unit
from moe_vs_dense.data.tokenizers import EOD
from moe_vs_dense.modalities import RAW_UNIT


def summary_rows(data: PreparedData) -> list[dict]:
    rows = []
    for name in data.streams:
        s = data.meta["streams"][name]
        for split in ("train", "val"):
            for m, c in s[split]["modalities"].items():
                rows.append({
                    "stream": name, "split": split, "modality": m, "docs": s[split]["docs"],
                    "rows": s[split]["rows"], "tokens": c["tokens"], "raw units": c["units"],
                    "unit": RAW_UNIT[m],
                    "tokens/unit": c["tokens"] / c["units"] if c["units"] else float("nan"),
                })
    return rows


def floor_rows(data: PreparedData) -> list[dict]:
    """Per stream and target modality: each floor over all validation rows, in nats/token and
    bits per raw unit (a run that scores fewer rows has its own in its record)."""
    rows = []
    for name in data.streams:
        val = data.meta["streams"][name]["val"]
        for m, parts in val.get("floors", {}).items():
            f = floors_over([parts], None)
            if f is None:
                continue
            c = val["modalities"][m]
            tpu = c["tokens"] / c["units"] if c["units"] else None
            row = {"stream": name, "modality": m, "tokens": f["tokens"], "unit": RAW_UNIT[m],
                   "markov order": parts["markov_order"]}
            for k in KINDS:
                row[f"{k} nats/token"] = f[k]
            for k in KINDS:
                row[f"{k} bits/unit"] = bits_per_unit(f[k], tpu) if tpu else float("nan")
            rows.append(row)
    return rows


def sample(data: PreparedData, stream: str, max_tokens: int = 120_000) -> str:
    """The first whole validation document of a stream, decoded per modality run."""
    tokens = data.array(stream, "val")
    n_rows = min(len(tokens), -(-max_tokens // tokens.shape[1]))
    ids = np.asarray(tokens[:n_rows]).reshape(-1)
    ends = np.flatnonzero(ids == EOD)
    if len(ends) >= 2:
        ids = ids[ends[0] + 1 : ends[1] + 1]
    parts = []
    for modality, shown in data.vocab.show(ids[:max_tokens]):
        if modality == "eod":
            parts.append("  <end of document>")
        else:
            text = shown if len(shown) < 1500 else shown[:1500] + "..."
            parts.append(f"  [{modality}] " + text.replace("\n", "\n  " + " " * (len(modality) + 3)))
    return "\n".join(parts)


def report(data: PreparedData, samples: bool = True) -> str:
    import pandas as pd

    table = pd.DataFrame(summary_rows(data))
    lines = [f"prepared data: {data.path}",
             f"sequence length {data.seq_len}, vocabulary {data.vocab.size} ids: "
             + ", ".join(f"{m} {t.offset}-{t.offset + t.size - 1} ({type(t).__name__}, "
                         f"{'lossless' if t.lossless else 'lossy'}, per {t.raw_unit})"
                         for m, t in data.vocab.tokenizers.items()),
             "",
             table.to_markdown(index=False, floatfmt=",.3f", intfmt=","), ""]
    floors = floor_rows(data)
    if floors:
        lines += ["floors: loss of count models fitted on the training split, on all validation "
                  f"rows ({data.meta.get('floors_method')})", "",
                  pd.DataFrame(floors).to_markdown(index=False, floatfmt=".3f", intfmt=","), ""]
    else:
        lines += ["floors: not in this prepared data (prepared before floors existed; "
                  "prepare again)", ""]
    if samples:
        for name in data.streams:
            lines += [f"sample of {name} (a validation document):", sample(data, name), ""]
    return "\n".join(lines)
