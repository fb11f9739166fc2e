"""A bank of MoE scaling laws fitted with one robust objective, ranked by out-of-sample error.

Laws whose log-loss is a log-sum-exp of terms linear in their parameters share one fitter (the
objective of Hoffmann et al. Approach 3: summed Huber, delta = 1e-3, of log residuals; batched
L-BFGS from a grid of starts, the best polished with scipy; residual-bootstrap refits
warm-started, all draws at once, as analysis/chinchilla.py does):

- `joint`, Ludziejewski et al. (2025), "Joint MoE Scaling Laws": dense and MoE runs in one law,
  the expert count entering both the parameter and the data term,

      L(N, D, E) = E0 + A Ehat^delta / N^(alpha + gamma ln Ehat) + B Ehat^omega / D^(beta + zeta ln Ehat)

  with N active params. The form (coefficients and exponents both depend on ln Ehat) is the
  paper's as its public summaries quote it, with fitted values (a = 35.91, delta = 0.2285, ...);
  its equation writes the exponents negative, here alpha, beta > 0 and gamma, zeta carry the
  opposite sign. The transform Ehat we could not
  check against the paper's text: we use Clark et al.'s saturating transform with E_start = 1,
  so dense runs (E = 1) have Ehat = 1 and the law is Chinchilla's for them, and E_max = 1000
  (Ehat ~ E below a few hundred experts).
- `granularity`, Krajewski et al. (2024), fine-grained MoE at a fixed expansion:
  L(N, D, G) = E0 + (g / G^gamma + A) / N^alpha + B / D^beta, G = dense FFN width / one
  expert's width (the form as the issue states it; we found no copy of the paper's text to check
  it against); fitted to MoE runs with a `granularity` column (records need it, see README).
- `chinchilla`: one Chinchilla law per MoE family (family, router, expert count, top-k).
- `routed`: Clark et al. (2022), analysis/routed.py (no token-count term).

`rank_laws` holds out each modality's largest-compute MoE runs (analysis.backtest's split),
fits every law that the rest supports, and reports on the held-out MoE runs each law's error
and 95% prediction-interval coverage (analysis.prediction's intervals), beside AIC on the
training MoE runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import prediction
from analysis.backtest import split_largest
from analysis.chinchilla import DELTA, REFIT_ITERS, batched_lbfgs, huber, polish
from analysis.errors import AnalysisError
from analysis.results import LawResult, group_label, resample_residuals
from analysis.routed import e_hat as clark_e_hat
from analysis.routed import fit_routed, routed_jobs

E_MAX = 1000.0


def lse_objective(theta_SP: np.ndarray, X_KnP: np.ndarray, logL: np.ndarray,
                  w: np.ndarray | float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Summed Huber loss of LSE_k(X_k theta) - log L and its gradient, for S vectors at once."""
    t_KSn = np.einsum("knp,sp->ksn", X_KnP, theta_SP)
    m = t_KSn.max(0)
    e_KSn = np.exp(t_KSn - m)
    total = e_KSn.sum(0)
    h, dr = huber(m + np.log(total) - logL)
    h, dr = h * w, dr * w
    grad = np.einsum("ksn,knp->sp", e_KSn / total * dr, X_KnP)
    return h.sum(1), grad


def e_hat(E, e_max: float = E_MAX) -> np.ndarray:
    """Clark et al.'s saturating expert count with E_start = 1: Ehat(1) = 1, Ehat -> e_max."""
    E = np.asarray(E, float)
    return 1.0 / (1.0 / (E - 1.0 + e_max / (e_max - 1.0)) + 1.0 / e_max)


def experts(df: pd.DataFrame) -> np.ndarray:
    """The expert count, 1 for dense runs."""
    return np.where(df["family"] == "dense", 1.0, df["n_experts"].astype(float).clip(lower=1))


