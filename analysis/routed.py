"""The routed-MoE law of Clark et al. (2022):

    log L = a log N + b log E_hat + c log N log E_hat + d,
    1 / E_hat = 1 / (E - 1 + (1/E_start - 1/E_max)^-1) + 1 / E_max

with N the (active) params and E the number of experts; E_hat saturates the benefit of more
experts. (E_start, E_max) are chosen on a log grid by least squares, the rest by OLS given
them; bootstrap refits resample points and refit everything.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import statsmodels.api as sm

from analysis.errors import AnalysisError
from analysis.results import LawResult, group_label
from analysis.results import bootstrap as bootstrap_draws

NAMES = ["a", "b", "c", "d", "E_start", "E_max"]
E_START_GRID = np.exp(np.linspace(np.log(1.05), np.log(8.0), 16))
E_MAX_GRID = np.exp(np.linspace(np.log(8.0), np.log(4096.0), 16))


def _with_experts(df: pd.DataFrame) -> pd.DataFrame:
    """Column E: the run's expert count, 1 for dense runs."""
    return df.assign(E=np.where(df["family"] == "dense", 1, df["n_experts"]).astype(float))


def routed_jobs(df: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """Per modality: MoE runs with a learned router plus dense runs (E = 1)."""
    rows = _with_experts(df[(df["family"] == "dense") | ((df["family"] == "moe") & (df["n_experts"] > 0))])
    return [({"modality": m}, g) for m, g in rows.groupby("modality")]


def e_hat(E, e_start: float, e_max: float) -> np.ndarray:
    E = np.asarray(E, float)
    return 1.0 / (1.0 / (E - 1.0 + 1.0 / (1.0 / e_start - 1.0 / e_max)) + 1.0 / e_max)


def _design(logN, E, e_start, e_max):
    le = np.log(e_hat(E, e_start, e_max))
    return np.column_stack([logN, le, logN * le, np.ones_like(logN)])


def _fit(logN, E, logL, w=None):
    best = None
    for s in E_START_GRID:
        for m in E_MAX_GRID:
            if m <= s:
                continue
            X = _design(logN, E, s, m)
            sw = np.ones_like(logL) if w is None else np.sqrt(w)
            coef, *_ = np.linalg.lstsq(X * sw[:, None], logL * sw, rcond=None)
            sse = float((((X @ coef) - logL) ** 2 * (sw**2)).sum())
            if best is None or sse < best[0]:
                best = (sse, coef, s, m)
    return best


class RoutedResult(LawResult):
    ols: object = None  # statsmodels OLS results given (E_start, E_max)

    def predict(self, N, E) -> np.ndarray:
        p = self.params
        logN = np.log(np.asarray(N, float))
        le = np.log(e_hat(E, p["E_start"], p["E_max"]))
        return np.exp(p["a"] * logN + p["b"] * le + p["c"] * logN * le + p["d"])


def fit_routed(df: pd.DataFrame, group: dict, bootstrap: int = 1000, seed: int = 0) -> RoutedResult:
    label = group_label(group)
    if "E" not in df:
        df = _with_experts(df)
    if df["E"].nunique() < 2:
        raise AnalysisError(f"group ({label}): the expert count does not vary; the routed law needs "
                            "runs with at least two expert counts")
    if df["N"].nunique() < 2:
        raise AnalysisError(f"group ({label}): every run has the same size; a cannot be fitted")
    if len(df) < 6:
        raise AnalysisError(f"group ({label}): {len(df)} points, fewer than the 6 parameters of the "
                            "routed law")
    logN, logL = np.log(df["N"].to_numpy(float)), np.log(df["loss"].to_numpy(float))
    E = df["E"].to_numpy(float)
    sse, coef, s, m = _fit(logN, E, logL)

    def refit(w: np.ndarray) -> np.ndarray:
        _, c2, s2, m2 = _fit(logN, E, logL, w)
        return np.array([*c2, s2, m2])

    boot = bootstrap_draws(len(logL), bootstrap, seed, refit)
    params = pd.Series([*coef, s, m], index=NAMES)
    result = RoutedResult("routed", group, params, boot, len(df), sse, True, "least squares")
    result.ols = sm.OLS(logL, _design(logN, E, s, m)).fit()
    for name, value, grid in (("E_start", s, E_START_GRID), ("E_max", m, E_MAX_GRID)):
        if value in (grid[0], grid[-1]):
            result.warnings.append(f"{name} = {value:.4g} sits on the edge of its grid "
                                   f"[{grid[0]:.3g}, {grid[-1]:.3g}]")
    return result
