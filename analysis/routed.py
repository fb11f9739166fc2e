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
The estimates vary more than the bootstrap draws of them (the grid search is nonlinear and
E_max poorly identified), so percentile intervals run short; profile intervals do not. Every
parameter and the loss at a point and the gain of E experts get one: the values whose
profiled sse (the least sse with that value held fixed, grid included) lies below a cut, the
cut calibrated on the bootstrap data sets, where the truth is known (the 1 - alpha quantile
of the profile statistic at it), and never below the F test's cut. Given the grid point, (a,
b, c, d) and the losses are linear, so their profiles are closed-form. A side still inside
the cut at the grid's edge is unbounded: the data cannot pin it. A prediction interval for a
new run is studentized (bootstrap-t): the draws of (q* - q) / se*, with se* OLS's standard
error in that draw, scaled by the fit's own se, plus the noise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import statsmodels.api as sm

from analysis.errors import AnalysisError
from analysis.identify import MIN_RESID_DF, NotIdentified, check_design, check_fit
from analysis.prediction import Law
from analysis.results import LawResult, group_label, held, interval, resample_residuals

NAMES = ["a", "b", "c", "d", "E_start", "E_max"]
E_START_GRID = np.exp(np.linspace(np.log(1.05), np.log(8.0), 16))
E_MAX_GRID = np.exp(np.linspace(np.log(8.0), np.log(4096.0), 16))
GRID = [(s, m) for s in E_START_GRID for m in E_MAX_GRID if m > s]
GRID_ROWS = np.column_stack([np.zeros((len(GRID), 4)), GRID])  # parameter rows of the grid
CALIBRATION_DRAWS = 200


def experts(df: pd.DataFrame) -> np.ndarray:
    """The expert count E of each run, 1 for dense runs."""
    return np.where(df["family"] == "dense", 1.0, df["n_experts"].astype(float).clip(lower=1))


def _with_experts(df: pd.DataFrame) -> pd.DataFrame:
    """Column E: the run's expert count, 1 for dense runs."""
    return df.assign(E=experts(df))


