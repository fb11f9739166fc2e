"""Interval coverage: the share of 95% intervals that cover the truth, on synthetic data sets
drawn from known laws with noise on every run (unimodal baselines included), for every
parameter and derived quantity the report shows. Target: each law's lowest coverage in
[0.90, 0.99].

Sections (run all, or one with --only NAME). Every law's section tries a typical design, the
smallest design its identification gate accepts (analysis/identify.py; at two noise levels or
truths) and a design just below the gate, which every trial must refuse:
  chinchilla  Chinchilla law: E, A, B, alpha, beta, the loss at a point inside the data, the
              frontier exponent a (N* ~ C^a; b = 1 - a covers with it) and N*(C) at a compute
              inside the data; two truths and designs, the smallest accepted (4 sizes x 3
              budgets) at two truths and noise levels, and 3x3 and 3x2 below the gate. Runs
              the exponent-interval gate (chinchilla.check_exponent_intervals) on every fit.
  bimodal     bimodal interaction law: C, A, alpha, B, beta (an unbounded bound the fit
              reports counts as covering: it claims nothing there; a parameter neither of
              whose bounds is set is withheld and not counted), the interaction at the
              smallest, middle and largest joint run and at all runs pooled, the competition
              barrier N at the design's tokens per parameter; two truths and designs.
  routed      Clark et al.'s routed law: a, b, c, d, E_start, E_max, the loss at a point inside
              the data (confidence interval for the law and prediction interval for a new
              run), the gain L(N, E) / L(N, 1) of the largest expert count; two truths and
              designs.
  shared_exponent  the shared-exponent test (analysis/shared_exponent.py) on dense and MoE
              families with equal exponents (share rejecting at 5%: its size, target about
              0.05, over 5x --trials sets) and with MoE's alpha larger by 0.05 (its power,
              target most trials), 2 x 40 random runs; on the smallest accepted design (a 4x3
              grid per family, equal exponents) the share not rejecting (1 - size) and the
              intervals of the differences alpha, beta, E the report prints; 3x3 per family
              refused. 199 parametric-bootstrap draws per test, the toolkit's full start grid.
  backtest    95% prediction intervals of the 3 held-out largest-compute runs
              (analysis/backtest.py): the share that covers the observed loss; two truths on
              random designs, a 4x3 training grid (smallest accepted) and a 3x3 one (refused).
  efficiency_leverage  EL = C_dense(L_moe(C)) / C where the MoE law is the dense law at 1.5x
              (text) and 1.0x (dna) the compute: EL at the smallest, median, largest observed
              compute and 10x, 100x beyond, and the verdict rates (info); 5x5 grids, 4x3 grids
              (smallest accepted, two noise levels), 3x3 grids (refused).
  law_free    the law-free EL (runs alone) against the same estimator on noise-free runs: a
              5x5 grid, 8 pairs, 5 pairs (smallest accepted, two noise levels), 4 pairs
              (refused: fewer than leverage.MIN_DISTINCT_DRAWS distinct resamples).
  bank_laws   the joint and granularity laws of the bank fitted alone (law_bank.fit_law): the
              loss at a point inside the data (mean and a new run's prediction interval);
              parameters as information (the report prints none); typical, smallest accepted
              (two noise levels) and refused designs per law.
  bank_leverage  EL from the joint law as the report takes it when the bank ranks that law
              best (analysis.headline.best_law_fits: runs resampled in pairs, dense at one
              expert), 10x and 100x beyond the largest MoE run, for E = 4, 16, 64 on the
              smallest design the joint law's gate accepts.
  law_bank    share of synthetic sets drawn from each law of the MoE bank where the bank names
              that law: its ranking on held-out runs puts it first, or it is the only law the
              runs identify and beats the baseline (max(10, trials // 12) sets per law). Figure
              law_bank_picks_truth (target >= 0.8).
(benchmarks/leverage_sections.py holds the cases of efficiency_leverage, law_free, bank_laws,
bank_leverage and law_bank.)

The fits run exactly as the toolkit runs them, except that the Chinchilla start grid is reduced
to three values per parameter (243 starts; the truths lie well inside its basins) outside the
shared-exponent and backtest sections: the start grid only finds the global optimum, and the
intervals come from refits started at the estimate and the other local optima it found.

A section is a function (trials, bootstrap, workers) -> Section(rows, figures); SECTIONS maps
names to them, so a new section is one function and one entry. Every row is one quantity of
one truth: its coverage over the trials. The last line is one JSON object: each section's
figures (coverage_<law> = the lowest coverage over that law's quantities) and, over every
section with designs: estimate_inside_interval (the lowest share of trials in a case the gate
accepts where every interval is printed, has positive width and holds its estimate; target
1.0), coverage_smallest_design (the lowest coverage on the smallest design each law accepts;
target 0.90-0.99) and refused_below_threshold (the lowest share of trials refused on the
designs just below each law's gate; target 1.0). On an accepted design a trial the post-fit
checks refuse (ill-conditioned optimum, degenerate or runaway bootstrap) counts in `refused
...` and not in the coverages. Every row carries the exact (Clopper-Pearson) 95% interval of
its share over its trials, ci_lower and ci_upper: 1.00 over 120 sets still admits 0.97. Over
every section: coverage_highest (the highest coverage of an accepted quantity) and
outside_target (how many accepted coverages have an interval wholly below 0.90 or above 0.99,
so that a ceiling of 0.99 is judged by what the trials can tell; target 0). Also `trials` and
`bootstrap`.

The defaults (40 trials per case, 200 refits per fit; the cheap sections chinchilla, law_free,
bimodal and routed run MORE_TRIALS times as many, the shared-exponent test's size 5x) ran whole
in 68 minutes on a 2-core Intel Xeon beside other work (2026-12-03; about 50 idle, bank_laws
20-25 of them, bank_leverage about 10); --trials and --bootstrap go further.

Usage: python benchmarks/coverage.py [--trials 40] [--bootstrap 200] [--workers 2] [--only NAME]
       [--quick] [--smallest]
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread per worker: scipy's L-BFGS-B crawls when
    # its threads fight other processes for the cores

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.bimodal import barrier_log_n, fit_bimodal  # noqa: E402
from analysis.chinchilla import Grid, fit_chinchilla, frontier  # noqa: E402
from analysis.identify import NotIdentified, interval_ok  # noqa: E402
from analysis.routed import fit_routed  # noqa: E402
from analysis.synthetic import (  # noqa: E402
    bimodal_runs,
    chinchilla_law,
    chinchilla_points,
    interaction_law,
    routed_law,
    routed_points,
)

GRID = Grid(alpha=(0.0, 1.0, 2.0), beta=(0.0, 1.0, 2.0), e=(-1.0, 0.0, 1.0),
            a=(0.0, 10.0, 25.0), b=(0.0, 10.0, 25.0))
LEVEL = 0.05  # 95% intervals
TARGET = (0.90, 0.99)  # the coverage every accepted quantity should reach

# Per law: a typical design, the smallest design its identification gate accepts (marked
# smallest=True; analysis/identify.py's thresholds come from these) at two noise levels, and
# designs just below the gate (refuse=True: every trial must be refused).
CHINCHILLA_SMALL = {"E": 1.2, "A": 300.0, "B": 200.0, "alpha": 0.35, "beta": 0.30}
CHINCHILLA_CASES = {
    "hoffmann, 60 random runs, 1% noise": dict(
        truth={"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
        design=dict(n=60, n_range=(1e6, 1e9), d_range=(1e8, 1e11)), noise=0.01,
        point=(3e7, 3e9), compute=6 * 3e7 * 3e9),
    "small models, 5x4 grid, 0.5% noise": dict(
        truth={"E": 1.2, "A": 300.0, "B": 200.0, "alpha": 0.35, "beta": 0.30},
        design=dict(sizes=(1e5, 3e5, 1e6, 3e6, 1e7), tokens=(2e6, 6e6, 2e7, 6e7)), noise=0.005,
        point=(1e6, 2e7), compute=6 * 1e6 * 2e7),
    "smallest accepted, 4x3 grid, 1% noise": dict(
        truth=CHINCHILLA_SMALL, design=dict(sizes=(1e5, 3e5, 1e6, 3e6), tokens=(2e6, 6e6, 2e7)),
        noise=0.01, point=(5e5, 6e6), compute=6 * 5e5 * 6e6, smallest=True),
    "smallest accepted, 4x3 grid, Hoffmann truth, 0.5% noise": dict(
        truth={"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28},
        design=dict(sizes=(1e7, 4e7, 1.6e8, 6.4e8), tokens=(1e9, 4e9, 1.6e10)), noise=0.005,
        point=(8e7, 4e9), compute=6 * 8e7 * 4e9, smallest=True),
    "below the gate, 3x3 grid, 1% noise": dict(
        truth=CHINCHILLA_SMALL, design=dict(sizes=(1e5, 3e5, 1e6), tokens=(2e6, 6e6, 2e7)),
        noise=0.01, refuse=True),
    "below the gate, the demo's 3x2 grid, 1% noise": dict(
        truth=CHINCHILLA_SMALL, design=dict(sizes=(1e5, 3e5, 1e6), tokens=(3.2e4, 6.5e4)),
        noise=0.01, refuse=True),
}
UNIMODAL = {"text": {"E": 1.2, "A": 300.0, "B": 200.0, "alpha": 0.35, "beta": 0.30},
            "dna": {"E": 1.3, "A": 150.0, "B": 400.0, "alpha": 0.30, "beta": 0.32}}
BIMODAL_CASES = {
    "C=0.5, 3x3 grid, 0.2% noise": dict(
        truth={"C": 0.5, "A": 40.0, "alpha": 0.3, "B": 5.0, "beta": 0.2},
        design=[(N, D) for N in (1e5, 1e6, 1e7) for D in (4e6, 4e7, 1.2e8)], noise=0.002),
    "C=0.1, 12 runs at D/N 6-60, 0.3% noise": dict(
        truth={"C": 0.1, "A": 20.0, "alpha": 0.35, "B": 30.0, "beta": 0.3},
        design=[(N, 20 * N * f) for N in (1e5, 3e5, 1e6, 3e6) for f in (0.3, 1, 3)], noise=0.003),
    "below the gate, 3x2 grid, 0.2% noise": dict(
        truth={"C": 0.5, "A": 40.0, "alpha": 0.3, "B": 5.0, "beta": 0.2},
        design=[(N, D) for N in (1e5, 1e6, 1e7) for D in (4e6, 4e7)], noise=0.002, refuse=True),
}
BIMODAL_CASES["C=0.5, 3x3 grid, 0.2% noise"]["smallest"] = True
ROUTED_CASES = {
    "Clark-like, 3 sizes x 4 expert counts, 0.3% noise": dict(
        truth={"a": -0.08, "b": -0.05, "c": 0.004, "d": 1.9, "E_start": 1.9, "E_max": 300.0},
        sizes=(1e6, 1e7, 1e8), experts=(1, 4, 16, 64), noise=0.003, point=(3e6, 8),
        smallest=True),
    "strong experts, 4 sizes x 5 expert counts, 0.5% noise": dict(
        truth={"a": -0.07, "b": -0.1, "c": 0.003, "d": 2.2, "E_start": 2.0, "E_max": 150.0},
        sizes=(1e6, 4e6, 1.6e7, 6.4e7), experts=(1, 2, 8, 32, 128), noise=0.005,
        point=(8e6, 16)),
    "below the gate, 3 sizes x 3 expert counts, 0.3% noise": dict(
        truth={"a": -0.08, "b": -0.05, "c": 0.004, "d": 1.9, "E_start": 1.9, "E_max": 300.0},
        sizes=(1e6, 1e7, 1e8), experts=(1, 4, 16), noise=0.003, refuse=True),
    "below the gate, 4 sizes x 2 expert counts, 0.3% noise": dict(
        truth={"a": -0.08, "b": -0.05, "c": 0.004, "d": 1.9, "E_start": 1.9, "E_max": 300.0},
        sizes=(1e6, 3e6, 1e7, 1e8), experts=(1, 16), noise=0.003, refuse=True),
}


@dataclass
class Section:
    rows: list[dict] = field(default_factory=list)  # law, case, quantity, coverage, trials
    figures: dict[str, float] = field(default_factory=dict)  # JSON keys


REFUSED = "refused by the identification gate"
INSIDE = "every interval holds its estimate"


def clopper_pearson(share: float, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval of a coverage measured over `trials` sets: a coverage of 1.00
    over 120 sets still admits 0.97, so a 0.99 ceiling is judged by this, not the share."""
    from scipy.stats import beta

    if not trials or not 0 <= share <= 1:  # NaN, or a figure that is not a share
        return np.nan, np.nan
    k, a = round(share * trials), (1 - level) / 2
    return (float(beta.ppf(a, k, trials - k + 1)) if k > 0 else 0.0,
            float(beta.ppf(1 - a, k + 1, trials - k)) if k < trials else 1.0)


