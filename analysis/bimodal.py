"""The bimodal law of Aghajanyan et al. (2023) for a joint model on modalities i and j:

    L(N, Di, Dj) = [L_i(N, Di) + L_j(N, Dj)] / 2 - C + A / N^alpha + B / (Di + Dj)^beta

L_i, L_j are Chinchilla fits to unimodal dense runs; the joint loss is the mean of the joint
run's two held-out losses. The interaction I = -C + A/N^alpha + B/(Di+Dj)^beta is fitted to
the joint runs (Huber, delta = 1e-3, batched L-BFGS from a grid of starts, the best five
polished with scipy; bootstrap refits start from the estimate and the grid's other local
optima, each keeping its best). I > 0: the modalities compete (the joint model is worse than separate
models on the same tokens); I < 0: synergy. The competition barrier is the model size (and
compute, at a tokens-per-parameter ratio) where I changes sign.

Intervals: a residual bootstrap of all three fits together. Each draw resamples the residuals
of the unimodal runs of i, of j and of the joint runs (each group from its own residuals, see
`resample_residuals`), refits both unimodal laws and then the interaction against the refitted
baselines; so the baselines' error, which shifts every joint residual together, reaches every
interval. Expanded percentile intervals of the draws (`LawResult.expanded`, with the residual
degrees of freedom of all three fits) are confidence intervals for the parameters and the
barrier; the interaction at a point gets a symmetric one (see `interaction_interval`).

Identifiability: C is the interaction at infinite size and data, and the runs see it only
through the curvature of A/N^alpha and B/D^beta. Where an exponent times the spread of its log
variable over the runs is small (below FLAT), that term is indistinguishable from a straight
line in log N (or log D), along which C trades off against A (or B) without bound. When more
than alpha/2 of the bootstrap refits land there, the data do not bound C on that side (nor the
amplitude above): the interval says so with an infinite bound and the fit warns. The
interaction at the runs and the barrier stay identified and keep finite intervals.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd

from analysis.chinchilla import (
    Grid,
    batched_lbfgs,
    fit_chinchilla,
    huber,
    local_optima,
    log_law,
    polish,
    refit_best,
    refit_draws,
    to_natural,
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
from analysis.results import LawResult, group_label, held, resample_residuals

NAMES = ["C", "A", "alpha", "B", "beta"]
# starts for (c, a = log A, alpha, b = log B, beta)
START_GRID = np.array(list(itertools.product((-1.0, -0.1, 0.0, 0.1, 1.0), (0.0, 5.0, 10.0),
                                             (0.0, 0.5, 1.0), (0.0, 5.0, 10.0), (0.0, 0.5, 1.0))))
BARRIER_RANGE = (1e3, 1e16)  # model sizes searched for a sign change of the interaction
FLAT = 0.2  # exponent x spread of log N (or log D) below which a term is a line in the log


def bimodal_jobs(df: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """(group, rows) for every (family, i+j) with joint runs and unimodal runs of i and j of the
    same family (records.family_key: router, expert count and top-k too). An MoE family's joint
    runs measured against dense unimodal runs would count the experts' own gain as synergy, so a
    family without unimodal runs of its own is not fitted (a warning says so)."""
    from analysis.records import family_key

    df = df.assign(family=family_key(df))
    jobs, missing = [], []
    for (family, mods), g in df.groupby(["family", "modalities"]):
        parts = mods.split("+")
        if len(parts) != 2:
            continue
        uni = df[(df["family"] == family) & df["modalities"].isin(parts)
                 & (df["modalities"] == df["modality"])]
        if set(uni["modality"]) != set(parts):
            missing.append(f"{family} on {mods}")
            continue
        jobs.append(({"family": family, "pair": mods}, pd.concat([g, uni])))
    if missing:
        warnings.warn("bimodal law not reported for " + ", ".join(missing) + ": no unimodal runs "
                      "of the same family on both modalities (against another family's unimodal "
                      "runs the difference between the families would read as synergy)",
                      stacklevel=2)
    return jobs


def interaction_law(p_S5: np.ndarray, N, D) -> np.ndarray:
    """I(N, D) for rows of natural parameters (C, A, alpha, B, beta): [S, len(N)]."""
    C, A, al, B, be = (p_S5[:, k : k + 1] for k in range(5))
    N, D = np.atleast_1d(np.asarray(N, float)), np.atleast_1d(np.asarray(D, float))
    return -C + A / N**al + B / D**be


def barrier_log_n(p_S5: np.ndarray, tokens_per_param: float, points: int = 1300) -> np.ndarray:
    """log N where I(N, tokens_per_param x N) first changes sign in BARRIER_RANGE, per row of
    natural parameters: +inf where I > 0 over the whole range (competition up to its largest
    size), -inf where I < 0 over it (synergy down to its smallest)."""
    x = np.linspace(*np.log(BARRIER_RANGE), points)
    with np.errstate(over="ignore", invalid="ignore"):
        f = interaction_law(p_S5, np.exp(x), tokens_per_param * np.exp(x))
    s = np.sign(f)
    change = s[:, :-1] * s[:, 1:] <= 0
    out = np.where(s[:, 0] < 0, -np.inf, np.inf)
    rows = np.flatnonzero(change.any(1))
    k = change[rows].argmax(1)
    lo, hi = x[k], x[k + 1]
    sign_lo = s[rows, k]
    C, A, al, B, be = p_S5[rows].T
    for _ in range(40):  # bisection, all rows at once
        mid = (lo + hi) / 2
        with np.errstate(over="ignore", invalid="ignore"):
            fm = -C + A * np.exp(-al * mid) + B * np.exp(-be * (np.log(tokens_per_param) + mid))
        same = np.sign(fm) == sign_lo
        lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
    out[rows] = (lo + hi) / 2
    return out


class BimodalResult(LawResult):
    points: pd.DataFrame  # per joint run: N, Di, Dj, observed and fitted interaction, its 95%
    # interval (lower, upper) and verdict
    unimodal: dict  # modality -> its ChinchillaResult (draws from the joint bootstrap)
    spans: tuple[float, float]  # spread of log N and of log D over the joint runs

    def unidentified(self, alpha: float = 0.05) -> dict[str, list[str]]:
        """{parameter: ["lower" and/or "upper"]}: the bounds the data do not set at level
        1 - alpha (see the module docstring). When the estimate itself is flat, the refits
        cannot leave the flat end of the ridge, so none of C, the amplitude or the exponent's
        upper bound is set: C's both bounds, the amplitude's (0 and inf) and the exponent's
        upper one are given up."""
        out: dict[str, list[str]] = {}
        if self.boot is None or len(self.boot) < 2:
            return out
        for amp, exp, span in (("A", "alpha", self.spans[0]), ("B", "beta", self.spans[1])):
            flat = np.abs(self.boot[:, NAMES.index(exp)]) * span < FLAT
            if abs(self.params[exp]) * span < FLAT:
                out["C"], out[amp], out[exp] = ["lower", "upper"], ["lower", "upper"], ["upper"]
            elif flat.mean() > self.expanded(alpha) / 2:
                up = np.median(self.boot[flat, 0]) > self.params["C"]
                out["C"] = sorted({*out.get("C", []), "upper" if up else "lower"})
                out[amp] = ["upper"]
        return out

    def withheld(self, alpha: float = 0.05) -> list[str]:
        """The parameters neither of whose bounds the data set (`unidentified`): C and an
        amplitude when the estimate sits on the flat ridge."""
        return [k for k, sides in self.unidentified(alpha).items() if len(sides) == 2]

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Percentile bootstrap intervals; a bound the data do not set is +-inf."""
        out = super().conf_int(alpha)
        for name, sides in self.unidentified(alpha).items():
            for side in sides:
                # the amplitudes A, B are positive
                out.loc[name, side] = np.inf if side == "upper" else 0.0 if name in ("A", "B") else -np.inf
        return out

    def interaction(self, N, D) -> np.ndarray:
        """I(N, Di + Dj = D): > 0 competition, < 0 synergy (nats/token)."""
        return interaction_law(self.params[NAMES].to_numpy()[None], N, D)[0].reshape(np.shape(N))

    def interaction_interval(self, N, D, alpha: float = 0.05) -> pd.DataFrame:
        """I(N, D) with its 1 - alpha symmetric bootstrap (confidence) interval: the estimate
        +- the 1 - alpha' quantile of |draw - estimate| (alpha' expanded, see `expanded`).
        At the edge of the runs the estimates spread wider, with a heavier low tail, than the
        draws around the fit, so a percentile interval runs short on the truth's side (0.87 at
        the smallest, fewest-token run of benchmarks/coverage.py); the symmetric one does not
        lean on the draws' skew (Hall 1988). Columns interaction, lower, upper (nats/token)."""
        est = np.atleast_1d(self.interaction(N, D))
        out = pd.DataFrame({"interaction": est, "lower": np.nan, "upper": np.nan})
        if self.boot is not None and len(self.boot) > 1:
            half = np.nanpercentile(np.abs(interaction_law(self.boot, N, D) - est),
                                    100 * (1 - self.expanded(alpha)), axis=0)
            out["lower"], out["upper"] = held(est, est - half, est + half)
        return out

    def barrier(self, tokens_per_param: float | None = None, alpha_level: float = 0.05) -> dict:
        """Model size N and compute C = 6 N D where I changes sign at D = tokens_per_param x N,
        with a 1 - alpha bootstrap percentile interval. A bound is inf (or 0) where more than
        alpha/2 of the draws have no sign change in BARRIER_RANGE on that side: the data do not
        bound the barrier there."""
        r = tokens_per_param or float(np.median(self.points["D"] / self.points["N"]))
        (x,) = barrier_log_n(self.params[NAMES].to_numpy()[None], r)
        n = float(np.exp(x)) if np.isfinite(x) else np.nan
        out = {"tokens_per_param": r, "N": n, "C": 6 * r * n**2}
        if self.boot is not None and len(self.boot) > 1:
            draws = barrier_log_n(self.boot, r)
            out["bootstrap_with_barrier"] = float(np.isfinite(draws).mean())
            level = self.expanded(alpha_level)
            lo, hi = np.exp(np.percentile(draws, [100 * level / 2, 100 * (1 - level / 2)],
                                          method="inverted_cdf"))
            lo, hi = (float(v) for v in held(n, lo, hi))
            out.update(N_lower=lo, N_upper=hi, C_lower=6 * r * lo**2, C_upper=6 * r * hi**2)
        return out


