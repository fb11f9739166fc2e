"""Run records or a CSV -> one tidy table, a row per (run, modality).

Columns: run, family, router, seed, status, pair, modality, modalities (the run's, joined by
'+'), N (the params the laws use), N_active, N_total, D (tokens of this modality, else all),
D_total, flops_per_token, C (training FLOPs on this modality's tokens: flops_per_token x D),
C_total (on all tokens: flops_per_token x D_total), loss (nats/token), bits_per_unit,
n_experts, top_k (experts per token), granularity (dense FFN width / one expert's width),
floor_uniform, floor_unigram, floor_bigram, floor_markov (nats/token of count models of the
training data on the validation rows the run scored; NaN where the record has none),
method (`fp32` for a trained run; int8, int4, prune:R for a compressed one), source_run (the
trained run a compressed one came from; None for trained runs), storage_bytes (all weights as
stored) and inference_flops_per_token (one forward pass; a pruned model's zeros not counted).
analysis/compute.py says why compute is defined so.

Compressed runs (`moe-vs-dense compress`, a record with `compressed`) are not trained runs: they
repeat their source's N, D and compute with another loss. `load_runs` leaves them out unless
asked (`compressed=True`), so no law fit, pairing or table counts them as runs; `trained` tells
the two kinds apart in a table that holds both.

Reads record schema versions 1 to 4: versions 2 to 4 only add optional fields, and their
`eval.final` holds the same per-modality losses (paired-document losses sit apart in
`eval.paired` and are not rows here). `load_docs` reads the per-document losses a completed
run keeps in eval_docs.json, for paired differences (analysis/paired.py).
"""

from __future__ import annotations

import json
import math
import warnings
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError

if TYPE_CHECKING:
    from analysis.paired import DocLosses

SCHEMA = Path(__file__).with_name("record.schema.json")
COLUMNS = ["run", "family", "router", "seed", "status", "pair", "modality", "modalities", "N",
           "N_active", "N_total", "D", "D_total", "flops_per_token", "C", "C_total", "loss",
           "loss_se", "bits_per_unit", "n_experts", "top_k", "granularity"] + [
           f"floor_{k}" for k in ("uniform", "unigram", "bigram", "markov")] + [
           "method", "source_run", "storage_bytes", "inference_flops_per_token"]
FLOORS = [f"floor_{k}" for k in ("uniform", "unigram", "bigram", "markov")]
# what a CSV's columns may stand for (`load_csv`'s `columns` maps these to the CSV's names)
CSV_KEYS = ("params", "tokens", "loss", "family", "modality", "flops", "seed", "n_experts",
            "top_k", "router", "granularity", "run", "loss_se", *FLOORS)
CSV_NUMERIC = ("params", "tokens", "loss", "flops", "seed", "n_experts", "top_k", "granularity",
               "loss_se", *FLOORS)


def family_key(df: pd.DataFrame) -> pd.Series:
    """An MoE family: family, router, expert count and (above 1) experts per token, e.g.
    `moe learned E=8`, `moe learned E=16 k=2` (no E when unknown); `dense` for dense runs. A
    table without router, expert or top-k columns keeps its families as they are."""
    none = pd.Series(None, index=df.index, dtype=object)
    router = df.get("router", none).fillna("").astype(str)
    experts = df.get("n_experts", none).fillna(0).astype(int)
    k = df.get("top_k", none).fillna(0).astype(int)
    label = (df["family"].astype(str) + np.where(router != "", " " + router, "")
             + np.where(experts > 0, " E=" + experts.astype(str), "")
             + np.where(k > 1, " k=" + k.astype(str), ""))
    label = label.where(df["family"] != "dense", "dense")
    return label.where(~df["family"].astype(str).str.contains(" "), df["family"])  # already one


