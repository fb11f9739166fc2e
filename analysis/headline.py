"""The headline of `compare` and `report`: efficiency leverage per modality and MoE family, the
law-free estimate beside it, and the bank of MoE laws ranked on held-out runs, whose best law
(when it has a compute-optimal frontier) also gives the extrapolated rows."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.chinchilla import NAMES, ChinchillaResult, Grid, check_bootstrap
from analysis.errors import AnalysisError
from analysis.identify import check_design, interval_ok
from analysis.law_bank import best_law, fit_law, joint_rows, rank_laws, reduce_to_chinchilla
from analysis.leverage import (
    FULL_GRID,
    LeverageFit,
    law_free_leverage,
    leverage_jobs,
    leverage_table,
    pair_keys,
    unit_weights,
)
from analysis.records import family_key, joint_mixture

COMPUTE = ("C is training FLOPs on the modality's tokens (FLOPs per token x its tokens, "
           "analysis/compute.py); EL(C) = C_dense(L*_MoE(C)) / C along both families' "
           "compute-optimal frontiers")
SHOWN = ["modality", "family", "where", "C", "C (whole run)", "EL", "lower", "upper", "verdict", "law",
         "MoE total params", "dense params at equal loss", "memory ratio",
         "MoE inference FLOPs/token", "dense inference FLOPs/token", "note"]


@dataclass
class Headline:
    leverage: pd.DataFrame  # SHOWN columns: per-family Chinchilla rows, best-law rows first
    law_free: pd.DataFrame
    ranking: pd.DataFrame  # every modality's bank ranking
    fits: list[LeverageFit] = field(default_factory=list)  # per-family Chinchilla
    best_fits: list[LeverageFit] = field(default_factory=list)  # from the best bank law
    notes: list[str] = field(default_factory=list)


def _as_chinchilla(p: np.ndarray, group: dict, law: str, rows: pd.DataFrame) -> ChinchillaResult:
    """A Chinchilla result from (E, A, B, alpha, beta) rows: the estimate, then the draws of the
    bank law fitted to `rows` (law_bank.fit_law: refits from its local optima), reduced at fixed
    settings; its draws pass the same check as a Chinchilla fit's (chinchilla.check_bootstrap),
    else NotIdentified."""
    boot = p[1:] if len(p) > 2 else None
    out = ChinchillaResult(law, group, pd.Series(p[0], index=NAMES), boot, len(rows), np.nan, True,
                           f"the {law} law at fixed settings")
    if boot is not None:
        check_bootstrap(out, rows)
    return out


def best_law_fits(df: pd.DataFrame, modality: str, law: str, chinchilla_fits: list[LeverageFit],
                  bootstrap: int, seed: int) -> list[LeverageFit]:
    """The modality's leverage from a bank law fitted to all its runs (bootstrap: runs resampled,
    a dense run and its MoE partners as one unit): the joint law gives both families (dense at
    one expert); the granularity law the MoE family at its granularity, beside the dense
    Chinchilla fit."""
    rows = df[df["modality"] == modality]
    weights = unit_weights(pair_keys(rows).to_numpy(), bootstrap, np.random.default_rng(seed))
    keys = family_key(rows)
    out, fitted = [], {}

    def fit(on: pd.DataFrame):
        w = weights[:, np.flatnonzero(rows.index.isin(on.index))] if bootstrap else None
        r = fit_law(law, on, {"modality": modality}, bootstrap, seed, w)
        return r, np.vstack([r.params.to_numpy()[None]] + ([r.boot] if r.boot is not None else []))

    for f in (f for f in chinchilla_fits if f.modality == modality):
        moe_rows = rows[keys == f.family]
        if law == "joint" and moe_rows.index.difference(joint_rows(rows).index).size:
            continue  # the joint law covers learned-router MoE families only
        if law == "granularity" and not np.isfinite(moe_rows["granularity"].astype(float)).all():
            continue  # MoT and records without a granularity
        if law == "granularity":  # one law per expert count
            e = float(moe_rows["n_experts"].iloc[0])
            if e not in fitted:
                fitted[e] = fit(rows[rows["n_experts"] == e])
            r, p = fitted[e]
        else:
            if "all" not in fitted:
                fitted["all"] = fit(rows)
            r, p = fitted["all"]
        if law == "joint":
            dense = _as_chinchilla(reduce_to_chinchilla(law, p, n_experts=1), {"modality": modality},
                                   law, r.rows)
            moe = reduce_to_chinchilla(law, p, n_experts=float(moe_rows["n_experts"].iloc[0]))
        else:
            g = moe_rows["granularity"].unique()
            if len(g) != 1:
                continue  # a family of several granularities has no single frontier
            dense = f.dense
            moe = reduce_to_chinchilla(law, p, granularity=float(g[0]))
        out.append(LeverageFit(modality, f.family, dense, _as_chinchilla(moe, {"modality": modality},
                                                                           law, r.rows),
                               f.flops_dense, f.flops_moe, f.total_per_active, f.C_observed,
                               f.paired_units, law))
    return out


def headline(df: pd.DataFrame, bootstrap: int = 1000, seed: int = 0, holdout_largest: int = 3,
             grid: Grid = FULL_GRID, chinchilla: dict[tuple[str, str], ChinchillaResult] | None = None
             ) -> Headline:
    """Leverage, law-free leverage and the bank ranking; `chinchilla`: per (family, modality)
    fits already made, whose estimates are reused. Only runs on the joint mixture take part
    (records.joint_mixture): unimodal baselines belong to the bimodal law."""
    df = joint_mixture(df)
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table, fits, n = leverage_table(df, bootstrap, seed, grid=grid, chinchilla=chinchilla)
    notes += n + [f"efficiency leverage: {w.message}" for w in caught
                  if not issubclass(w.category, RuntimeWarning)]
    jobs = leverage_jobs(df)
    if not jobs:
        raise AnalysisError("no modality has both dense and MoE runs to compare: " + "; ".join(notes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = {(f.modality, f.family): f for f in fits}
        free = pd.DataFrame([law_free_leverage(fitted.get(j), df, bootstrap, seed, job=j) for j in jobs])
    if table.empty:
        table = pd.DataFrame(columns=SHOWN)
    rankings, best_fits = [], []
    for m in sorted({m for m, _ in jobs}):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ranking, _, n = rank_laws(df, m, holdout_largest, min(bootstrap, 200), seed)
        except AnalysisError as e:
            notes.append(f"law bank ({m}): {e}")
            continue
        rankings.append(ranking)
        notes += [f"law bank ({m}): {x}" for x in n]
        best = best_law(ranking)
        if best is None:
            notes.append(f"law bank ({m}): no best law (none beats the baseline, or only one "
                         "could be fitted): the per-family Chinchilla laws give every row")
        elif best in ("joint", "granularity"):
            try:
                best_fits += best_law_fits(df, m, best, fits, bootstrap, seed)
            except AnalysisError as e:
                notes.append(f"law bank ({m}): the best law, {best}, could not be refitted: {e}")
        else:
            notes.append(f"law bank ({m}): the best law on held-out runs is {best}; "
                         + ("the per-family Chinchilla laws give every row" if best == "chinchilla"
                            else "it has no token term, so no compute-optimal frontier: the "
                            "per-family Chinchilla laws give every row"))
    rows = [table]
    for f in best_fits:
        t = f.table()
        rows.insert(0, t[t["where"].str.startswith("extrapolated")])
    lev = pd.concat(rows, ignore_index=True)
    lev["first"] = lev["law"] != "chinchilla"
    lev = lev.sort_values(["modality", "family", "C", "first"], ascending=[True, True, True, False],
                          kind="stable").drop(columns="first").reset_index(drop=True)
    return Headline(lev[[c for c in SHOWN if c in lev]], free,
                    pd.concat(rankings, ignore_index=True) if rankings else pd.DataFrame(),
                    fits, best_fits, notes)


PRIMARY = ["modality", "family", "EL", "EL lower", "EL upper", "EL from", "dL", "dL SE", "pairs",
           "verdict", "margin under floors", "note"]


def _law_leverage(h: Headline, df: pd.DataFrame, modality: str, family: str) -> tuple[dict | None, str]:
    """The law-based EL at the MoE's median observed compute where both families' Chinchilla
    laws are identified (identify.check_design) and its interval holds the estimate; else
    (None, why not)."""
    keys = family_key(df)
    for fam in ("dense", family):
        rows = df[(df["modality"] == modality) & (keys == fam)]
        ident = check_design(rows, len(NAMES), ("N", "D"), f"{fam}, {modality}")
        if not ident.ok:
            return None, f"the {fam} law is not identified, {ident.suggestion}"
    lev = h.leverage
    row = lev[(lev["modality"] == modality) & (lev["family"] == family) & (lev["law"] == "chinchilla")
              & (lev["where"] == "median observed")]
    if row.empty:
        return None, "no law-based leverage"
    r = row.iloc[0]
    if not interval_ok(r["EL"], r["lower"], r["upper"]):
        return None, "the law-based interval does not hold its estimate"
    return {"EL": r["EL"], "EL lower": r["lower"], "EL upper": r["upper"],
            "EL from": f"laws, at the MoE's median observed compute {r['C']:.3g} FLOPs"}, ""


def _free_leverage(h: Headline, modality: str, family: str) -> dict | None:
    free = h.law_free
    if free.empty:
        return None
    row = free[(free["modality"] == modality) & (free["family"] == family)]
    if row.empty or not interval_ok(row["EL (runs)"].iloc[0], row["lower"].iloc[0], row["upper"].iloc[0]):
        return None
    r = row.iloc[0]
    return {"EL": r["EL (runs)"], "EL lower": r["lower"], "EL upper": r["upper"],
            "EL from": f"runs alone (law-free; MoE Pareto runs compared: {r['MoE runs compared']})"}


def _agreement(r: dict) -> str:
    """Why the leverage and the paired verdict may read differently, where they do."""
    lo, hi, v = r.get("EL lower", np.nan), r.get("EL upper", np.nan), r["verdict"]
    if not (np.isfinite(lo) and np.isfinite(hi)) or v.startswith("no test") or v.startswith("no matched"):
        return ""
    ahead = lo > 1  # experts worth more compute
    behind = hi < 1
    better = v.endswith("better") and not v.startswith("dense")
    worse = v == "dense better"
    if (ahead and worse) or (behind and better):
        return ("they disagree: the leverage compares Pareto fronts (or laws) across sizes, the "
                "paired dL the runs as trained at the pairs' own sizes and budgets")
    if (ahead or behind) and not (better or worse):
        return ("the leverage interval excludes 1 but is an unadjusted 95% interval; the paired "
                "difference is not significant after Holm's correction")
    if (better or worse) and not (ahead or behind):
        return "the paired difference is resolved, the leverage interval still includes 1"
    return ""


def markov_floors(df: pd.DataFrame) -> dict[tuple[str, str], float] | None:
    """{(run, modality): the lower of its unigram and bigram floors} from the tidy table; None
    where no record carries floors. The lower one: on incompressible data the bigram model's
    extra parameters make its held-out loss the higher of the two."""
    known = df.dropna(subset=["floor_bigram"]) if "floor_bigram" in df else df.iloc[:0]
    low = known[["floor_unigram", "floor_bigram"]].min(axis=1)
    floors = dict(zip(zip(known["run"], known["modality"], strict=True), low, strict=True))
    return floors or None


def primary(paired: pd.DataFrame | None, h: Headline | None, df: pd.DataFrame,
            floors: dict[tuple[str, str], float] | None = None) -> pd.DataFrame:
    """The report's first table: per modality and MoE family, the efficiency leverage with its
    95% interval (law-based where both laws are identified, else law-free, else none), the
    paired dL with its document-level SE (compare.compare_pairs), the one verdict (the paired
    test under compare.POLICY), and, where `floors` ({(run, modality): floor}, markov_floors) is
    given, how far the family's best run lies under the lower of its unigram and bigram floors
    (nats/token, > 0: below)."""
    every, df = df, joint_mixture(df)
    keys = set()
    if paired is not None:
        keys |= set(zip(paired["modality"], paired["family"], strict=True))
    if h is not None:
        for t in (h.leverage, h.law_free):
            if len(t):
                keys |= set(zip(t["modality"], t["family"], strict=True))
    rows = []
    fkey = family_key(every)  # the margin looks at each family's runs on every mixture it trained
    for modality, family in sorted(keys):
        r: dict = {"modality": modality, "family": family}
        lev, why = (None, "no leverage fit") if h is None else _law_leverage(h, df, modality, family)
        lev = lev or (None if h is None else _free_leverage(h, modality, family))
        r.update(lev or {"EL": np.nan, "EL lower": np.nan, "EL upper": np.nan,
                         "EL from": f"none: {why}; no law-free interval holds its estimate"})
        p = None if paired is None else paired[(paired["modality"] == modality)
                                               & (paired["family"] == family)]
        if p is None or p.empty:
            r.update({"dL": np.nan, "dL SE": np.nan, "pairs": 0, "verdict": "no matched pairs: no verdict"})
        else:
            q = p.iloc[0]
            r.update({"dL": q["dL"], "dL SE": q["se"], "pairs": int(q["pairs"]), "verdict": q["verdict"]})
        if floors:
            runs = every[(every["modality"] == modality) & (fkey == family)]
            best = runs.loc[runs["loss"].idxmin()] if len(runs) else None
            floor = None if best is None else floors.get((best["run"], modality))
            r["margin under floors"] = np.nan if floor is None else floor - best["loss"]
        r["note"] = _agreement(r)
        rows.append(r)
    out = pd.DataFrame(rows)
    return out[[c for c in PRIMARY if c in out]]


def primary_text(table: pd.DataFrame) -> str:
    """What the primary table is and the multiplicity policy, in words."""
    from analysis.compare import POLICY

    k = int(table["verdict"].str.endswith("better").sum() + table["verdict"].str.startswith("no sig").sum())
    return ("One answer per MoE family and modality. EL: the dense compute the experts are worth "
            "over their own (> 1: worth more), with its 95% interval; from the fitted laws where "
            "the runs identify both, else from the runs alone (column EL from). dL = L_MoE - "
            "L_dense (nats/token) on matched pairs at the centre of their design, SE from "
            "per-document differences combined across pairs by a random-effects meta-regression "
            "on log N and log D. Margin under floors: the family's best run below the lower of its "
            "unigram and bigram floors of the training data (nats/token; > 0: it beats both). "
            f"Multiplicity policy: {POLICY} ({k} tested here); every other "
            "table in this report is secondary: unadjusted 95% intervals and no verdicts. The "
            "note says why the leverage and the verdict differ where they do.")


NO_ROWS = "No rows: the runs support none (why: under Notes)."


def _table(frame: pd.DataFrame, fmt: str) -> str:
    from analysis.tables import render

    return render(frame, fmt) if len(frame) else NO_ROWS


def sections(h: Headline, fmt: str = "md") -> list[tuple[str, str, str]]:
    """(title, explanation, table rendered in fmt) for the headline's three tables."""

    extrapolated = ", ".join(f"{f:g}x" for f in (10, 100))
    return [
        ("Efficiency leverage per modality and MoE family (secondary)",
         f"{COMPUTE}. EL > 1: the experts are worth more than their compute. Interval: 95% "
         "bootstrap of both laws together (pairs of runs resampled as units), unadjusted. "
         f"Rows 'extrapolated' lie {extrapolated} beyond the largest observed compute; where the "
         "bank's best law on held-out runs has a frontier, its row comes first (column law). "
         "Storage: the MoE's total params on its frontier vs the dense model of equal loss; "
         "inference FLOPs per token = a third of training FLOPs per token.",
         _table(h.leverage.drop(columns="verdict", errors="ignore"), fmt)),
        ("Efficiency leverage from the runs alone (no law; secondary)",
         "Geometric mean over the MoE's Pareto-front runs of the compute at which the dense "
         "runs' Pareto front (log-log interpolated, never extrapolated) reaches the same loss, "
         "over the run's compute; 95% interval from resampling runs (pairs as units). Beside it "
         "the law-based EL at the same compute, to see whether they agree (blank where the runs "
         "do not identify a law for both families).",
         _table(h.law_free, fmt)),
        ("MoE laws ranked on held-out runs (secondary)",
         "Each law of the bank the runs identify, fitted to the runs below the largest-compute "
         "MoE runs of each family (two or more token counts among them) and judged on the same "
         "held-out runs: RMS and mean absolute error of log loss (%), the share inside its 95% "
         "prediction interval, AIC (Laplace likelihood) on the training MoE runs. A law ranks "
         "only if it beats the baseline, a power law in compute per MoE family (OLS in log-log); "
         "among those, laws within one standard error of the best error rank first, fewest "
         "parameters first. One fittable law is not ranked.",
         _table(h.ranking, fmt)),
    ]
