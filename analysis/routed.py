"""The routed-MoE law of Clark et al. (2022):

    log L = a log N + b log E_hat + c log N log E_hat + d,
    1 / E_hat = 1 / (E - 1 + (1/E_start - 1/E_max)^-1) + 1 / E_max

with N the (active) params and E the number of experts; E_hat saturates the benefit of more
experts. (E_start, E_max) are chosen on a log grid by least squares, the rest by OLS given
them.

Intervals: a residual bootstrap (each draw adds resampled residuals to the fitted log losses
and refits everything, grid included). The grid search bends the law towards the points more
than a linear fit with 6 parameters would, so the residuals understate the noise by more than
sqrt(1 - 6/n): a first round of refits measures the share of a known noise's sum of squares a
refit leaves in its residuals, and the residuals are scaled up by one over its square root.
Parameters get expanded percentile intervals of the draws (`LawResult.expanded`). The
quantities a reader uses, the loss at a point and the gain of E experts, are linear in
(a, b, c, d) given the grid point, so theirs are studentized (bootstrap-t): the draws of
(q* - q) / se*, with se* OLS's standard error in that draw, scaled by the fit's own se. With
few runs per parameter a percentile interval of them is too short (it ignores that the noise
level itself is estimated); bootstrap-t is not.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import statsmodels.api as sm

from analysis.errors import AnalysisError
from analysis.results import LawResult, group_label, interval, resample_residuals

NAMES = ["a", "b", "c", "d", "E_start", "E_max"]
E_START_GRID = np.exp(np.linspace(np.log(1.05), np.log(8.0), 16))
E_MAX_GRID = np.exp(np.linspace(np.log(8.0), np.log(4096.0), 16))
GRID = [(s, m) for s in E_START_GRID for m in E_MAX_GRID if m > s]
CALIBRATION_DRAWS = 200


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


def fit_draws(logN: np.ndarray, E: np.ndarray, logL_BN: np.ndarray):
    """Least squares over the (E_start, E_max) grid and (a, b, c, d), for B data sets at once
    (rows of logL_BN): (sse_B, coef_B4, grid index_B, cov_B44), cov being OLS's covariance
    of (a, b, c, d) given the chosen grid point."""
    best_sse = np.full(len(logL_BN), np.inf)
    best_coef = np.zeros((len(logL_BN), 4))
    best_g = np.zeros(len(logL_BN), int)
    for g, (s, m) in enumerate(GRID):
        X = _design(logN, E, s, m)
        coef = logL_BN @ np.linalg.pinv(X).T
        sse = ((coef @ X.T - logL_BN) ** 2).sum(1)
        better = sse < best_sse
        best_sse[better], best_coef[better], best_g[better] = sse[better], coef[better], g
    df_resid = max(len(logN) - len(NAMES), 1)
    cov = np.empty((len(logL_BN), 4, 4))
    for g in np.unique(best_g):
        X = _design(logN, E, *GRID[g])
        rows = best_g == g
        cov[rows] = np.linalg.inv(X.T @ X)[None] * (best_sse[rows] / df_resid)[:, None, None]
    return best_sse, best_coef, best_g, cov


class RoutedResult(LawResult):
    ols: object = None  # statsmodels OLS results given (E_start, E_max)
    cov: np.ndarray  # [4, 4] covariance of (a, b, c, d) given the grid point, sse / (n - 6)
    boot_cov: np.ndarray  # [B, 4, 4] the same in every bootstrap draw
    boot_sse: np.ndarray  # [B] residual sum of squares in every draw
    resid: np.ndarray  # log-space residuals of the fit
    scatter: float  # variance of the run-to-run noise in log L

    def predict(self, N, E) -> np.ndarray:
        p = self.params
        logN = np.log(np.asarray(N, float))
        le = np.log(e_hat(E, p["E_start"], p["E_max"]))
        return np.exp(p["a"] * logN + p["b"] * le + p["c"] * logN * le + p["d"])

    def _rows(self, p: np.ndarray, N, E) -> np.ndarray:
        """[..., K, 4] design rows at (N, E) for parameter rows p [..., 6]."""
        logN = np.log(np.atleast_1d(np.asarray(N, float)))
        le = np.log(e_hat(np.atleast_1d(E), p[..., 4:5], p[..., 5:6]))
        return np.stack(np.broadcast_arrays(logN, le, logN * le, np.ones_like(le)), -1)

    def linear_interval(self, x_K4: np.ndarray, x_BK4: np.ndarray, alpha: float = 0.05,
                        noise: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Estimate and 1 - alpha bootstrap-t interval of q = x . (a, b, c, d) for K rows x_K4
        at the estimate and x_BK4 in every draw (they differ when the grid point does);
        noise=True: a prediction interval for one new observation of q (adds the scatter)."""
        q = x_K4 @ self.params[["a", "b", "c", "d"]].to_numpy()
        se = np.sqrt(np.einsum("kp,pq,kq->k", x_K4, self.cov, x_K4))
        q_B = np.einsum("bkp,bp->bk", x_BK4, self.boot[:, :4])
        se_B = np.sqrt(np.einsum("bkp,bpq,bkq->bk", x_BK4, self.boot_cov, x_BK4))
        if noise:
            s2_B = self.boot_sse * self.scatter / self.objective
            se, se_B = np.sqrt(se**2 + self.scatter), np.sqrt(se_B**2 + s2_B[:, None])
            rng = np.random.default_rng(0)
            scale = np.sqrt(self.scatter * self.nobs / (self.resid**2).sum())
            q_B = q_B + scale * resample_residuals(self.resid, 0, len(q_B), rng, len(q))
        t_lo, t_hi = interval((q_B - q) / se_B, alpha, axis=0)
        return q, q - t_hi * se, q - t_lo * se

    def predict_interval(self, N, E, alpha: float = 0.05, kind: str = "mean") -> pd.DataFrame:
        """Loss (nats/token) at N params and E experts with a 1 - alpha bootstrap-t interval:
        kind="mean" a confidence interval for the law's loss there, kind="observation" a
        prediction interval for one new run there. Columns loss, lower, upper."""
        if kind not in ("mean", "observation"):
            raise AnalysisError(f"unknown interval kind {kind!r}; use mean or observation")
        p = self.params[NAMES].to_numpy()
        q, lo, hi = self.linear_interval(self._rows(p, N, E), self._rows(self.boot, N, E),
                                         alpha, noise=kind == "observation")
        return pd.DataFrame({"loss": np.exp(q), "lower": np.exp(lo), "upper": np.exp(hi)})

    def gain(self, N, E, alpha: float = 0.05) -> pd.DataFrame:
        """L(N, E) / L(N, 1): the loss of E experts relative to the dense model of the same
        active size (< 1: the experts help), with a 1 - alpha bootstrap-t interval."""
        p = self.params[NAMES].to_numpy()
        x = self._rows(p, N, E) - self._rows(p, N, np.ones_like(np.asarray(E, float)))
        xb = (self._rows(self.boot, N, E)
              - self._rows(self.boot, N, np.ones_like(np.asarray(E, float))))
        q, lo, hi = self.linear_interval(x, xb, alpha)
        return pd.DataFrame({"ratio": np.exp(q), "lower": np.exp(lo), "upper": np.exp(hi)})


