"""A bank of MoE scaling laws fitted with one robust objective, ranked by out-of-sample error.

Laws whose log-loss is a log-sum-exp of terms linear in their parameters share one fitter (the
objective of Hoffmann et al. Approach 3: summed Huber, delta = 1e-3, of log residuals; batched
L-BFGS from a grid of starts, the best polished with scipy; bootstrap refits all at once, each
from the estimate and the other local optima of the grid, keeping its best, as
analysis/chinchilla.py does, and checked for degenerate draws; expanded percentile intervals
for the n - P residual degrees of freedom):

- `joint`, Ludziejewski et al. (2025), "Joint MoE Scaling Laws", Eq. 6: dense and MoE runs in
  one law, the expert count entering both the parameter and the data term,

      L(N, D, E) = E0 + A Ehat^delta / N^(alpha + gamma ln Ehat) + B Ehat^omega / D^(beta + zeta ln Ehat)

  with N active params and Ehat Clark et al.'s saturating transform (analysis.routed.e_hat)
  with E_start and E_max fitted too (the paper's Table 3: a = 35.91, delta = -0.2285,
  E_start = 2.07, E_max = 290.45). The paper writes the exponents negative; here alpha,
  beta > 0 and gamma, zeta carry the opposite sign, delta and omega the paper's. Dense runs
  have E = 1, Ehat = E_start. Fitted to dense and learned-router MoE runs; at each
  (E_start, E_max) of a small grid the law is linear in the rest, which gives the starts.
- `granularity`, Krajewski et al. (2024), fine-grained MoE at a fixed expansion:
  L(N, D, G) = E0 + (g / G^gamma + A) / N^alpha + B / D^beta, G = dense FFN width / one
  expert's width (the paper's Eq. 9); fitted per expert count, as the paper does, to the MoE
  runs that record a granularity (MoT runs have none and are left out).
- `chinchilla`: one Chinchilla law per MoE family (family, router, expert count, top-k).
- `routed`: Clark et al. (2022), analysis/routed.py: no token-count term, so fitted per router,
  top-k and token count (routed.routed_jobs), as the paper does.

Every law passes the identification gate (analysis.identify) before and after its fit.
`rank_laws` holds out each modality's largest-compute MoE runs (analysis.backtest's split;
the training runs must span two or more token counts), fits every law the rest identifies,
and reports on the same held-out MoE runs each law's error and 95% prediction-interval
coverage, beside AIC on the training MoE runs and beside a baseline, a power law in compute,
that a law must beat to rank; a bank with one fittable law says so instead of ranking it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import prediction
from analysis.backtest import split_largest
from analysis.chinchilla import (
    DELTA,
    REFIT_ITERS,
    batched_lbfgs,
    huber,
    local_optima,
    polish,
    refit_best,
)
from analysis.errors import AnalysisError
from analysis.identify import (
    MIN_RESID_DF,
    NotIdentified,
    check_design,
    check_draws,
    check_fit,
    numeric_jacobian,
)
from analysis.results import LawResult, group_label, resample_residuals
from analysis.routed import ROUTED, experts
from analysis.routed import e_hat as clark_e_hat


def lse_objective(theta_SP: np.ndarray, X_KnP: np.ndarray, logL: np.ndarray,
                  w: np.ndarray | float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Summed Huber loss of LSE_k(X_k theta) - log L and its gradient, for S vectors at once."""
    t_KSn = np.einsum("knp,sp->ksn", X_KnP, theta_SP)
    return _huber_lse(t_KSn, logL, w, lambda g_KSn: np.einsum("ksn,knp->sp", g_KSn, X_KnP))


def _huber_lse(t_KSn, logL, w, back) -> tuple[np.ndarray, np.ndarray]:
    """Summed Huber of LSE_k t_k - log L; back(d objective / d t_KSn) gives the gradient."""
    m = t_KSn.max(0)
    e_KSn = np.exp(t_KSn - m)
    total = e_KSn.sum(0)
    h, dr = huber(m + np.log(total) - logL)
    h, dr = h * w, dr * w
    return h.sum(1), back(e_KSn / total * dr)