def covers(lower, upper, truth) -> bool:
    return bool(lower <= truth <= upper)


def holds(*triples) -> bool:
    """Every (estimate, lower, upper): printed (not NaN), positive width, estimate inside."""
    return bool(all(interval_ok(e, lo, hi).all() for e, lo, hi in triples))


def gated(fit):
    """fit() or, where the identification gate refuses the data, None."""
    try:
        return fit()
    except NotIdentified:
        return None


def _chinchilla_trial(job) -> dict[str, bool]:
    name, seed, bootstrap = job
    case = CHINCHILLA_CASES[name]
    t, d = case["truth"], case["design"]
    if "n" in d:
        df = chinchilla_points(d["n"], t, case["noise"], seed, d["n_range"], d["d_range"])
    else:
        N, D = (a.ravel() for a in np.meshgrid(d["sizes"], d["tokens"]))
        rng = np.random.default_rng(seed)
        df = pd.DataFrame({"N": N, "D": D, "loss": chinchilla_law(N, D, t)
                           * np.exp(rng.normal(0, case["noise"], len(N)))})
    r = gated(lambda: fit_chinchilla(df, bootstrap=bootstrap, seed=seed, grid=GRID, workers=1))
    if r is None or case.get("refuse"):
        return {REFUSED: r is None}
    ci = r.conf_int(LEVEL)
    out = {REFUSED: False}
    out.update({k: covers(ci.loc[k, "lower"], ci.loc[k, "upper"], t[k]) for k in t})
    N0, D0 = case["point"]
    p = r.predict_interval([N0], [D0], LEVEL)
    out["loss at a point (mean)"] = covers(p["lower"][0], p["upper"][0], chinchilla_law(N0, D0, t))
    co = r.compute_optimal([case["compute"]], LEVEL)
    out[INSIDE] = holds((r.params, ci["lower"], ci["upper"]), (p["loss"], p["lower"], p["upper"]),
                        (co["N_opt"], co["N_opt_lower"], co["N_opt_upper"]),
                        (co.attrs["a"], co.attrs["a_lower"], co.attrs["a_upper"]))
    truth_p = np.array([t[k] for k in ("E", "A", "B", "alpha", "beta")])
    out["exponent a of N*(C)"] = covers(co.attrs["a_lower"], co.attrs["a_upper"],
                                        t["beta"] / (t["alpha"] + t["beta"]))
    n_true = frontier(truth_p, np.array([case["compute"]]))[0][0]
    out["N*(C)"] = covers(co["N_opt_lower"][0], co["N_opt_upper"][0], n_true)
    return out


