"""The Chinchilla law L(N, D) = E + A / N^alpha + B / D^beta, fitted as Hoffmann et al. (2022)
Approach 3: minimize the sum of Huber losses (delta = 1e-3) of the log-space residuals
LSE(a - alpha log N, b - beta log D, e) - log L over (a, b, e, alpha, beta), with L-BFGS from
every start of a grid, keeping the best; A = exp(a), B = exp(b), E = exp(e).

Intervals: a residual bootstrap. Each draw adds log-space residuals of the fit, resampled with
replacement (the robust pool of `resample_residuals`), to the fitted log losses and refits;
expanded percentile intervals of the draws (`LawResult.expanded`) are confidence intervals for
the parameters and for what is derived from them (the law's loss at a point, N*(C), the
frontier exponents); `predict_interval(kind="observation")` is a prediction interval.

Speed: the objective and its gradient are vectorized over points and over all grid starts at
once (a batched L-BFGS), the best start is polished with scipy's L-BFGS-B, and all bootstrap
refits run as one batched L-BFGS from the point estimate and from the other local optima the
grid found (`refit_draws`), each draw keeping its best, so a draw reaches the same global
optimum of the same objective that the estimate does.

Identification (analysis/identify.py): a fit needs at least three sizes and three token budgets
and MIN_RESID_DF["chinchilla"] (7) runs beyond its five parameters, and its optimum must be well
conditioned with positive exponents no larger than MAX_EXPONENT; otherwise `fit_chinchilla`
raises `NotIdentified` with what to add. A bootstrap whose draws do not vary is refused the same
way, and so is one (of MIN_DRAWS draws or more) whose 95% interval of alpha or beta leaves
(0, MAX_EXPONENT]: the estimate may
sit inside, but the runs then do not pin the law's curvature, and every derived quantity
(frontiers, leverage, predictions) inherits draws of runaway laws.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from analysis.errors import AnalysisError
from analysis.identify import (
    MIN_RESID_DF,
    Identification,
    NotIdentified,
    check_design,
    check_draws,
    check_fit,
    next_level,
    numeric_jacobian,
)
from analysis.results import LawResult, group_label, held, interval, resample_residuals

DELTA = 1e-3
NAMES = ["E", "A", "B", "alpha", "beta"]
MAX_EXPONENT = 4.0  # an exponent beyond this is a runaway (B -> inf, beta -> inf), not a law
MIN_DRAWS = 20  # bootstrap draws below which the exponents' intervals are not checked
REFIT_STARTS = 4  # distinct local optima of the estimate's grid a bootstrap draw also starts from


@dataclass(frozen=True)
class Grid:
    """Starts of the fit, as in Hoffmann et al.: alpha, beta, e, a, b."""

    alpha: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
    beta: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)
    e: tuple[float, ...] = (-1.0, -0.5, 0.0, 0.5, 1.0)
    a: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
    b: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)

    def starts(self) -> np.ndarray:
        """[S, 5] in parameter order (a, b, e, alpha, beta)."""
        return np.array(list(itertools.product(self.a, self.b, self.e, self.alpha, self.beta)))


def huber(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss (delta = DELTA) of residuals and its derivative."""
    ar = np.abs(r)
    return np.where(ar <= DELTA, 0.5 * r * r, DELTA * (ar - 0.5 * DELTA)), np.clip(r, -DELTA, DELTA)


