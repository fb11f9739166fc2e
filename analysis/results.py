"""Fit results in statsmodels' manner: params, bse, conf_int(), summary(), predict(), to_json()."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class LawResult:
    """Point estimates, bootstrap draws (one row per refit) and how the fit went."""

    law: str
    group: dict
    params: pd.Series
    boot: np.ndarray | None
    nobs: int
    objective: float
    converged: bool
    message: str
    warnings: list[str] = field(default_factory=list)
    df_resid: int = 0  # points minus fitted parameters; > 0: percentile intervals are expanded

    def expanded(self, alpha: float) -> float:
        """The level whose percentile interval is used for a 1 - alpha one: percentile bootstrap
        intervals are too narrow when the noise level is estimated from few points, so (as in
        Hesterberg 2015, "expanded percentile") they take the tail share alpha' with normal
        quantile sqrt(n / (n - 1)) t_{df}(1 - alpha / 2), df the residual degrees of freedom."""
        return expanded_level(alpha, self.nobs, self.df_resid)

    @property
    def bse(self) -> pd.Series:
        """Bootstrap standard errors (NaN without bootstrap)."""
        if self.boot is None or len(self.boot) < 2:
            return pd.Series(np.nan, index=self.params.index)
        return pd.Series(np.nanstd(self.boot, axis=0, ddof=1), index=self.params.index)

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Percentile bootstrap intervals (expanded, see `expanded`), columns `lower` and
        `upper`; NaN where an interval would not hold its estimate with positive width (`held`)."""
        if self.boot is None or len(self.boot) < 2:
            lo = hi = np.full(len(self.params), np.nan)
        else:
            lo, hi = held(self.params.to_numpy(float), *interval(self.boot, self.expanded(alpha), axis=0))
        return pd.DataFrame({"lower": lo, "upper": hi}, index=self.params.index)

    def withheld(self, alpha: float = 0.05) -> list[str]:
        """Parameters the runs do not identify at all (no finite bound on either side): their
        estimates are not printed, only that they are not identified."""
        ci = self.conf_int(alpha)
        return [k for k in self.params.index
                if np.isinf(ci.loc[k, "lower"]) and np.isinf(ci.loc[k, "upper"])]

    def estimates(self, alpha: float = 0.05) -> pd.Series:
        """`params` with NaN for the withheld ones (`withheld`): what tables print."""
        return self.params.where(~self.params.index.isin(self.withheld(alpha)))

    def label(self) -> str:
        return group_label(self.group)

    def summary(self, alpha: float = 0.05) -> str:
        ci = self.conf_int(alpha)
        est = self.estimates(alpha)
        table = pd.DataFrame({"estimate": est, "std err": self.bse.where(est.notna()),
                              f"[{alpha / 2:g}": ci["lower"], f"{1 - alpha / 2:g}]": ci["upper"]})
        head = (f"{self.law} law fit ({self.label()}): {self.nobs} points, objective "
                f"{self.objective:.4g}, {'converged' if self.converged else 'NOT converged'}"
                f" ({self.message}); {0 if self.boot is None else len(self.boot)} bootstrap refits")
        notes = "".join(f"\nwarning: {w}" for w in self.warnings)
        return f"{head}\n{table.to_string(float_format=lambda v: f'{v:.6g}')}{notes}"

    def to_dict(self, alpha: float = 0.05) -> dict:
        ci, est = self.conf_int(alpha), self.estimates(alpha)
        se = self.bse.where(est.notna())
        return {
            "law": self.law, "group": self.group, "n_points": self.nobs,
            "objective": self.objective, "converged": self.converged, "message": self.message,
            "confidence": 1 - alpha,
            "params": {k: {"estimate": _num(est[k]), "lower": _bound(ci.loc[k, "lower"]),
                           "upper": _bound(ci.loc[k, "upper"]), "std_err": _num(se[k])}
                       for k in self.params.index},
            "n_bootstrap": 0 if self.boot is None else len(self.boot),
            "warnings": self.warnings,
        }

    def to_json(self, alpha: float = 0.05) -> str:
        return json.dumps(self.to_dict(alpha), indent=2)


def expanded_level(alpha: float, n: int, df: int) -> float:
    """The tail share whose percentile interval stands for a 1 - alpha one from n units with df
    degrees of freedom (Hesterberg 2015's expanded percentile, see LawResult.expanded); alpha
    itself where df <= 0."""
    if df <= 0 or n < 2:
        return alpha
    from scipy.stats import norm, t

    return float(2 * norm.sf(np.sqrt(n / (n - 1)) * t.ppf(1 - alpha / 2, df)))


def interval(draws: np.ndarray, alpha: float = 0.05, axis: int | None = None) -> np.ndarray:
    """The central 1 - alpha percentile interval of bootstrap draws (NaNs ignored): [lower, upper]."""
    return np.nanpercentile(draws, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=axis)


def held(estimate, lower, upper) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) with both NaN wherever the interval does not contain its estimate or has
    no positive width: such an interval is not printed (an infinite bound is kept: unbounded)."""
    est, lo, hi = np.broadcast_arrays(*(np.asarray(v, float) for v in (estimate, lower, upper)))
    lo, hi = lo.copy(), hi.copy()
    lo[lo <= -BIG], hi[hi >= BIG] = -np.inf, np.inf  # float max that escaped a mapping to inf
    bad = ~((hi > lo) & (lo <= est) & (est <= hi))
    lo[bad], hi[bad] = np.nan, np.nan
    return lo, hi


def bound_text(v: float, fmt: str = ".4g") -> str:
    """A bound in words: 'unbounded' for an infinite one, '' for none (NaN)."""
    if np.isnan(v):
        return ""
    return "unbounded" if np.isinf(v) else format(v, fmt)


BIG = 1e300  # a bound at or beyond this is an overflow standing for an infinite one


def group_label(group: dict) -> str:
    """`family=moe, modality=dna`; "all" for the empty group."""
    return ", ".join(f"{k}={v}" for k, v in group.items()) or "all"


def _num(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def _bound(v) -> float | str | None:
    """An interval bound for JSON: the number, "unbounded" for an infinite one, null for none."""
    v = float(v)
    return "unbounded" if np.isinf(v) else _num(v)


def resample_residuals(resid: np.ndarray, n_params: int, draws: int, rng: np.random.Generator,
                       size: int | None = None, robust: bool = False) -> np.ndarray:
    """[draws, size] residuals (size defaults to n) drawn with replacement from a fit's n
    residuals, for a residual bootstrap (new data = fitted values + these).

    Least squares (robust=False): a fit bends towards its points, so its residuals understate
    the noise; all are divided by sqrt(1 - n_params / n). Robust (Huber with a small delta,
    close to least absolute deviations): such a fit passes through some points, whose near-zero
    residuals would give the bootstrap world an atom of noise at zero and make its refits far
    too precise; the n_params residuals nearest zero are left out instead, the rest kept as
    they are. Not re-centred: the laws' fits leave residuals with median (Huber) or mean (OLS)
    about zero already."""
    resid = np.asarray(resid, float)
    n = len(resid)
    if robust:
        pool = resid[np.argsort(np.abs(resid))[min(n_params, n - 1):]]
    else:
        pool = resid / np.sqrt(1 - min(n_params / n, 0.9))
    return pool[rng.integers(0, len(pool), (draws, size or n))]