def _bimodal_trial(job) -> dict[str, bool]:
    name, seed, bootstrap = job
    case = BIMODAL_CASES[name]
    q = case["truth"]
    df = bimodal_runs(UNIMODAL, q, case["design"], case["noise"], seed)
    r = gated(lambda: fit_bimodal(df, {"family": "dense", "pair": "text+dna"}, bootstrap, seed,
                                  GRID, workers=1))
    if r is None or case.get("refuse"):
        return {REFUSED: r is None}
    ci, withheld = r.conf_int(LEVEL), r.withheld(LEVEL)
    out = {REFUSED: False}
    # a withheld parameter (neither bound set) is printed as not identified: no coverage to count
    out.update({k: np.nan if k in withheld else covers(ci.loc[k, "lower"], ci.loc[k, "upper"], q[k])
                for k in q})
    p = r.points.sort_values(["N", "D"]).reset_index(drop=True)
    hit = [covers(lo, hi, interaction_law(n, d, q))
           for n, d, lo, hi in zip(p["N"], p["D"], p["lower"], p["upper"], strict=True)]
    for label, k in (("smallest", 0), ("middle", len(p) // 2), ("largest", len(p) - 1)):
        out[f"interaction at the {label} joint run"] = hit[k]
    out["interaction at every joint run (pooled)"] = float(np.mean(hit))
    ratio = float(np.median([d / n for n, d in case["design"]]))
    b = r.barrier(ratio, LEVEL)
    truth_n = np.exp(barrier_log_n(np.array([[q[k] for k in ("C", "A", "alpha", "B", "beta")]]),
                                   ratio)[0])
    out[f"barrier N at D/N = {ratio:.3g}"] = covers(b["N_lower"], b["N_upper"], truth_n)
    # where the estimate has no sign change in range the report prints "no sign change" and no
    # interval (none can hold an estimate that is not there): the barrier's triple is left out
    barrier = [(b["N"], b["N_lower"], b["N_upper"])] if np.isfinite(b["N"]) else []
    shown = ~r.params.index.isin(withheld)
    out[INSIDE] = holds((r.params[shown], ci["lower"][shown], ci["upper"][shown]),
                        (p["interaction_fitted"], p["lower"], p["upper"]), *barrier)
    out["share with a bound of C unbounded (info)"] = "C" in r.unidentified(LEVEL)
    out["share with C withheld, neither bound set (info)"] = "C" in withheld
    return out


def _routed_trial(job) -> dict[str, bool]:
    name, seed, bootstrap = job
    case = ROUTED_CASES[name]
    t = case["truth"]
    df = routed_points(t, case["sizes"], case["experts"], case["noise"], seed)
    r = gated(lambda: fit_routed(df, {"modality": "text"}, bootstrap, seed))
    if r is None or case.get("refuse"):
        return {REFUSED: r is None}
    ci = r.conf_int(LEVEL)
    out = {REFUSED: False}
    out.update({k: covers(ci.loc[k, "lower"], ci.loc[k, "upper"], t[k]) for k in t})
    triples = [(r.params, ci["lower"], ci["upper"])]
    N0, E0 = case["point"]
    for kind in ("mean", "observation"):
        p = r.predict_interval([N0], [E0], LEVEL, kind)
        truth = routed_law(N0, E0, t)
        if kind == "observation":  # a new run: the law times fresh noise
            truth = truth * np.exp(np.random.default_rng(10_000 + seed).normal(0, case["noise"]))
        out[f"loss at a point ({kind})"] = covers(p["lower"][0], p["upper"][0], truth)
        triples.append((p["loss"], p["lower"], p["upper"]))
    E_max = max(case["experts"])
    g = r.gain([N0], [E_max], LEVEL)
    out[f"gain at E = {E_max}"] = covers(g["lower"][0], g["upper"][0],
                                         routed_law(N0, E_max, t) / routed_law(N0, 1, t))
    out[INSIDE] = holds(*triples, (g["ratio"], g["lower"], g["upper"]))
    return out


def _run(law: str, cases: dict, trial: Callable, trials: int, bootstrap: int,
         workers: int, exclude: tuple[str, ...] = ()) -> Section:
    """Every case's trials (seeds 0..trials-1) over `workers` processes; one row per quantity
    (those in `exclude` are rates, not coverages, and stay out of the figures)."""

    if SMALLEST_ONLY:
        cases = {k: v for k, v in cases.items() if v.get("smallest") or v.get("refuse")}
    jobs = [(name, seed, bootstrap) for name in cases
            for seed in range(trials * cases[name].get("more_trials", 1))]
    results = _map(trial, jobs, workers, law)
    section = Section()
    for name in cases:
        hits = pd.DataFrame([o for (n, _, _), o in zip(jobs, results, strict=True) if n == name])
        for quantity, col in hits.items():
            col = col.dropna()  # a quantity is counted over the trials the gate accepted
            section.rows.append({"law": law, "case": name, "quantity": quantity,
                                 "coverage": float(col.mean()) if len(col) else np.nan,
                                 "trials": len(col), "smallest": bool(cases[name].get("smallest")),
                                 "refuse": bool(cases[name].get("refuse"))})
    accepted = [r for r in section.rows if not r["refuse"] and r["trials"]]
    covering = [r for r in accepted
                if "(info)" not in r["quantity"] and r["quantity"] not in (REFUSED, INSIDE, *exclude)]
    if covering:
        section.figures[f"coverage_{law}"] = round(min(r["coverage"] for r in covering), 4)
        section.figures["coverage_highest"] = round(max(r["coverage"] for r in covering), 4)
        cis = [clopper_pearson(r["coverage"], r["trials"]) for r in covering]
        section.figures["outside_target"] = sum(hi < TARGET[0] or lo > TARGET[1] for lo, hi in cis)
    gate = {"estimate_inside_interval": [r["coverage"] for r in accepted if r["quantity"] == INSIDE],
            "coverage_smallest_design": [r["coverage"] for r in accepted if r["smallest"] and
                                         "(info)" not in r["quantity"]
                                         and r["quantity"] not in (REFUSED, INSIDE, *exclude)],
            "refused_below_threshold": [r["coverage"] for r in section.rows
                                        if r["refuse"] and r["quantity"] == REFUSED]}
    section.figures.update({k: round(min(v), 4) for k, v in gate.items() if v})
    return section


def chinchilla(trials: int, bootstrap: int, workers: int) -> Section:
    return _run("chinchilla", CHINCHILLA_CASES, _chinchilla_trial, trials, bootstrap, workers)


def bimodal(trials: int, bootstrap: int, workers: int) -> Section:
    return _run("bimodal", BIMODAL_CASES, _bimodal_trial, trials, bootstrap, workers)


def routed(trials: int, bootstrap: int, workers: int) -> Section:
    return _run("routed", ROUTED_CASES, _routed_trial, trials, bootstrap, workers)


SHARED_MOE = dict(CHINCHILLA_CASES["hoffmann, 60 random runs, 1% noise"]["truth"], E=1.60, A=350.0)
SHARED_RANDOM = dict(n=40, noise=0.005, n_range=(1e6, 1e9), d_range=(1e8, 1e11))
SMALL_GRID = dict(sizes=(1e7, 4e7, 1.6e8, 6.4e8), tokens=(1e9, 4e9, 1.6e10))
SHARED_CASES = {  # dense: Hoffmann et al.'s law; MoE: a lower start, alpha + d_alpha
    # a rate of 0.05 needs many sets: over 40 it read 0.10 (4 rejections), over the next 200
    # 0.045 (2026-12-03); this case has no bootstrap refits, about a second a set
    "equal exponents (size), 2 x 40 random runs, 0.5% noise": dict(
        d_alpha=0.0, seed0=0, design=SHARED_RANDOM, more_trials=5),
    "MoE alpha + 0.05 (power), 2 x 40 random runs, 0.5% noise": dict(
        d_alpha=0.05, seed0=10_000, design=SHARED_RANDOM),
    "smallest accepted, 4x3 grid per family, equal exponents, 0.5% noise": dict(
        d_alpha=0.0, seed0=20_000, design=dict(SMALL_GRID, noise=0.005), smallest=True),
    "below the gate, 3x3 grid per family, 0.5% noise": dict(
        d_alpha=0.0, seed0=30_000, refuse=True,
        design=dict(sizes=SMALL_GRID["sizes"][:3], tokens=SMALL_GRID["tokens"], noise=0.005)),
}
SHARED_DRAWS = 199
REJECT = "share rejecting equal exponents at 5%"


def _points(truth: dict, design: dict, seed: int) -> pd.DataFrame:
    """Runs at n random (N, D) or on a sizes x tokens grid, lognormal noise."""
    if "n" in design:
        return chinchilla_points(design["n"], truth, design["noise"], seed, design["n_range"],
                                 design["d_range"])
    N, D = (a.ravel() for a in np.meshgrid(design["sizes"], design["tokens"]))
    noise = np.random.default_rng(seed).normal(0, design["noise"], len(N))
    return pd.DataFrame({"N": N, "D": D, "loss": chinchilla_law(N, D, truth) * np.exp(noise)})


def two_families(seed: int, d_alpha: float, design: dict = SHARED_RANDOM) -> pd.DataFrame:
    """Dense and MoE runs of one modality, MoE's alpha larger by d_alpha."""
    dense = _points(CHINCHILLA_CASES["hoffmann, 60 random runs, 1% noise"]["truth"], design, 2 * seed)
    moe = _points(dict(SHARED_MOE, alpha=SHARED_MOE["alpha"] + d_alpha), design, 2 * seed + 1)
    return pd.concat([dense.assign(family="dense"), moe.assign(family="moe")], ignore_index=True)


def _shared_trial(job) -> dict[str, bool]:
    """The test's rejection rate; on the smallest design also the intervals of the differences
    (MoE - dense) of alpha, beta and E that the report prints beside it, which need the
    families' bootstraps."""
    from analysis.shared_exponent import shared_test

    name, seed, bootstrap = job
    case = SHARED_CASES[name]
    runs = two_families(case["seed0"] + seed, case["d_alpha"], case["design"])
    boot = bootstrap if case.get("smallest") else 0
    r = gated(lambda: shared_test(runs, bootstrap=boot, draws=SHARED_DRAWS, level=LEVEL, seed=seed,
                                  offsets=False))
    if r is None or case.get("refuse"):
        return {REFUSED: r is None}
    out = {REFUSED: False, REJECT: r.exponents.p < LEVEL}
    if boot:
        dense = CHINCHILLA_CASES["hoffmann, 60 random runs, 1% noise"]["truth"]
        d = r.differences(LEVEL)
        moe = dict(SHARED_MOE, alpha=SHARED_MOE["alpha"] + case["d_alpha"])
        for k, (name_k, row) in zip(("alpha", "beta", "E"), d.iterrows(), strict=True):
            out[f"difference {name_k}"] = covers(row["lower"], row["upper"], moe[k] - dense[k])
        out[INSIDE] = holds((d["estimate"], d["lower"], d["upper"]))
    return out


def shared_exponent(trials: int, bootstrap: int, workers: int) -> Section:
    """Size and power are not coverages: the share not rejecting a true null (1 - size) is, on
    the smallest design, and joins the gate's keys there."""
    section = _run("shared_exponent", SHARED_CASES, _shared_trial, trials, bootstrap, workers,
                   exclude=(REJECT,))
    rate = {r["case"]: r["coverage"] for r in section.rows if r["quantity"] == REJECT}
    size = [v for k, v in rate.items() if k.startswith("equal")]
    power = [v for k, v in rate.items() if "(power)" in k]
    smallest = [1 - v for k, v in rate.items() if k.startswith("smallest")]
    section.figures.pop("coverage_shared_exponent", None)
    section.figures |= {"shared_exponent_size": round(size[0], 4)} if size else {}
    section.figures |= {"shared_exponent_power": round(power[0], 4)} if power else {}
    if smallest:
        section.rows.append({"law": "shared_exponent", "case": "smallest accepted (from the row "
                             f"'{REJECT}')", "quantity": "not rejecting true equal exponents "
                             "(1 - size)", "coverage": smallest[0], "trials": trials,
                             "smallest": True, "refuse": False})
        low = min([smallest[0]] + [r["coverage"] for r in section.rows if r["smallest"]
                                   and r["quantity"].startswith("difference")])
        section.figures["coverage_smallest_design"] = round(
            min(low, section.figures.get("coverage_smallest_design", 1.0)), 4)
    return section


BACKTEST_CASES = {  # (truth, design) pairs; seeds interleave so 50 trials each = 100 data sets
    "hoffmann, 40 random runs, 1% noise, hold out 3": dict(
        truth=CHINCHILLA_CASES["hoffmann, 60 random runs, 1% noise"]["truth"],
        design=dict(n=40, noise=0.01, n_range=(1e6, 1e9), d_range=(1e8, 1e11)), offset=0),
    "small models, 30 random runs, 0.5% noise, hold out 3": dict(
        truth=CHINCHILLA_CASES["small models, 5x4 grid, 0.5% noise"]["truth"],
        design=dict(n=30, noise=0.005, n_range=(1e5, 3e7), d_range=(1e6, 1e9)), offset=1),
    # a 4x3 grid trains (the smallest the Chinchilla gate accepts), three larger runs are held out
    "smallest accepted: 4x3 grid trains, 3 larger runs held out, 1% noise": dict(
        truth=CHINCHILLA_SMALL, design=dict(sizes=(1e5, 3e5, 1e6, 3e6), tokens=(2e6, 6e6, 2e7),
                                            held=((1e7, 2e7), (3e6, 6e7), (1e7, 6e7)), noise=0.01),
        offset=2, smallest=True),
    "below the gate: 3x3 grid trains, 3 larger runs held out, 1% noise": dict(
        truth=CHINCHILLA_SMALL, design=dict(sizes=(1e5, 3e5, 1e6), tokens=(2e6, 6e6, 2e7),
                                            held=((3e6, 2e7), (1e6, 6e7), (3e6, 6e7)), noise=0.01),
        offset=3, refuse=True),
}
BACKTEST_COVERED = "held-out runs inside their 95% prediction interval"


def _backtest_trial(job) -> dict[str, float]:
    from analysis.backtest import backtest
    from analysis.errors import AnalysisError

    name, seed, bootstrap = job
    case = BACKTEST_CASES[name]
    d = case["design"]
    data_seed = 50_000 + 4 * seed + case["offset"]
    df = _points(case["truth"], d, data_seed)
    if "held" in d:
        N, D = (np.array(v, float) for v in zip(*d["held"], strict=True))
        noise = np.random.default_rng(data_seed + 1).normal(0, d["noise"], len(N))
        df = pd.concat([df, pd.DataFrame({"N": N, "D": D, "loss": chinchilla_law(N, D, case["truth"])
                                          * np.exp(noise)})], ignore_index=True)
    df = df.assign(family="dense", modality="text", run=[f"r{i}" for i in range(len(df))],
                   C=6 * df["N"] * df["D"])
    try:
        t = backtest(df, 3, bootstrap=bootstrap, alpha=LEVEL, seed=seed)
    except AnalysisError:  # the training runs do not identify the law (NotIdentified inside)
        t = None
    if t is None or case.get("refuse"):
        return {REFUSED: t is None}
    return {REFUSED: False, BACKTEST_COVERED: float(t["covered"].mean()),
            INSIDE: holds((t["predicted"], t["lower"], t["upper"])),
            "median compute of held-out over largest training run (info)": float(t["beyond"].median())}


def backtest_section(trials: int, bootstrap: int, workers: int) -> Section:
    section = _run("backtest", BACKTEST_CASES, _backtest_trial, trials, bootstrap, workers)
    hits = [r["coverage"] for r in section.rows if r["quantity"] == BACKTEST_COVERED]
    section.figures["backtest_coverage"] = round(float(np.mean(hits)), 4)
    return section


def efficiency_leverage(trials: int, bootstrap: int, workers: int) -> Section:
    from leverage_sections import LEVERAGE_CASES, _leverage_trial

    return _run("efficiency_leverage", LEVERAGE_CASES, _leverage_trial, trials, bootstrap, workers)


def law_free(trials: int, bootstrap: int, workers: int) -> Section:
    from leverage_sections import LAW_FREE_CASES, _law_free_trial

    return _run("law_free", LAW_FREE_CASES, _law_free_trial, trials, bootstrap, workers)


def bank_laws(trials: int, bootstrap: int, workers: int) -> Section:
    from leverage_sections import BANK_CASES, _bank_fit_trial

    return _run("bank_laws", BANK_CASES, _bank_fit_trial, trials, bootstrap, workers)


def bank_leverage(trials: int, bootstrap: int, workers: int) -> Section:
    from leverage_sections import BANK_LEVERAGE_CASES, _bank_leverage_trial

    return _run("bank_leverage", BANK_LEVERAGE_CASES, _bank_leverage_trial, trials, bootstrap, workers)


def law_bank(trials: int, bootstrap: int, workers: int) -> Section:
    from leverage_sections import law_bank as run

    return Section(*run(max(10, trials // 12), bootstrap, workers, _map))


def _map(fn: Callable, jobs: list, workers: int, desc: str) -> list:
    """fn over jobs in `workers` forked processes (in order), with a progress bar."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit="fit", leave=False, disable=None)
    out = []
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            for o in pool.imap(fn, jobs, chunksize=2):
                out.append(o)
                bar.update()
    else:
        for job in jobs:
            out.append(fn(job))
            bar.update()
    bar.close()
    return out


QUICK = (8, 100)  # --quick: trials per case, bootstrap refits per fit
SMALLEST_ONLY = False  # --smallest: only the smallest accepted and the refused designs
# keys several sections report, and how main() combines them
COMBINE = {"estimate_inside_interval": min, "coverage_smallest_design": min,
           "refused_below_threshold": min, "coverage_highest": max,
           "outside_target": lambda a, b: a + b}
# sections cheap enough to run more sets than --trials: at 40 sets one set moves a coverage by
# 0.025, and on 2026-12-03 Chinchilla's 5 x 4 grid read 0.85 over 40 sets but 0.92-0.97 over
# 120; routed's loss at a point on its typical design read 0.89 over 200 sets and 0.946 over 800
MORE_TRIALS = {"chinchilla": 3, "law_free": 3, "routed": 20, "bimodal": 3}
SECTIONS: dict[str, Callable[[int, int, int], Section]] = {
    "chinchilla": chinchilla, "law_free": law_free, "backtest": backtest_section,
    "efficiency_leverage": efficiency_leverage, "bank_laws": bank_laws,
    "shared_exponent": shared_exponent, "routed": routed, "bimodal": bimodal, "law_bank": law_bank,
    "bank_leverage": bank_leverage}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=40,
                    help="data sets per truth and design (times MORE_TRIALS for cheap sections)")
    ap.add_argument("--bootstrap", type=int, default=200, help="bootstrap refits per fit")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", choices=sorted(SECTIONS), action="append",
                    help="run only this section (repeatable)")
    ap.add_argument("--quick", action="store_true",
                    help=f"{QUICK[0]} trials and {QUICK[1]} bootstrap refits: a smoke run whose "
                    "coverages are too few trials to judge a target by")
    ap.add_argument("--smallest", action="store_true",
                    help="every section with designs: only the smallest accepted designs and "
                    "those just below the gate")
    args = ap.parse_args()
    global SMALLEST_ONLY
    SMALLEST_ONLY = args.smallest
    trials, bootstrap = QUICK if args.quick else (args.trials, args.bootstrap)
    figures: dict[str, float] = {}
    for name in args.only or SECTIONS:
        start = time.perf_counter()
        section = SECTIONS[name](trials * MORE_TRIALS.get(name, 1), bootstrap, args.workers)
        for row in section.rows:  # the 95% interval of each share, from its trials
            row["ci_lower"], row["ci_upper"] = (
                (np.nan, np.nan) if "(info)" in row["quantity"]
                else clopper_pearson(row["coverage"], row["trials"]))
        table = pd.DataFrame(section.rows)
        print(f"\n{name}: share of {100 * (1 - LEVEL):g}% intervals covering the truth "
              f"({time.perf_counter() - start:.0f} s)")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        for key, value in section.figures.items():  # the gate's keys: lowest over sections
            if key in figures and key in COMBINE:
                value = COMBINE[key](value, figures[key])
            figures[key] = value
    figures["trials"], figures["bootstrap"] = trials, bootstrap
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
