"""Calibration of the shared-exponent test and of backtest prediction intervals, on synthetic
data from known Chinchilla laws (the experiments of issue 12, to join benchmarks/coverage.py).

- shared_exponent_size: rejection rate at 5% of "exponents shared" when dense and MoE have
  equal alpha, beta (different E and A); target about 0.05.
- shared_exponent_power: its rejection rate when alpha differs by 0.05; target most trials.
- backtest_coverage: share of held-out largest-compute runs inside their 95% prediction
  intervals; target about 0.95.

Usage: python benchmarks/coverage_analysis12.py [--trials 100] [--parts shared,backtest]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # scipy's L-BFGS-B slows down badly with BLAS threads
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

from analysis.synthetic import CHINCHILLA, chinchilla_points  # noqa: E402

DENSE = CHINCHILLA
MOE = dict(CHINCHILLA, E=1.60, A=350.0)  # a lower start, the same exponents
DESIGN = {"n": 40, "noise": 0.005, "n_range": (1e6, 1e9), "d_range": (1e8, 1e11)}


def two_families(seed: int, d_alpha: float = 0.0, design: dict = DESIGN) -> pd.DataFrame:
    """Dense and MoE runs, MoE's alpha larger by d_alpha."""
    d = chinchilla_points(design["n"], DENSE, design["noise"], 2 * seed, design["n_range"],
                          design["d_range"])
    m = chinchilla_points(design["n"], dict(MOE, alpha=MOE["alpha"] + d_alpha), design["noise"],
                          2 * seed + 1, design["n_range"], design["d_range"])
    return pd.concat([d.assign(family="dense"), m.assign(family="moe")], ignore_index=True)


def shared_exponent_rates(trials: int, d_alpha: float, draws: int = 199, level: float = 0.05,
                          seed0: int = 0, verbose: bool = False, first: int = 0) -> dict:
    """Share of trials (numbers first, ..., first + trials - 1) whose exponent test rejects at
    `level`, and the p-values."""
    from analysis.shared_exponent import shared_test

    ps = []
    for s in tqdm(range(first, first + trials), desc=f"shared exponents, d_alpha={d_alpha:g}",
                  leave=False):
        r = shared_test(two_families(seed0 + s, d_alpha), bootstrap=0, draws=draws, level=level,
                        seed=s, offsets=False)
        ps.append(r.exponents.p)
        if verbose:
            tqdm.write(f"d_alpha={d_alpha:g} trial {s}: p = {ps[-1]:.4f}")
    ps = np.array(ps)
    return {"rate": float((ps < level).mean()), "p": ps.tolist()}


BACKTEST_TRUTHS = [  # (truth, design): Hoffmann et al.'s law, and a smaller-scale one
    (CHINCHILLA, {"n": 40, "noise": 0.01, "n_range": (1e6, 1e9), "d_range": (1e8, 1e11)}),
    ({"E": 1.2, "A": 300.0, "B": 200.0, "alpha": 0.35, "beta": 0.30},
     {"n": 30, "noise": 0.005, "n_range": (1e5, 3e7), "d_range": (1e6, 1e9)}),
]


def backtest_rates(trials: int, holdout: int = 3, bootstrap: int = 200, alpha: float = 0.05,
                   verbose: bool = False) -> dict:
    """Share of held-out largest-compute runs inside their 1 - alpha prediction intervals, over
    trials alternating between the two truths; also by how far beyond the training runs."""
    from analysis.backtest import backtest

    tables = []
    for s in tqdm(range(trials), desc="backtest", leave=False):
        truth, design = BACKTEST_TRUTHS[s % len(BACKTEST_TRUTHS)]
        df = chinchilla_points(design["n"], truth, design["noise"], 50_000 + s, design["n_range"],
                               design["d_range"])
        df = df.assign(family="dense", modality="text", run=[f"r{i}" for i in range(len(df))],
                       C=6 * df["N"] * df["D"])
        t = backtest(df, holdout, bootstrap=bootstrap, alpha=alpha, seed=s).assign(trial=s)
        tables.append(t)
        if verbose:
            tqdm.write(f"backtest trial {s}: covered {int(t['covered'].sum())} of {len(t)}")
    t = pd.concat(tables, ignore_index=True)
    return {"rate": float(t["covered"].mean()), "points": len(t),
            "median_beyond": float(t["beyond"].median()), "max_beyond": float(t["beyond"].max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--parts", default="size,power,backtest")
    ap.add_argument("--out", help="also write the results as JSON here")
    ap.add_argument("--verbose", action="store_true", help="print every trial's result")
    ap.add_argument("--first", type=int, default=0,
                    help="number of the first shared-exponent trial (to split a run over processes)")
    args = ap.parse_args()
    parts = args.parts.split(",")
    out, rows = {}, []
    t = time.perf_counter()
    if "size" in parts:
        size = shared_exponent_rates(args.trials, 0.0, verbose=args.verbose, first=args.first)
        out["shared_exponent_size"] = size["rate"]
        rows.append(("shared_exponent_size", size["rate"], "about 0.05", args.trials))
    if "power" in parts:
        power = shared_exponent_rates(args.trials, 0.05, seed0=10_000, verbose=args.verbose,
                                      first=args.first)
        out["shared_exponent_power"] = power["rate"]
        rows.append(("shared_exponent_power", power["rate"], ">= 0.5 (most trials)", args.trials))
    if "backtest" in parts:
        bt = backtest_rates(args.trials, verbose=args.verbose)
        out["backtest_coverage"] = bt["rate"]
        rows.append(("backtest_coverage", bt["rate"], "about 0.95", args.trials))
        print(f"backtest: {bt['points']} held-out runs, compute {bt['median_beyond']:.3g}x (median) "
              f"to {bt['max_beyond']:.3g}x (max) the largest training run")
    print(f"{'quantity':26s} {'measured':>9s}  {'target':22s} {'data sets':>9s}")
    for name, v, target, n in rows:
        print(f"{name:26s} {v:9.3f}  {target:22s} {n:9d}")
    print(f"({time.perf_counter() - t:.0f} s)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
