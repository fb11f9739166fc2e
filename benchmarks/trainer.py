"""Trainer and model overhead, and MFU: tokens/s against a bare loop and a plain reference.

For the smallest demo dense model (configs/demo.yaml) and its modality-MoE partner
(configs/moe_modality.yaml), on the prepared demo data, fp32:
- reference: a plain ~100-line decoder of the dense model's shape and FLOPs per token (fused
  QKV, RoPE, SDPA, SwiGLU as plain matmuls, one cross-entropy), same batches, AdamW groups,
  schedule and clipping. `model_over_reference` is the dense model's tokens/s over the
  reference's (target >= 0.95), `moe_over_reference` the modality MoE's (>= 0.90); the three
  step in turn, one step each, and the ratio is of median step times;
- bare: the same model, batches, AdamW and schedule through `train_step`, in a plain loop
  with no logging, evaluation or checkpoints;
- trainer: `moe_vs_dense.train.train` on the same config; its tokens/s is the record's
  (training steps only: the periodic host sync, logging, metrics and progress bar included,
  the final evaluation and checkpoint writes not).
Runs alternate (bare, trainer, bare, ...) so machine load hits both alike; the ratio is the
median over repetitions. Target: trainer/bare >= 0.9. MFU is against this machine's fp32
matmul peak, measured in the same run.

Needs the demo data prepared: `moe-vs-dense data fetch && moe-vs-dense data prepare configs/demo.yaml`.

Usage: python benchmarks/trainer.py [--steps 40] [--reps 5] [--threads 2] [--data-dir DIR]
       [--only-reference]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from moe_vs_dense.config_load import load_config
from moe_vs_dense.data.loader import MixtureLoader
from moe_vs_dense.errors import UserError
from moe_vs_dense.model.accounting import account
from moe_vs_dense.train import train
from moe_vs_dense.train.rundir import open_data
from moe_vs_dense.train.schedule import optimizer_and_schedule
from moe_vs_dense.train.speed import matmul_peak
from moe_vs_dense.train.step import build, split_batch, train_step

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"dense": ROOT / "configs" / "demo.yaml", "moe": ROOT / "configs" / "moe_modality.yaml"}


class ReferenceBlock(nn.Module):
    """Pre-norm block: fused QKV, RoPE, causal SDPA, SwiGLU as three plain matmuls."""

    def __init__(self, d: int, n_heads: int, d_ff: int, eps: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1, self.norm2 = nn.RMSNorm(d, eps=eps), nn.RMSNorm(d, eps=eps)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)
        self.gate, self.up = nn.Linear(d, d_ff, bias=False), nn.Linear(d, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d, bias=False)

    def forward(self, x_BTD: torch.Tensor, cos_TE: torch.Tensor, sin_TE: torch.Tensor):
        B, T, D = x_BTD.shape
        qkv = self.qkv(self.norm1(x_BTD)).view(B, T, 3, self.n_heads, D // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, T, E]

        def rope(t):
            t1, t2 = t.chunk(2, dim=-1)
            return t * cos_TE + torch.cat([-t2, t1], dim=-1) * sin_TE

        y = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
        x_BTD = x_BTD + self.proj(y.transpose(1, 2).reshape(B, T, D))
        h = self.norm2(x_BTD)
        return x_BTD + self.down(F.silu(self.gate(h)) * self.up(h))


class Reference(nn.Module):
    """A plain decoder with the toolkit dense model's shape and FLOPs per token (tied
    embeddings, RMSNorm, RoPE, SwiGLU): the yardstick for the model code's own overhead."""

    def __init__(self, vocab: int, T: int, d: int, n_layers: int, n_heads: int, d_ff: int,
                 eps: float = 1e-5, theta: float = 10000.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(ReferenceBlock(d, n_heads, d_ff, eps) for _ in range(n_layers))
        self.norm = nn.RMSNorm(d, eps=eps)
        E = d // n_heads
        angles = torch.outer(torch.arange(T).float(), theta ** (-torch.arange(0, E, 2) / E))
        self.register_buffer("cos", torch.cat([angles, angles], -1).cos(), persistent=False)
        self.register_buffer("sin", torch.cat([angles, angles], -1).sin(), persistent=False)
        for p in self.parameters():
            nn.init.normal_(p, std=0.02) if p.ndim == 2 else None

    def forward(self, tokens_BT: torch.Tensor, targets_BT: torch.Tensor) -> torch.Tensor:
        T = tokens_BT.shape[1]
        x = self.embed(tokens_BT)
        for block in self.blocks:
            x = block(x, self.cos[:T], self.sin[:T])
        logits = F.linear(self.norm(x), self.embed.weight)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets_BT.reshape(-1))


def reference_stepper(cfg, data):
    """One optimizer step of the plain reference on batch `step`: the same batches, AdamW
    groups, schedule and clipping as `train_step`."""
    m = cfg.model
    torch.manual_seed(cfg.seed)
    model = Reference(data.vocab.size, data.seq_len, m.d_model, m.n_layers, m.n_heads,
                      m.ffn_hidden, m.norm_eps, m.rope_theta)
    opt, sched = optimizer_and_schedule(model, cfg.train, cfg.train.steps(data.seq_len))
    loader = MixtureLoader(data, cfg.train.batch_rows, cfg.seed)

    def step(i: int) -> None:
        x = torch.from_numpy(loader.batch(i)[0])
        model(x[:, :-1], x[:, 1:]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or math.inf)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return step


def toolkit_stepper(cfg, data):
    """One `train_step` of the toolkit's model (built as the trainer builds it) on batch `step`."""
    model, opt, sched = build(cfg, data)
    loader = MixtureLoader(data, cfg.train.batch_rows, cfg.seed)

    def step(i: int) -> None:
        micro = split_batch(*loader.batch(i), 0, 1, 1, torch.device("cpu"))
        train_step(model, opt, sched, micro, grad_clip=cfg.train.grad_clip)
    return step


