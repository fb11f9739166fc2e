"""Coverage cases for efficiency leverage and the law bank; benchmarks/coverage.py runs them
through its `_run`, as it runs every law (python benchmarks/coverage.py --only efficiency_leverage).

efficiency_leverage: synthetic sets where each modality's MoE law is the dense law with its
    compute multiplied by a known factor (1.5 on text, 1.0 on dna; paired runs): the share of
    95% intervals of EL that cover the factor at the smallest, median and largest observed
    compute and 10x and 100x beyond, and the verdict rates (info); a typical 5 x 5 grid per
    family, the smallest grid the Chinchilla gate accepts (4 x 3) at two noise levels, and a
    3 x 3 grid that every trial must refuse.
law_free: the law-free EL (runs alone, analysis.leverage.law_free_leverage) on such sets; its
    truth is the same estimator on the noise-free runs (Pareto fronts of a finite design, not
    the factor). The 5 x 5 grid, and paired runs along a line of growing compute: 8 pairs,
    5 pairs (the fewest whose resamples reach leverage.MIN_DISTINCT_DRAWS distinct values: the
    smallest accepted, two noise levels) and 4 pairs (at most 35 distinct resamples: refused).
law_bank: synthetic sets drawn from each law of the bank (analysis/synthetic_moe.bank_runs);
    the share where the bank names the true law: ranks it first (held-out largest-compute runs,
    one-SE rule) or fits only it and says so. Figure: law_bank_picks_truth = that share over all
    truths.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from analysis.chinchilla import Grid
from analysis.identify import interval_ok
from analysis.law_bank import BANK, best_law, rank_laws
from analysis.leverage import MORE, UNRESOLVED, law_free_leverage, law_free_ratio, leverage_table
from analysis.synthetic_moe import bank_runs, leverage_runs

FACTORS = {"text": 1.5, "dna": 1.0}
GRID = Grid(alpha=(0.0, 1.0, 2.0), beta=(0.0, 1.0, 2.0), e=(-1.0, 0.0, 1.0),
            a=(0.0, 10.0, 25.0), b=(0.0, 10.0, 25.0))
REFUSED = "refused by the identification gate"
INSIDE = "every interval holds its estimate"
SIZES, TOKENS = (1e6, 3e6, 1e7, 3e7, 1e8), (2e7, 6e7, 2e8, 6e8, 2e9)
LEVERAGE_CASES = {
    "typical: 5x5 grid per family, 0.5% noise": dict(sizes=SIZES, tokens=TOKENS, noise=0.005),
    "smallest accepted: 4x3 grid per family, 0.5% noise": dict(
        sizes=SIZES[:4], tokens=TOKENS[:3], noise=0.005, smallest=True),
    "smallest accepted: 4x3 grid per family, 1% noise": dict(
        sizes=SIZES[:4], tokens=TOKENS[:3], noise=0.01, smallest=True),
    "below the gate: 3x3 grid per family, 0.5% noise": dict(
        sizes=SIZES[:3], tokens=TOKENS[:3], noise=0.005, refuse=True),
}


def _leverage_trial(job) -> dict[str, bool]:
    name, seed, bootstrap = job
    case = LEVERAGE_CASES[name]
    df = leverage_runs(FACTORS, seed=seed, noise=case["noise"], sizes=case["sizes"],
                       tokens=case["tokens"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table, fits, _ = leverage_table(df, bootstrap, seed, grid=GRID)
    if len(fits) < len(FACTORS) or case.get("refuse"):  # a law the runs do not identify
        return {REFUSED: len(fits) < len(FACTORS)}
    out = {REFUSED: False}
    for r in table.itertuples():
        out[f"{r.modality} (EL = {FACTORS[r.modality]:g}): EL at {r.where}"] = bool(
            r.lower <= FACTORS[r.modality] <= r.upper)
        if r.where == "median observed":
            expect = MORE if FACTORS[r.modality] > 1 else UNRESOLVED
            out[f"{r.modality}: verdict '{expect}' at {r.where} (info)"] = r.verdict == expect
    out[INSIDE] = bool(interval_ok(table["EL"], table["lower"], table["upper"]).all())
    return out


def _diagonal(pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Sizes and token budgets of `pairs` runs along D = 20 N, each twice the last."""
    return 1e6 * 2.0 ** np.arange(pairs), 2e7 * 2.0 ** np.arange(pairs)