def joint_mixture(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of runs trained on the joint mixture: per modality, those of the widest
    modality set among its MoE/MoT runs (among all its runs when there are none; ties go to
    the set with more runs). Runs on other sets, such as unimodal dense baselines, are left to
    the bimodal law. A table that records no mixtures (no `modalities` column) is one mixture."""
    if "modalities" not in df:
        return df
    keep = pd.Series(False, index=df.index)
    for _, g in df.groupby("modality"):
        others = g[g["family"] != "dense"]
        sets = (others if len(others) else g)["modalities"].astype(str).value_counts()
        widest = max(sets.items(), key=lambda kv: (kv[0].count("+"), kv[1]))[0]
        keep[g.index[g["modalities"].astype(str) == widest]] = True
    return df[keep]


def by_family(df: pd.DataFrame) -> pd.DataFrame:
    """Joint-mixture rows with `family` set to the MoE family (`family_key`), so that each
    router, expert count and top-k is compared with dense on its own ("dense" stays "dense")."""
    rows = joint_mixture(df)
    return rows.assign(family=family_key(rows))


@cache
def _validator():
    import jsonschema

    return jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))


def trained(df: pd.DataFrame) -> pd.Series:
    """True for the rows of trained runs, False for compressed ones."""
    return df["source_run"].isna()


def inference_cost(record: dict) -> tuple[str, float, float]:
    """(method, storage bytes, forward FLOPs per token) of a record; a record from before
    schema version 4 is an fp32 trained run: 4 bytes per param, a third of its training FLOPs
    per token (model/accounting.py)."""
    inf = record.get("inference")
    if inf:
        return inf["method"], float(inf["storage_bytes"]), float(inf["flops_per_token"])
    return "fp32", 4.0 * record["params"]["total"], record["flops_per_token"] / 3


def record_rows(record: dict) -> list[dict]:
    """Tidy rows of one record (already schema-valid)."""
    by_mod = record["tokens"].get("by_modality") or {}
    method, storage, fwd = inference_cost(record)
    rows, fpt = [], record["flops_per_token"]
    model = record.get("model") or {}
    d_ff, d_expert = model.get("d_ff"), model.get("d_expert")
    floors = record["eval"].get("floors") or {}
    for m, ev in record["eval"]["final"].items():
        D = by_mod.get(m, record["tokens"]["total"])
        floor = floors.get(m) or {}
        rows.append({
            "run": record["run_id"], "family": record["family"], "router": record.get("router"),
            "seed": record["seed"], "status": record["status"], "pair": record.get("pair_id"),
            "modality": m, "modalities": "+".join(record["modalities"]),
            "N_active": record["params"]["active"], "N_total": record["params"]["total"],
            "D": D, "D_total": record["tokens"]["total"], "flops_per_token": fpt,
            "C": fpt * D, "C_total": fpt * record["tokens"]["total"], "loss": ev["loss"],
            "loss_se": ev.get("se"),
            "bits_per_unit": ev.get("bits_per_unit"),
            "n_experts": model.get("n_experts", 0) or 0, "top_k": model.get("top_k") or 0,
            "granularity": d_ff / d_expert if d_ff and d_expert else float("nan"),
            **{c: floor.get(c.removeprefix("floor_"), float("nan")) for c in FLOORS},
            "method": method, "source_run": (record.get("compressed") or {}).get("source_run"),
            "storage_bytes": storage, "inference_flops_per_token": fwd,
        })
    return rows


def load_runs(paths: list[str | Path], params: str = "active",
              compressed: bool = False) -> tuple[pd.DataFrame, list[dict]]:
    """Tidy table of completed runs under `paths` (run dirs, dirs of runs, or record files),
    and the raw records. Corrupt, invalid, failed, diverged or unfinished runs are skipped with
    one warning that lists them; compressed runs are left out silently unless `compressed`."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += sorted(p.rglob("record.json"))
        else:
            raise AnalysisError(f"{p}: no such file or directory")
    rows, records, skipped = [], [], []
    for f in files:
        try:
            record = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            skipped.append(f"{f} (corrupt JSON: {e})")
            continue
        errors = sorted(_validator().iter_errors(record), key=lambda e: list(e.path))
        if errors:
            where = "/".join(map(str, errors[0].path)) or "(top level)"
            skipped.append(f"{f} (schema: {where}: {errors[0].message})")
            continue
        if record["status"] != "completed":
            skipped.append(f"{f} (status {record['status']})")
            continue
        if record.get("compressed") and not compressed:
            continue
        records.append(record)
        rows += record_rows(record)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} record(s):\n  " + "\n  ".join(skipped), stacklevel=2)
    if not rows:
        raise AnalysisError(f"no usable run records under {', '.join(map(str, paths))}")
    return _finish(pd.DataFrame(rows), params), records