@dataclass(frozen=True)
class Law:
    """A law log L = LSE_k(X_k(df) theta): its parameters (theta order), which are stored as logs,
    the design, the rows it is fitted to, the columns it needs varied, and its start grid."""

    name: str
    formula: str
    names: tuple[str, ...]
    logs: tuple[int, ...]
    design: Callable[[pd.DataFrame], np.ndarray]
    rows: Callable[[pd.DataFrame], pd.DataFrame]
    varied: tuple[str, ...]
    starts: np.ndarray

    def natural(self, theta: np.ndarray) -> np.ndarray:
        out = np.atleast_2d(theta).copy()
        out[:, list(self.logs)] = np.exp(out[:, list(self.logs)])
        return out

    def log_theta(self, params: np.ndarray) -> np.ndarray:
        out = np.atleast_2d(params).astype(float).copy()
        with np.errstate(divide="ignore"):  # a draw whose coefficient underflowed to 0
            out[:, list(self.logs)] = np.log(out[:, list(self.logs)])
        return out


def _joint_design(df: pd.DataFrame) -> np.ndarray:
    lN, lD = np.log(df["N"].to_numpy(float)), np.log(df["D"].to_numpy(float))
    le = np.log(e_hat(experts(df)))
    one, zero = np.ones_like(lN), np.zeros_like(lN)
    z4 = [zero] * 4
    # theta: a, delta, alpha, gamma, b, omega, beta, zeta, e
    return np.stack([np.stack([one, le, -lN, -le * lN, *z4, zero], 1),
                     np.stack([*z4, one, le, -lD, -le * lD, zero], 1),
                     np.stack([*z4, *z4, one], 1)])


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


def _moe_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["family"] != "dense"]


def _grid(*axes) -> np.ndarray:
    return np.array(list(itertools.product(*axes)), float)


AB, EXP, E0 = (0.0, 5.0, 10.0), (0.2, 0.6), (-1.0, 0.0, 0.5)
JOINT = Law(
    "joint", "E + A Ehat^delta / N^(alpha + gamma ln Ehat) + B Ehat^omega / D^(beta + zeta ln Ehat)",
    ("A", "delta", "alpha", "gamma", "B", "omega", "beta", "zeta", "E"), (0, 4, 8),
    _joint_design, lambda df: df, ("N", "D", "n_experts"),
    _grid(AB, (0.0,), EXP, (0.0,), AB, (0.0,), EXP, (0.0,), E0))
GRANULARITY = Law(
    "granularity", "E + (g / G^gamma + A) / N^alpha + B / D^beta",
    ("g", "gamma", "alpha", "A", "B", "beta", "E"), (0, 3, 4, 6),
    _granularity_design, _moe_rows, ("N", "D", "granularity"),
    _grid(AB, (0.5,), EXP, AB, AB, EXP, E0))
CHINCHILLA = Law(
    "chinchilla", "E + A / N^alpha + B / D^beta", ("E", "A", "B", "alpha", "beta"), (0, 1, 2),
    _chinchilla_design, lambda df: df, ("N", "D"), _grid(E0, AB, AB, EXP, EXP))
LAWS = {law.name: law for law in (JOINT, GRANULARITY, CHINCHILLA)}


@dataclass
class BankResult(LawResult):
    """A fitted bank law, with its training runs and their log residuals."""

    spec: Law | None = None
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
        A, de, al, ga, B, om, be, ze, E = p.T
        le = float(np.log(e_hat(n_experts)))
        return np.stack([E, A * np.exp(de * le), B * np.exp(om * le), al + ga * le, be + ze * le], 1)
    if law == "granularity":
        g, ga, al, A, B, be, E = p.T
        return np.stack([E, g / granularity**ga + A, B, al, be], 1)
    raise AnalysisError(f"the {law} law has no Chinchilla form at fixed settings")


def _lse_predict(law: Law, theta: np.ndarray, df: pd.DataFrame) -> np.ndarray:
    """Loss at theta [P] -> [rows], or [S, P] -> [S, rows]."""
    t = np.einsum("knp,...p->k...n", law.design(df), theta)
    m = t.max(0)
    return np.exp(m + np.log(np.exp(t - m).sum(0)))


def predict_natural(law: Law, params: np.ndarray, df: pd.DataFrame) -> np.ndarray:
    """Loss at natural parameters [P] -> [rows] or [S, P] -> [S, rows] (prediction.Law's predict)."""
    params = np.asarray(params, float)
    theta = law.log_theta(params)
    return _lse_predict(law, theta[0] if params.ndim == 1 else theta, df)


