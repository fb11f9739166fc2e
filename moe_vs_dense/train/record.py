"""`record.json`: what a run is and what it reached, in the schema analysis reads
(`analysis/record.schema.json`, version 4). Written atomically at every eval, checkpoint and end."""

from __future__ import annotations

import json
import math
import os
import platform
import socket
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from moe_vs_dense.config import Config
from moe_vs_dense.data.floors import KINDS, floors_over
from moe_vs_dense.data.loader import MixtureSampler, PreparedData
from moe_vs_dense.data.prepare import bits_per_unit
from moe_vs_dense.io import write_text
from moe_vs_dense.model.accounting import Accounting, inference
from moe_vs_dense.train.evaluate import SE_METHOD, stream_key, tokens_per_unit

SCHEMA_VERSION = 4  # 3: eval.floors; 4: inference


def tokens_by_modality(data: PreparedData, sampler: MixtureSampler, rows: int) -> dict[str, int]:
    """Training tokens (predicted positions) per modality after `rows` rows: rows drawn from
    each stream (exact, from the sampler) times that stream's share of each modality."""
    out: dict[str, float] = {}
    for s, n in zip(data.streams, sampler.seen(rows), strict=True):
        split = data.meta["streams"][s]["train"]
        for m, c in split["modalities"].items():
            share = c["tokens"] / sum(v["tokens"] for v in split["modalities"].values())
            out[m] = out.get(m, 0.0) + int(n) * data.seq_len * share
    return {m: int(round(v)) for m, v in out.items()}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "numpy": np.__version__}
    for pkg in ("accelerate", "moe-vs-dense"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def host(device: torch.device, processes: int) -> dict:
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine())
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "device": name,
            "device_type": device.type, "processes": processes, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count()}


def docs_for_target(docs: int, se: float | None, target: float) -> int | None:
    """Validation documents that would bring `se` to `target` at the same per-document spread
    (a cluster SE falls as 1/sqrt(documents))."""
    return None if se is None else max(2, math.ceil(docs * (se / target) ** 2))


def run_floors(data: PreparedData, rows: int | None) -> dict:
    """The floors (data/floors.py) of every result key over the validation rows a run scored
    (the first `rows` of each stream, None: all), pooled over streams as the evaluator pools
    losses, in nats/token and bits per raw unit; {} for data prepared without floors."""
    parts: dict[str, list[tuple[str, str]]] = {}
    for s in data.streams:
        for m in data.meta["streams"][s]["val"].get("floors", {}):
            parts.setdefault(stream_key(data, s, m), []).append((s, m))
    tpu = tokens_per_unit(data, parts)
    out = {}
    for key, where in parts.items():
        f = floors_over([data.meta["streams"][s]["val"]["floors"][m] for s, m in where], rows)
        if f is None:
            continue
        f["bits_per_unit"] = {k: None if tpu[key] is None else bits_per_unit(f[k], tpu[key])
                              for k in KINDS}
        out[key] = f
    return out


def split_final(losses: dict, target: float) -> tuple[dict, dict]:
    """Pure-modality results and paired-document results ("image->text"), each with the
    validation documents its SE target needs."""
    out = {k: {**v, "docs_for_target": docs_for_target(v["docs"], v["se"], target)}
           for k, v in losses.items()}
    pure = {k: v for k, v in out.items() if "->" not in k}
    paired = {k: v for k, v in out.items() if "->" in k}
    return pure, paired


def se_shortfall(rec: dict) -> str | None:
    """A line naming the final losses whose SE is above the target and how to meet it, or None
    when all are met (records from before `docs_for_target` get it computed here)."""
    ev = rec["eval"]
    target = ev["target_se"]
    short = []
    for k, v in {**ev["final"], **ev["paired"]}.items():
        if v["se"] is None:
            short.append(f"{k} (one document: no SE)")
        elif v["se"] > target:
            need = v.get("docs_for_target") or docs_for_target(v["docs"], v["se"], target)
            short.append(f"{k} {v['se']:.4f} ({v['docs']} docs, ~{need} needed)")
    if not short:
        return None
    more = "hold out more documents with data.mixture.<stream>.val_docs"
    if ev["rows_per_stream"]["final"] is not None:
        more = f"score more rows (eval.final_rows: null scores all of them) or {more}"
    return f"standard error above eval.target_se = {target} nats for {', '.join(short)}: {more}"


