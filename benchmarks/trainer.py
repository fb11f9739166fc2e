"""Trainer overhead and MFU: the trainer's training tokens/s against a bare loop, side by side.

For the smallest demo dense model (configs/demo.yaml) and its modality-MoE partner
(configs/moe_modality.yaml), on the prepared demo data, fp32:
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
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from moe_vs_dense.config import load_config
from moe_vs_dense.data.loader import MixtureLoader
from moe_vs_dense.errors import UserError
from moe_vs_dense.model.accounting import account
from moe_vs_dense.train import train
from moe_vs_dense.train.rundir import open_data
from moe_vs_dense.train.speed import matmul_peak
from moe_vs_dense.train.step import build, split_batch, train_step

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"dense": ROOT / "configs" / "demo.yaml", "moe": ROOT / "configs" / "moe_modality.yaml"}


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
    figures = {"trainer_over_bare": min(r["ratio"] for r in results.values()),
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