def fit_routed(df: pd.DataFrame, group: dict, bootstrap: int = 1000, seed: int = 0) -> RoutedResult:
    label = group_label(group)
    if "E" not in df:
        df = _with_experts(df)
    if df["E"].nunique() < 2:
        raise AnalysisError(f"group ({label}): the expert count does not vary; the routed law needs "
                            "runs with at least two expert counts")
    if df["N"].nunique() < 2:
        raise AnalysisError(f"group ({label}): every run has the same size; a cannot be fitted")
    if len(df) < 7:
        raise AnalysisError(f"group ({label}): {len(df)} points; the routed law's 6 parameters need "
                            "at least 7 to leave a residual to estimate the noise from")
    logN, logL = np.log(df["N"].to_numpy(float)), np.log(df["loss"].to_numpy(float))
    E = df["E"].to_numpy(float)
    (sse,), (coef,), (g,), (cov,) = fit_draws(logN, E, logL[None])
    s, m = GRID[g]
    params = pd.Series([*coef, s, m], index=NAMES)
    result = RoutedResult("routed", group, params, None, len(df), float(sse), True, "least squares")
    X = _design(logN, E, s, m)
    result.ols = sm.OLS(logL, X).fit()
    result.cov, result.resid = cov, logL - X @ coef
    result.scatter = sse / (len(df) - len(NAMES))
    result.df_resid = len(df) - len(NAMES)
    if bootstrap:
        rng = np.random.default_rng(seed)
        # the share of the noise's sum of squares that a refit leaves in its residuals: the
        # grid search absorbs more than the p / n of a linear fit
        noise = resample_residuals(result.resid, len(NAMES), CALIBRATION_DRAWS, rng)
        kept = fit_draws(logN, E, X @ coef + noise)[0].mean() / (noise**2).sum(1).mean()
        result.scatter = sse / (len(df) * kept)
        resid = result.resid / np.sqrt(kept)
        logL_BN = X @ coef + resid[rng.integers(0, len(df), (bootstrap, len(df)))]
        sse_B, coef_B, g_B, result.boot_cov = fit_draws(logN, E, logL_BN)
        result.boot = np.column_stack([coef_B, np.array(GRID)[g_B]])
        result.boot_sse = sse_B
    for name, value, grid in (("E_start", s, E_START_GRID), ("E_max", m, E_MAX_GRID)):
        if value in (grid[0], grid[-1]):
            result.warnings.append(f"{name} = {value:.4g} sits on the edge of its grid "
                                   f"[{grid[0]:.3g}, {grid[-1]:.3g}]")
    return result
