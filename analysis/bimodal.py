"""The bimodal law of Aghajanyan et al. (2023) for a joint model on modalities i and j:

    L(N, Di, Dj) = [L_i(N, Di) + L_j(N, Dj)] / 2 - C + A / N^alpha + B / (Di + Dj)^beta

L_i, L_j are Chinchilla fits to unimodal dense runs; the joint loss is the mean of the joint
run's two held-out losses. The interaction I = -C + A/N^alpha + B/(Di+Dj)^beta is fitted to
the joint runs (Huber, delta = 1e-3, batched L-BFGS from a grid of starts, the best five
polished with scipy; bootstrap refits warm-start from the estimate). I > 0: the modalities
compete (the joint model is worse than separate models on the same tokens); I < 0: synergy.
The competition barrier is the model size (and compute, at a tokens-per-parameter ratio)
where I changes sign.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy.optimize import brentq

from analysis.chinchilla import batched_lbfgs, fit_chinchilla, huber, polish
from analysis.errors import AnalysisError
from analysis.results import LawResult, group_label, interval
from analysis.results import bootstrap as bootstrap_draws

NAMES = ["C", "A", "alpha", "B", "beta"]
# starts for (c, a = log A, alpha, b = log B, beta)
START_GRID = np.array(list(itertools.product((-1.0, -0.1, 0.0, 0.1, 1.0), (0.0, 5.0, 10.0),
                                             (0.0, 0.5, 1.0), (0.0, 5.0, 10.0), (0.0, 0.5, 1.0))))


def bimodal_jobs(df: pd.DataFrame) -> list[tuple[dict, pd.DataFrame]]:
    """(group, rows) for every (family, i+j) with joint runs and unimodal dense runs of i and j."""
    jobs = []
    for (family, mods), g in df.groupby(["family", "modalities"]):
        parts = mods.split("+")
        if len(parts) != 2:
            continue
        uni = df[(df["family"] == "dense") & df["modalities"].isin(parts)
                 & (df["modalities"] == df["modality"])]
        jobs.append(({"family": family, "pair": mods}, pd.concat([g, uni])))
    return jobs


class BimodalResult(LawResult):
    points: pd.DataFrame  # per joint run: N, Di, Dj, observed and fitted interaction, verdict

    def interaction(self, N, D) -> np.ndarray:
        """I(N, Di + Dj = D): > 0 competition, < 0 synergy (nats/token)."""
        p = self.params
        N, D = np.asarray(N, float), np.asarray(D, float)
        return -p["C"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]

    def barrier(self, tokens_per_param: float | None = None, alpha_level: float = 0.05) -> dict:
        """Model size and compute where I changes sign at D = tokens_per_param x N."""
        r = tokens_per_param or float(np.median(self.points["D"] / self.points["N"]))

        def solve(p):
            c, A, al, B, be = p
            f = lambda logn: -c + A * np.exp(-al * logn) + B * (r * np.exp(logn)) ** -be  # noqa: E731
            lo, hi = np.log(1e3), np.log(1e16)
            if np.sign(f(lo)) == np.sign(f(hi)):
                return np.nan
            return float(np.exp(brentq(f, lo, hi)))

        n = solve(self.params[NAMES].to_numpy())
        out = {"tokens_per_param": r, "N": n, "C": 6 * n * r * n if np.isfinite(n) else np.nan}
        if self.boot is not None and len(self.boot) > 1:
            draws = np.array([solve(p) for p in self.boot])
            found = np.isfinite(draws)
            out["bootstrap_with_barrier"] = float(found.mean())
            if found.sum() > 1:
                lo, hi = interval(draws[found], alpha_level)
                out.update(N_lower=lo, N_upper=hi, C_lower=6 * r * lo**2, C_upper=6 * r * hi**2)
        return out


def fit_bimodal(df: pd.DataFrame, group: dict, bootstrap: int = 1000, seed: int = 0) -> BimodalResult:
    label = group_label(group)
    i, j = group["pair"].split("+")
    unimodal = {}
    for m in (i, j):
        rows = df[(df["modalities"] == m) & (df["modality"] == m) & (df["family"] == "dense")]
        if rows.empty:
            raise AnalysisError(f"group ({label}): no unimodal dense runs of {m} to compare with")
        unimodal[m] = fit_chinchilla(rows, {"family": "dense", "modality": m}, bootstrap=0)
    joint = df[df["modalities"] == group["pair"]].pivot_table(
        index="run", columns="modality", values=["loss", "D", "N"], aggfunc="first")
    joint = joint.dropna()
    if len(joint) < 5:
        raise AnalysisError(f"group ({label}): {len(joint)} joint runs, fewer than the 5 parameters "
                            "of the bimodal law")
    N = joint[("N", i)].to_numpy(float)
    Di, Dj = joint[("D", i)].to_numpy(float), joint[("D", j)].to_numpy(float)
    if len(np.unique(N)) < 2:
        raise AnalysisError(f"group ({label}): every joint run has the same size; alpha cannot be fitted")
    observed = (joint[("loss", i)].to_numpy(float) + joint[("loss", j)].to_numpy(float)) / 2
    y = observed - (unimodal[i].predict(N, Di) + unimodal[j].predict(N, Dj)) / 2
    D = Di + Dj

    logN, logD = np.log(N), np.log(D)

    def objective(theta_S5: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Summed Huber loss of the interaction residuals and its gradient, for S vectors."""
        c, a, alpha, b, beta = (theta_S5[:, k : k + 1] for k in range(5))
        with np.errstate(over="ignore", invalid="ignore"):  # far starts overflow; L-BFGS backs off
            t1 = np.exp(a - alpha * logN)
            t2 = np.exp(b - beta * logD)
            h, dr = huber(-c + t1 + t2 - y)
            h, dr = h * w, dr * w
            grad = np.stack([-dr.sum(1), (dr * t1).sum(1), -(dr * t1 * logN).sum(1),
                             (dr * t2).sum(1), -(dr * t2 * logD).sum(1)], 1)
        return h.sum(1), grad

    def refine(theta0: np.ndarray, w: np.ndarray):
        return polish(lambda th: objective(th, w), theta0, gtol=1e-9)

    ones = np.ones(len(y))
    x, f = batched_lbfgs(lambda th: objective(th, ones), START_GRID, iters=100)
    finite = np.where(np.isfinite(f), f, np.inf)
    res = min((refine(x[k], ones) for k in np.argsort(finite)[:5]), key=lambda r: r.fun)
    theta = res.x
    draws = bootstrap_draws(len(y), bootstrap, seed, lambda w: refine(theta, w).x)
    boot = None if draws is None else _natural(draws)
    params = pd.Series(_natural(theta[None])[0], index=NAMES)
    result = BimodalResult("bimodal", group, params, boot, len(y), float(res.fun),
                           bool(res.success), str(res.message))
    fitted = result.interaction(N, D)
    result.points = pd.DataFrame({"run": joint.index, "N": N, "Di": Di, "Dj": Dj, "D": D,
                                  "interaction_observed": y, "interaction_fitted": fitted,
                                  "verdict": np.where(fitted > 0, "competition", "synergy")})
    if not res.success:
        result.warnings.append(f"the optimizer did not converge: {res.message}")
    return result


def _natural(theta: np.ndarray) -> np.ndarray:
    """(c, a, alpha, b, beta) -> (C, A, alpha, B, beta)."""
    return np.stack([theta[:, 0], np.exp(theta[:, 1]), theta[:, 2], np.exp(theta[:, 3]),
                     theta[:, 4]], 1)
