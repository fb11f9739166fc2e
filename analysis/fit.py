"""Fit a law to every group of a tidy table; a bad group is skipped with a warning."""

from __future__ import annotations

import warnings

import pandas as pd

from analysis import prediction
from analysis.bimodal import bimodal_jobs, fit_bimodal
from analysis.chinchilla import ChinchillaResult, fit_chinchilla
from analysis.errors import AnalysisError
from analysis.records import by_family
from analysis.results import LawResult
from analysis.routed import fit_routed, routed_jobs


def chinchilla_jobs(df: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """prediction.chinchilla_jobs (per family and modality) over the runs on the joint mixture,
    families as `family_key` labels them (records.by_family), the group naming that mixture."""
    return [({**group, "mixture": ", ".join(sorted(set(g["modalities"])))}, g)
            for group, g in prediction.chinchilla_jobs(by_family(df))]


# the laws `fit` and the report fit to groups of runs: name -> (jobs(df), fit(rows, group,
# bootstrap, seed))
FITTERS = {"chinchilla": (chinchilla_jobs, fit_chinchilla), "bimodal": (bimodal_jobs, fit_bimodal),
           "routed": (routed_jobs, fit_routed)}


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
    if law not in FITTERS:
        raise AnalysisError(f"unknown law {law!r}; use {', '.join(FITTERS)}")
    jobs, fit = FITTERS[law]
    results, problems = [], []
    for group, g in jobs(df):
        try:
            results.append(fit(g, group, bootstrap, seed))
        except AnalysisError as e:
            problems.append(str(e))
    return results, problems


def chinchilla_by_group(results: list[LawResult]) -> dict[tuple[str, str], ChinchillaResult]:
    return {(r.group["family"], r.group["modality"]): r for r in results
            if isinstance(r, ChinchillaResult)}