@dataclass(frozen=True)
class Formula:
    """A law of the form log L = LSE_k t_k(theta, rows), as the bank's one fitter (`fit_law`)
    sees it; `law()` gives it as analysis.prediction.Law, the interface prediction intervals,
    backtests and the bank's ranking go through. Its parameters (theta order), those stored as logs,
    the rows it is fitted to, the variables it is curved in (identify.check_design wants three
    levels of each), its start grid and the runs beyond its parameters its bootstrap needs
    (min_resid_df: identify.MIN_RESID_DF holds the values coverage set). `design` gives
    t = X theta for a law linear in theta; `terms` replaces it for one that is not (the joint
    law's E_start, E_max): t and dt/dtheta."""

    name: str
    formula: str
    names: tuple[str, ...]
    logs: tuple[int, ...]
    design: Callable[[pd.DataFrame], np.ndarray] | None
    rows: Callable[[pd.DataFrame], pd.DataFrame]
    curved: tuple[str, ...]
    starts: np.ndarray
    min_resid_df: int
    terms: Callable[[np.ndarray, pd.DataFrame], tuple[np.ndarray, np.ndarray]] | None = None
    saturation: bool = False  # the last two are E_start, E_max: theta log E_start, log(E_max - E_start)
    levels: tuple[tuple[str, int], ...] = ()  # variables that need more than MIN_LEVELS levels

    def law(self) -> prediction.Law:
        """This law as analysis.prediction and analysis.backtest see one (one fit per modality)."""
        def jobs(df):
            return [({"modality": m}, g) for m, g in df.groupby("modality")]

        def fit(rows, group, bootstrap, seed):
            return fit_law(self, rows, group, bootstrap, seed)

        return prediction.Law(self.name, jobs, fit, lambda params, rows: predict_natural(self, params, rows))

    def natural(self, theta: np.ndarray) -> np.ndarray:
        th = np.atleast_2d(theta).astype(float)
        out = th.copy()
        out[:, list(self.logs)] = np.exp(th[:, list(self.logs)])
        if self.saturation:
            out[:, -2] = np.exp(th[:, -2])
            out[:, -1] = out[:, -2] + np.exp(th[:, -1])
        return out

    def log_theta(self, params: np.ndarray) -> np.ndarray:
        p = np.atleast_2d(params).astype(float)
        out = p.copy()
        with np.errstate(divide="ignore", invalid="ignore"):  # a draw that underflowed to 0
            out[:, list(self.logs)] = np.log(p[:, list(self.logs)])
            if self.saturation:
                out[:, -2], out[:, -1] = np.log(p[:, -2]), np.log(p[:, -1] - p[:, -2])
        return out

    def objective(self, theta_SP: np.ndarray, df: pd.DataFrame, logL: np.ndarray,
                  w: np.ndarray | float = 1.0, X_KnP: np.ndarray | None = None):
        """Summed Huber loss of log residuals and its gradient at S parameter rows."""
        if self.terms is None:
            return lse_objective(theta_SP, self.design(df) if X_KnP is None else X_KnP, logL, w)
        t_KSn, dt_KSnP = self.terms(theta_SP, df)
        return _huber_lse(t_KSn, logL, w, lambda g_KSn: np.einsum("ksn,ksnp->sp", g_KSn, dt_KSnP))

    def log_predict(self, theta: np.ndarray, df: pd.DataFrame) -> np.ndarray:
        """log L at theta [P] -> [rows] or [S, P] -> [S, rows]."""
        th = np.atleast_2d(theta)
        t = self.terms(th, df)[0] if self.terms else np.einsum("knp,sp->ksn", self.design(df), th)
        m = t.max(0)
        out = m + np.log(np.exp(t - m).sum(0))
        return out[0] if np.ndim(theta) == 1 else out


