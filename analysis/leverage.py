"""Efficiency leverage: the compute a dense model needs to reach an MoE's loss, over the MoE's.

    EL(C) = C_dense(L*_moe(C)) / C

C is the tidy table's compute column: training FLOPs spent on this modality's tokens
(FLOPs per token x tokens of the modality; analysis/compute.py). L*_f(C) is family f's
compute-optimal loss from its Chinchilla law (or a bank law that reduces to one, see
`law_bank`) along the frontier flops_f(N) D = C, with FLOPs per token k N^s fitted to the
family's runs, as compute.py does. The dense frontier is L*(C) = E + K (6 C / k)^-r with
r = (alpha/s) beta / (alpha/s + beta), so it is inverted in closed form; where the MoE's loss is
at or below the dense law's irreducible loss E, no dense compute reaches it and EL is infinite
(reported as such, never as a number).

Intervals come from one bootstrap of both families together: pairs of runs (as
compare.match_runs pairs them) are resampled as units, unpaired runs within their family; each
draw refits both laws (all draws at once, each from the estimate and the other local optima of
its multistart, keeping its best) and gives one EL curve. The same draws
become the two laws' `boot` here, so their parameter intervals and EL agree; the law-free
estimate resamples the same way. Runs rather than residuals are resampled because that is what
covers: on 100 synthetic sets (benchmarks/leverage_sections.py: EL = 1.5 and 1.0, five
computes each, up to 100x beyond the data) the 95% intervals covered 0.95-0.99 of the time;
with residuals resampled as analysis/chinchilla.py did when this was written, 0.82-0.93 (the
Huber fit is close to least absolute deviations, whose residuals understate the noise).

Verdict at each compute: "experts worth more compute" when the 95% interval lies above 1,
"experts worth less" when below, else "not resolved".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.chinchilla import (
    ChinchillaResult,
    Grid,
    check_bootstrap,
    fit_chinchilla,
    frontier,
    refit_draws,
    to_natural,
)
from analysis.compare import match_runs
from analysis.compute import FlopsPerToken, fit_flops_per_token
from analysis.errors import AnalysisError
from analysis.records import family_key
from analysis.results import expanded_level, held, interval

# a law-free interval needs this many distinct bootstrap values: 4 paired runs give at most 35
# distinct resamples, and are refused; set by coverage (benchmarks/coverage.py --only law_free,
# 150 sets each, expanded percentile intervals): 5 pairs along D = 20 N cover 0.93 of the time,
# 6 pairs 0.91-0.93, 8 pairs 0.95, a 5 x 5 grid 0.99 (plain percentile intervals: 0.86-0.90 on
# 5 and 6 pairs)
MIN_DISTINCT_DRAWS = 40
MORE, LESS, UNRESOLVED = "experts worth more compute", "experts worth less", "not resolved"
EXTRAPOLATE = (10.0, 100.0)
FULL_GRID = Grid()


def pair_keys(df: pd.DataFrame) -> pd.Series:
    """A run's bootstrap unit: a dense run's own name, and for an MoE run the name of the dense
    partner compare.match_runs finds for it (its own name when it has none)."""
    match, _ = match_runs(df)
    partner = dict(zip(match["run"], match["run_dense"], strict=True))
    return df["run"].map(lambda r: partner.get(r, r)).astype(str)


def paired_weights(keys_dense: np.ndarray, keys_moe: np.ndarray, draws: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap multiplicities [draws, rows] for both families: shared keys are resampled as
    units (so a pair's two runs enter or leave together), the rest within their own family."""
    shared = np.intersect1d(keys_dense, keys_moe)
    out = []
    for keys in (keys_dense, keys_moe):
        w = np.zeros((draws, len(keys)))
        solo = np.flatnonzero(~np.isin(keys, shared))
        if len(solo):
            pick = rng.integers(0, len(solo), (draws, len(solo)))
            np.add.at(w, (np.arange(draws)[:, None], solo[pick]), 1.0)
        out.append(w)
    if len(shared):
        pick = rng.integers(0, len(shared), (draws, len(shared)))
        counts = np.zeros((draws, len(shared)))
        np.add.at(counts, (np.arange(draws)[:, None], pick), 1.0)
        for w, keys in zip(out, (keys_dense, keys_moe), strict=True):
            idx = np.searchsorted(shared, keys)
            rows = np.flatnonzero(np.isin(keys, shared))
            # a key with several runs in one family (several modalities are separate tables,
            # so this is a repeated run): each of its runs carries the unit's multiplicity
            w[:, rows] += counts[:, idx[rows]]
    return out[0], out[1]


