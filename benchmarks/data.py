"""Data pipeline speed: tokens/s of `data prepare` and of the mixture loader, and the loader's
margin over training the smallest demo model (target: loader >= 20x training tokens/s).

Needs the built-in sources fetched (`moe-vs-dense data fetch`). Prepares a slice of the demo
mix into a temporary directory (a cold cache), then times the loader on it and a training step
of the demo config's model on the loader's batches.

Usage: python benchmarks/data.py [--units 1000000] [--threads 2] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from moe_vs_dense.config_load import load_config
from moe_vs_dense.data.fetch import data_dir
from moe_vs_dense.data.loader import MixtureLoader, PreparedData
from moe_vs_dense.data.prepare import prepare
from moe_vs_dense.errors import UserError
from moe_vs_dense.train.step import build, split_batch, train_step

BATCH_ROWS = 16


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--units", type=int, default=1_000_000, help="raw units per stream to prepare")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    overrides = [f"data.mixture.{s}.max_units={args.units}" for s in cfg.data.mixture]
    cfg = load_config(args.config, overrides + [f"data.num_proc={args.threads}", "data.val_fraction=0.1"])
    source = data_dir(args.data_dir, cfg.data.dir)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "raw").symlink_to((source / "raw").resolve())  # fetched data, cold prepare cache
        t = time.perf_counter()
        try:
            out = prepare(cfg.data, work, log=lambda _m: None)
        except UserError as e:
            print(f"error: {e}\n(the benchmark needs the built-in sources: `moe-vs-dense data "
                  f"fetch`{' --data-dir ' + args.data_dir if args.data_dir else ''})", file=sys.stderr)
            return 2
        prepare_s = time.perf_counter() - t
        data = PreparedData(out)
        tokens = sum(data.meta["streams"][s][sp]["tokens"] for s in data.streams
                     for sp in ("train", "val"))

        loader = MixtureLoader(data, BATCH_ROWS, seed=0)
        steps = 400
        t = time.perf_counter()
        for step in range(steps):
            x, m = loader.batch(step)
            torch.from_numpy(x)
            torch.from_numpy(m)
        loader_s = time.perf_counter() - t
        loader_tps = steps * BATCH_ROWS * data.seq_len / loader_s

        model, opt, sched = build(cfg, data)  # the trainer's own model, AdamW, schedule and step
        train_steps, times = 8, []
        for step in range(train_steps + 2):
            micro = split_batch(*loader.batch(step), 0, 1, 1, torch.device("cpu"))
            t = time.perf_counter()
            loss, _ = train_step(model, opt, sched, micro, grad_clip=cfg.train.grad_clip)
            loss.item()
            if step >= 2:
                times.append(time.perf_counter() - t)
        times.sort()
        train_tps = BATCH_ROWS * data.seq_len / times[len(times) // 2]
        shutil.rmtree(out, ignore_errors=True)

    figures = {"prepare_tokens_per_s": tokens / prepare_s, "loader_tokens_per_s": loader_tps,
               "train_tokens_per_s": train_tps, "loader_over_train": loader_tps / train_tps}
    print(f"data: {args.config}, {args.units:,} raw units per stream, {tokens:,} tokens prepared; "
          f"batch {BATCH_ROWS}x{data.seq_len}; {args.threads} threads")
    print(f"{'measure':26s} {'value':>14s}")
    print(f"{'prepare (tokens/s)':26s} {figures['prepare_tokens_per_s']:14,.0f}")
    print(f"{'loader (tokens/s)':26s} {loader_tps:14,.0f}")
    print(f"{'train demo model (tok/s)':26s} {train_tps:14,.0f}")
    print(f"{'loader / train':26s} {figures['loader_over_train']:14.1f}   target >= 20")
    print(json.dumps({k: round(v, 2) for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
