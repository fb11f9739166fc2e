"""The sweep runner's overhead: total training tokens/s of a small sweep (worker start-up,
per-run start-up, evaluation, checkpoints, records and scheduling included) against the
runs' own training tokens/s (each record's `throughput.tokens_per_s`, pure training steps),
timed in the same process. Target: sweep_over_runs >= 0.85.

    python benchmarks/sweep.py [--workers 1] [--tokens 600000]

Needs the demo data (`moe-vs-dense data fetch`); prepares what is missing before timing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def sweep_yaml(tokens: int) -> dict:
    base = yaml.safe_load((ROOT / "configs" / "sweeps" / "demo.yaml").read_text())
    return {"name": "bench", "base": str(ROOT / "configs" / "demo.yaml"), "set": base["set"],
            "sizes": [{"d_model": 48, "n_layers": 2, "n_heads": 4},
                      {"d_model": 64, "n_layers": 2, "n_heads": 4}],
            "tokens": [tokens], "seeds": [0],
            "families": {"dense": {}, "moe_modality": base["families"]["moe_modality"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=600_000)
    args = ap.parse_args()

    from moe_vs_dense.sweep import load_plan, prepare_data
    from moe_vs_dense.sweep.runner import execute
    from moe_vs_dense.sweep.state import read_record

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(sweep_yaml(args.tokens)))
        _, runs = load_plan(path)
        out = Path(tmp) / "out"
        prepare_data(runs, None, log=lambda _m: None)
        t = time.perf_counter()
        outcome = execute(runs, out, args.workers, progress=False)
        wall = time.perf_counter() - t
        records = [read_record(out, r.run_id) for r in runs]
    if any(s != "completed" for s, _ in outcome.values()):
        raise SystemExit(f"a run did not complete: {outcome}")
    tokens = [r["tokens"]["total"] for r in records]
    train_s = [n / r["throughput"]["tokens_per_s"] for n, r in zip(tokens, records, strict=True)]
    print(f"{'run':34s} {'tokens':>9s} {'train tok/s':>12s} {'train s':>8s}")
    for r, n, s in zip(runs, tokens, train_s, strict=True):
        print(f"{r.run_id:34s} {n:9,d} {n / s:12,.0f} {s:8.2f}")
    sweep_tps = sum(tokens) / wall
    runs_tps = sum(tokens) / (sum(train_s) / args.workers)
    overhead = (wall * args.workers - sum(train_s)) / len(runs)
    print(f"\nsweep: {len(runs)} runs, {args.workers} worker(s), {wall:.1f} s wall, "
          f"{sweep_tps:,.0f} tokens/s; runs' own training: {runs_tps:,.0f} tokens/s; "
          f"overhead {overhead:.2f} s per run (worker start-up, eval, checkpoints, records)")
    print(json.dumps({"sweep_over_runs": round(sweep_tps / runs_tps, 3),
                      "sweep_tokens_per_s": round(sweep_tps), "runs_tokens_per_s": round(runs_tps),
                      "overhead_s_per_run": round(overhead, 3), "runs": len(runs),
                      "workers": args.workers}))


if __name__ == "__main__":
    main()