LAW_FREE_CASES = {
    "typical: 5x5 grid per family, 0.5% noise": dict(sizes=SIZES, tokens=TOKENS, noise=0.005),
    "typical: 8 pairs along D = 20 N, 0.5% noise": dict(line=8, noise=0.005),
    "smallest accepted: 5 pairs along D = 20 N, 0.5% noise": dict(line=5, noise=0.005, smallest=True),
    "smallest accepted: 5 pairs along D = 20 N, 1% noise": dict(line=5, noise=0.01, smallest=True),
    "below the threshold: 4 pairs along D = 20 N, 0.5% noise": dict(line=4, noise=0.005, refuse=True),
}


def law_free_runs(case: dict, seed: int, noise: float | None = None) -> pd.DataFrame:
    """Dense and MoE runs (text, EL = 1.5) of one law-free case; noise defaults to the case's."""
    noise = case["noise"] if noise is None else noise
    if "line" not in case:
        return leverage_runs({"text": FACTORS["text"]}, seed=seed, noise=noise, sizes=case["sizes"],
                             tokens=case["tokens"])
    sizes, tokens = _diagonal(case["line"])
    df = leverage_runs({"text": FACTORS["text"]}, seed=seed, noise=noise, sizes=sizes, tokens=tokens)
    return df[np.isclose(df["D"] / df["N"], 20.0)].reset_index(drop=True)


def _law_free_trial(job) -> dict[str, bool]:
    name, seed, bootstrap = job
    case = LAW_FREE_CASES[name]
    clean = law_free_runs(case, 0, noise=0.0)
    d, m = clean[clean["family"] == "dense"], clean[clean["family"] == "moe"]
    truth = law_free_ratio(d["C"], d["loss"], m["C"], m["loss"])[0]
    r = law_free_leverage(None, law_free_runs(case, seed), bootstrap, seed,
                          job=("text", "moe learned E=8"))
    refused = not np.isfinite(r["lower"])
    if refused or case.get("refuse"):
        return {REFUSED: refused}
    return {REFUSED: False, f"law-free EL (truth {truth:.3g} on noise-free runs)":
            bool(r["lower"] <= truth <= r["upper"]),
            INSIDE: bool(interval_ok(r["EL (runs)"], r["lower"], r["upper"]))}


def bank_trial(job) -> str:
    """The law the bank names: ranked first, or the only law it could fit where that law beats
    the baseline (the bank then says so instead of ranking: on the chinchilla law's data, dense
    and two expert counts, the joint law lacks a fourth level and the routed law, fitted per
    token count, too few runs at each)."""
    truth, seed, bootstrap = job
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table, _, _ = rank_laws(bank_runs(truth, seed=seed), "text", bootstrap=bootstrap, seed=seed)
    only = table[(table["rank"] == "only law fitted") & table["beats baseline"].astype(bool)]
    return str(only["law"].iloc[0]) if len(only) else str(best_law(table))


def law_bank(trials: int, bootstrap: int, workers: int, pool_map) -> tuple[list[dict], dict]:
    """The share of sets from each bank law where the bank names that law (bank_trial). On the
    routed law's data the joint law, which nests it (E, B -> 0 give Clark's form at every D)
    and is fitted to every token count at once, predicts the held-out runs better than the
    routed law fitted per token count; pool_map(fn, jobs, workers, desc) runs the trials."""
    jobs = [(truth, 1000 + s, min(bootstrap, 50)) for truth in BANK for s in range(trials)]
    firsts = pool_map(bank_trial, jobs, workers, "law bank")
    rows, hits = [], []
    for truth in BANK:
        won = [f == truth for (t, _, _), f in zip(jobs, firsts, strict=True) if t == truth]
        hits += won
        rows.append({"law": "law bank", "case": f"data from the {truth} law",
                     "quantity": "true law named (ranked first or the only law fitted)",
                     "coverage": float(np.mean(won)),
                     "trials": len(won)})
    return rows, {"law_bank_picks_truth": round(float(np.mean(hits)), 4)}


