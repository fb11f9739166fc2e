"""Fit a law to every group of a tidy table; a bad group is skipped with a warning."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from analysis.bimodal import bimodal_jobs, fit_bimodal
from analysis.chinchilla import ChinchillaResult, fit_chinchilla, loss
from analysis.errors import AnalysisError
from analysis.prediction import Law
from analysis.records import by_family
from analysis.results import LawResult
from analysis.routed import ROUTED


def chinchilla_jobs(df: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """One group per (family as `family_key` labels it, modality) over the runs on the joint
    mixture (records.by_family), the group naming that mixture where the runs record one."""
    out = []
    for (f, m), g in by_family(df).groupby(["family", "modality"]):
        mixture = {"mixture": ", ".join(sorted(set(g["modalities"])))} if "modalities" in g else {}
        out.append(({"family": f, "modality": m, **mixture}, g))
    return out


def chinchilla_predict(params: np.ndarray, rows: pd.DataFrame) -> np.ndarray:
    return loss(params, rows["N"].to_numpy(float), rows["D"].to_numpy(float))


# the laws `fit`, the report and backtests fit to groups of runs, by name (`fit --law`); those
# with a `predict` can be backtested (`fit --holdout-largest`)
LAWS = {"chinchilla": Law("chinchilla", chinchilla_jobs, fit_chinchilla, chinchilla_predict),
        "bimodal": Law("bimodal", bimodal_jobs, fit_bimodal),
        "routed": ROUTED}
CHINCHILLA = LAWS["chinchilla"]


def fit_groups(df: pd.DataFrame, law: str = "chinchilla", bootstrap: int = 1000,
               seed: int = 0) -> list[LawResult]:
    """chinchilla: one fit per (MoE family as `family_key` labels it, modality) over the runs on
    the joint mixture (records.by_family), its group naming that mixture; bimodal: per (family,
    modality pair); routed: per modality, router, top-k and token count (routed.routed_jobs).
    A group that cannot be fitted (or is not identified) is skipped with one warning each; none
    fitted: AnalysisError."""
    results, problems = fit_groups_noting(df, law, bootstrap, seed)
    for p in problems if results else []:
        warnings.warn(f"skipped: {p}", stacklevel=2)
    if not results:
        raise AnalysisError("; ".join(problems) or f"no group of runs to fit the {law} law to")
    return results


def fit_groups_noting(df: pd.DataFrame, law: str = "chinchilla", bootstrap: int = 1000,
                      seed: int = 0) -> tuple[list[LawResult], list[str]]:
    """As fit_groups, returning (results, one line per group skipped and why) without warning
    or raising, for a report that prints each skipped group where its law would be."""
    if law not in LAWS:
        raise AnalysisError(f"unknown law {law!r}; use {', '.join(LAWS)}")
    results, problems = [], []
    for group, g in LAWS[law].jobs(df):
        try:
            results.append(LAWS[law].fit(g, group, bootstrap, seed))
        except AnalysisError as e:
            problems.append(str(e))
    return results, problems


def chinchilla_by_group(results: list[LawResult]) -> dict[tuple[str, str], ChinchillaResult]:
    return {(r.group["family"], r.group["modality"]): r for r in results
            if isinstance(r, ChinchillaResult)}
