"""Scaling-law fit speed: a full-grid Chinchilla fit of 250 points (target <= 10 s) and 1000
bootstrap refits (target <= 60 s), on synthetic points from Hoffmann et al.'s published law.

Both times are absolute on purpose (the issue's targets are in seconds); the table also shows
the time of one objective evaluation over all grid starts, to read them against this machine.

Usage: python benchmarks/fit.py [--points 250] [--bootstrap 1000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from analysis.chinchilla import Grid, fit_chinchilla, objective
from analysis.synthetic import HOFFMANN, chinchilla_points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=250)
    ap.add_argument("--bootstrap", type=int, default=1000)
    args = ap.parse_args()
    df = chinchilla_points(args.points, noise=0.01, seed=0)
    starts = Grid().starts()
    logs = [np.log(df[c].to_numpy())[None] for c in ("N", "D", "loss")]
    t = time.perf_counter()
    objective(starts, *logs)
    eval_s = time.perf_counter() - t

    t = time.perf_counter()
    point = fit_chinchilla(df, bootstrap=0)
    grid_s = time.perf_counter() - t
    t = time.perf_counter()
    full = fit_chinchilla(df, bootstrap=args.bootstrap)
    boot_s = time.perf_counter() - t - grid_s  # the refits alone

    print(f"Chinchilla fit, {args.points} points, {len(starts)} grid starts, "
          f"{args.bootstrap} bootstrap refits")
    print(f"{'measure':38s} {'seconds':>9s}  target")
    print(f"{'one objective eval, all starts':38s} {eval_s:9.3f}")
    print(f"{'full-grid fit':38s} {grid_s:9.2f}  <= 10")
    print(f"{f'{args.bootstrap} bootstrap refits':38s} {boot_s:9.2f}  <= 60")
    print(f"\n{'param':8s} {'truth':>9s} {'estimate':>10s} {'95% interval':>24s}")
    ci = full.conf_int()
    for k, v in point.params.items():
        print(f"{k:8s} {HOFFMANN[k]:9.4g} {v:10.4g}   [{ci.loc[k, 'lower']:9.4g}, "
              f"{ci.loc[k, 'upper']:9.4g}]")
    # the key names 1000 refits: other --bootstrap counts scale to it (refits cost alike)
    print(json.dumps({"grid_fit_s": round(grid_s, 3),
                      "bootstrap_1000_s": (round(boot_s * 1000 / args.bootstrap, 3)
                                           if args.bootstrap else None),
                      "bootstrap_refits": args.bootstrap, "objective_eval_s": round(eval_s, 4)}))


if __name__ == "__main__":
    main()