# Bank laws fitted alone (analysis.law_bank.fit_law): a typical 5 x 5 grid per expert count or
# granularity, the smallest grid the gate accepts (joint: 4 x 3 at four levels of E, dense
# included, law_bank.JOINT_EXPERT_LEVELS and identify.MIN_RESID_DF["joint"]; granularity: 3 x 3
# at three of G), and designs just below it (refused). keep: the expert counts (joint, dense = 0)
# or granularities kept.
BANK_CASES = {
    "joint: typical, 5x5 grid x dense, E = 4, 16, 64, 0.5% noise": dict(
        law="joint", sizes=SIZES, tokens=TOKENS, keep=(0, 4, 16, 64), noise=0.005),
    "joint: smallest accepted, 4x3 grid x dense, E = 4, 16, 64, 0.5% noise": dict(
        law="joint", sizes=SIZES[:4], tokens=TOKENS[:3], keep=(0, 4, 16, 64), noise=0.005,
        smallest=True),
    "joint: smallest accepted, 4x3 grid x dense, E = 4, 16, 64, 1% noise": dict(
        law="joint", sizes=SIZES[:4], tokens=TOKENS[:3], keep=(0, 4, 16, 64), noise=0.01,
        smallest=True),
    "joint: below the gate, 3x3 grid x dense, E = 4, 16, 64, 0.5% noise": dict(
        law="joint", sizes=SIZES[:3], tokens=TOKENS[:3], keep=(0, 4, 16, 64), noise=0.005,
        refuse=True),
    "joint: below the gate, 4x3 grid x dense, E = 4, 16, 0.5% noise": dict(
        law="joint", sizes=SIZES[:4], tokens=TOKENS[:3], keep=(0, 4, 16), noise=0.005, refuse=True),
    "granularity: typical, 5x5 grid x G = 1, 2, 4, 8, 0.5% noise": dict(
        law="granularity", sizes=SIZES, tokens=TOKENS, keep=(1, 2, 4, 8), noise=0.005),
    "granularity: smallest accepted, 3x3 grid x G = 1, 2, 4, 0.5% noise": dict(
        law="granularity", sizes=SIZES[:3], tokens=TOKENS[:3], keep=(1, 2, 4), noise=0.005,
        smallest=True),
    "granularity: smallest accepted, 3x3 grid x G = 1, 2, 4, 1% noise": dict(
        law="granularity", sizes=SIZES[:3], tokens=TOKENS[:3], keep=(1, 2, 4), noise=0.01,
        smallest=True),
    "granularity: below the gate, 3x3 grid x G = 1, 4, 0.5% noise": dict(
        law="granularity", sizes=SIZES[:3], tokens=TOKENS[:3], keep=(1, 4), noise=0.005,
        refuse=True),
}


def _bank_point(law: str, N: float, D: float) -> pd.DataFrame:
    """One MoE run (16 experts; granularity 2 for the granularity law) at N, D."""
    from analysis.synthetic_moe import rows

    extra = {"granularity": 2.0} if law == "granularity" else {}
    return rows("moe", [N], [D], [1.0], "text", n_experts=16 if law == "joint" else 8,
                router="learned", **extra)


