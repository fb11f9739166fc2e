"""Coverage sections for efficiency leverage and the law bank (benchmarks/coverage.py runs them;
this file also runs them alone).

efficiency_leverage: synthetic sets where each modality's MoE law is the dense law with its
    compute multiplied by a known factor (1.5 on text, 1.0 on dna; 5 sizes x 5 token counts,
    paired runs, 0.5% noise): the share of 95% intervals of EL that cover the factor at the
    smallest, median and largest observed compute and 10x and 100x beyond, and the verdict
    rates (info). Figure: coverage_efficiency_leverage = the lowest of those coverages.
law_bank: synthetic sets drawn from each law of the bank (analysis/synthetic_moe.bank_runs);
    the share where the ranking (held-out largest-compute runs, one-SE rule) puts the true law
    first. Figure: law_bank_picks_truth = that share over all truths.

Usage: python benchmarks/leverage_sections.py [--trials 100] [--bootstrap 200] [--workers 2]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # scipy's L-BFGS-B crawls when BLAS threads fight for cores

import argparse  # noqa: E402
import json  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.chinchilla import Grid  # noqa: E402
from analysis.law_bank import BANK, best_law, rank_laws  # noqa: E402
from analysis.leverage import MORE, UNRESOLVED, leverage_table  # noqa: E402
from analysis.synthetic_moe import bank_runs, leverage_runs  # noqa: E402

FACTORS = {"text": 1.5, "dna": 1.0}
GRID = Grid(alpha=(0.0, 1.0, 2.0), beta=(0.0, 1.0, 2.0), e=(-1.0, 0.0, 1.0),
            a=(0.0, 10.0, 25.0), b=(0.0, 10.0, 25.0))


def _map(fn, jobs: list, workers: int, desc: str) -> list:
    from tqdm import tqdm

    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            return list(tqdm(pool.imap(fn, jobs), total=len(jobs), desc=desc, leave=False))
    return [fn(j) for j in tqdm(jobs, desc=desc, leave=False)]


def _leverage_trial(job) -> list[dict]:
    seed, bootstrap = job
    df = leverage_runs(FACTORS, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table, _, _ = leverage_table(df, bootstrap, seed, grid=GRID)
    return [{"modality": r.modality, "where": r.where, "EL": r.EL,
             "covered": r.lower <= FACTORS[r.modality] <= r.upper, "verdict": r.verdict}
            for r in table.itertuples()]


def efficiency_leverage(trials: int, bootstrap: int, workers: int) -> tuple[list[dict], dict]:
    """(rows: law, case, quantity, coverage, trials; figures)."""
    out = pd.DataFrame([r for rs in _map(_leverage_trial, [(s, bootstrap) for s in range(trials)],
                                         workers, "leverage") for r in rs])
    rows = []
    for (m, where), g in out.groupby(["modality", "where"], sort=False):
        case = f"{m}: EL = {FACTORS[m]:g}"
        rows.append({"law": "efficiency leverage", "case": case, "quantity": f"EL at {where}",
                     "coverage": float(g["covered"].mean()), "trials": len(g)})
        if where == "median observed":
            expect = MORE if FACTORS[m] > 1 else UNRESOLVED
            rows.append({"law": "efficiency leverage", "case": case,
                         "quantity": f"verdict '{expect}' at {where} (info)",
                         "coverage": float((g["verdict"] == expect).mean()), "trials": len(g)})
            rows.append({"law": "efficiency leverage", "case": case,
                         "quantity": f"median EL estimate at {where} (info)",
                         "coverage": float(g["EL"].median()), "trials": len(g)})
    reported = [r["coverage"] for r in rows if "(info)" not in r["quantity"]]
    return rows, {"coverage_efficiency_leverage": round(min(reported), 4)}


def _bank_trial(job) -> str:
    truth, seed, bootstrap = job
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table, _, _ = rank_laws(bank_runs(truth, seed=seed), "text", bootstrap=bootstrap, seed=seed)
    return str(best_law(table))


def law_bank(trials: int, bootstrap: int, workers: int) -> tuple[list[dict], dict]:
    jobs = [(truth, 1000 + s, min(bootstrap, 50)) for truth in BANK for s in range(trials)]
    firsts = _map(_bank_trial, jobs, workers, "law bank")
    rows, hits = [], []
    for truth in BANK:
        won = [f == truth for (t, _, _), f in zip(jobs, firsts, strict=True) if t == truth]
        hits += won
        rows.append({"law": "law bank", "case": f"data from the {truth} law",
                     "quantity": "true law ranked first", "coverage": float(np.mean(won)),
                     "trials": len(won)})
    return rows, {"law_bank_picks_truth": round(float(np.mean(hits)), 4)}


SECTIONS = {"efficiency_leverage": efficiency_leverage, "law_bank": law_bank}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--bank-trials", type=int, default=10, help="synthetic sets per bank law")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", choices=sorted(SECTIONS))
    args = ap.parse_args()
    rows, figures = [], {}
    for name, fn in SECTIONS.items():
        if args.only and name != args.only:
            continue
        trials = args.bank_trials if name == "law_bank" else args.trials
        r, f = fn(trials, args.bootstrap, args.workers)
        rows += r
        figures |= f
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