def objective(theta_S5: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
              w: np.ndarray | float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Summed Huber loss and its gradient, for S parameter vectors at once; logN, logD are
    [1, n], logL is [1, n] or [S, n] (one data set per parameter vector), w each point's
    multiplicity ([S, n] for resampled runs, or 1)."""
    a, b, e, alpha, beta = (theta_S5[:, i : i + 1] for i in range(5))
    t1 = a - alpha * logN
    t2 = b - beta * logD
    t3 = np.broadcast_to(e, t1.shape)
    m = np.maximum(np.maximum(t1, t2), t3)
    w1, w2, w3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(t3 - m)
    total = w1 + w2 + w3
    h, dr = huber(m + np.log(total) - logL)
    h, dr = h * w, dr * w
    w1, w2, w3 = dr * w1 / total, dr * w2 / total, dr * w3 / total
    grad = np.stack([w1.sum(1), w2.sum(1), w3.sum(1), -(w1 * logN).sum(1), -(w2 * logD).sum(1)], 1)
    return h.sum(1), grad


def batched_lbfgs(fun, x0: np.ndarray, iters: int = 300, memory: int = 10,
                  gtol: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """L-BFGS run from every row of x0 at once (Armijo backtracking); returns (x, f).
    fun(x_K, rows_K) -> (f_K, grad_K): the objective of rows `rows` of x0 (each row may be a
    different problem, e.g. one bootstrap data set) at the parameters x_K."""
    x = x0.copy()
    S, P = x.shape
    f, g = fun(x, np.arange(S))
    s_hist = np.zeros((memory, S, P))
    y_hist = np.zeros((memory, S, P))
    rho = np.zeros((memory, S))
    active = np.ones(S, dtype=bool)
    for it in range(iters):
        # two-loop recursion
        q = g.copy()
        alphas = np.zeros((memory, S))
        order = [(it - 1 - j) % memory for j in range(min(it, memory))]
        for k in order:
            alphas[k] = rho[k] * np.sum(s_hist[k] * q, 1)
            q -= alphas[k][:, None] * y_hist[k]
        if order:
            k = order[0]
            yy = np.sum(y_hist[k] ** 2, 1)
            gamma = np.where(yy > 0, np.sum(s_hist[k] * y_hist[k], 1) / np.maximum(yy, 1e-300), 1.0)
            q *= gamma[:, None]
        else:
            q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        for k in reversed(order):
            beta = rho[k] * np.sum(y_hist[k] * q, 1)
            q += s_hist[k] * (alphas[k] - beta)[:, None]
        p = -q
        slope = np.sum(p * g, 1)
        bad = slope >= 0  # not a descent direction: fall back to steepest descent
        p[bad] = -g[bad]
        slope[bad] = -np.sum(g[bad] ** 2, 1)
        # backtracking line search, all starts together
        t = np.ones(S)
        x_new, f_new, g_new = x.copy(), f.copy(), g.copy()
        pending = active.copy()
        for _ in range(40):
            if not pending.any():
                break
            idx = np.flatnonzero(pending)
            cand = x[pending] + t[pending, None] * p[pending]
            fc, gc = fun(cand, idx)
            ok = fc <= f[pending] + 1e-4 * t[pending] * slope[pending]
            x_new[idx[ok]], f_new[idx[ok]], g_new[idx[ok]] = cand[ok], fc[ok], gc[ok]
            pending[idx[ok]] = False
            t[idx[~ok]] *= 0.5
        moved = active & ~pending
        s = x_new - x
        y = g_new - g
        sy = np.sum(s * y, 1)
        k = it % memory
        keep = moved & (sy > 1e-12)
        s_hist[k] = np.where(keep[:, None], s, 0.0)
        y_hist[k] = np.where(keep[:, None], y, 0.0)
        rho[k] = np.where(keep, 1.0 / np.where(keep, sy, 1.0), 0.0)
        df = np.abs(f - f_new)
        x, f, g = x_new, f_new, g_new
        active &= moved & (np.abs(g).max(1) > gtol) & (df > 1e-14 * np.maximum(1.0, np.abs(f)))
        if not active.any():
            break
    return x, f


POLISH = 8  # starts continued to convergence after the batched phase
BATCH_ITERS = 60
REFIT_ITERS = 500


def _batched(args):
    starts, logN, logD, logL = args
    return batched_lbfgs(lambda th, _: objective(th, logN, logD, logL), starts, iters=BATCH_ITERS)


def multistart(starts: np.ndarray, logN, logD, logL, workers: int = 2):
    """Batched L-BFGS from every start, the starts split over `workers` processes."""
    import multiprocessing as mp

    # a pool's worker (a daemon) may not start processes of its own
    if workers < 2 or len(starts) < 1000 or mp.current_process().daemon:
        return _batched((starts, logN, logD, logL))
    from concurrent.futures import ProcessPoolExecutor

    parts = np.array_split(starts, workers)
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        out = list(pool.map(_batched, [(p, logN, logD, logL) for p in parts]))
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])


def polish(fun, theta0: np.ndarray, gtol: float = 1e-8):
    """scipy's L-BFGS-B to convergence from theta0, for a batched objective
    fun(theta_S5) -> (f_S, grad_S5) like `objective`."""
    def one(th):
        f, g = fun(th[None])
        return f[0], g[0]

    return minimize(one, theta0, jac=True, method="L-BFGS-B",
                    options={"maxiter": 2000, "ftol": 1e-12, "gtol": gtol})


def log_law(theta_S5: np.ndarray, logN: np.ndarray, logD: np.ndarray) -> np.ndarray:
    """log L = LSE(a - alpha log N, b - beta log D, e), [S, n]."""
    a, b, e, alpha, beta = (theta_S5[:, i : i + 1] for i in range(5))
    t1, t2 = a - alpha * logN, b - beta * logD
    return np.logaddexp(np.logaddexp(t1, t2), np.broadcast_to(e, t1.shape))


def refit_best(fun, starts_KP: np.ndarray, problems: int, iters: int = REFIT_ITERS) -> np.ndarray:
    """Fits to `problems` data sets at once (bootstrap draws), each by batched L-BFGS from every
    row of starts_KP (the estimate and the other local optima its multistart found,
    `local_optima`), keeping for each the start that reaches the lowest objective, so a draw
    reaches the global optimum of the same objective as the estimate, not the basin nearest
    the estimate: [problems, P]. fun(theta_SP, problem_S) -> (f_S, grad_SP)."""
    starts = np.atleast_2d(starts_KP)
    K = len(starts)
    with np.errstate(over="ignore", invalid="ignore"):
        x, f = batched_lbfgs(lambda th, rows: fun(th, rows // K), np.tile(starts, (problems, 1)),
                             iters=iters)
    best = np.argmin(np.where(np.isfinite(f), f, np.inf).reshape(problems, K), 1)
    return x.reshape(problems, K, -1)[np.arange(problems), best]


def refit_draws(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL_BN: np.ndarray,
                w_BN: np.ndarray | None = None) -> np.ndarray:
    """Chinchilla fits to B data sets at once (rows of logL_BN, at the same [1, n] logN and
    logD; or, given run multiplicities w_BN, the observed [1, n] log losses reweighted), from
    every row of theta ([K, 5] or [5], (a, b, e, alpha, beta)) by `refit_best`: [B, 5]."""
    B = len(logL_BN) if w_BN is None else len(w_BN)
    if w_BN is None:
        return refit_best(lambda th, b: objective(th, logN, logD, logL_BN[b]), theta, B)
    return refit_best(lambda th, b: objective(th, logN, logD, logL_BN, w_BN[b]), theta, B)


def local_optima(x: np.ndarray, f: np.ndarray, theta: np.ndarray, k: int = REFIT_STARTS) -> np.ndarray:
    """theta and up to k - 1 other distinct end points of the multistart, best first: [<=k, 5]."""
    out = [theta]
    for i in np.argsort(np.where(np.isfinite(f), f, np.inf)):
        if len(out) == k:
            break
        if np.all(np.isfinite(x[i])) and min(np.abs(x[i] - o).max() for o in out) > 1e-2:
            out.append(x[i])
    return np.array(out)


def to_natural(theta: np.ndarray) -> np.ndarray:
    """(a, b, e, alpha, beta) -> (E, A, B, alpha, beta), row-wise."""
    theta = np.atleast_2d(theta)
    return np.stack([np.exp(theta[:, 2]), np.exp(theta[:, 0]), np.exp(theta[:, 1]),
                     theta[:, 3], theta[:, 4]], 1)


def loss(p: np.ndarray, N, D) -> np.ndarray:
    """E + A / N^alpha + B / D^beta (nats/token) for params p = (E, A, B, alpha, beta): p [5]
    gives [len(N)], p [S, 5] gives [S, len(N)] (or N, D [S, k] already per row)."""
    E, A, B, al, be = (np.asarray(p, float)[..., k, None] for k in range(5))
    N, D = np.atleast_1d(np.asarray(N, float)), np.atleast_1d(np.asarray(D, float))
    return E + A / N**al + B / D**be


def frontier(p: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N*(C), D*(C) and L*(C) on the compute-optimal frontier C = 6 N D for params
    (E, A, B, alpha, beta), p [5] -> each [len(C)] or p [S, 5] -> each [S, len(C)]:
    N* = G (C/6)^(beta/(alpha+beta)) with G = (alpha A / (beta B))^(1/(alpha+beta)). NaN where
    an exponent is not positive."""
    p = np.asarray(p, float)
    E, A, B, al, be = (p[..., k, None] for k in range(5))
    with np.errstate(all="ignore"):
        ok = (al > 0) & (be > 0)
        G = (al * A / (be * B)) ** (1 / (al + be))
        n = np.where(ok, G * (np.asarray(C, float) / 6) ** (be / (al + be)), np.nan)
        d = C / (6 * n)
        return n, d, np.where(ok, loss(p, n, d), np.nan)


class ChinchillaResult(LawResult):
    theta: np.ndarray  # (a, b, e, alpha, beta) of the estimate
    resid: np.ndarray  # log-space residuals of the fit, one per point
    optima: np.ndarray  # [K, 5] the estimate and other local optima: where refits start

    def predict(self, N, D) -> np.ndarray:
        """Loss (nats/token) at N params and D tokens."""
        return loss(self.params[NAMES].to_numpy(float), N, D)

    def predict_interval(self, N, D, alpha: float = 0.05, kind: str = "mean",
                         seed: int = 0) -> pd.DataFrame:
        """Loss (nats/token) at N params and D tokens with a 1 - alpha bootstrap percentile
        interval: kind="mean" is a confidence interval for the law's loss there; kind=
        "observation" a prediction interval for one new run there (adds the run-to-run scatter
        of the fit's residuals). Columns loss, lower, upper."""
        N, D = np.atleast_1d(np.asarray(N, float)), np.atleast_1d(np.asarray(D, float))
        out = pd.DataFrame({"loss": self.predict(N, D), "lower": np.nan, "upper": np.nan})
        if self.boot is None or len(self.boot) < 2:
            return out
        draws = loss(self.boot, N, D)
        if kind == "observation":
            rng = np.random.default_rng(seed)
            draws = draws * np.exp(resample_residuals(self.resid, 5, len(draws), rng, len(N)))
        elif kind != "mean":
            raise AnalysisError(f"unknown interval kind {kind!r}; use mean or observation")
        out["lower"], out["upper"] = held(out["loss"], *interval(draws, self.expanded(alpha), axis=0))
        return out

    def compute_optimal(self, C, alpha_level: float = 0.05) -> pd.DataFrame:
        """N*(C) and D*(C) minimizing the law at C = 6 N D, with bootstrap intervals, and the
        exponents a = beta/(alpha+beta), b = alpha/(alpha+beta) (attrs, with their intervals
        `a_lower`, `a_upper`, `b_lower`, `b_upper`)."""
        C = np.atleast_1d(np.asarray(C, float))
        n, d, l_opt = frontier(self.params[NAMES].to_numpy(), C)
        out = pd.DataFrame({"C": C, "N_opt": n, "D_opt": d, "loss_opt": l_opt})
        if self.boot is not None and len(self.boot) > 1:
            draws = np.stack(frontier(self.boot, C), 1)  # [draws, 3, len(C)]
            for j, name in enumerate(("N_opt", "D_opt", "loss_opt")):
                out[f"{name}_lower"], out[f"{name}_upper"] = held(out[name], *interval(
                    draws[:, j], self.expanded(alpha_level), axis=0))
        al, be = self.params["alpha"], self.params["beta"]
        out.attrs["a"], out.attrs["b"] = be / (al + be), al / (al + be)
        if self.boot is not None and len(self.boot) > 1:
            lo, hi = (float(v) for v in held(out.attrs["a"], *interval(
                self.boot[:, 4] / (self.boot[:, 3] + self.boot[:, 4]), self.expanded(alpha_level))))
            out.attrs.update(a_lower=lo, a_upper=hi, b_lower=1 - hi, b_upper=1 - lo)
        return out


def check_group(df: pd.DataFrame, label: str, min_resid_df: int = MIN_RESID_DF["chinchilla"]) -> None:
    """Raise NotIdentified unless the runs' design identifies the law (identify.check_design:
    three sizes, three budgets, `min_resid_df` runs beyond the five parameters)."""
    ident = check_design(df, 5, ("N", "D"), "Chinchilla", min_resid_df=min_resid_df)
    if not ident.ok:
        raise NotIdentified(f"group ({label})", ident)


def _widen(N: np.ndarray, D: np.ndarray) -> str:
    return (f"add runs that widen the range: a larger size (for example {next_level(N):.2g}) and "
            f"a larger token budget (for example {next_level(D):.2g}) at several sizes")


def check_optimum(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, label: str) -> None:
    """Raise NotIdentified unless the optimum is well conditioned (identify.check_fit on the
    Jacobian of the log-space fit) with exponents in (0, MAX_EXPONENT]."""
    jac = numeric_jacobian(lambda th: log_law(th[None], logN, logD)[0], theta)
    edge = [name for name, v in (("alpha", theta[3]), ("beta", theta[4]))
            if not 0 < v <= MAX_EXPONENT]
    ident = check_fit(jac, ["A", "B", "E", "alpha", "beta"], edge,
                      _widen(np.exp(logN[0]), np.exp(logD[0])))
    if not ident.ok:
        raise NotIdentified(f"group ({label})", ident)


def check_exponent_intervals(result: ChinchillaResult, df: pd.DataFrame) -> None:
    """Raise NotIdentified when the 95% interval of alpha or beta (from `result.boot`, fitted
    to the runs `df`) is missing or leaves (0, MAX_EXPONENT]: the bootstrap then holds runaway
    laws the estimate's gate would refuse."""
    if result.boot is None or len(result.boot) < MIN_DRAWS:
        return  # too few draws to say where the exponents may go
    ci = result.conf_int()
    loose = [f"{n} [{ci.at[n, 'lower']:.3g}, {ci.at[n, 'upper']:.3g}]"
             if np.isfinite(ci.loc[n]).all() else f"{n} (none holds its estimate)"
             for n in ("alpha", "beta")
             if not (ci.at[n, "lower"] > 0 and ci.at[n, "upper"] <= MAX_EXPONENT)]
    if loose:
        raise NotIdentified(f"group ({result.label()})", Identification(
            False, f"the 95% interval of {' and '.join(loose)} is not inside (0, {MAX_EXPONENT:g}]: "
            "the runs do not pin the law's curvature",
            _widen(df["N"].to_numpy(float), df["D"].to_numpy(float))))


def check_bootstrap(result: ChinchillaResult, df: pd.DataFrame) -> None:
    """The one check of a Chinchilla law's bootstrap draws (`result.boot`, refits to the runs
    df, residuals or runs resampled): raise NotIdentified when the draws do not vary
    (identify.check_draws: a degenerate bootstrap gives no interval, and the law is not
    reported as if it had one) or leave the exponents' range (`check_exponent_intervals`)."""
    ident = check_draws(result.boot, result.params[NAMES].to_numpy(float), NAMES)
    if not ident.ok:
        raise NotIdentified(f"group ({result.label()})", ident)
    check_exponent_intervals(result, df)


def fit_chinchilla(df: pd.DataFrame, group: dict | None = None, bootstrap: int = 1000,
                   seed: int = 0, grid: Grid = Grid(), workers: int = 2,
                   min_resid_df: int = MIN_RESID_DF["chinchilla"]) -> ChinchillaResult:
    """Fit one group (columns N, D, loss) from every start of `grid` (split over `workers`
    processes); `bootstrap` residual-bootstrap refits give the intervals. Raises NotIdentified
    where the runs do not identify the law (see the module docstring)."""
    group = group or {}
    check_group(df, group_label(group), min_resid_df)
    logN, logD, logL = (np.log(df[c].to_numpy(float))[None, :] for c in ("N", "D", "loss"))
    x, f = multistart(grid.starts(), logN, logD, logL, workers)
    # continue the most promising starts to full convergence, keep the best
    res = min((polish(lambda th: objective(th, logN, logD, logL), x[i])
               for i in np.argsort(f)[:POLISH]), key=lambda r: r.fun)
    theta = res.x
    check_optimum(theta, logN, logD, group_label(group))
    fitted = log_law(theta[None], logN, logD)
    params = pd.Series(to_natural(theta)[0], index=NAMES)
    result = ChinchillaResult("chinchilla", group, params, None, len(df), float(res.fun),
                              bool(res.success), str(res.message))
    result.theta, result.resid = theta, (logL - fitted)[0]
    result.optima = local_optima(x, f, theta)
    result.df_resid = len(df) - 5
    if bootstrap:
        noise = resample_residuals(result.resid, 5, bootstrap, np.random.default_rng(seed),
                                   robust=True)
        result.boot = to_natural(refit_draws(result.optima, logN, logD, fitted + noise))
        check_bootstrap(result, df)
    result.warnings += _edge_warnings(theta, grid)
    if not res.success:
        result.warnings.append(f"the optimizer did not converge: {res.message}")
    return result


def _edge_warnings(theta: np.ndarray, grid: Grid) -> list[str]:
    out = []
    for name, value, values in (("a", theta[0], grid.a), ("b", theta[1], grid.b),
                                ("e", theta[2], grid.e), ("alpha", theta[3], grid.alpha),
                                ("beta", theta[4], grid.beta)):
        lo, hi = min(values), max(values)
        tol = 1e-3 * max(1.0, hi - lo)
        if value <= lo + tol or value >= hi - tol:
            out.append(f"{name} = {value:.4g} sits on or beyond the edge of the start grid "
                       f"[{lo:g}, {hi:g}]; the optimum may lie outside what was searched")
    return out
