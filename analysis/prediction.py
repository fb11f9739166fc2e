"""Prediction intervals for the loss of a new run, from any fitted law.

A new run's log loss is the law's log prediction plus the run's own scatter. The interval
carries both: the fit's bootstrap refits give the spread of the prediction (parameter
uncertainty), and each refit's prediction is paired with log residuals of the fit drawn from
the robust pool of `analysis.results.resample_residuals` (the p residuals nearest zero left
out: a near-LAD fit passes through about p points); expanded percentiles of the sum
(`LawResult.expanded`) are the interval. Without bootstrap refits the interval holds residual
scatter only and says so.

`Law` is what this needs from a law, so that any law can be backtested and ranked the same
way: how its runs are grouped, how a group is fitted, and the loss its parameters predict for
given rows. The laws `fit` and the report fit are `analysis.fit.LAWS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.results import LawResult, held, interval, resample_residuals

MIN_SAMPLES = 4000  # draws of (refit, residual) pairs behind each interval


@dataclass(frozen=True)
class Law:
    """A law as the backtest and prediction intervals see it.

    jobs(df) -> [(group, rows)]: the groups one fit is made for.
    fit(rows, group, bootstrap, seed) -> LawResult whose `boot` rows are refits of `params`.
    predict(params, rows) -> loss in nats/token: params [P] gives [len(rows)], params [S, P]
    gives [S, len(rows)], in the order of `result.params`; None for a law that does not predict
    a run's loss (the bimodal law predicts an interaction), which cannot be backtested.
    """

    name: str
    jobs: Callable[[pd.DataFrame], list[tuple[dict, pd.DataFrame]]]
    fit: Callable[[pd.DataFrame, dict, int, int], LawResult]
    predict: Callable[[np.ndarray, pd.DataFrame], np.ndarray] | None = None


def residuals(result: LawResult, law: Law, rows: pd.DataFrame) -> np.ndarray:
    """Log residuals of the fit on the rows it was fitted to."""
    return np.log(rows["loss"].to_numpy(float)) - np.log(law.predict(result.params.to_numpy(float), rows))


def prediction_interval(result: LawResult, law: Law, train: pd.DataFrame, new: pd.DataFrame,
                        alpha: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """For each row of `new`: `predicted` (the fit's loss), `mean_lower`/`mean_upper` (interval
    of the law's value: parameter uncertainty only) and `lower`/`upper` (1 - alpha prediction
    interval of a new run's loss: parameter uncertainty and residual scatter), nats/token.
    `train`: the rows the result was fitted to."""
    rng = np.random.default_rng(seed)
    point = law.predict(result.params.to_numpy(float), new)
    level = result.expanded(alpha)
    boot = result.boot
    if boot is None or len(boot) < 2:
        draws = np.repeat(point[None], MIN_SAMPLES, 0)
        mean_lo = mean_hi = np.full(len(new), np.nan)
    else:
        mu = law.predict(np.asarray(boot, float), new)  # [B, m]
        mean_lo, mean_hi = interval(mu, level, axis=0)
        draws = np.tile(mu, (-(-MIN_SAMPLES // len(mu)), 1))
    eps = resample_residuals(residuals(result, law, train), len(result.params), len(draws), rng,
                             len(new), robust=True)
    lo, hi = held(point, *np.exp(interval(np.log(draws) + eps, level, axis=0)))
    mean_lo, mean_hi = held(point, mean_lo, mean_hi)
    out = pd.DataFrame({"predicted": point, "mean_lower": mean_lo, "mean_upper": mean_hi,
                        "lower": lo, "upper": hi}, index=new.index)
    out.attrs["method"] = ("bootstrap refits x resampled log residuals" if boot is not None and len(boot) > 1
                           else "resampled log residuals only (no bootstrap refits: parameter "
                           "uncertainty is missing)")
    out.attrs["confidence"] = 1 - alpha
    return out