def _joint_le(E: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
    """log Ehat [S, n] (routed.e_hat) at E_start = e^u, E_max = e^u + e^v (columns u, v [S, 1])
    and its derivatives by u and by v; inf or nan where a runaway step takes E_max - E_start to
    0 or the exponentials out of range (the fitter backs off such steps)."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        es, ev = np.exp(u), np.exp(v)
        em = es + ev
        s = 1 / es - 1 / em
        inner = E - 1 + 1 / s
        inv = 1 / inner + 1 / em
        le = -np.log(inv)

        def by(des, dem):  # d le for dE_start = des, dE_max = dem
            ds = -des / es**2 + dem / em**2
            return -((ds / s**2) / inner**2 - dem / em**2) / inv

        return le, by(es, es), by(0.0, ev)


def _joint_terms(theta_SP: np.ndarray, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    lN, lD = np.log(df["N"].to_numpy(float)), np.log(df["D"].to_numpy(float))
    a, de, al, ga, b, om, be, ze, e, u, v = (theta_SP[:, k : k + 1] for k in range(11))
    le, dle_u, dle_v = _joint_le(experts(df)[None], u, v)
    t1 = a + de * le - al * lN - ga * le * lN
    t2 = b + om * le - be * lD - ze * le * lD
    one, zero = np.ones_like(t1), np.zeros_like(t1)
    c1, c2 = de - ga * lN, om - ze * lD  # d t / d log Ehat
    g1 = [one, le, zero - lN, -le * lN, zero, zero, zero, zero, zero, c1 * dle_u, c1 * dle_v]
    g2 = [zero, zero, zero, zero, one, le, zero - lD, -le * lD, zero, c2 * dle_u, c2 * dle_v]
    g3 = [zero] * 8 + [one, zero, zero]
    return (np.stack([t1, t2, e + zero]),
            np.stack([np.stack(g, -1) for g in (g1, g2, g3)]))


def _granularity_design(df: pd.DataFrame) -> np.ndarray:
    lN, lD = np.log(df["N"].to_numpy(float)), np.log(df["D"].to_numpy(float))
    lG = np.log(df["granularity"].to_numpy(float))
    one, zero = np.ones_like(lN), np.zeros_like(lN)
    # theta: log g, gamma, alpha, log A, log B, beta, e
    return np.stack([np.stack([one, -lG, -lN, zero, zero, zero, zero], 1),
                     np.stack([zero, zero, -lN, one, zero, zero, zero], 1),
                     np.stack([zero, zero, zero, zero, one, -lD, zero], 1),
                     np.stack([zero, zero, zero, zero, zero, zero, one], 1)])


def _chinchilla_design(df: pd.DataFrame) -> np.ndarray:
    lN, lD = np.log(df["N"].to_numpy(float)), np.log(df["D"].to_numpy(float))
    one, zero = np.ones_like(lN), np.zeros_like(lN)
    # theta: e, a, b, alpha, beta
    return np.stack([np.stack([zero, one, zero, -lN, zero], 1),
                     np.stack([zero, zero, one, zero, -lD], 1),
                     np.stack([one, zero, zero, zero, zero], 1)])


def joint_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Dense runs and learned-router MoE runs (MoT and modality routing have no expert count
    the law's Ehat can stand for)."""
    learned = (df["family"] == "moe") & (df["router"].fillna("learned") == "learned") & (df["n_experts"] > 0)
    return df[(df["family"] == "dense") | learned]


def _granularity_rows(df: pd.DataFrame) -> pd.DataFrame:
    """MoE runs that record a granularity (MoT runs have none)."""
    return df[(df["family"] == "moe") & np.isfinite(df["granularity"].astype(float))]


def _grid(*axes) -> np.ndarray:
    return np.array(list(itertools.product(*axes)), float)


AB, EXP, E0 = (0.0, 5.0, 10.0), (0.2, 0.6), (-1.0, 0.0, 0.5)
# the expert count enters the joint law through Ehat (E_start, E_max) and four terms in it:
# with dense runs and two expert counts every fit to a 3x3 grid each is ill conditioned
# (condition 5e9-5e10, zeta barely constrained); with a third expert count the fits are
# accepted, but the loss at a point covers 0.875 on a 3x3 grid each, short of 0.90, and
# 0.95-0.975 on a 4x3 or 3x4 grid (40 sets; README, Benchmarks): so the law also needs
# identify.MIN_RESID_DF["joint"] runs beyond its parameters, which a 3x3 grid does not reach
JOINT_EXPERT_LEVELS = 4
JOINT = Formula(
    "joint", "E + A Ehat^delta / N^(alpha + gamma ln Ehat) + B Ehat^omega / D^(beta + zeta ln Ehat)",
    ("A", "delta", "alpha", "gamma", "B", "omega", "beta", "zeta", "E", "E_start", "E_max"),
    (0, 4, 8), None, joint_rows, ("N", "D", "E"),
    _grid(AB, (0.0,), EXP, (0.0,), AB, (0.0,), EXP, (0.0,), E0), MIN_RESID_DF["joint"],
    terms=_joint_terms,
    saturation=True, levels=(("E", JOINT_EXPERT_LEVELS),))
# (log E_start, log(E_max - E_start)) at which the joint law's other parameters are first fitted
SATURATION_GRID = _grid(np.log([1.2, 2.0, 4.0]), np.log([30.0, 300.0, 3000.0]))
GRANULARITY = Formula(
    "granularity", "E + (g / G^gamma + A) / N^alpha + B / D^beta",
    ("g", "gamma", "alpha", "A", "B", "beta", "E"), (0, 3, 4, 6),
    _granularity_design, _granularity_rows, ("N", "D", "granularity"),
    _grid(AB, (0.5,), EXP, AB, AB, EXP, E0), MIN_RESID_DF["granularity"])
CHINCHILLA_FORMULA = Formula(
    "chinchilla", "E + A / N^alpha + B / D^beta", ("E", "A", "B", "alpha", "beta"), (0, 1, 2),
    _chinchilla_design, lambda df: df, ("N", "D"), _grid(E0, AB, AB, EXP, EXP),
    MIN_RESID_DF["chinchilla"])
FORMULAS = {f.name: f for f in (JOINT, GRANULARITY, CHINCHILLA_FORMULA)}


@dataclass
class BankResult(LawResult):
    """A fitted bank law, with its training runs and their log residuals."""

    spec: Formula | None = None
    residuals: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rows: pd.DataFrame | None = None  # the runs it was fitted to

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Loss (nats/token) at the rows of df (the columns the law uses)."""
        return predict_natural(self.spec, self.params.to_numpy(), df)

    def chinchilla_at(self, **at) -> np.ndarray:
        """(E, A, B, alpha, beta) rows (point estimate first, then every draw) of the Chinchilla
        law this law reduces to at a fixed expert count (joint: n_experts=...) or granularity
        (granularity: granularity=...)."""
        rows = np.vstack([self.params.to_numpy()[None]] + ([self.boot] if self.boot is not None else []))
        return reduce_to_chinchilla(self.law, rows, **at)


def reduce_to_chinchilla(law: str, p: np.ndarray, n_experts: float = 1.0,
                         granularity: float = 1.0) -> np.ndarray:
    if law == "chinchilla":
        return p
    if law == "joint":
        A, de, al, ga, B, om, be, ze, E, es, em = p.T
        le = np.log(clark_e_hat(n_experts, es, em))
        return np.stack([E, A * np.exp(de * le), B * np.exp(om * le), al + ga * le, be + ze * le], 1)
    if law == "granularity":
        g, ga, al, A, B, be, E = p.T
        return np.stack([E, g / granularity**ga + A, B, al, be], 1)
    raise AnalysisError(f"the {law} law has no Chinchilla form at fixed settings")


def predict_natural(law: Formula, params: np.ndarray, df: pd.DataFrame) -> np.ndarray:
    """Loss at natural parameters [P] -> [rows] or [S, P] -> [S, rows] (prediction.Law's predict)."""
    params = np.asarray(params, float)
    theta = law.log_theta(params)
    return np.exp(law.log_predict(theta[0] if params.ndim == 1 else theta, df))


def check_rows(law: Formula, df: pd.DataFrame, label: str) -> None:
    """The identification gate before a fit (identify.check_design): every variable the law
    uses is there, at three or more levels where it is curved, and enough runs beyond its
    parameters; raises identify.NotIdentified with what to add."""
    for col in law.curved:
        if col not in df or df[col].isna().any():
            raise AnalysisError(f"group ({label}): the {law.name} law needs a '{col}' for every run")
    ident = check_design(df, len(law.names), law.curved, law.name,
                         min_resid_df=law.min_resid_df, levels=dict(law.levels))
    if not ident.ok:
        raise NotIdentified(f"group ({label}): the {law.name} law", ident)


# starts polished to convergence after the batched phase: on the joint law's smallest accepted
# design (3x3 grid x dense, E = 4, 16, 64) polishing only the best of 100 batched iterations
# missed the global optimum in 0.6 of the data sets (the truth's basin reached a lower
# objective), biasing the loss at a point low by 0.7 bootstrap SDs; 500 iterations and five
# polished starts miss it in 0.1
POLISH = 5


def fit_law(law: Formula | str, df: pd.DataFrame, group: dict | None = None, bootstrap: int = 200,
            seed: int = 0, weights: np.ndarray | None = None) -> BankResult:
    """Fit one bank law to the rows it uses. Intervals: a residual bootstrap as for the other
    laws (analysis.results.resample_residuals): each draw refits the fitted log losses plus
    resampled log residuals; or, given `weights` [draws, rows of df], refits with those run
    multiplicities (resampled runs, as analysis/leverage.py does). The draws' percentile
    intervals are expanded for the n - P residual degrees of freedom (LawResult.expanded), as
    the Chinchilla and routed fits' are: plain percentiles of the granularity law's (7
    parameters, 27 runs) covered the loss at a point 0.91-0.93 of the time over 60 data sets,
    expanded ones 0.95."""
    law = FORMULAS[law] if isinstance(law, str) else law
    group = group or {}
    keep = law.rows(df).assign(E=lambda x: experts(x))
    if keep.empty:
        missing = [c for c in law.curved if c in df and df[c].isna().all()]
        raise AnalysisError(f"group ({group_label(group)}): no runs the {law.name} law covers"
                            + "".join(f"; it needs a '{c}' for every run" for c in missing))
    check_rows(law, keep, group_label(group))
    X = None if law.design is None else law.design(keep)
    logL = np.log(keep["loss"].to_numpy(float))[None]

    def fun(th, y=logL, w=1.0):
        return law.objective(th, keep, y, w, X)

    with np.errstate(all="ignore"):
        starts = _saturation_starts(law, keep, logL) if law.saturation else law.starts
        x, f = batched_lbfgs(lambda th, _: fun(th), starts, iters=REFIT_ITERS)
    finite = np.where(np.isfinite(f), f, np.inf)
    res = min((polish(fun, x[k]) for k in np.argsort(finite)[:POLISH]), key=lambda r: r.fun)
    theta = res.x
    fitted = law.log_predict(theta, keep)
    resid = logL[0] - fitted
    edges = _edge_warnings(law, theta)
    ident = check_fit(numeric_jacobian(lambda th: law.log_predict(th, keep), theta), list(law.names),
                      [w.split(" ")[0] for w in edges])
    if not ident.ok:
        raise NotIdentified(f"group ({group_label(group)}): the {law.name} law", ident)
    boot = None
    optima = local_optima(x, f, theta)
    if weights is not None:
        w = weights[:, np.flatnonzero(df.index.isin(keep.index))]
        boot = law.natural(refit_best(lambda th, b: fun(th, logL, w[b]), optima, len(w)))
    elif bootstrap:
        y_BN = fitted + resample_residuals(resid, len(law.names), bootstrap, np.random.default_rng(seed),
                                           robust=True)
        boot = law.natural(refit_best(lambda th, b: fun(th, y_BN[b]), optima, len(y_BN)))
    params = pd.Series(law.natural(theta)[0], index=list(law.names))
    if boot is not None:
        ident = check_draws(boot, params.to_numpy(float), list(law.names))
        if not ident.ok:
            raise NotIdentified(f"group ({group_label(group)}): the {law.name} law", ident)
    out = BankResult(law.name, group, params, boot, len(keep), float(res.fun), bool(res.success),
                     str(res.message), df_resid=len(keep) - len(law.names), spec=law,
                     residuals=resid, rows=keep)
    if not res.success:
        out.warnings.append(f"the optimizer did not converge: {res.message}")
    out.warnings += edges
    return out


def _saturation_starts(law: Formula, rows: pd.DataFrame, logL: np.ndarray) -> np.ndarray:
    """Starts of all parameters: at each (E_start, E_max) of SATURATION_GRID the law is linear in
    the others, fitted from its start grid; each grid point's best fit is one start."""
    out = []
    for uv in SATURATION_GRID:
        probe = np.concatenate([law.starts[0], uv])[None]
        X_KnP = law.terms(probe, rows)[1][:, 0, :, : law.starts.shape[1]]
        x, f = batched_lbfgs(lambda th, _, X=X_KnP: lse_objective(th, X, logL), law.starts, iters=100)
        if np.isfinite(f).any():  # a grid point where no start stays finite gives no start
            out.append(np.concatenate([x[np.nanargmin(np.where(np.isfinite(f), f, np.nan))], uv]))
    if not out:
        raise AnalysisError(f"the {law.name} law: no start of its saturation grid gives a finite fit")
    return np.array(out)


def _edge_warnings(law: Formula, theta: np.ndarray) -> list[str]:
    out = []
    for i, name in enumerate(law.names[: law.starts.shape[1]]):
        lo, hi = law.starts[:, i].min(), law.starts[:, i].max()
        if hi > lo and not (lo - 5 * (hi - lo) < theta[i] < hi + 5 * (hi - lo)):
            out.append(f"{name} ({'log ' if i in law.logs else ''}{theta[i]:.4g}) lies far outside "
                       f"its start range [{lo:g}, {hi:g}]; the fit may have run off")
    return out


def aic(residuals: np.ndarray, k: int) -> float:
    """AIC under a Laplace likelihood of log residuals (the Huber objective with delta = 1e-3 is
    the L1 loss at these residual sizes): 2k + 2n (log(2 mean|r|) + 1)."""
    n = len(residuals)
    b = max(float(np.mean(np.abs(residuals))), DELTA * 1e-3)
    return 2 * k + 2 * n * (np.log(2 * b) + 1)


def split(rows: pd.DataFrame, holdout_largest: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, held-out MoE runs) of one modality: the `holdout_largest` largest-compute runs of
    each MoE family (backtest.split_largest over all MoE runs, ties held out too), and every
    run, dense or MoE, at or above the smallest held-out compute stays out of training."""
    from analysis.records import family_key

    moe = rows[rows["family"] != "dense"]
    if moe.empty:
        raise AnalysisError("no MoE runs to hold out")
    _, held = split_largest(moe, holdout_largest * family_key(moe).nunique())
    return rows[rows["C"] < held["C"].min()], held


@dataclass
class Scored:
    """One law's fits on the training runs and its predictions for the held-out MoE runs."""

    law: str
    n_params: int
    train_residuals: np.ndarray  # log residuals on the training MoE runs
    predicted: pd.DataFrame  # prediction.prediction_interval's columns, one row per held-out run
    fits: list = field(default_factory=list)


def _score(law: prediction.Law, fits: list[tuple[LawResult, pd.DataFrame, pd.DataFrame]]) -> Scored:
    """From (result, its training rows, the held-out rows it predicts) per fit."""
    if not fits:
        raise AnalysisError(f"no held-out runs the {law.name} law covers")
    res, pred = [], []
    for r, train, held in fits:
        moe = train[train["family"] != "dense"]
        res.append(np.log(moe["loss"].to_numpy(float) / law.predict(r.params.to_numpy(float), moe)))
        if len(held):
            pred.append(prediction.prediction_interval(r, law, train, held))
    return Scored(law.name, sum(len(r.params) for r, _, _ in fits), np.concatenate(res),
                  pd.concat(pred), [r for r, _, _ in fits])


def _per_family(law: prediction.Law, train: pd.DataFrame, held: pd.DataFrame, group: dict,
                by: str, bootstrap: int, seed: int) -> Scored:
    """One fit per value of `by` among the held-out runs, to the training runs of that value."""
    fits = []
    for value in sorted(set(held[by])):
        rows = train[train[by] == value]
        if rows.empty:
            raise AnalysisError(f"group ({group_label(group)}): no training runs with {by} {value}")
        fits.append((law.fit(rows, {**group, by: value}, bootstrap, seed), rows, held[held[by] == value]))
    return _score(law, fits)


def score_law(name: str, train: pd.DataFrame, held: pd.DataFrame, group: dict, bootstrap: int = 200,
              seed: int = 0) -> Scored:
    """Fit one law of the bank to the training runs and predict the held-out MoE runs it covers:
    chinchilla one law per MoE family; granularity one per expert count (Krajewski et al. fit at
    a fixed expansion); routed one per router, top-k and token count (routed_jobs), so it
    predicts only held-out runs at a token count it was fitted at; joint one law for all."""
    from analysis.records import family_key

    if name == "chinchilla":
        tr = train[train["family"] != "dense"]
        return _per_family(CHINCHILLA_FORMULA.law(), tr.assign(fkey=family_key(tr)),
                           held.assign(fkey=family_key(held)), group, "fkey", bootstrap, seed)
    if name == "granularity":
        return _per_family(GRANULARITY.law(), _granularity_rows(train), _granularity_rows(held),
                           group, "n_experts", bootstrap, seed)
    if name == "routed":
        fits = []
        jobs = {tuple(sorted(g.items())): rows for g, rows in ROUTED.jobs(train)}
        for g, rows in ROUTED.jobs(held):
            g = {**g, "modality": group.get("modality", g["modality"])}
            key = tuple(sorted(g.items()))
            if key not in jobs:
                raise AnalysisError(f"group ({group_label(g)}): no training runs at this router and "
                                    "token count; the routed law has no token term to reach them")
            moe = rows[rows["family"] != "dense"]
            fits.append((ROUTED.fit(jobs[key], g, bootstrap, seed), jobs[key], moe))
        return _score(ROUTED, fits)
    formula = FORMULAS[name]
    law, rows = formula.law(), formula.rows(train)
    return _score(law, [(law.fit(rows, group, bootstrap, seed), rows, formula.rows(held))])


def score_baseline(train: pd.DataFrame, held: pd.DataFrame, alpha: float = 0.05) -> Scored:
    """The bar a law must clear: per MoE family, log L = log A - a log C fitted by OLS to its
    training runs (a power law in compute, no irreducible loss), with OLS's 1 - alpha prediction
    interval for each held-out run."""
    import statsmodels.api as sm

    from analysis.records import family_key

    tr = train[train["family"] != "dense"]
    keys_tr, keys_held = family_key(tr), family_key(held)
    res, pred, k = [], [], 0
    for fam in sorted(set(keys_held)):
        rows, new = tr[keys_tr == fam], held[keys_held == fam]
        if len(rows) < 3:
            raise AnalysisError(f"{fam}: {len(rows)} training runs, too few for the baseline")
        logC = sm.add_constant(np.log(rows["C"].to_numpy(float)))
        ols = sm.OLS(np.log(rows["loss"].to_numpy(float)), logC).fit()
        res.append(ols.resid)
        x = sm.add_constant(np.log(new["C"].to_numpy(float)), has_constant="add")
        f = ols.get_prediction(x).summary_frame(alpha)
        pred.append(pd.DataFrame({"predicted": np.exp(f["mean"].to_numpy()),
                                  "lower": np.exp(f["obs_ci_lower"].to_numpy()),
                                  "upper": np.exp(f["obs_ci_upper"].to_numpy())}, index=new.index))
        k += 2
    return Scored(BASELINE, k, np.concatenate(res), pd.concat(pred))


BANK = ("chinchilla", "routed", "joint", "granularity")
BASELINE = "baseline: power law in compute"


def rank_laws(df: pd.DataFrame, modality: str, holdout_largest: int = 3, bootstrap: int = 200,
              seed: int = 0, laws: tuple[str, ...] = BANK
              ) -> tuple[pd.DataFrame, dict[str, Scored], list[str]]:
    """Fit every law of the bank that the runs identify to one modality's runs below the
    held-out compute (`split`, whose training runs must span two or more token counts) and
    score each on the same held-out MoE runs: RMS and mean absolute error of log loss (%),
    share inside its 95% prediction interval (analysis.prediction), AIC on the training MoE
    runs. Beside them the baseline (`score_baseline`, a power law in compute): a law ranks only
    if it beats it (lower RMS error), and among those the laws within one standard error of
    the best come first, simplest first (`one_se`). With a single law that can be fitted there
    is no ranking: its row says so. The notes say which laws could not be fitted and why."""
    rows = df[df["modality"] == modality]
    train, held = split(rows, holdout_largest)
    budgets = train["D"].map(lambda d: float(f"{d:.3g}")).nunique()
    if budgets < 2:
        raise AnalysisError(f"modality {modality}: holding out the largest-compute MoE runs leaves "
                            f"{budgets} token count among the training runs, so laws with a token "
                            "term cannot be compared on it; add runs at a second token budget "
                            "below the largest compute")
    group = {"modality": modality}
    scored, notes = {}, []
    for name in laws:
        try:
            scored[name] = score_law(name, train, held, group, bootstrap, seed)
        except AnalysisError as e:
            notes.append(f"{name} law: {e}")
    common = held.index
    for name in sorted(scored, key=lambda k: len(scored[k].predicted)):
        covered = common.intersection(scored[name].predicted.index)
        if len(covered) < max(1, len(held) / 2):
            notes.append(f"{name} law: predicts {len(covered)} of the {len(held)} held-out MoE runs "
                         "(the others are of routers, expert counts or token counts it does not "
                         "cover); left out so that every law is judged on the same runs")
            del scored[name]
        else:
            common = covered
    if not scored:
        raise AnalysisError(f"modality {modality}: no law of the bank could be fitted: " + "; ".join(notes))
    if len(common) < len(held):
        notes.append(f"the laws are judged on the {len(common)} held-out MoE runs that all of them "
                     f"predict, of {len(held)}")
    judged = held.loc[common]
    try:
        scored[BASELINE] = score_baseline(train, judged)
    except AnalysisError as e:
        notes.append(f"{BASELINE}: {e}")
    table, sq = [], {}
    for name, sc in scored.items():
        p = sc.predicted.loc[common]
        obs = judged["loss"].to_numpy(float)
        err = np.log(obs / p["predicted"].to_numpy())
        covered = (p["lower"].to_numpy() <= obs) & (obs <= p["upper"].to_numpy())
        sq[name] = err**2
        table.append({"modality": modality, "law": name, "parameters": sc.n_params,
                      "training MoE runs": len(sc.train_residuals), "held-out MoE runs": len(err),
                      "token counts in training": budgets,
                      "beyond (x compute)": judged["C"].max() / train["C"].max(),
                      "RMS error (%)": 100 * float(np.sqrt(np.mean(err**2))),
                      "mean abs error (%)": 100 * float(np.mean(np.abs(err))),
                      "95% PI coverage": float(covered.mean()),
                      "AIC (training)": aic(sc.train_residuals, sc.n_params)})
    t = pd.DataFrame(table)
    bar = t.loc[t["law"] == BASELINE, "RMS error (%)"]
    t["beats baseline"] = (t["RMS error (%)"] < bar.iloc[0]) if len(bar) else False
    t.loc[t["law"] == BASELINE, "beats baseline"] = False
    laws_t, base_t = t[t["law"] != BASELINE], t[t["law"] == BASELINE]
    if len(laws_t) == 1:
        notes.append(f"only the {laws_t['law'].iloc[0]} law could be fitted: nothing to rank it "
                     "against but the baseline")
        laws_t = laws_t.assign(rank="only law fitted", **{"within 1 SE of the best": np.nan})
        return pd.concat([laws_t, base_t.assign(rank="baseline")], ignore_index=True), scored, notes
    ok = laws_t[laws_t["beats baseline"]]
    fails = laws_t[~laws_t["beats baseline"]].sort_values("RMS error (%)")
    if len(ok):
        ok = ok.assign(**{"within 1 SE of the best": one_se(ok["law"].tolist(), [sq[k] for k in ok["law"]])})
        tied = ok[ok["within 1 SE of the best"]].sort_values(["parameters", "RMS error (%)"])
        rest = ok[~ok["within 1 SE of the best"]].sort_values("RMS error (%)")
        ok = pd.concat([tied, rest]).assign(rank=[str(i) for i in range(1, len(ok) + 1)])
    else:
        notes.append("no law of the bank predicts the held-out runs better than a power law in "
                     "compute: none is called best")
    fails = fails.assign(rank="does not beat the baseline")
    out = pd.concat([ok, fails, base_t.assign(rank="baseline")], ignore_index=True)
    return out[[c for c in out.columns if c != "rank"][:2] + ["rank"]
               + [c for c in out.columns if c != "rank"][2:]], scored, notes


def best_law(ranking: pd.DataFrame) -> str | None:
    """The law ranked first of a `rank_laws` table, or None where none beat the baseline or
    only one law could be fitted."""
    first = ranking[ranking["rank"] == "1"]
    return None if first.empty else str(first["law"].iloc[0])


def one_se(laws: list[str], sq_errors: list[np.ndarray]) -> list[bool]:
    """Which laws predict the held-out runs as well as the best up to one standard error of the
    paired difference in squared log error (the one-standard-error rule, Hastie et al. 7.10):
    among those the simplest is preferred, since the data cannot tell them apart."""
    mse = [float(np.mean(e)) for e in sq_errors]
    best = sq_errors[int(np.argmin(mse))]
    out = []
    for e in sq_errors:
        d = e - best
        se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
        out.append(bool(np.mean(d) <= se))
    return out
