"""MoE (or MoT) minus dense, per modality: on observed pairs and from the fitted laws.

Observed pairs share a `pair` id, or else a modality, seed, compute and token count (to 3
significant digits). dL = L_family - L_dense in nats/token: mean over pairs, a paired
bootstrap interval, a paired t-test, and Holm's correction across modalities. From the laws:
dL(C) between the compute-optimal losses L*(C) of the two families, with bootstrap bands and
the compute where the sign flips.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import DescrStatsW

from analysis.chinchilla import ChinchillaResult, frontier
from analysis.errors import AnalysisError
from analysis.results import interval


def _sig3(x: pd.Series) -> pd.Series:
    return x.map(lambda v: float(f"{v:.3g}"))


def pairs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (pair, modality, other family): dense and other losses and dL."""
    key = df["pair"].where(df["pair"].notna(), "s" + df["seed"].astype(str) + "-C"
                           + _sig3(df["C"]).astype(str) + "-D" + _sig3(df["D_total"]).astype(str))
    df = df.assign(key=key)
    dense = df[df["family"] == "dense"][["key", "modality", "loss", "run"]]
    out = []
    for family, g in df[df["family"] != "dense"].groupby("family"):
        joined = g.merge(dense, on=["key", "modality"], suffixes=("", "_dense"), how="inner")
        out.append(pd.DataFrame({
            "family": family, "modality": joined["modality"], "pair": joined["key"],
            "run": joined["run"], "run_dense": joined["run_dense"], "C": joined["C"],
            "N_active": joined["N"], "loss": joined["loss"], "loss_dense": joined["loss_dense"],
            "dL": joined["loss"] - joined["loss_dense"]}))
    if not out:
        return pd.DataFrame(columns=["family", "modality", "pair", "run", "run_dense", "C",
                                     "N_active", "loss", "loss_dense", "dL"])
    return pd.concat(out, ignore_index=True)


def compare_pairs(df: pd.DataFrame, alpha: float = 0.05, bootstrap: int = 2000,
                  seed: int = 0) -> pd.DataFrame:
    """Per (family, modality): pairs, mean dL, bootstrap interval, t-test, Holm-adjusted p."""
    p = pairs(df)
    if p.empty:
        raise AnalysisError("no matched pairs: dense and MoE/MoT runs need a shared pair_id or the "
                            "same seed, compute and tokens")
    rng = np.random.default_rng(seed)
    rows = []
    for (family, modality), g in p.groupby(["family", "modality"]):
        d = g["dL"].to_numpy(float)
        row = {"family": family, "modality": modality, "pairs": len(d), "dL": d.mean(),
               "lower": np.nan, "upper": np.nan, "t": np.nan, "p": np.nan}
        if len(d) > 1:
            means = d[rng.integers(0, len(d), (bootstrap, len(d)))].mean(1)
            row["lower"], row["upper"] = interval(means, alpha)
            if d.std() > 0:
                t, pv, _ = DescrStatsW(d).ttest_mean(0.0)
                row["t"], row["p"] = float(t), float(pv)
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


def delta_curve(other: ChinchillaResult, dense: ChinchillaResult, C: np.ndarray,
                alpha: float = 0.05) -> pd.DataFrame:
    """dL(C) = L*_other(C) - L*_dense(C) on compute-optimal frontiers, with bootstrap bands."""
    a, b = other.compute_optimal(C), dense.compute_optimal(C)
    out = pd.DataFrame({"C": C, "dL": a["loss_opt"] - b["loss_opt"]})
    if other.boot is not None and dense.boot is not None:
        n = min(len(other.boot), len(dense.boot))
        draws = np.array([frontier(other.boot[i], C)[2] - frontier(dense.boot[i], C)[2] for i in range(n)])
        out["lower"], out["upper"] = interval(draws, alpha, axis=0)
    return out


def crossovers(curve: pd.DataFrame) -> list[float]:
    """Compute values where dL changes sign (log-linear interpolation)."""
    c, d = curve["C"].to_numpy(float), curve["dL"].to_numpy(float)
    out = []
    for k in np.flatnonzero(np.sign(d[:-1]) * np.sign(d[1:]) < 0):
        w = d[k] / (d[k] - d[k + 1])
        out.append(float(np.exp(np.log(c[k]) + w * (np.log(c[k + 1]) - np.log(c[k])))))
    return out


def compare_laws(fits: dict[tuple[str, str], ChinchillaResult], c_min: float, c_max: float,
                 points: int = 200) -> pd.DataFrame:
    """Per (family, modality) with a dense fit too: dL at the ends of the range and crossovers."""
    C = np.exp(np.linspace(np.log(c_min), np.log(c_max), points))
    rows = []
    for (family, modality), fit in sorted(fits.items()):
        if family == "dense" or ("dense", modality) not in fits:
            continue
        curve = delta_curve(fit, fits[("dense", modality)], C)
        x = crossovers(curve)
        rows.append({"family": family, "modality": modality, "C_min": c_min,
                     "dL_at_C_min": curve["dL"].iloc[0], "C_max": c_max,
                     "dL_at_C_max": curve["dL"].iloc[-1],
                     "crossover_C": ", ".join(f"{v:.3g}" for v in x) if x else "no crossover in the range"})
    return pd.DataFrame(rows)