def check_rows(law: Law, df: pd.DataFrame, label: str) -> None:
    if len(df) < len(law.names):
        raise AnalysisError(f"group ({label}): {len(df)} runs, fewer than the {len(law.names)} "
                            f"parameters of the {law.name} law")
    for col in law.varied:
        if col not in df or df[col].isna().any():
            raise AnalysisError(f"group ({label}): the {law.name} law needs a '{col}' for every run")
        if df[col].nunique() < 2:
            raise AnalysisError(f"group ({label}): '{col}' does not vary; the {law.name} law cannot "
                                "be fitted")


def fit_law(law: Law | str, df: pd.DataFrame, group: dict | None = None, bootstrap: int = 200,
            seed: int = 0, weights: np.ndarray | None = None) -> BankResult:
    """Fit one bank law to the rows it uses. Intervals: a residual bootstrap as for the other
    laws (analysis.results.resample_residuals): each draw refits the fitted log losses plus
    resampled log residuals; or, given `weights` [draws, rows of df], refits with those run
    multiplicities (resampled runs, as analysis/leverage.py does)."""
    law = LAWS[law] if isinstance(law, str) else law
    group = group or {}
    keep = law.rows(df)
    check_rows(law, keep, group_label(group))
    X = law.design(keep)
    logL = np.log(keep["loss"].to_numpy(float))[None]

    def fun(th, y=logL):
        return lse_objective(th, X, y)

    with np.errstate(over="ignore", invalid="ignore"):
        x, f = batched_lbfgs(lambda th, _: fun(th), law.starts, iters=100)
    finite = np.where(np.isfinite(f), f, np.inf)
    res = min((polish(fun, x[k]) for k in np.argsort(finite)[:5]), key=lambda r: r.fun)
    theta = res.x
    fitted = np.log(_lse_predict(law, theta, keep))
    resid = logL[0] - fitted
    boot = None
    if weights is not None:
        w = weights[:, np.flatnonzero(df.index.isin(keep.index))]
        with np.errstate(over="ignore", invalid="ignore"):
            draws, _ = batched_lbfgs(lambda th, rows: lse_objective(th, X, logL, w[rows]),
                                     np.tile(theta, (len(w), 1)), iters=REFIT_ITERS)
        boot = law.natural(draws)
    elif bootstrap:
        y_BN = fitted + resample_residuals(resid, len(law.names), bootstrap, np.random.default_rng(seed),
                                           robust=True)
        with np.errstate(over="ignore", invalid="ignore"):
            draws, _ = batched_lbfgs(lambda th, rows: fun(th, y_BN[rows]),
                                     np.tile(theta, (len(y_BN), 1)), iters=REFIT_ITERS)
        boot = law.natural(draws)
    params = pd.Series(law.natural(theta)[0], index=list(law.names))
    out = BankResult(law.name, group, params, boot, len(keep), float(res.fun), bool(res.success),
                     str(res.message), spec=law, residuals=resid, rows=keep)
    if not res.success:
        out.warnings.append(f"the optimizer did not converge: {res.message}")
    out.warnings += _edge_warnings(law, theta)
    return out


def _edge_warnings(law: Law, theta: np.ndarray) -> list[str]:
    out = []
    for i, name in enumerate(law.names):
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


def adapter(law: Law) -> prediction.Law:
    """The law as analysis.prediction and analysis.backtest see one."""
    def jobs(df):
        return [({"modality": m}, g) for m, g in df.groupby("modality")]

    return prediction.Law(law.name, jobs,
                          lambda rows, group, bootstrap, seed: fit_law(law, rows, group, bootstrap, seed),
                          lambda params, rows: predict_natural(law, params, rows))


def _routed_predict(params: np.ndarray, rows: pd.DataFrame) -> np.ndarray:
    p = np.asarray(params, float)
    a, b, c, d, es, em = (p[..., i, None] for i in range(6))
    logN = np.log(rows["N"].to_numpy(float))
    le = np.log(clark_e_hat(experts(rows), es, em))
    return np.exp(a * logN + b * le + c * logN * le + d)


def _routed_fit(rows: pd.DataFrame, group: dict, bootstrap: int, seed: int) -> LawResult:
    return fit_routed(rows.assign(E=experts(rows)), group, bootstrap, seed)


