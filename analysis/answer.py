"""The analysis chain `report` and `compare` share, so both print the same answer: which rows
the laws may use (above their unigram floor), the Chinchilla fits, efficiency leverage, the
paired comparison and the primary table built from them, with every caught problem as a note."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from analysis.compare import compare_pairs
from analysis.compute import Frontier, frontiers
from analysis.errors import AnalysisError
from analysis.fit import chinchilla_by_group, fit_groups_noting
from analysis.headline import Headline, headline, markov_floors, primary
from analysis.minority import find_study, level_values
from analysis.results import LawResult

if TYPE_CHECKING:
    from analysis.chinchilla import ChinchillaResult
    from analysis.paired import DocLosses


def said(what: str, caught: list[warnings.WarningMessage]) -> list[str]:
    """The analysis' own warnings, once each; numpy's floating-point warnings from bootstrap
    draws of runaway laws say nothing to a reader."""
    out = [f"{what}: {w.message}" for w in caught if not issubclass(w.category, RuntimeWarning)]
    return list(dict.fromkeys(out))


def noting(what: str, fn: Callable[[], Any], notes: list[str]) -> Any:
    """fn(), its warnings appended to `notes`; None (and the reason noted) where it raises
    AnalysisError."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = fn()
        notes += said(what, caught)
        return out
    except AnalysisError as e:
        notes.append(f"{what}: {e}")
        return None


def fit_noting(what: str, df: pd.DataFrame, law: str, bootstrap: int,
               notes: list[str]) -> tuple[list[LawResult], list[str]]:
    """(identified fits, one '- ...' line per reason a group was not fitted: its groups, why
    and what to add)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results, problems = fit_groups_noting(df, law, bootstrap)
    notes += said(what, caught)
    groups: dict[str, list[str]] = {}
    for p in problems:
        label, _, why = p.partition(": ")
        groups.setdefault(why, []).append(label)
    return results, [f"- {labels[0]}: {why}" if len(labels) == 1
                     else f"- {len(labels)} groups, {'; '.join(labels)}: {why}"
                     for why, labels in groups.items()]


def _against(loss: float, se: float, floor: float) -> str:
    """'loss 2.775 (SE 0.0004) vs floor 2.774'."""
    return f"loss {loss:.3f}{'' if pd.isna(se) else f' (SE {se:.2g})'} vs floor {floor:.3f}"


def at_unigram(df: pd.DataFrame) -> pd.Series:
    """Rows whose loss does not beat their unigram floor by more than its SE (by any margin
    where the SE is unknown), as the floors table reads it: nothing learned is shown."""
    return df["loss"] >= df["floor_unigram"] - df["loss_se"].fillna(0.0)


def above_unigram(df: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """The rows the laws may use: a run that does not beat its unigram floor on a modality
    (at_unigram) has shown nothing learned, so that row is left out of every law fit (said in
    the notes).
    Rows without floors are kept."""
    if df["floor_unigram"].isna().all():
        notes.append("floors: no record has floors (records before schema version 3), so no run "
                     "was checked against them")
        return df
    nothing = at_unigram(df)
    if nothing.any():
        flagged = df[nothing]
        notes.append(f"floors: {len(flagged)} (run, modality) rows do not beat their unigram floor "
                     "by more than their SE and are left out of the law fits: " + ", ".join(
                         f"{r} {m} ({_against(lo, se, u)})" for r, m, lo, se, u in list(zip(
                             flagged["run"], flagged["modality"], flagged["loss"],
                             flagged["loss_se"], flagged["floor_unigram"], strict=True))[:20])
                     + (" ..." if len(flagged) > 20 else ""))
    if df["floor_unigram"].isna().any():
        notes.append(f"floors: {int(df['floor_unigram'].isna().sum())} rows have no floors in "
                     "their records and were kept unchecked")
    return df[~nothing].reset_index(drop=True)


def unlearned(df: pd.DataFrame) -> dict[str, str]:
    """{modality: why} for the modalities no run beats its unigram floor on: no model learned
    them, so there is no dense-against-experts question to answer there (the filter looks at
    every run of both families alike, never at which one is better)."""
    out = {}
    for m, g in df.dropna(subset=["floor_unigram"]).groupby("modality"):
        if len(g) and at_unigram(g).all():
            best = g.loc[g["loss"].idxmin()]
            out[m] = (f"{m}: no run beats its unigram floor by more than its SE (best: "
                      f"{_against(best['loss'], best['loss_se'], best['floor_unigram'])} nats/token, "
                      f"{best['run']}), so no model learned it: no comparison on {m}")
    return out


def pooled_shares(df: pd.DataFrame) -> list[str]:
    """A line where the runs vary one modality's share of the data at otherwise equal settings
    (a minority study): the laws, the leverage and the primary dL pool those shares, so the
    line points to the section that reads them share by share."""
    study = find_study(df)
    if study is None:
        return []
    m, rows = study
    levels = ", ".join(f"{v:.0%}" for v in level_values(rows.loc[rows["modality"] == m, "share"]))
    return [f"{m}'s share of the training tokens varies across otherwise matched runs ({levels}): "
            "the leverage and dL above pool those shares (dL regressed on log D); the section "
            f"'Minority modality' gives {m} share by share"]


@dataclass
class Answer:
    """What the runs say about dense against experts, and what they could not say (notes)."""

    runs: pd.DataFrame  # every run, a row per modality: the paired comparison uses them all
    fitted: pd.DataFrame  # the rows above their unigram floor: what the laws are fitted to
    chinchilla: list[LawResult]
    chinchilla_gaps: list[str]  # '- group: not identified ...' lines
    headline: Headline | None
    paired: pd.DataFrame | None
    primary: pd.DataFrame
    caveats: list[str] = field(default_factory=list)  # what the primary table cannot say, and why
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> dict[tuple[str, str], ChinchillaResult]:
        return chinchilla_by_group(self.chinchilla)

    def frontiers(self) -> dict[tuple[str, str], Frontier]:
        return frontiers(self.fitted, self.fits)


def answer(df: pd.DataFrame, docs: dict[str, dict[str, DocLosses]] | None,
           bootstrap: int) -> Answer:
    """Fit, compare and pick the primary answer per MoE family and modality. The paired
    comparison keeps every pair of a modality some run learned (which pairs count must not
    depend on their outcome); the laws see only rows above their unigram floor."""
    notes: list[str] = []
    fitted = above_unigram(df, notes)
    chin, gaps, h = [], [], None
    if not fitted.empty:
        chin, gaps = fit_noting("Chinchilla fits", fitted, "chinchilla", bootstrap, notes)
        h = noting("efficiency leverage", lambda: headline(
            fitted, bootstrap, chinchilla=chinchilla_by_group(chin)), notes)
        notes += h.notes if h is not None else []
    skip = unlearned(df)
    asked = df[~df["modality"].isin(list(skip))]
    paired = (noting("paired comparison", lambda: compare_pairs(asked, docs=docs), notes)
              if len(asked) else None)
    table = primary(paired, h, asked, markov_floors(asked))
    return Answer(df, fitted, chin, gaps, h, paired, table, [*skip.values(), *pooled_shares(df)],
                  notes)