def load_csv(path: str | Path, columns: dict[str, str] | None = None,
             params: str = "active") -> pd.DataFrame:
    """A CSV with columns params, tokens, loss and optionally family, modality, flops (training
    FLOPs, else 6 x params x tokens), seed, n_experts, top_k, router, granularity, run, loss_se,
    floor_uniform, floor_unigram, floor_bigram, floor_markov; `columns` maps those names to the
    CSV's own."""
    path = Path(path)
    unknown = sorted(set(columns or {}) - set(CSV_KEYS))
    if unknown:
        raise AnalysisError(f"--col {', '.join(unknown)}: unknown key; keys: {', '.join(CSV_KEYS)}")
    if not path.is_file():
        raise AnalysisError(f"{path}: no such file")
    names = {k: k for k in CSV_KEYS} | (columns or {})
    try:
        raw = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise AnalysisError(f"{path}: cannot read CSV ({e})") from None
    for key in ("params", "tokens", "loss"):
        if names[key] not in raw.columns:
            raise AnalysisError(f"{path}: missing column '{names[key]}' (for {key}); columns: "
                                f"{', '.join(raw.columns)}; map one with --col {key}=NAME")
    for key in CSV_NUMERIC:
        if names[key] in raw.columns:
            raw[names[key]] = _numbers(raw[names[key]], path, f"'{names[key]}' (for {key})")
    get = lambda k, default: raw[names[k]] if names[k] in raw.columns else default  # noqa: E731
    df = pd.DataFrame({
        "run": get("run", pd.Series([f"row{i + 2}" for i in range(len(raw))])),
        "family": get("family", "dense"), "router": get("router", None), "seed": get("seed", 0),
        "status": "completed", "pair": None, "modality": get("modality", "all"),
        "N_active": raw[names["params"]], "N_total": raw[names["params"]],
        "D": raw[names["tokens"]], "D_total": raw[names["tokens"]],
        "C": get("flops", 6.0 * raw[names["params"]] * raw[names["tokens"]]),
        "loss": raw[names["loss"]], "loss_se": get("loss_se", float("nan")),
        "bits_per_unit": None, "n_experts": get("n_experts", 0),
        "top_k": get("top_k", 0), "granularity": get("granularity", float("nan")),
        **{c: get(c, float("nan")) for c in FLOORS},
        "method": "fp32", "source_run": None, "storage_bytes": float("nan"),
        "inference_flops_per_token": float("nan"),
    })
    df["modalities"] = df["modality"]
    bad = ~df[["N_active", "D", "loss", "C"]].map(_positive_finite).all(axis=1)
    if bad.any():
        lines = [int(i) + 2 for i in df.index[bad]]
        raise AnalysisError(f"{path}: non-positive or non-finite params/tokens/loss/flops on "
                            f"line(s) {', '.join(map(str, lines[:10]))}")
    # a CSV row is one run on one data set: D is all its tokens
    df["C_total"] = df["C"]
    df["flops_per_token"] = df["C"].astype(float) / df["D"].astype(float)
    return _finish(df, params)


def _numbers(col: pd.Series, path: Path, what: str) -> pd.Series:
    """A CSV column as floats; text in it is an error naming the lines (blank cells stay NaN)."""
    out = pd.to_numeric(col, errors="coerce")
    bad = out.isna() & col.notna()
    if bad.any():
        lines = [int(i) + 2 for i in col.index[bad]]
        raise AnalysisError(f"{path}: column {what} holds text, not numbers, on line(s) "
                            f"{', '.join(map(str, lines[:10]))} (first: {col[bad].iloc[0]!r})")
    return out


def _positive_finite(v) -> bool:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return False
    return math.isfinite(x) and x > 0


def _finish(df: pd.DataFrame, params: str) -> pd.DataFrame:
    if params not in ("active", "total"):
        raise AnalysisError(f"params must be 'active' or 'total', not {params!r}")
    df["N"] = df["N_active"] if params == "active" else df["N_total"]
    for c in ("N", "N_active", "N_total", "D", "D_total", "flops_per_token", "C", "C_total", "loss",
              "loss_se", "storage_bytes", "inference_flops_per_token", *FLOORS):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    bad = ~df[["N", "D", "C", "loss"]].map(_positive_finite).all(axis=1)
    if bad.any():
        warnings.warn(f"dropped {int(bad.sum())} row(s) with non-positive or non-finite values: "
                      f"{', '.join(df.loc[bad, 'run'].astype(str).unique()[:10])}", stacklevel=3)
        df = df[~bad]
    return df[COLUMNS].reset_index(drop=True)


def load_docs(paths: list[str | Path]) -> dict[str, dict[str, DocLosses]]:
    """Per run id and modality (or paired key such as image->text), the per-document losses
    of `eval_docs.json` beside each record.json under `paths`; runs without one are absent."""
    from analysis.paired import DocLosses

    out: dict[str, dict[str, DocLosses]] = {}
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted(p.rglob("record.json")) if p.is_dir() else []
        for f in files:
            docs = f.with_name("eval_docs.json")
            if f.name != "record.json" or not docs.is_file():
                continue
            try:
                run = json.loads(f.read_text())["run_id"]
                raw = json.loads(docs.read_text())
                out[run] = {m: DocLosses(np.asarray(v["nll_sum"], float), np.asarray(v["tokens"], np.int64))
                            for m, v in raw.items()}
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
                warnings.warn(f"{docs}: unreadable per-document losses ({e}); its pairs get no "
                              "document-level SE", stacklevel=2)
    return out


def load(inputs: list[str | Path], params: str = "active",
         columns: dict[str, str] | None = None) -> pd.DataFrame:
    """Run directories / record files, or one CSV."""
    if len(inputs) == 1 and str(inputs[0]).endswith(".csv"):
        return load_csv(inputs[0], columns, params)
    return load_runs(inputs, params)[0]