ROUTED = prediction.Law("routed", routed_jobs, _routed_fit, _routed_predict)


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
    res, pred = [], []
    for r, train, held in fits:
        moe = train[train["family"] != "dense"]
        res.append(np.log(moe["loss"].to_numpy(float) / law.predict(r.params.to_numpy(float), moe)))
        if len(held):
            pred.append(prediction.prediction_interval(r, law, train, held))
    return Scored(law.name, sum(len(r.params) for r, _, _ in fits), np.concatenate(res),
                  pd.concat(pred), [r for r, _, _ in fits])


def score_law(name: str, train: pd.DataFrame, held: pd.DataFrame, group: dict, bootstrap: int = 200,
              seed: int = 0) -> Scored:
    """Fit one law of the bank to the training runs and predict the held-out MoE runs."""
    if name == "chinchilla":  # one law per MoE family
        from analysis.records import family_key

        law, fits = adapter(CHINCHILLA), []
        tr = train[train["family"] != "dense"]
        keys_tr, keys_held = family_key(tr), family_key(held)
        for fam in sorted(set(keys_held)):
            rows = tr[keys_tr == fam]
            if rows.empty:
                raise AnalysisError(f"group ({group_label(group)}): no training runs of {fam}")
            fits.append((law.fit(rows, {**group, "family": fam}, bootstrap, seed), rows,
                         held[keys_held == fam]))
        return _score(law, fits)
    if name == "routed":
        return _score(ROUTED, [(ROUTED.fit(train, group, bootstrap, seed), train, held)])
    rows = LAWS[name].rows(train)
    law = adapter(LAWS[name])
    return _score(law, [(law.fit(rows, group, bootstrap, seed), rows, held)])


BANK = ("chinchilla", "routed", "joint", "granularity")


def rank_laws(df: pd.DataFrame, modality: str, holdout_largest: int = 3, bootstrap: int = 200,
              seed: int = 0, laws: tuple[str, ...] = BANK
              ) -> tuple[pd.DataFrame, dict[str, Scored], list[str]]:
    """Fit every law of the bank that the runs support to one modality's runs below the held-out
    compute (`split`), and score each on the held-out MoE runs: RMS and mean absolute error of
    log loss (as %), share inside its 95% prediction interval (analysis.prediction), AIC on the
    training MoE runs. Ranked by RMS error, except that laws within one standard error of the
    best come first, simplest first (`one_se`); the notes say which laws could not be fitted
    and why."""
    rows = df[df["modality"] == modality]
    train, held = split(rows, holdout_largest)
    group = {"modality": modality}
    out, notes, table, sq = {}, [], [], {}
    for name in laws:
        try:
            s = score_law(name, train, held, group, bootstrap, seed)
        except AnalysisError as e:
            notes.append(f"{name} law: {e}")
            continue
        p = s.predicted.loc[held.index]
        obs = held["loss"].to_numpy(float)
        err = np.log(obs / p["predicted"].to_numpy())
        covered = (p["lower"].to_numpy() <= obs) & (obs <= p["upper"].to_numpy())
        out[name], sq[name] = s, err**2
        table.append({"modality": modality, "law": name, "parameters": s.n_params,
                      "training MoE runs": len(s.train_residuals), "held-out MoE runs": len(err),
                      "beyond (x compute)": held["C"].max() / train["C"].max(),
                      "RMS error (%)": 100 * float(np.sqrt(np.mean(err**2))),
                      "mean abs error (%)": 100 * float(np.mean(np.abs(err))),
                      "95% PI coverage": float(covered.mean()),
                      "AIC (training)": aic(s.train_residuals, s.n_params)})
    if not table:
        raise AnalysisError(f"modality {modality}: no law of the bank could be fitted: " + "; ".join(notes))
    t = pd.DataFrame(table)
    t["within 1 SE of the best"] = one_se(t["law"].tolist(), [sq[k] for k in t["law"]])
    tied = t[t["within 1 SE of the best"]].sort_values(["parameters", "RMS error (%)"])
    rest = t[~t["within 1 SE of the best"]].sort_values("RMS error (%)")
    t = pd.concat([tied, rest], ignore_index=True)
    t.insert(2, "rank", np.arange(1, len(t) + 1))
    t["error / best's"] = t["RMS error (%)"] / t["RMS error (%)"].min()
    return t, out, notes


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