def routed_jobs(df: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """As Clark et al. fit it: per modality, router, experts per token and token count, that
    router's MoE runs and the dense runs (E = 1) trained on the same tokens. Routers, top-k and
    token budgets (D to 3 significant digits) are never pooled: the law has no term for them."""
    moe = df[(df["family"] == "moe") & (df["n_experts"] > 0)]
    dense = df[df["family"] == "dense"]
    budget = lambda x: x["D"].map(lambda d: float(f"{d:.3g}"))  # noqa: E731
    jobs = []
    keys = [moe["modality"], moe["router"].fillna("learned"), moe["top_k"].fillna(1).clip(lower=1),
            budget(moe)]
    for (m, router, k, D), g in moe.groupby(keys):
        same = dense[(dense["modality"] == m) & (budget(dense) == D)]
        jobs.append(({"modality": m, "router": router, "top_k": int(k), "D": D},
                     _with_experts(pd.concat([same, g]))))
    return jobs


def e_hat(E, e_start: float, e_max: float) -> np.ndarray:
    E = np.asarray(E, float)
    return 1.0 / (1.0 / (E - 1.0 + 1.0 / (1.0 / e_start - 1.0 / e_max)) + 1.0 / e_max)


def _design(logN, E, e_start, e_max):
    le = np.log(e_hat(E, e_start, e_max))
    return np.column_stack([logN, le, logN * le, np.ones_like(logN)])


def grid_fits(logN: np.ndarray, E: np.ndarray, logL_BN: np.ndarray):
    """OLS of (a, b, c, d) at every grid point for B data sets at once: (sse_BG, coef_BG4)."""
    sse = np.empty((len(logL_BN), len(GRID)))
    coef = np.empty((len(logL_BN), len(GRID), 4))
    for g, (s, m) in enumerate(GRID):
        X = _design(logN, E, s, m)
        coef[:, g] = logL_BN @ np.linalg.pinv(X).T
        sse[:, g] = ((coef[:, g] @ X.T - logL_BN) ** 2).sum(1)
    return sse, coef


def fit_draws(logN: np.ndarray, E: np.ndarray, logL_BN: np.ndarray):
    """Least squares over the (E_start, E_max) grid and (a, b, c, d), for B data sets at once
    (rows of logL_BN): (sse_B, coef_B4, grid index_B, cov_B44), cov being OLS's covariance
    of (a, b, c, d) given the chosen grid point."""
    sse_BG, coef_BG4 = grid_fits(logN, E, logL_BN)
    best_g = sse_BG.argmin(1)
    rows = np.arange(len(logL_BN))
    best_sse, best_coef = sse_BG[rows, best_g], coef_BG4[rows, best_g]
    df_resid = max(len(logN) - len(NAMES), 1)
    cov = np.empty((len(logL_BN), 4, 4))
    for g in np.unique(best_g):
        X = _design(logN, E, *GRID[g])
        rows = best_g == g
        cov[rows] = np.linalg.inv(X.T @ X)[None] * (best_sse[rows] / df_resid)[:, None, None]
    return best_sse, best_coef, best_g, cov


def _profile_bounds(prof_J: np.ndarray, grid_J: np.ndarray, level: float,
                    floor: float) -> tuple[float, float]:
    """The range of a grid parameter whose profiled sse stays <= level, the profile
    interpolated linearly in log between grid points; a side still inside at the grid's edge
    is unbounded (floor below, inf above)."""
    inside = np.flatnonzero(prof_J <= level)
    lo_j, hi_j = inside.min(), inside.max()
    log_grid = np.log(grid_J)

    def cross(j: int, k: int) -> float:  # where the profile reaches `level` between j and k
        f = (level - prof_J[j]) / (prof_J[k] - prof_J[j])
        return float(np.exp(log_grid[j] + f * (log_grid[k] - log_grid[j])))

    lower = floor if lo_j == 0 else cross(lo_j, lo_j - 1)
    upper = np.inf if hi_j == len(grid_J) - 1 else cross(hi_j, hi_j + 1)
    return lower, upper


class RoutedResult(LawResult):
    ols: object = None  # statsmodels OLS results given (E_start, E_max)
    cov: np.ndarray  # [4, 4] covariance of (a, b, c, d) given the grid point, sse / (n - 6)
    boot_cov: np.ndarray  # [B, 4, 4] the same in every bootstrap draw
    boot_sse: np.ndarray  # [B] residual sum of squares in every draw
    resid: np.ndarray  # log-space residuals of the fit
    scatter: float  # variance of the run-to-run noise in log L
    grid_sse: np.ndarray  # [G] sse of the OLS fit at every grid point
    grid_coef: np.ndarray  # [G, 4] its (a, b, c, d)
    grid_inv: np.ndarray  # [G, 4, 4] its (X'X)^-1
    logN: np.ndarray  # [n] the runs' log params
    E: np.ndarray  # [n] and expert counts
    boot_y: np.ndarray  # [B, n] the bootstrap data sets (log losses)
    boot_grid: tuple | None = None  # grid_fits of boot_y, computed when first needed

    def _boot_grid(self) -> tuple[np.ndarray, np.ndarray]:
        if self.boot_grid is None:
            self.boot_grid = grid_fits(self.logN, self.E, self.boot_y)
        return self.boot_grid

    def threshold(self, stat_BK: np.ndarray, alpha: float) -> np.ndarray:
        """Where the data's profiled sse is cut: the 1 - alpha quantile over the draws of the
        profile statistic at the bootstrap world's truth (how far above the minimum, relative
        to it, the profiled sse of the true value lies), and never below the F test's cut for
        one parameter of a linear fit, which the bootstrap's few resampled residuals can
        undercut."""
        from scipy.stats import f

        df = max(self.nobs - len(NAMES), 1)
        ratio = np.maximum(np.quantile(stat_BK, 1 - alpha, axis=0), f.ppf(1 - alpha, 1, df) / df)
        return self.objective * (1 + ratio)

    def _profile_grid(self, index: int, grid_J: np.ndarray, alpha: float,
                      floor: float) -> tuple[float, float]:
        """Profile interval of E_start (index 0) or E_max (1)."""
        values = np.array(GRID)[:, index]
        of_J = [values == v for v in grid_J]
        sse_BG = self._boot_grid()[0]
        truth = np.argmin(np.abs(grid_J - self.params[NAMES[4 + index]]))
        stat_B = sse_BG[:, of_J[truth]].min(1) / sse_BG.min(1) - 1
        prof_J = np.array([self.grid_sse[m].min() if m.any() else np.inf for m in of_J])
        return _profile_bounds(prof_J, grid_J, self.threshold(stat_B, alpha), floor)

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """a, b, c, d: expanded percentile intervals; E_start, E_max: profile intervals (the
        values whose profiled sse lies below a bootstrap-calibrated threshold), unbounded on
        a side where the data cannot pin the value inside the grid."""
        ci = super().conf_int(alpha)
        if self.boot is not None and len(self.boot) > 1:
            unit_GK4 = np.broadcast_to(np.eye(4), (len(GRID), 4, 4))
            _, lo, hi = self.profile_linear(unit_GK4, alpha)
            ci.loc[["a", "b", "c", "d"], "lower"], ci.loc[["a", "b", "c", "d"], "upper"] = lo, hi
            ci.loc["E_start"] = self._profile_grid(0, E_START_GRID, alpha, 1.0)
            ci.loc["E_max"] = self._profile_grid(1, E_MAX_GRID, alpha, 1.0)
            ci["lower"], ci["upper"] = held(self.params.to_numpy(float), ci["lower"], ci["upper"])
        return ci

    def profile_linear(self, x_GK4: np.ndarray, alpha: float) -> tuple[np.ndarray, ...]:
        """Estimate and 1 - alpha profile interval of q = x . (a, b, c, d) with rows x_GK4 at
        every grid point: given the grid point, the least sse with q fixed is
        sse_g + (q - q_g)^2 / v_g (v_g = x (X'X)^-1 x), so the profile is their minimum over
        g and the interval the union of closed-form pieces, cut at a threshold calibrated on
        the bootstrap data sets (profile of their truth, the estimate)."""
        v_GK = np.einsum("gkp,gpq,gkq->gk", x_GK4, self.grid_inv, x_GK4)
        q_GK = np.einsum("gkp,gp->gk", x_GK4, self.grid_coef)
        q = q_GK[self.grid_sse.argmin()]
        sse_BG, coef_BG4 = self._boot_grid()
        q_BGK = np.einsum("gkp,bgp->bgk", x_GK4, coef_BG4)
        prof_BK = (sse_BG[:, :, None] + (q - q_BGK) ** 2 / v_GK).min(1)
        level_K = self.threshold(prof_BK / sse_BG.min(1)[:, None] - 1, alpha)
        room_GK = level_K - self.grid_sse[:, None]
        half_GK = np.sqrt(np.clip(room_GK, 0, None) * v_GK)
        inside = room_GK >= 0
        lo = np.where(inside, q_GK - half_GK, np.inf).min(0)
        hi = np.where(inside, q_GK + half_GK, -np.inf).max(0)
        return q, lo, hi

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
        if kind == "mean":
            q, lo, hi = self.profile_linear(self._rows(GRID_ROWS, N, E), alpha)
        else:
            p = self.params[NAMES].to_numpy()
            q, lo, hi = self.linear_interval(self._rows(p, N, E), self._rows(self.boot, N, E),
                                             alpha, noise=True)
        return pd.DataFrame({"loss": np.exp(q), **dict(zip(("lower", "upper"), held(
            np.exp(q), np.exp(lo), np.exp(hi)), strict=True))})

    def gain(self, N, E, alpha: float = 0.05) -> pd.DataFrame:
        """L(N, E) / L(N, 1): the loss of E experts relative to the dense model of the same
        active size (< 1: the experts help), with a 1 - alpha profile interval."""
        dense = np.ones_like(np.asarray(E, float))
        x = self._rows(GRID_ROWS, N, E) - self._rows(GRID_ROWS, N, dense)
        q, lo, hi = self.profile_linear(x, alpha)
        return pd.DataFrame({"ratio": np.exp(q), **dict(zip(("lower", "upper"), held(
            np.exp(q), np.exp(lo), np.exp(hi)), strict=True))})


def fit_routed(df: pd.DataFrame, group: dict, bootstrap: int = 1000, seed: int = 0) -> RoutedResult:
    label = group_label(group)
    if "E" not in df:
        df = _with_experts(df)
    if df["E"].nunique() < 2:
        raise AnalysisError(f"group ({label}): the expert count does not vary; the routed law needs "
                            "runs with at least two expert counts")
    # E_hat saturates (curved in E: dense plus two expert counts at least); linear in log N
    ident = check_design(df, len(NAMES), ("E",), "routed", linear=("N",),
                         min_resid_df=MIN_RESID_DF["routed"])
    if not ident.ok:
        raise NotIdentified(f"group ({label})", ident)
    logN, logL = np.log(df["N"].to_numpy(float)), np.log(df["loss"].to_numpy(float))
    E = df["E"].to_numpy(float)
    (sse,), (coef,), (g,), (cov,) = fit_draws(logN, E, logL[None])
    s, m = GRID[g]
    params = pd.Series([*coef, s, m], index=NAMES)
    result = RoutedResult("routed", group, params, None, len(df), float(sse), True, "least squares")
    X = _design(logN, E, s, m)
    ident = check_fit(X, ["a", "b", "c", "d"], suggestion="add runs at more sizes and expert counts")
    if not ident.ok:  # given the grid point the law is linear: X is its Jacobian
        raise NotIdentified(f"group ({label})", ident)
    result.ols = sm.OLS(logL, X).fit()
    result.cov, result.resid = cov, logL - X @ coef
    result.scatter = sse / (len(df) - len(NAMES))
    result.logN, result.E = logN, E
    (result.grid_sse,), (result.grid_coef,) = grid_fits(logN, E, logL[None])
    designs = [_design(logN, E, *point) for point in GRID]
    result.grid_inv = np.array([np.linalg.pinv(Xg.T @ Xg) for Xg in designs])
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
        result.boot_y = logL_BN
    for name, value, grid in (("E_start", s, E_START_GRID), ("E_max", m, E_MAX_GRID)):
        if value in (grid[0], grid[-1]):
            result.warnings.append(f"{name} = {value:.4g} sits on the edge of its grid "
                                   f"[{grid[0]:.3g}, {grid[-1]:.3g}]")
    if bootstrap:
        ci = result.conf_int()
        for name in ("E_start", "E_max"):
            if not np.isfinite(ci.loc[name, "upper"]):
                result.warnings.append(
                    f"{name} is not bounded above by these runs: its profile stays inside the 95% "
                    "cut up to the edge of its grid (more expert counts beyond the saturation "
                    "would pin it); its interval is unbounded above")
    return result


def predict(params: np.ndarray, rows: pd.DataFrame) -> np.ndarray:
    """Loss (nats/token) at the rows' N and expert count: params [6] gives [rows], [S, 6] gives
    [S, rows] (prediction.Law's predict)."""
    p = np.asarray(params, float)
    a, b, c, d, es, em = (p[..., i, None] for i in range(6))
    logN = np.log(rows["N"].to_numpy(float))
    le = np.log(e_hat(experts(rows), es, em))
    return np.exp(a * logN + b * le + c * logN * le + d)


ROUTED = Law("routed", routed_jobs, fit_routed, predict)
