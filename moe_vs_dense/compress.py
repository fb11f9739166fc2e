"""Post-training compression of a completed run: weight quantization or magnitude pruning, then
the run's own final evaluation again, written as a new run directory linked to its source.

What is compressed: every attention QKV and output projection and every FFN, expert and
shared-expert matrix (`model.accounting.compressible`). Embeddings (also the output head when
tied), an untied output head, norms and routers stay fp32.
- `int8`, `int4`: per-output-channel symmetric round-to-nearest: each output column j of a
  matrix W [in, out] gets the scale s_j = max_i |W_ij| / q (q = 127 or 7) and stores
  round(W_ij / s_j) in [-q, q]. The model is evaluated with the dequantized weights s_j x int,
  exactly what an int kernel with fp32 accumulation computes up to summation order.
- `prune:R`: per-matrix magnitude pruning: each matrix (each expert's and each modality
  group's separately) loses its floor(R x size) smallest-magnitude weights (ties by position),
  so every expert keeps the same number and the active count per token is exact.
Storage and forward FLOPs are `model.accounting.inference` (pruned storage: a bitmask plus the
kept fp32 weights; pruned FLOPs skip the zeros). No weights are written: the record is the
result.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from moe_vs_dense.config import Config
from moe_vs_dense.errors import UserError
from moe_vs_dense.io import write_json
from moe_vs_dense.model import checkpoint as weights
from moe_vs_dense.model.accounting import inference
from moe_vs_dense.model.experts import Experts
from moe_vs_dense.model.transformer import GroupLinear, Transformer
from moe_vs_dense.train import record as records
from moe_vs_dense.train import rundir
from moe_vs_dense.train.evaluate import evaluate

LEVELS = {"int8": 127, "int4": 7}
KEPT_FP32 = ["token embedding (also the output head when tied)", "untied output head",
             "RMSNorm weights", "router weights"]


@dataclass(frozen=True)
class Method:
    """`int8`, `int4`, or `prune` with the share of each matrix's weights it zeroes."""

    name: str
    ratio: float = 0.0

    def __str__(self) -> str:
        return f"prune:{self.ratio:g}" if self.name == "prune" else self.name

    @property
    def scheme(self) -> str:
        if self.name == "prune":
            return (f"per-matrix magnitude pruning: each matrix's floor({self.ratio:g} x size) "
                    "smallest |w| set to 0; stored as a bitmask plus the kept fp32 weights")
        return (f"{self.name} per-output-channel symmetric round-to-nearest (levels "
                f"-{LEVELS[self.name]}..{LEVELS[self.name]}, one fp32 scale per output channel); "
                "evaluated with the dequantized weights")


def parse_method(text: str) -> Method:
    """`int8`, `int4` or `prune:R` with R in (0, 1); anything else is a UserError."""
    if text in LEVELS:
        return Method(text)
    name, sep, value = text.partition(":")
    if name == "prune" and sep:
        try:
            ratio = float(value)
        except ValueError:
            ratio = float("nan")
        if not 0 < ratio < 1:
            raise UserError(f"--method {text}: the pruning ratio must be a number in (0, 1), "
                            f"e.g. prune:0.5")
        return Method("prune", ratio)
    raise UserError(f"--method {text}: unknown method; use int8, int4 or prune:R (R in (0, 1))")


def quantize(w_GIO: torch.Tensor, levels: int) -> torch.Tensor:
    """Per-output-channel symmetric round-to-nearest of matrices [G, in, out], dequantized."""
    amax_G1O = w_GIO.abs().amax(dim=1, keepdim=True)
    scale_G1O = torch.where(amax_G1O > 0, amax_G1O / levels, torch.ones_like(amax_G1O))
    return torch.round(w_GIO / scale_G1O).clamp(-levels, levels) * scale_G1O