def build_record(cfg: Config, run_dir: Path, acc: Accounting, data: PreparedData,
                 sampler: MixtureSampler, state: dict, extra: dict) -> dict:
    """The record from the config, accounting and the trainer state (see loop.py)."""
    step, batch_rows = state["step"], cfg.train.batch_rows
    total = step * batch_rows * data.seq_len
    final = state.get("final")
    pure, paired = split_final(final["losses"], cfg.eval.target_se) if final else ({}, {})
    tps = state["tokens_timed"] / state["train_seconds"] if state["train_seconds"] > 0 else 0.0
    peak = extra.get("peak_flops")
    moe = cfg.model.moe
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": Path(run_dir).resolve().name,
        "pair_id": cfg.run.pair_id,
        "status": state["status"],
        "error": state.get("error"),
        "diverged_step": state.get("diverged_step"),
        "family": cfg.model.family,
        "router": moe.router if cfg.model.family == "moe" else None,
        "seed": cfg.seed,
        "modalities": data.meta["modalities"],
        "model": {"d_model": cfg.model.d_model, "n_layers": cfg.model.n_layers,
                  "n_heads": cfg.model.n_heads, "n_experts": acc.n_experts,
                  "top_k": moe.top_k if cfg.model.family == "moe" else None,
                  "d_ff": cfg.model.ffn_hidden,
                  "d_expert": cfg.model.d_expert if cfg.model.family == "moe" else None},
        "params": {"total": acc.total_params, "active": acc.active_params,
                   "non_embedding": acc.non_embedding_params, "embedding": acc.embedding_params},
        "flops_per_token": acc.flops_per_token,
        "tokens": {"total": total,
                   "by_modality": tokens_by_modality(data, sampler, step * batch_rows),
                   "budget": cfg.train.tokens, "steps": step, "steps_planned": state["steps"],
                   "batch_rows": batch_rows, "seq_len": data.seq_len},
        "compute": float(acc.flops_per_token) * total,
        "inference": inference(cfg.model, data.vocab.size, data.seq_len,
                               data.meta["modalities"]).to_dict(),
        "eval": {
            "final": pure,
            "paired": paired,
            "curve": state["curve"],
            "se_method": SE_METHOD,
            "target_se": cfg.eval.target_se,
            "se_target_met": bool(final) and all(v["se"] is not None and v["se"] <= cfg.eval.target_se
                                                 for v in final["losses"].values()),
            "rows_per_stream": {"curve": cfg.eval.rows, "final": cfg.eval.final_rows},
            "floors": run_floors(data, cfg.eval.final_rows),
            "floors_method": data.meta.get("floors_method"),
        },
        "expert_stats": final["expert_stats"] if final else [],
        "stability": {"loss_spikes": state["monitor"]["loss"]["count"],
                      "grad_norm_spikes": state["monitor"]["grad"]["count"],
                      "loss_spike_steps": state["monitor"]["loss"]["steps"],
                      "max_grad_norm": state["monitor"]["max_grad_norm"]},
        "throughput": {"tokens_per_s": tps,
                       "mfu": acc.flops_per_token * tps / peak if peak else None,
                       "peak_flops": peak, "peak_source": extra.get("peak_source"),
                       "train_seconds": state["train_seconds"]},
        "train": {"precision": cfg.train.precision, "compiled": extra.get("compiled", False),
                  "moe_backend": extra.get("moe_backend"),
                  "lr": cfg.train.lr, "grad_accum": cfg.train.grad_accum},
        "data": {"prepared": data.path.name, "seq_len": data.seq_len,
                 "vocab_size": data.vocab.size, "streams": data.streams},
        "versions": versions(),
        "host": extra.get("host", {}),
    }


def write(run_dir: Path, record: dict) -> None:
    """Atomically; strict JSON (a NaN here is a bug, not a value)."""
    write_text(Path(run_dir) / "record.json", json.dumps(record, indent=2, allow_nan=False) + "\n")