def unit_weights(keys: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap multiplicities [draws, rows] resampling the distinct keys (a dense run and its
    MoE partners) as units."""
    units, idx = np.unique(keys, return_inverse=True)
    counts = np.zeros((draws, len(units)))
    np.add.at(counts, (np.arange(draws)[:, None], rng.integers(0, len(units), (draws, len(units)))), 1.0)
    return counts[:, idx]


def refit_weighted(result: ChinchillaResult, df: pd.DataFrame, weights: np.ndarray) -> np.ndarray:
    """Chinchilla refits to the runs with multiplicities `weights` [draws, rows] (the estimate's
    Huber objective), all at once, each from the estimate and the other local optima of its
    multistart (chinchilla.refit_draws), keeping its best: natural parameters (E, A, B, alpha,
    beta) per draw."""
    logN, logD, logL = (np.log(df[c].to_numpy(float))[None] for c in ("N", "D", "loss"))
    starts = getattr(result, "optima", None)
    return to_natural(refit_draws(result.theta if starts is None else starts, logN, logD, logL,
                                  weights))


def frontier_loss(p: np.ndarray, X: np.ndarray) -> np.ndarray:
    """L*(X) for rows p = (E, A, B, alpha, beta) [P, 5] at X = 6 N D [len(X)]: [P, len(X)].
    NaN where an exponent is not positive (no compute-optimal frontier)."""
    return frontier(np.atleast_2d(p), X)[2]


def frontier_compute(p: np.ndarray, L: np.ndarray) -> np.ndarray:
    """X = 6 N D at which L*(X) = L (rows p [P, 5], L [P, k]): +inf where L <= E."""
    E, A, B, al, be = (np.atleast_2d(p)[:, i : i + 1] for i in range(5))
    with np.errstate(all="ignore"):
        s = al * be / (al + be)
        K = frontier_loss(p, np.array([6.0])) - E  # L*(X) - E = K (X / 6)^-s
        X = 6 * ((L - E) / K) ** (-1 / s)
    return np.where(L > E, X, np.where(np.isnan(L) | np.isnan(K), np.nan, np.inf))


def frontier_params(p: np.ndarray, X: np.ndarray) -> np.ndarray:
    """N*(X) on the frontier: [P, len(X)]."""
    E, A, B, al, be = (np.atleast_2d(p)[:, i : i + 1] for i in range(5))
    with np.errstate(all="ignore"):
        G = (al * A / (be * B)) ** (1 / (al + be))
        return G * (X / 6) ** (be / (al + be))


CHINCHILLA_FLOPS = FlopsPerToken(6.0, 1.0)


def _per_flop(p: np.ndarray, flops: FlopsPerToken) -> np.ndarray:
    """With M = N^s, flops(N) D = C is Chinchilla's 6 M D = 6 C / k for (E, A, B, alpha/s, beta)."""
    q = np.atleast_2d(p).astype(float).copy()
    q[:, 3] /= flops.s
    return q


def leverage(dense: np.ndarray, moe: np.ndarray, C: np.ndarray,
             flops_dense: FlopsPerToken = CHINCHILLA_FLOPS,
             flops_moe: FlopsPerToken = CHINCHILLA_FLOPS) -> np.ndarray:
    """EL(C) [P, len(C)] for parameter rows of the dense and MoE laws (broadcast together)."""
    L = frontier_loss(_per_flop(moe, flops_moe), 6 * C / flops_moe.k)
    return flops_dense.k / 6 * frontier_compute(_per_flop(dense, flops_dense), L) / C


def optimal_params(p: np.ndarray, C: np.ndarray, flops: FlopsPerToken) -> np.ndarray:
    """N*(C) on the frontier flops(N) D = C: [P, len(C)]."""
    return frontier_params(_per_flop(p, flops), 6 * C / flops.k) ** (1 / flops.s)


def interval_with_inf(draws: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Percentile interval over axis 0 where some draws are +inf (the dense law never reaches
    the loss): those rank above every finite draw, so a bound among them is +inf. Order
    statistics (no interpolation), so a bound is a draw or inf, never a blend of the two."""
    with np.errstate(invalid="ignore"):
        lo, hi = np.nanpercentile(np.asarray(draws, float), [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0,
                                  method="inverted_cdf")
    return lo, hi


def verdict(lower: float, upper: float) -> str:
    """From the interval; NaN bounds (no frontier) leave it unresolved."""
    if lower > 1:
        return MORE
    if upper < 1:
        return LESS
    return UNRESOLVED


@dataclass
class LeverageFit:
    """Dense and MoE laws of one modality, fitted on the same bootstrap draws."""

    modality: str
    family: str
    dense: ChinchillaResult
    moe: ChinchillaResult
    flops_dense: FlopsPerToken
    flops_moe: FlopsPerToken
    total_per_active: float  # MoE total / active params (median over its runs)
    C_observed: np.ndarray  # the MoE family's compute values
    paired_units: int
    law: str = "chinchilla"
    N_observed: tuple[float, float] | None = None  # the MoE runs' smallest and largest size
    run_share: float = np.nan  # median C_total / C of the MoE runs: a whole run per modality FLOP

    def curve(self, C, alpha: float = 0.05) -> pd.DataFrame:
        """EL with its interval and verdict at compute C, and the storage side: the MoE's total
        params on its frontier vs the params of the dense model of equal loss, and both models'
        inference FLOPs per token (a forward pass: a third of the training FLOPs per token)."""
        C = np.atleast_1d(np.asarray(C, float))
        pd_, pm = self.dense.params.to_numpy()[None], self.moe.params.to_numpy()[None]
        el = leverage(pd_, pm, C, self.flops_dense, self.flops_moe)[0]
        n_moe = optimal_params(pm, C, self.flops_moe)[0]
        n_dense = optimal_params(pd_, np.where(np.isfinite(el), el * C, np.nan), self.flops_dense)[0]
        out = pd.DataFrame({"C": C, "EL": el, "lower": np.nan, "upper": np.nan})
        if self.dense.boot is not None and self.moe.boot is not None:
            draws = leverage(self.dense.boot, self.moe.boot, C, self.flops_dense, self.flops_moe)
            out["lower"], out["upper"] = held(el, *interval_with_inf(draws, alpha))
            out["unreachable_share"] = np.isinf(draws).mean(0)
        out["verdict"] = [verdict(lo, hi) for lo, hi in zip(out["lower"], out["upper"], strict=True)]
        out["MoE total params"] = n_moe * self.total_per_active
        out["dense params at equal loss"] = n_dense
        out["memory ratio"] = out["MoE total params"] / n_dense
        out["MoE inference FLOPs/token"] = self.flops_moe(n_moe) / 3
        out["dense inference FLOPs/token"] = self.flops_dense(n_dense) / 3
        return out

    def table(self, alpha: float = 0.05) -> pd.DataFrame:
        """EL at the smallest, median and largest observed compute and 10x, 100x beyond; C is
        FLOPs on this modality's tokens, `C (whole run)` the compute of a whole run of the MoE's
        mixture that spends C on it (median ratio over its runs), the cost to read EL by."""
        c = self.C_observed
        points = [("smallest observed", c.min()), ("median observed", float(np.median(c))),
                  ("largest observed", c.max())]
        points += [(f"extrapolated {f:g}x beyond the largest", c.max() * f) for f in EXTRAPOLATE]
        curve = self.curve([v for _, v in points], alpha)
        curve.insert(0, "where", [w for w, _ in points])
        curve.insert(curve.columns.get_loc("C") + 1, "C (whole run)", curve["C"] * self.run_share)
        curve.insert(0, "family", self.family)
        curve.insert(0, "modality", self.modality)
        curve["law"] = self.law
        curve["note"] = [_note(r, self.dense) for r in curve.itertuples()]
        if self.N_observed is not None:
            n_moe = curve["MoE total params"] / self.total_per_active
            beyond = ~n_moe.between(*self.N_observed)
            curve.loc[beyond, "note"] = [
                "; ".join(filter(None, [n, f"the MoE's N* = {v:.3g} lies outside its runs' sizes "
                                        f"({self.N_observed[0]:.3g} to {self.N_observed[1]:.3g}): "
                                        "extrapolated in N"]))
                for n, v in zip(curve.loc[beyond, "note"], n_moe[beyond], strict=True)]
        return curve


def _note(row, dense: ChinchillaResult) -> str:
    if np.isinf(row.EL):
        return (f"the dense law cannot reach this loss: it is below the dense fit's irreducible "
                f"loss E = {dense.params['E']:.4g} nats/token")
    if np.isnan(row.EL):
        return "no compute-optimal frontier (a fitted exponent is not positive)"
    return ""


def fit_leverage(df: pd.DataFrame, modality: str, family: str, bootstrap: int = 1000,
                 seed: int = 0, grid: Grid = FULL_GRID,
                 fits: dict[tuple[str, str], ChinchillaResult] | None = None) -> LeverageFit:
    """Dense and one MoE family (a `family_key` label) on one modality, bootstrapped together.
    `fits`: Chinchilla fits already made per (family, modality) (analysis.fit.chinchilla_by_group);
    their estimates are reused where their group holds exactly these runs (their draws are not:
    the joint draws replace them, on copies)."""
    rows = df[df["modality"] == modality].assign(fkey=lambda x: family_key(x))
    dense_df = rows[rows["fkey"] == "dense"].reset_index(drop=True)
    moe_df = rows[rows["fkey"] == family].reset_index(drop=True)
    if dense_df.empty:
        raise AnalysisError(f"modality {modality}: no dense runs; efficiency leverage needs them")
    if moe_df.empty:
        raise AnalysisError(f"modality {modality}: no runs of {family}")
    dense = _reuse(fits, "dense", modality, dense_df)
    if dense is None:
        dense = fit_chinchilla(dense_df, {"family": "dense", "modality": modality}, bootstrap=0, grid=grid)
    moe = _reuse(fits, family, modality, moe_df)
    if moe is None:
        moe = fit_chinchilla(moe_df, {"family": family, "modality": modality}, bootstrap=0, grid=grid)
    keys = pair_keys(rows)
    kd, km = keys[rows["fkey"] == "dense"].to_numpy(), keys[rows["fkey"] == family].to_numpy()
    if bootstrap:
        wd, wm = paired_weights(kd, km, bootstrap, np.random.default_rng(seed))
        dense.boot, moe.boot = refit_weighted(dense, dense_df, wd), refit_weighted(moe, moe_df, wm)
        for fit, runs in ((dense, dense_df), (moe, moe_df)):
            check_bootstrap(fit, runs)  # degenerate draws, or draws of runaway laws
    flops = lambda g: fit_flops_per_token(g["N"], g["flops_per_token"])  # noqa: E731
    return LeverageFit(modality, family, dense, moe, flops(dense_df), flops(moe_df),
                       float(np.median(moe_df["N_total"] / moe_df["N_active"])),
                       moe_df["C"].to_numpy(float), len(np.intersect1d(kd, km)),
                       N_observed=(float(moe_df["N"].min()), float(moe_df["N"].max())),
                       run_share=float(np.median(moe_df["C_total"] / moe_df["C"]))
                       if "C_total" in moe_df else np.nan)


def _reuse(fits, family: str, modality: str, runs: pd.DataFrame):
    """A copy of fits[(family, modality)] (keyed by `family_key`, as analysis.fit makes them)
    when it was fitted to as many runs as `runs`, else None."""
    fit = (fits or {}).get((family, modality))
    if fit is None or getattr(fit, "theta", None) is None or fit.nobs != len(runs):
        return None
    return copy.copy(fit)


def leverage_jobs(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(modality, MoE family) for every modality with dense runs and runs of that family."""
    keys = df.assign(fkey=family_key(df))
    jobs = []
    for m, g in keys.groupby("modality"):
        if (g["fkey"] == "dense").any():
            jobs += [(m, f) for f in sorted(set(g["fkey"]) - {"dense"})]
    return jobs


def leverage_table(df: pd.DataFrame, bootstrap: int = 1000, seed: int = 0, alpha: float = 0.05,
                   grid: Grid = FULL_GRID, chinchilla: dict | None = None
                   ) -> tuple[pd.DataFrame, list[LeverageFit], list[str]]:
    """The headline table over every (modality, MoE family); fits that fail become notes.
    `chinchilla`: fits already made per (family, modality), reused (see fit_leverage)."""
    fits, notes = [], []
    for m, f in leverage_jobs(df):
        try:
            fits.append(fit_leverage(df, m, f, bootstrap, seed, grid, chinchilla))
        except AnalysisError as e:
            notes.append(f"efficiency leverage ({m}, {f}): {e}")
    if not fits:
        return pd.DataFrame(), fits, notes
    return pd.concat([f.table(alpha) for f in fits], ignore_index=True), fits, notes


def envelope(C: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The runs on the loss-compute Pareto front (each better than every cheaper run), by C."""
    order = np.argsort(C, kind="stable")
    keep, best = [], np.inf
    for i in order:
        if L[i] < best:
            keep.append(i)
            best = L[i]
    return C[keep], L[keep]


def law_free_ratio(dense_C, dense_L, moe_C, moe_L, moe_w=None) -> tuple[float, np.ndarray]:
    """Geometric mean over the MoE's Pareto runs of C_dense / C_moe, where C_dense is the compute
    at which the dense Pareto front (log-log interpolated) reaches that run's loss; only runs
    whose loss the dense front brackets count (no extrapolation). moe_w: each MoE run's
    multiplicity in a bootstrap draw (a run drawn twice counts twice in the mean; runs of
    weight 0 are left out). (ratio, their compute)."""
    mC, mL = np.asarray(moe_C, float), np.asarray(moe_L, float)
    w = np.ones_like(mC) if moe_w is None else np.asarray(moe_w, float)
    dc, dl = envelope(np.asarray(dense_C, float), np.asarray(dense_L, float))
    mc, ml = envelope(mC[w > 0], mL[w > 0])
    inside = (ml >= dl.min()) & (ml <= dl.max())
    if len(dc) < 2 or not inside.any():
        return np.nan, mc[:0]
    weight = np.array([w[w > 0][(mC[w > 0] == c) & (mL[w > 0] == v)].sum()
                       for c, v in zip(mc[inside], ml[inside], strict=True)])
    logc = np.interp(-np.log(ml[inside]), -np.log(dl), np.log(dc))
    return float(np.exp(np.average(logc - np.log(mc[inside]), weights=weight))), mc[inside]


def law_free_leverage(fit: LeverageFit | None, df: pd.DataFrame, bootstrap: int = 1000, seed: int = 0,
                      alpha: float = 0.05, job: tuple[str, str] | None = None) -> dict:
    """EL from the runs alone on the observed range, with a bootstrap interval over the same
    paired resampling as the laws (runs, not residuals, resampled; each MoE run weighted by how
    often a draw holds it; an expanded percentile interval, results.expanded_level, over the
    paired units), and the law-based EL at the compared runs' compute. No interval
    where the draws take fewer than MIN_DISTINCT_DRAWS distinct values (column `distinct
    draws`) or where it would not hold its estimate. Without a fit (the laws not identified),
    `job` = (modality, family) and the law column is NaN."""
    modality, family = (fit.modality, fit.family) if fit is not None else job
    rows = df[df["modality"] == modality].assign(fkey=lambda x: family_key(x))
    rows = rows.assign(key=pair_keys(rows))
    d, m = rows[rows["fkey"] == "dense"], rows[rows["fkey"] == family]
    est, compared = law_free_ratio(d["C"], d["loss"], m["C"], m["loss"])
    law = (fit.curve(compared)["EL"].to_numpy() if fit is not None and len(compared)
           else np.array([np.nan]))
    out = {"modality": modality, "family": family, "EL (runs)": est, "lower": np.nan,
           "upper": np.nan, "MoE runs compared": len(compared),
           "C (runs compared)": float(np.exp(np.log(compared).mean())) if len(compared) else np.nan,
           "EL (law) at the same compute": float(np.exp(np.mean(np.log(law))))}
    if len(compared) and bootstrap:
        wd, wm = paired_weights(d["key"].to_numpy(), m["key"].to_numpy(), bootstrap,
                                np.random.default_rng(seed + 1))
        dC, dL, mC, mL = (x.to_numpy(float) for x in (d["C"], d["loss"], m["C"], m["loss"]))
        draws = np.array([law_free_ratio(dC[a > 0], dL[a > 0], mC, mL, b)[0]
                          for a, b in zip(wd, wm, strict=True)])
        distinct = len(np.unique(draws[np.isfinite(draws)].round(12)))
        units = len(np.union1d(d["key"], m["key"]))
        out["distinct draws"] = distinct
        if distinct >= MIN_DISTINCT_DRAWS:
            level = expanded_level(alpha, units, units - 1)
            out["lower"], out["upper"] = (float(v) for v in held(est, *interval(draws, level)))
    return out