def prune(w_GIO: torch.Tensor, ratio: float) -> torch.Tensor:
    """Each matrix [in, out] of w_GIO with its floor(ratio x in x out) smallest |w| zeroed
    (ties broken by position)."""
    from moe_vs_dense.model.accounting import pruned_per_matrix

    G, numel = w_GIO.shape[0], w_GIO[0].numel()
    k = pruned_per_matrix(ratio, numel)
    flat_GM = w_GIO.reshape(G, numel)
    order_GM = torch.argsort(flat_GM.abs(), dim=1, stable=True)
    keep_GM = torch.ones_like(flat_GM, dtype=torch.bool)
    keep_GM.scatter_(1, order_GM[:, :k], False)
    return (flat_GM * keep_GM).reshape_as(w_GIO)


def compressible_params(model: Transformer) -> dict[str, torch.nn.Parameter]:
    """The matrices compression touches, by parameter name: attention projections (GroupLinear)
    and FFN/expert matrices (Experts, SwiGLU); all stored as [G or E, in, out]."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, GroupLinear):
            out[f"{name}.weight"] = module.weight
        elif isinstance(module, Experts):
            for w in ("w_gate", "w_up", "w_down"):
                out[f"{name}.{w}"] = getattr(module, w)
    return out


@torch.no_grad()
def compress_model(model: Transformer, method: Method) -> None:
    """Compress `model`'s matrices in place."""
    for p in compressible_params(model).values():
        p.copy_(prune(p, method.ratio) if method.name == "prune"
                else quantize(p, LEVELS[method.name]))


def default_out(run_dir: Path, method: Method) -> Path:
    """`<run>__int8`, `<run>__int4`, `<run>__prune0.5`, beside the run."""
    label = str(method).replace(":", "")
    return run_dir.parent / f"{run_dir.name}__{label}"


def source_record(run_dir: Path) -> dict:
    """The record of a completed trained run with its weights, or a UserError saying why not."""
    rec = rundir.read_record(run_dir)
    if rec is None:
        raise UserError(f"{run_dir}: no readable record.json: not a run directory")
    if rec.get("compressed"):
        raise UserError(f"{run_dir}: already a compressed run (of {rec['compressed'].get('source_run')}); "
                        "compress the trained run")
    if rec.get("status") != "completed":
        raise UserError(f"{run_dir}: the run is {rec.get('status')}, not completed; finish it with "
                        "`moe-vs-dense train` first")
    if not (run_dir / "model.safetensors").is_file():
        raise UserError(f"{run_dir}: no model.safetensors (the weights a completed run writes)")
    return rec


def deltas(source_docs: dict, docs: dict) -> dict:
    """Per key: compressed minus source loss (nats/token) and its SE over documents (the same
    documents scored twice: a ratio estimator of the per-document differences)."""
    out = {}
    for key, d in docs.items():
        s = source_docs.get(key)
        if s is None or len(s["tokens"]) != len(d["tokens"]) or s["tokens"] != d["tokens"]:
            continue
        n_R = np.asarray(d["tokens"], float)
        diff_R = np.asarray(d["nll_sum"], float) - np.asarray(s["nll_sum"], float)
        keep = n_R > 0
        diff_R, n_R = diff_R[keep], n_R[keep]
        delta = float(diff_R.sum() / n_R.sum())
        r = len(n_R)
        se = (float(np.sqrt(r / (r - 1) * np.sum((diff_R - delta * n_R) ** 2) / n_R.sum() ** 2))
              if r > 1 else None)
        out[key] = {"delta": delta, "se": se, "docs": r}
    return out


