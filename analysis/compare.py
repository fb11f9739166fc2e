"""MoE (or MoT) minus dense, per modality: on observed pairs and from the fitted laws.

Observed pairs share a `pair` id; runs without one pair with the dense run of the same seed
and modalities whose total compute and tokens are both within 1% (the matched-partner search's
tolerance); every MoE/MoT run left without a partner is counted and explained. dL = L_family -
L_dense in nats/token: mean over pairs, a paired bootstrap interval, a paired t-test (identical
differences are an exact result: p = 0 unless they are all 0), and Holm's correction across
modalities. From the laws: dL(C) between the compute-optimal losses L*(C) of the two families,
with bootstrap bands and the compute where the sign flips. C is compute as analysis/compute.py
defines it, the same in pairs, frontiers, ranges and crossovers.

Public: match_runs, pairs, compare_pairs (observed pairs); delta_curve, crossovers,
compare_laws (from the laws).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import DescrStatsW

from analysis.compute import Frontier
from analysis.errors import AnalysisError
from analysis.results import interval

TOLERANCE = 0.01  # moe_vs_dense/model/pairing.py matches partners to within 1%
PAIR_COLUMNS = ["family", "modality", "pair", "run", "run_dense", "C", "N_active", "loss",
                "loss_dense", "dL"]


def match_runs(df: pd.DataFrame, tol: float = TOLERANCE) -> tuple[pd.DataFrame, dict[str, str]]:
    """The dense partner of every MoE/MoT run (columns run, run_dense, pair) and, for each run
    without one, why. Runs with a pair id match the dense run of that id; the others match,
    among dense runs without one, of the same seed and modalities, the closest in total compute
    whose compute and tokens both differ by at most `tol` (either way round)."""
    runs = df.drop_duplicates("run").set_index("run")
    dense = runs[runs["family"] == "dense"]
    free = dense[dense["pair"].isna()]
    limit = -math.log1p(-tol)  # |log ratio| <= this accepts -tol and +tol from either side
    rows, why = [], {}
    for run, r in runs[runs["family"] != "dense"].iterrows():
        if pd.notna(r["pair"]):
            same = dense.index[dense["pair"] == r["pair"]]
            if len(same):
                rows.append((run, same[0], r["pair"]))
            else:
                why[run] = f"no dense run has pair_id {r['pair']}"
            continue
        cand = free[(free["seed"] == r["seed"]) & (free["modalities"] == r["modalities"])]
        if cand.empty:
            why[run] = (f"no dense run without a pair_id has seed {r['seed']} and modalities "
                        f"{r['modalities']}")
            continue
        dc = np.log(r["C_total"] / cand["C_total"])
        dd = np.log(r["D_total"] / cand["D_total"])
        ok = (dc.abs() <= limit) & (dd.abs() <= limit)
        if ok.any():
            rows.append((run, dc[ok].abs().idxmin(), None))
        else:
            near = (dc.abs() + dd.abs()).idxmin()
            why[run] = (f"its compute and tokens differ from those of the nearest dense run, "
                        f"{near}, by {math.expm1(dc[near]):+.2%} and {math.expm1(dd[near]):+.2%} "
                        f"(tolerance {tol:.0%})")
    return pd.DataFrame(rows, columns=["run", "run_dense", "pair"]), why


def pairs(df: pd.DataFrame, tol: float = TOLERANCE) -> pd.DataFrame:
    """One row per (pair, modality, other family): dense and other losses and dL."""
    match, _ = match_runs(df, tol)
    if match.empty:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    other = df.merge(match, on="run")
    dense = df[["run", "modality", "loss"]].rename(columns={"run": "run_dense",
                                                            "loss": "loss_dense"})
    joined = other.merge(dense, on=["run_dense", "modality"])
    joined["pair"] = joined["pair_y"].fillna(joined["run"] + "~" + joined["run_dense"])
    joined["dL"] = joined["loss"] - joined["loss_dense"]
    return joined[PAIR_COLUMNS].reset_index(drop=True)


def compare_pairs(df: pd.DataFrame, alpha: float = 0.05, bootstrap: int = 2000,
                  seed: int = 0, tol: float = TOLERANCE) -> pd.DataFrame:
    """Per (family, modality): pairs, runs without a dense partner (`unpaired`, explained in a
    warning), mean dL, bootstrap interval, t-test, Holm-adjusted p and a verdict."""
    _, why = match_runs(df, tol)
    p = pairs(df, tol)
    if why:
        others = df.loc[df["family"] != "dense", "run"].nunique()
        warnings.warn(f"{len(why)} of {others} MoE/MoT run(s) found no dense partner:\n  "
                      + "\n  ".join(f"{run}: {reason}" for run, reason in why.items()),
                      stacklevel=2)
    if p.empty:
        raise AnalysisError("no matched pairs: a dense and an MoE/MoT run pair when they share a "
                            f"pair_id, or have the same seed and modalities and compute and "
                            f"tokens within {tol:.0%}")
    lonely = df[df["run"].isin(why)].groupby(["family", "modality"])["run"].nunique()
    rng = np.random.default_rng(seed)
    rows = []
    for (family, modality), g in p.groupby(["family", "modality"]):
        d = g["dL"].to_numpy(float)
        row = {"family": family, "modality": modality, "pairs": len(d),
               "unpaired": int(lonely.get((family, modality), 0)), "dL": d.mean(),
               "lower": np.nan, "upper": np.nan, "t": np.nan, "p": np.nan}
        if len(d) > 1:
            means = d[rng.integers(0, len(d), (bootstrap, len(d)))].mean(1)
            row["lower"], row["upper"] = interval(means, alpha)
            if np.ptp(d) > 0:
                t, pv, _ = DescrStatsW(d).ttest_mean(0.0)
                row["t"], row["p"] = float(t), float(pv)
            else:  # every pair differs by exactly d[0]: no sampling error to test against
                row["t"] = math.copysign(math.inf, d[0]) if d[0] else 0.0
                row["p"] = 0.0 if d[0] else 1.0
        rows.append(row)
    table = pd.DataFrame(rows)
    table["p_holm"] = np.nan
    for _family, g in table.groupby("family"):
        ok = g["p"].notna()
        if ok.any():
            table.loc[g.index[ok], "p_holm"] = multipletests(g.loc[ok, "p"], alpha, "holm")[1]
    table["verdict"] = [_verdict(r, alpha) for r in table.itertuples()]
    return table


def _verdict(r, alpha: float) -> str:
    if r.pairs < 2 or not np.isfinite(r.p_holm):
        return "too few pairs to test"
    if r.p_holm >= alpha:
        return "no significant difference"
    return f"{r.family} better" if r.dL < 0 else "dense better"


def delta_curve(other: Frontier, dense: Frontier, C: np.ndarray,
                alpha: float = 0.05) -> pd.DataFrame:
    """dL(C) = L*_other(C) - L*_dense(C) on compute-optimal frontiers, with bootstrap bands."""
    out = pd.DataFrame({"C": C, "dL": other.at(C)["loss_opt"] - dense.at(C)["loss_opt"]})
    a, b = other.draws(C), dense.draws(C)
    if a is not None and b is not None:
        n = min(len(a), len(b))
        out["lower"], out["upper"] = interval(a[:n, 2] - b[:n, 2], alpha, axis=0)
    return out


def crossovers(curve: pd.DataFrame) -> list[float]:
    """Compute values where dL changes sign (log-linear interpolation)."""
    c, d = curve["C"].to_numpy(float), curve["dL"].to_numpy(float)
    out = []
    for k in np.flatnonzero(np.sign(d[:-1]) * np.sign(d[1:]) < 0):
        w = d[k] / (d[k] - d[k + 1])
        out.append(float(np.exp(np.log(c[k]) + w * (np.log(c[k + 1]) - np.log(c[k])))))
    return out


def compare_laws(frontiers: dict[tuple[str, str], Frontier], c_min: float, c_max: float,
                 points: int = 200) -> pd.DataFrame:
    """Per (family, modality) with a dense frontier too: dL at the ends of the compute range
    and the crossovers (C as analysis/compute.py defines it)."""
    C = np.exp(np.linspace(np.log(c_min), np.log(c_max), points))
    rows = []
    for (family, modality), f in sorted(frontiers.items()):
        if family == "dense" or ("dense", modality) not in frontiers:
            continue
        curve = delta_curve(f, frontiers[("dense", modality)], C)
        x = crossovers(curve)
        rows.append({"family": family, "modality": modality, "C_min": c_min,
                     "dL_at_C_min": curve["dL"].iloc[0], "C_max": c_max,
                     "dL_at_C_max": curve["dL"].iloc[-1],
                     "crossover_C": ", ".join(f"{v:.3g}" for v in x) if x else "no crossover in the range"})
    return pd.DataFrame(rows)
