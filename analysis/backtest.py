"""Backtest: can a law predict the runs it has not seen? Per group, fit on all but the K
largest-compute runs, predict those, and check each against its prediction interval.

Runs tied in compute with the K-th largest are held out too, so no training run shares the
compute of a held-out one. `backtest` takes any `analysis.prediction.Law`, so a bank of laws
can be ranked on the same held-out runs (`summarize` gives one line per law and group).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.fit import CHINCHILLA
from analysis.prediction import Law, prediction_interval
from analysis.results import group_label

MIN_TRAIN = 8  # training runs a group needs after the hold-out


def split_largest(rows: pd.DataFrame, k: int, compute: str = "C") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held out): the k largest-compute rows and any tied with the k-th are held out."""
    if k < 1:
        raise AnalysisError(f"--holdout-largest {k}: hold out at least one run")
    c = rows[compute].to_numpy(float)
    cut = np.sort(c)[::-1][min(k, len(c)) - 1]
    held = c >= cut
    return rows[~held], rows[held]


def backtest(df: pd.DataFrame, holdout_largest: int = 3, law: Law = CHINCHILLA,
             bootstrap: int = 1000, alpha: float = 0.05, seed: int = 0,
             compute: str = "C") -> pd.DataFrame:
    """One row per held-out run of every group `law.jobs` makes: group columns, run, N, D,
    compute, `beyond` (its compute over the largest training run's), observed, predicted,
    `lower`/`upper` (1 - alpha prediction interval, nats/token), covered, error (predicted -
    observed) and log_error (log predicted/observed). Groups too small to fit after holding out
    are skipped with a warning; none left is an error."""
    if law.predict is None:
        raise AnalysisError(f"the {law.name} law predicts no run's loss: it cannot be backtested")
    rows, problems = [], []
    for group, g in law.jobs(df):
        train, held = split_largest(g, holdout_largest, compute)
        if len(train) < MIN_TRAIN:
            problems.append(f"{group_label(group)}: {len(train)} runs left to fit after holding out "
                            f"{len(held)}, fewer than {MIN_TRAIN}")
            continue
        try:
            result = law.fit(train, group, bootstrap, seed)
        except AnalysisError as e:
            problems.append(str(e))
            continue
        pi = prediction_interval(result, law, train, held, alpha, seed)
        obs = held["loss"].to_numpy(float)
        c_train = train[compute].max()
        rows.append(pd.DataFrame({
            **group, "law": law.name,
            "run": held["run"].to_numpy() if "run" in held else np.arange(len(held)),
            "N": held["N"].to_numpy(float), "D": held["D"].to_numpy(float),
            compute: held[compute].to_numpy(float),
            "beyond": held[compute].to_numpy(float) / c_train, "observed": obs,
            "predicted": pi["predicted"].to_numpy(), "lower": pi["lower"].to_numpy(),
            "upper": pi["upper"].to_numpy(),
            "covered": (pi["lower"].to_numpy() <= obs) & (obs <= pi["upper"].to_numpy()),
            "error": pi["predicted"].to_numpy() - obs,
            "log_error": np.log(pi["predicted"].to_numpy() / obs)}))
    if problems and rows:
        warnings.warn("backtest skipped: " + "; ".join(problems), stacklevel=2)
    if not rows:
        raise AnalysisError("backtest: no group has enough runs; " + "; ".join(problems))
    out = pd.concat(rows, ignore_index=True)
    out.attrs["confidence"] = 1 - alpha
    out.attrs["holdout_largest"] = holdout_largest
    return out


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per law and group: held-out runs, how many the intervals covered, the mean absolute
    error (nats/token) and the root mean squared log error."""
    keys = [c for c in table.columns if c in ("law", "family", "modality", "pair")]
    return table.groupby(keys, sort=True).agg(
        held_out=("covered", "size"), covered=("covered", "sum"),
        mean_abs_error=("error", lambda e: float(np.abs(e).mean())),
        rms_log_error=("log_error", lambda e: float(np.sqrt(np.mean(e**2)))),
        max_beyond=("beyond", "max")).reset_index()