def compress_run(run_dir: str | Path, method: Method, out: str | Path | None = None,
                 data_root: str | Path | None = None) -> tuple[Path, dict]:
    """Compress the completed run in `run_dir`, evaluate it on the source's final validation
    rows and write `out` (default `default_out`): config.yaml (the source's), record.json and
    eval_docs.json. `out` must not exist; it appears whole or not at all."""
    run_dir = Path(run_dir)
    rec = source_record(run_dir)
    out = Path(out) if out else default_out(run_dir, method)
    if out.exists():
        raise UserError(f"{out}: already exists; remove it or give another --out")
    raw = rundir.read_config(run_dir)
    if raw is None:
        raise UserError(f"{run_dir}: no config.yaml")
    try:
        cfg = Config.model_validate(raw)
    except ValueError as e:
        raise UserError(f"{run_dir}/config.yaml: not a valid run config ({e})") from None
    data = rundir.open_data(cfg, data_root, prepare=False)
    if data.path.name != rec.get("data", {}).get("prepared", data.path.name):
        raise UserError(f"{run_dir}: trained on prepared data {rec['data']['prepared']}, but its "
                        f"config now resolves to {data.path.name}; use the same --data-dir")
    model = weights.load(run_dir / "model.safetensors")
    compress_model(model, method)
    threads = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:
        ev = evaluate(model, data, cfg.eval.final_rows, cfg.eval.batch_rows, cfg.train.precision)
    finally:
        torch.set_num_threads(threads)
    new = _record(rec, cfg, data, ev, method, run_dir, out)
    try:
        source_docs = json.loads((run_dir / "eval_docs.json").read_text())
    except (OSError, json.JSONDecodeError):
        source_docs = {}
    new["compressed"]["delta"] = deltas(source_docs, ev["docs"])
    _write(out, run_dir, new, ev["docs"])
    return out, new


def _record(rec: dict, cfg: Config, data, ev: dict, method: Method, run_dir: Path,
            out: Path) -> dict:
    """The source record with the compressed model's evaluation, storage and FLOPs; tokens and
    compute stay the source's training."""
    pure, paired = records.split_final(ev["losses"], cfg.eval.target_se)
    cost = inference(cfg.model, data.vocab.size, data.seq_len, data.meta["modalities"],
                     method.name, method.ratio).to_dict()
    cost["method"] = str(method)
    evals = {**rec["eval"], "final": pure, "paired": paired, "curve": [],
             "se_target_met": all(v["se"] is not None and v["se"] <= cfg.eval.target_se
                                  for v in ev["losses"].values())}
    return {**rec, "schema_version": records.SCHEMA_VERSION, "run_id": out.name, "eval": evals,
            "expert_stats": ev["expert_stats"], "inference": cost,
            "compressed": {"source_run": rec["run_id"], "source_dir": str(run_dir),
                           "method": str(method), "scheme": method.scheme,
                           "kept_fp32": KEPT_FP32,
                           "source_losses": {k: v["loss"] for k, v in rec["eval"]["final"].items()}},
            "versions": records.versions()}


def _write(out: Path, run_dir: Path, rec: dict, docs: dict) -> None:
    """Write into a temporary sibling, then rename it to `out` (all or nothing)."""
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        shutil.copyfile(run_dir / "config.yaml", tmp / "config.yaml")
        write_json(tmp / "eval_docs.json", docs)
        records.write(tmp, rec)
        tmp.rename(out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{out}: cannot write ({e.strerror or e})") from None


def runs_in(path: Path) -> tuple[list[Path], list[str]]:
    """A run directory itself, or the trained runs directly under a directory of runs (skipping
    compressed ones); and a line for each run under it that is not completed."""
    if (path / "record.json").is_file():
        return [path], []
    if not path.is_dir():
        raise UserError(f"{path}: no such run directory")
    found, skipped = [], []
    for d in sorted(p for p in path.iterdir() if (p / "record.json").is_file()):
        rec = rundir.read_record(d) or {}
        if rec.get("compressed"):
            continue
        if rec.get("status") == "completed":
            found.append(d)
        else:
            skipped.append(f"{d.name} ({rec.get('status', 'unreadable record')})")
    if not found:
        raise UserError(f"{path}: no completed run in it (a run directory holds record.json)")
    return found, skipped