def step_ratios(cfgs, data, steps: int, reps: int) -> dict[str, float]:
    """Reference step time over each toolkit model's (= tokens/s over the reference's). The
    three models step in turn, one step each, so machine load hits all alike; per repetition
    the median step time of each, then the median ratio over repetitions."""
    ratios: dict[str, list[float]] = {k: [] for k in cfgs}
    for _ in range(reps):
        steppers = {"reference": reference_stepper(cfgs["dense"], data)}
        steppers.update({k: toolkit_stepper(cfg, data) for k, cfg in cfgs.items()})
        times: dict[str, list[float]] = {k: [] for k in steppers}
        for i in range(steps + 2):
            for k, step in steppers.items():
                t = time.perf_counter()
                step(i)
                if i >= 2:  # warm-up: allocator, first-call probes
                    times[k].append(time.perf_counter() - t)
        ref = statistics.median(times["reference"])
        for k in cfgs:
            ratios[k].append(ref / statistics.median(times[k]))
    return {k: statistics.median(v) for k, v in ratios.items()}


def bare_tokens_per_s(cfg, data) -> float:
    """A plain loop over the same steps: batch, train_step, nothing else."""
    model, opt, sched = build(cfg, data)
    loader = MixtureLoader(data, cfg.train.batch_rows, cfg.seed)
    steps = cfg.train.steps(data.seq_len)
    start = time.perf_counter()
    for step in range(steps):
        micro = split_batch(*loader.batch(step), 0, 1, 1, torch.device("cpu"))
        loss, _ = train_step(model, opt, sched, micro, grad_clip=cfg.train.grad_clip)
    loss.item()
    return steps * cfg.train.batch_rows * data.seq_len / (time.perf_counter() - start)


def trainer_tokens_per_s(cfg, data_root, tmp: Path) -> float:
    with tempfile.TemporaryDirectory(dir=tmp) as run:
        rec = train(cfg, Path(run) / "run", data_root=data_root, progress=False)
    return rec["throughput"]["tokens_per_s"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps per timed run")
    ap.add_argument("--reps", type=int, default=5, help="alternating repetitions")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir")
    ap.add_argument("--only-reference", action="store_true",
                    help="only the model-over-reference ratios (no trainer runs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sets = [f"train.tokens={args.steps * 16 * 256}", "train.batch_rows=16",
            f"train.threads={args.threads}", "eval.final_rows=1", "eval.every=null",
            f"run.checkpoint_every={args.steps}"]
    cfgs = {k: load_config(p, sets) for k, p in CONFIGS.items()}
    try:
        data = open_data(cfgs["dense"], args.data_dir, prepare=False)
    except UserError as e:
        print(f"error: {e}\n(the benchmark needs the demo data: `moe-vs-dense data fetch && "
              "moe-vs-dense data prepare configs/demo.yaml`)", file=sys.stderr)
        return 2
    peak = matmul_peak("cpu", "fp32", args.threads, seconds=1.0)
    over_ref = step_ratios(cfgs, data, args.steps, args.reps)
    line = (f"model over a plain reference of the same FLOPs per token (its step time over the "
            f"model's, steps interleaved, median of {args.reps}): dense {over_ref['dense']:.3f} "
            f"(target >= 0.95), modality MoE {over_ref['moe']:.3f} (target >= 0.90)")
    if args.only_reference:
        print(line)
        print(json.dumps({"model_over_reference": round(over_ref["dense"], 4),
                          "moe_over_reference": round(over_ref["moe"], 4)}))
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in cfgs.items():
            bare, trainer = [], []
            bare_tokens_per_s(cfg, data)  # warm-up (allocator, page cache)
            for _ in range(args.reps):
                bare.append(bare_tokens_per_s(cfg, data))
                trainer.append(trainer_tokens_per_s(cfg, args.data_dir, Path(tmp)))
            flops = account(cfg.model, data.vocab.size, data.seq_len, data.meta["modalities"])
            tps = statistics.median(trainer)
            results[name] = {"bare": statistics.median(bare), "trainer": tps,
                             "ratio": statistics.median(t / b for t, b in zip(trainer, bare, strict=True)),
                             "mfu": flops.flops_per_token * tps / peak}
    print(f"trainer vs bare loop: demo models, {args.steps} steps of 16x{data.seq_len} tokens, fp32, "
          f"{args.threads} threads, median of {args.reps} alternating runs; "
          f"measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'model':8s} {'bare tok/s':>12s} {'trainer tok/s':>14s} {'trainer/bare':>13s} {'MFU':>7s}")
    for name, r in results.items():
        print(f"{name:8s} {r['bare']:12,.0f} {r['trainer']:14,.0f} {r['ratio']:13.3f} {r['mfu']:7.1%}")
    print("target: trainer/bare >= 0.9")
    print(line)
    figures = {"model_over_reference": over_ref["dense"], "moe_over_reference": over_ref["moe"],
               "trainer_over_bare": min(r["ratio"] for r in results.values()),
               "trainer_over_bare_dense": results["dense"]["ratio"],
               "trainer_over_bare_moe": results["moe"]["ratio"],
               "tokens_per_s_dense": results["dense"]["trainer"],
               "tokens_per_s_moe": results["moe"]["trainer"],
               "bare_tokens_per_s_dense": results["dense"]["bare"],
               "bare_tokens_per_s_moe": results["moe"]["bare"],
               "mfu_dense": results["dense"]["mfu"], "mfu_moe": results["moe"]["mfu"],
               "peak_flops_fp32": peak}
    print(json.dumps({k: round(v, 4) if v < 1e3 else round(v) for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