def _verdicts(fitted: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """competition / synergy where the 95% interval of the interaction excludes 0 (by the sign
    of the estimate without intervals), else "neither (interval spans 0)"."""
    sign = np.where(fitted > 0, "competition", "synergy")
    spans = (lower <= 0) & (upper >= 0)
    return np.where(spans, "neither (interval spans 0)", sign)


def _objective(theta_S5: np.ndarray, logN: np.ndarray, logD: np.ndarray,
               y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Summed Huber loss of the interaction residuals and its gradient, for S vectors
    (c, a, alpha, b, beta); y is [1, n] or [S, n]."""
    c, a, alpha, b, beta = (theta_S5[:, k : k + 1] for k in range(5))
    with np.errstate(over="ignore", invalid="ignore"):  # far starts overflow; L-BFGS backs off
        t1 = np.exp(a - alpha * logN)
        t2 = np.exp(b - beta * logD)
        h, dr = huber(-c + t1 + t2 - y)
        grad = np.stack([-dr.sum(1), (dr * t1).sum(1), -(dr * t1 * logN).sum(1),
                         (dr * t2).sum(1), -(dr * t2 * logD).sum(1)], 1)
    return h.sum(1), grad


def fit_bimodal(df: pd.DataFrame, group: dict, bootstrap: int = 1000, seed: int = 0,
                grid: Grid | None = None, workers: int = 2) -> BimodalResult:
    """Fit the interaction of group["pair"] = "i+j" (unimodal laws on `grid`, see
    fit_chinchilla); `bootstrap` joint residual-bootstrap draws give the intervals."""
    label = group_label(group)
    i, j = group["pair"].split("+")
    unimodal, logs = {}, {}
    family = group.get("family", "dense")  # the joint runs' own family (bimodal_jobs)
    for m in (i, j):
        rows = df[(df["modalities"] == m) & (df["modality"] == m) & (df["family"] == family)]
        if rows.empty:
            raise AnalysisError(f"group ({label}): no unimodal {family} runs of {m} to compare with")
        unimodal[m] = fit_chinchilla(rows, {"family": family, "modality": m}, bootstrap=0,
                                     grid=grid or Grid(), workers=workers,
                                     min_resid_df=MIN_RESID_DF["bimodal"])
        logs[m] = [np.log(rows[c].to_numpy(float))[None] for c in ("N", "D")]
    joint = df[df["modalities"] == group["pair"]].pivot_table(
        index="run", columns="modality", values=["loss", "D", "N"], aggfunc="first")
    joint = joint.dropna()
    N = joint[("N", i)].to_numpy(float) if len(joint) else np.zeros(0)
    Di, Dj = (joint[("D", m)].to_numpy(float) if len(joint) else np.zeros(0) for m in (i, j))
    ident = check_design(pd.DataFrame({"N": N, "D": Di + Dj}), 5, ("N", "D"), "bimodal interaction",
                         min_resid_df=MIN_RESID_DF["bimodal"])
    if not ident.ok:
        raise NotIdentified(f"group ({label}), joint runs", ident)
    observed = (joint[("loss", i)].to_numpy(float) + joint[("loss", j)].to_numpy(float)) / 2
    logN, logDi, logDj = np.log(N)[None], np.log(Di)[None], np.log(Dj)[None]

    def baseline(theta_i: np.ndarray, theta_j: np.ndarray) -> np.ndarray:
        """[S, n] mean of the two unimodal laws at the joint runs."""
        return (np.exp(log_law(theta_i, logN, logDi)) + np.exp(log_law(theta_j, logN, logDj))) / 2

    base = baseline(unimodal[i].theta[None], unimodal[j].theta[None])
    y = observed - base[0]
    D = Di + Dj
    logD = np.log(D)[None]
    x, f = batched_lbfgs(lambda th, _: _objective(th, logN, logD, y[None]), START_GRID, iters=100)
    finite = np.where(np.isfinite(f), f, np.inf)
    res = min((polish(lambda th: _objective(th, logN, logD, y[None]), x[k], gtol=1e-9)
               for k in np.argsort(finite)[:5]), key=lambda r: r.fun)
    theta = res.x
    jac = numeric_jacobian(lambda th: -th[0] + np.exp(th[1] - th[2] * logN[0])
                           + np.exp(th[3] - th[4] * logD[0]), theta)
    ident = check_fit(jac, NAMES, suggestion="add joint runs at more sizes and token budgets")
    if not ident.ok and not _ridge(theta, logN, logD):
        raise NotIdentified(f"group ({label})", ident)
    params = pd.Series(_natural(theta[None])[0], index=NAMES)
    result = BimodalResult("bimodal", group, params, None, len(y), float(res.fun),
                           bool(res.success), str(res.message))
    fitted = result.interaction(N, D)
    if bootstrap:
        rng = np.random.default_rng(seed)
        draws = {}
        for m in (i, j):
            u, (uN, uD) = unimodal[m], logs[m]
            noise = resample_residuals(u.resid, 5, bootstrap, rng, robust=True)
            logL = log_law(u.theta[None], uN, uD) + noise
            draws[m] = refit_draws(getattr(u, "optima", u.theta), uN, uD, logL)
            u.boot = to_natural(draws[m])
        noise = resample_residuals(y - fitted, 5, bootstrap, rng, robust=True)
        y_BN = base + fitted + noise - baseline(draws[i], draws[j])
        # each draw from the estimate and the grid's other local optima, keeping its best
        boot_theta = refit_best(lambda th, b: _objective(th, logN, logD, y_BN[b]),
                                local_optima(x, finite, theta), bootstrap)
        ident = check_draws(boot_theta, theta, NAMES)
        if not ident.ok:
            raise NotIdentified(f"group ({label})", ident)
        result.boot = _natural(boot_theta)
    result.unimodal, result.spans = unimodal, (float(np.ptp(logN)), float(np.ptp(logD)))
    # the three fits' points and parameters together
    result.df_resid = len(y) + sum(u.nobs for u in unimodal.values()) - 15
    sides = result.unidentified().get("C")
    if sides:
        where = " and ".join({"lower": "below", "upper": "above"}[s] for s in sides)
        result.warnings.append(
            "C is not identified by these runs: over their range of sizes and tokens a "
            "power-law term of the interaction is indistinguishable from a straight line in "
            "the log, along which C trades off against its amplitude; C's 95% interval is "
            f"unbounded {where}. The interaction at the runs and the barrier are still "
            "identified (see their intervals)")
    ci = result.interaction_interval(N, D)
    result.points = pd.DataFrame({
        "run": joint.index, "N": N, "Di": Di, "Dj": Dj, "D": D, "interaction_observed": y,
        "interaction_fitted": fitted, "lower": ci["lower"].to_numpy(),
        "upper": ci["upper"].to_numpy(),
        "verdict": _verdicts(fitted, ci["lower"].to_numpy(), ci["upper"].to_numpy())})
    if not res.success:
        result.warnings.append(f"the optimizer did not converge: {res.message}")
    return result


def _ridge(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray) -> bool:
    """An estimate on the flat ridge the module docstring describes (a term a straight line in
    the log): ill conditioned by construction, and reported with unbounded intervals instead."""
    return bool(abs(theta[2]) * np.ptp(logN) < FLAT or abs(theta[4]) * np.ptp(logD) < FLAT)


def _natural(theta: np.ndarray) -> np.ndarray:
    """(c, a, alpha, b, beta) -> (C, A, alpha, B, beta)."""
    return np.stack([theta[:, 0], np.exp(theta[:, 1]), theta[:, 2], np.exp(theta[:, 3]),
                     theta[:, 4]], 1)
