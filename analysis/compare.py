"""MoE (or MoT) minus dense, per modality: on observed pairs and from the fitted laws.

Observed pairs share a `pair` id; runs without one pair with the dense run of the same seed
and modalities whose total compute and tokens are both within 1% (the matched-partner search's
tolerance); every MoE/MoT run left without a partner is counted and explained. dL = L_family -
L_dense in nats/token; each pair's SE from its per-document differences and the pairs
combined by a random-effects meta-regression on log N and log D (analysis/paired.py), with
Holm's correction over every (family, modality) verdict of the table (POLICY).
From the laws: dL(C) between the compute-optimal losses L*(C) of the two families,
with bootstrap bands and the compute where the sign flips. C is compute as analysis/compute.py
defines it, the same in pairs, frontiers, ranges and crossovers.

Public: match_runs, pairs, compare_pairs (observed pairs); delta_curve, crossovers,
crossover_interval, compare_laws, law_points (from the laws). From the laws, every number
comes with its interval: dL with its bootstrap band and a verdict, each family's loss with a
prediction interval, crossovers with an interval or "none resolved", and points beyond the
largest run marked with how far.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from analysis.compute import Frontier
from analysis.errors import AnalysisError
from analysis.fit import CHINCHILLA
from analysis.paired import DocLosses, combine, pair_difference
from analysis.prediction import prediction_interval
from analysis.records import by_family, family_key
from analysis.results import held, interval

TOLERANCE = 0.01  # moe_vs_dense/model/pairing.py matches partners to within 1%
PAIR_COLUMNS = ["family", "modality", "pair", "run", "run_dense", "C", "N_active", "D", "loss",
                "loss_dense", "dL", "dL_se"]


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


def pairs(df: pd.DataFrame, tol: float = TOLERANCE,
          docs: dict[str, dict[str, DocLosses]] | None = None) -> pd.DataFrame:
    """One row per (pair, modality, other family): dense and other losses, dL and its
    document-level SE `dL_se` (paired.pair_difference on `docs`, records.load_docs; NaN
    without them). Families are `family_key` labels; partners share their modality set."""
    df = df.assign(family=family_key(df))
    match, _ = match_runs(df, tol)
    if match.empty:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    other = df.merge(match, on="run")
    dense = df[["run", "modality", "loss"]].rename(columns={"run": "run_dense",
                                                            "loss": "loss_dense"})
    joined = other.merge(dense, on=["run_dense", "modality"])
    joined["pair"] = joined["pair_y"].fillna(joined["run"] + "~" + joined["run_dense"])
    joined["dL"] = joined["loss"] - joined["loss_dense"]
    joined["dL_se"] = np.nan
    for i, r in joined.iterrows():
        a, b = (docs or {}).get(r["run"], {}), (docs or {}).get(r["run_dense"], {})
        if r["modality"] in a and r["modality"] in b:
            try:
                joined.loc[i, "dL"], joined.loc[i, "dL_se"] = pair_difference(a[r["modality"]],
                                                                              b[r["modality"]])
            except AnalysisError as e:
                warnings.warn(f"pair {r['run']} / {r['run_dense']} ({r['modality']}): {e}; "
                              "no document-level SE", stacklevel=2)
    return joined[PAIR_COLUMNS].reset_index(drop=True)


POLICY = ("one verdict per MoE family and modality, from the paired loss difference; Holm's "
          "step-down over every such verdict in the table at familywise error 5%")


def compare_pairs(df: pd.DataFrame, alpha: float = 0.05, tol: float = TOLERANCE,
                  docs: dict[str, dict[str, DocLosses]] | None = None) -> pd.DataFrame:
    """Per (family, modality): pairs, runs without a dense partner (`unpaired`, explained in a
    warning), and the pairs' dL combined by paired.combine (a random-effects meta-regression on
    log N and log D with each pair's document-level SE from `docs`): dL at the design's centre
    (N_centre, D_centre), its SE, 1 - alpha interval, p, and the verdict under POLICY (Holm over
    every row of the table). Each MoE family (records.family_key) is its own row."""
    df = df.assign(family=family_key(df))
    _, why = match_runs(df, tol)
    p = pairs(df, tol, docs)
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
    rows = []
    for (family, modality), g in p.groupby(["family", "modality"]):
        c = combine(g["dL"], g["dL_se"], g["N_active"], g["D"], alpha)
        rows.append({"family": family, "modality": modality, "pairs": len(g),
                     "pairs with document SE": int(g["dL_se"].notna().sum()),
                     "unpaired": int(lonely.get((family, modality), 0)),
                     "N_centre": float(np.exp(np.log(g["N_active"]).mean())),
                     "D_centre": float(np.exp(np.log(g["D"]).mean())),
                     "dL": c.dL, "lower": c.lower, "upper": c.upper, "se": c.se, "df": c.df,
                     "tau": c.tau, "p": c.p, "model": c.model})
    table = pd.DataFrame(rows)
    table["p_holm"] = np.nan
    ok = table["p"].notna()
    if ok.any():
        table.loc[ok, "p_holm"] = multipletests(table.loc[ok, "p"], alpha, "holm")[1]
    table["verdict"] = [_verdict(r, alpha) for r in table.itertuples()]
    return table


def _verdict(r, alpha: float) -> str:
    if not np.isfinite(r.p_holm):
        return "no test (no standard error)"
    if r.p_holm >= alpha:
        return "no significant difference"
    return f"{r.family} better" if r.dL < 0 else "dense better"


def delta_curve(other: Frontier, dense: Frontier, C: np.ndarray,
                alpha: float = 0.05) -> pd.DataFrame:
    """dL(C) = L*_other(C) - L*_dense(C) on compute-optimal frontiers, with bootstrap bands
    (expanded percentiles at the wider of the two fits' expansions)."""
    out = pd.DataFrame({"C": C, "dL": other.at(C)["loss_opt"] - dense.at(C)["loss_opt"]})
    a, b = other.draws(C), dense.draws(C)
    if a is not None and b is not None:
        n = min(len(a), len(b))
        level = min(other.fit.expanded(alpha), dense.fit.expanded(alpha))
        out["lower"], out["upper"] = held(out["dL"], *interval(a[:n, 2] - b[:n, 2], level, axis=0))
    return out


def crossovers(curve: pd.DataFrame) -> list[float]:
    """Compute values where dL changes sign (log-linear interpolation)."""
    c, d = curve["C"].to_numpy(float), curve["dL"].to_numpy(float)
    out = []
    for k in np.flatnonzero(np.sign(d[:-1]) * np.sign(d[1:]) < 0):
        w = d[k] / (d[k] - d[k + 1])
        out.append(float(np.exp(np.log(c[k]) + w * (np.log(c[k + 1]) - np.log(c[k])))))
    return out


def crossover_interval(other: Frontier, dense: Frontier, C: np.ndarray,
                       alpha: float = 0.05) -> dict:
    """The first crossover of dL(C) over the grid C with a percentile interval over the bootstrap
    draws' first crossovers. Resolved only when the band excludes 0 on both sides of it with
    opposite signs and at least 1 - alpha of the draws cross in the range too."""
    curve = delta_curve(other, dense, C, alpha)
    x = crossovers(curve)
    out = {"crossover_C": ", ".join(f"{v:.3g}" for v in x) if x else "no crossover in the range",
           "crossover_lower": np.nan, "crossover_upper": np.nan}
    if not x:
        out["crossover"] = "none in the range"
        return out
    if "lower" not in curve:
        out["crossover"] = "none resolved (no bootstrap refits to bound it)"
        return out
    below, above = curve["C"] < x[0], curve["C"] > x[0]
    sign = np.sign(curve["dL"].iloc[0])
    sure = lambda side, s: bool((((curve["upper"] < 0) if s < 0 else (curve["lower"] > 0)) & side).any())  # noqa: E731
    a, b = other.draws(C), dense.draws(C)
    n = min(len(a), len(b))
    firsts = np.array([(crossovers(pd.DataFrame({"C": C, "dL": d})) or [np.nan])[0]
                       for d in a[:n, 2] - b[:n, 2]])
    if not (sure(below, sign) and sure(above, -sign)) or np.mean(np.isfinite(firsts)) < 1 - alpha:
        out["crossover"] = "none resolved (the band includes 0 on one side of it)"
        return out
    lo, hi = (float(v) for v in held(x[0], *interval(firsts, alpha)))
    if np.isnan(lo):
        out["crossover"] = "none resolved (the draws' crossovers do not bracket the estimate)"
        return out
    out["crossover_lower"], out["crossover_upper"] = lo, hi
    out["crossover"] = f"{x[0]:.3g} FLOPs ({1 - alpha:.0%}: {lo:.3g} to {hi:.3g})"
    return out


def run_share(df: pd.DataFrame | None, family: str, modality: str) -> float:
    """Median over the family's runs of run compute / compute on this modality (C_total / C):
    what a per-modality compute costs as a whole run of that mixture; NaN without runs."""
    if df is None or "C_total" not in df:
        return np.nan
    g = by_family(df)
    g = g[(g["family"] == family) & (g["modality"] == modality)]
    return float(np.median(g["C_total"] / g["C"])) if len(g) else np.nan


def compare_laws(frontiers: dict[tuple[str, str], Frontier], c_min: float, c_max: float,
                 points: int = 200, alpha: float = 0.05, df: pd.DataFrame | None = None
                 ) -> pd.DataFrame:
    """Per (family, modality) with a dense frontier too: where dL(C) changes sign between
    c_min and c_max, with its interval or why none is resolved (C as analysis/compute.py
    defines it: FLOPs on this modality's tokens). With the runs `df`, `run compute / C` says
    what one FLOP on the modality costs as a whole run of the family's mixture (run_share), to
    read a crossover as a cost. The values of dL at given computes: `law_points`."""
    C = np.exp(np.linspace(np.log(c_min), np.log(c_max), points))
    rows = []
    for (family, modality), f in sorted(frontiers.items()):
        if family == "dense" or ("dense", modality) not in frontiers:
            continue
        rows.append({"family": family, "modality": modality, "C_min": c_min, "C_max": c_max,
                     **crossover_interval(f, frontiers[("dense", modality)], C, alpha),
                     "run compute / C": run_share(df, family, modality)})
    return pd.DataFrame(rows)


def _computes(observed: np.ndarray, extrapolate: float) -> list[tuple[float, str]]:
    """The smallest, median and largest observed compute, then 10x, 100x, ... up to
    `extrapolate` times the largest, each with where it lies."""
    lo, mid, hi = np.min(observed), np.median(observed), np.max(observed)
    out = [(lo, "smallest run"), (mid, "median run"), (hi, "largest run")]
    factors = [10.0**k for k in range(1, int(np.floor(np.log10(extrapolate) + 1e-9)) + 1)]
    if extrapolate > 1 and (not factors or extrapolate > factors[-1] * (1 + 1e-9)):
        factors.append(extrapolate)
    return out + [(hi * k, f"{k:.3g}x beyond largest run (extrapolated)") for k in factors]


def law_points(frontiers: dict[tuple[str, str], Frontier], df: pd.DataFrame,
               extrapolate: float = 100.0, alpha: float = 0.05) -> pd.DataFrame:
    """Per (family, modality) with a dense frontier too, at the smallest, median and largest
    observed compute of the modality and 10x, 100x ... beyond: each family's compute-optimal
    loss with its 1 - alpha prediction interval (a new run at that N*, D*), dL with its
    bootstrap band, and a verdict ("<family> better", "dense better" or "not resolved");
    `extrapolated in` names what lies outside the runs: C beyond the largest run's compute,
    and each family's N* or D* outside the range of its runs' sizes or tokens."""
    rows, df = [], by_family(df)
    for (family, modality), f in sorted(frontiers.items()):
        if family == "dense" or ("dense", modality) not in frontiers:
            continue
        dense = frontiers[("dense", modality)]
        runs = df[(df["modality"] == modality) & df["family"].isin(["dense", family])]
        where = _computes(runs["C"].to_numpy(float), extrapolate)
        C = np.array([c for c, _ in where])
        curve = delta_curve(f, dense, C, alpha)
        pis, outside = {}, [[] for _ in C]
        for fam, fr in (("dense", dense), (family, f)):
            at = fr.at(C)
            train = runs[runs["family"] == fam]
            for i, marks in enumerate(outside):
                marks += [f"{v}* of {fam.split()[0]}" for v, col in (("N", "N_opt"), ("D", "D_opt"))
                          if not train[v].min() <= at[col].iloc[i] <= train[v].max()]
            pis[fam] = prediction_interval(fr.fit, CHINCHILLA, train,
                                           at.rename(columns={"N_opt": "N", "D_opt": "D"}), alpha)
        share = run_share(df, family, modality)
        for i, (c, label) in enumerate(where):
            row = {"family": family, "modality": modality, "C": c, "C (whole run)": c * share,
                   "where": label}
            for fam in ("dense", family):
                p, col = pis[fam].iloc[i], f"L_{fam.split()[0]}"  # L_moe for every MoE family
                row[col], row[f"{col} lower"], row[f"{col} upper"] = \
                    p["predicted"], p["lower"], p["upper"]
            d = curve.iloc[i]
            row["dL"] = d["dL"]
            row["dL lower"], row["dL upper"] = d.get("lower", np.nan), d.get("upper", np.nan)
            row["verdict"] = (f"{family} better" if row["dL upper"] < 0 else
                              "dense better" if row["dL lower"] > 0 else "not resolved")
            beyond = ["C"] if c > runs["C"].max() else []
            row["extrapolated in"] = ", ".join(beyond + outside[i]) or "-"
            rows.append(row)
    return pd.DataFrame(rows)