def _bank_fit_trial(job) -> dict[str, bool]:
    from analysis.identify import NotIdentified
    from analysis.law_bank import FORMULAS, fit_law, predict_natural
    from analysis.prediction import prediction_interval
    from analysis.synthetic_moe import GRANULARITY_TRUTH, JOINT_TRUTH

    name, seed, bootstrap = job
    case = BANK_CASES[name]
    formula = FORMULAS[case["law"]]
    df = bank_runs(case["law"], seed=seed, noise=case["noise"], sizes=case["sizes"],
                   tokens=case["tokens"])
    col = "n_experts" if case["law"] == "joint" else "granularity"
    df = df[df[col].isin(case["keep"])] if case["law"] == "joint" else \
        df[(df["family"] == "moe") & df[col].isin(case["keep"])]
    try:
        with warnings.catch_warnings():  # overflow in runaway starts, left behind by the fit
            warnings.simplefilter("ignore")
            r = fit_law(formula, df, {"modality": "text"}, bootstrap, seed)
    except NotIdentified:
        r = None
    if r is None or case.get("refuse"):
        return {REFUSED: r is None}
    truth = JOINT_TRUTH if case["law"] == "joint" else GRANULARITY_TRUTH
    p_true = np.array([truth[k] for k in formula.names])
    # a point inside the data: the geometric middle of its sizes and budgets
    N0, D0 = (float(np.exp(np.mean(np.log(case[k])))) for k in ("sizes", "tokens"))
    point = _bank_point(case["law"], N0, D0)
    loss = float(predict_natural(formula, p_true, point)[0])
    new = loss * float(np.exp(np.random.default_rng(10_000 + seed).normal(0, case["noise"])))
    pi = prediction_interval(r, formula.law(), r.rows, point, 0.05, seed).iloc[0]
    ci = r.conf_int(0.05)
    out = {REFUSED: False,
           "loss at a point (mean)": bool(pi["mean_lower"] <= loss <= pi["mean_upper"]),
           "loss of a new run at a point (prediction)": bool(pi["lower"] <= new <= pi["upper"]),
           INSIDE: bool(interval_ok(pi["predicted"], pi["mean_lower"], pi["mean_upper"])
                        and interval_ok(pi["predicted"], pi["lower"], pi["upper"]))}
    # the report prints no bank law's parameters: their coverage is information
    out.update({f"{k} (info)": bool(ci.at[k, "lower"] <= truth[k] <= ci.at[k, "upper"])
                for k in formula.names})
    return out


# EL from the joint law where the bank ranks it best (analysis.headline.best_law_fits, the
# report's path: runs resampled in pairs, dense at one expert), at the computes the report
# takes from it: 10x and 100x beyond the largest MoE run; truth from JOINT_TRUTH at each E
BANK_LEVERAGE_CASES = {
    "joint, smallest accepted: 4x3 grid x dense, E = 4, 16, 64, 0.5% noise": dict(
        sizes=SIZES[:4], tokens=TOKENS[:3], noise=0.005, smallest=True),
}


def _bank_leverage_trial(job) -> dict[str, bool]:
    from analysis.errors import AnalysisError
    from analysis.headline import best_law_fits
    from analysis.law_bank import JOINT, reduce_to_chinchilla
    from analysis.leverage import leverage
    from analysis.synthetic_moe import JOINT_TRUTH

    name, seed, bootstrap = job
    case = BANK_LEVERAGE_CASES[name]
    df = bank_runs("joint", seed=seed, noise=case["noise"], sizes=case["sizes"], tokens=case["tokens"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _, fits, _ = leverage_table(df, 0, seed, grid=GRID)
            lev = best_law_fits(df, "text", "joint", fits, bootstrap, seed)
        except AnalysisError:  # the gate or the post-fit checks refuse the joint law
            lev = []
    if not lev:
        return {REFUSED: True}
    truth = np.array([JOINT_TRUTH[k] for k in JOINT.names])[None]
    out, inside = {REFUSED: False}, True
    for f in lev:
        e = float(f.family.split("E=")[1])
        t = f.table()
        t = t[t["where"].str.startswith("extrapolated")]
        el = leverage(reduce_to_chinchilla("joint", truth, n_experts=1.0),
                      reduce_to_chinchilla("joint", truth, n_experts=e), t["C"].to_numpy(float),
                      f.flops_dense, f.flops_moe)[0]
        for r, true_el in zip(t.itertuples(), el, strict=True):
            out[f"E = {e:g}: EL at {r.where}"] = bool(r.lower <= true_el <= r.upper)
        inside &= bool(interval_ok(t["EL"], t["lower"], t["upper"]).all())
    out[INSIDE] = inside
    return out
