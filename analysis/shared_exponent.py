"""Does an architecture change the exponents of its scaling law, or only where it starts?

Two families (dense and MoE, say) of one modality are fitted three ways on the same summed
Huber objective as `analysis.chinchilla` (delta = 1e-3 on log-space residuals):
separately (10 parameters), with shared exponents alpha, beta and separate E, A, B (8), and
with everything shared (5). Two nested restrictions are tested by their objective difference
T = F_restricted - F_unrestricted:

- exponents: shared alpha, beta against all-separate;
- offsets: one law for both against shared exponents.

The Huber objective is not a log-likelihood: with delta = 1e-3 below the typical log residual
(about 1e-2) nearly every point sits in its linear part, so the fit is close to least absolute
deviations and T has no chi-square reference. The p-values therefore come from a parametric
bootstrap of T: data are simulated from the restricted fit with Gaussian log-space noise of
each family's residual standard error in the all-separate fit (sqrt(sum r^2 / (n - 5)));
both models are refitted to every simulated set (all sets at once, a batched L-BFGS), and
p = (1 + #{T* >= T}) / (1 + draws). Not resampled residuals: a near-LAD fit pulls about one
residual per parameter to zero, and resampling those overstates the noise density at zero,
which the LAD-like statistic is sensitive to (a liberal test, 3 of 17 rejections at 5% in a
first trial).

The verdict is a closed test at level `alpha` (family-wise error controlled): "exponents
differ" when both the exponent and the identical-law hypotheses are rejected, "offsets differ"
when only the identical-law hypothesis is, else "no difference detected". Intervals: each
family's parameters and the differences alpha_f - alpha_dense, beta_f - beta_dense,
E_f - E_dense from the per-family fits' bootstraps (`fit_chinchilla`), which resample each
family's points independently (expanded percentile intervals, as the fits' own); the shared
fit's parameters from the parametric bootstrap; none printed unless it holds its estimate.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.chinchilla import (
    BATCH_ITERS,
    NAMES,
    ChinchillaResult,
    Grid,
    batched_lbfgs,
    fit_chinchilla,
    log_law,
    objective,
    polish,
)
from analysis.errors import AnalysisError
from analysis.records import by_family
from analysis.results import held, interval

IDX = {"A": 0, "B": 1, "E": 2, "alpha": 3, "beta": 4}  # positions in chinchilla's (a, b, e, alpha, beta)
EXPONENTS = ("alpha", "beta")
DIFFERENCES = ("alpha", "beta", "E")


def layout(shared: tuple[str, ...], families: int) -> np.ndarray:
    """[families, 5] positions of each family's (a, b, e, alpha, beta) in the joint vector: the
    shared coordinates first, once, then each family's own."""
    tied = [IDX[s] for s in shared]
    idx = np.empty((families, 5), int)
    for pos, j in enumerate(tied):
        idx[:, j] = pos
    pos = len(tied)
    for k in range(families):
        for j in range(5):
            if j not in tied:
                idx[k, j] = pos
                pos += 1
    return idx


def joint_objective(theta_SP: np.ndarray, idx: np.ndarray,
                    data: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """Summed Huber objective over families and its gradient, for S joint vectors at once.
    data[k] = (logN [1, n], logD [1, n], logL [1 or S, n]) of family k."""
    f = np.zeros(len(theta_SP))
    grad = np.zeros_like(theta_SP)
    for k, (logN, logD, logL) in enumerate(data):
        fk, gk = objective(theta_SP[:, idx[k]], logN, logD, logL)
        f += fk
        grad[:, idx[k]] += gk
    return f, grad


def _pack(thetas: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per-family (a, b, e, alpha, beta) rows [K, 5] -> one joint vector (shared values from the
    last family that sets them)."""
    out = np.empty(idx.max() + 1)
    for k in range(len(idx)):
        out[idx[k]] = thetas[k]
    return out


def _starts(thetas: np.ndarray, idx: np.ndarray, data, grid: Grid) -> np.ndarray:
    """Starts from the separate fits: each shared coordinate at each family's value or their
    mean (an exponent also at every grid value), the other coordinates at the family's own,
    a and b moved so that each family's curve keeps its level at its mean log N and log D."""
    tied = [j for j in range(5) if (idx[:, j] == idx[0, j]).all()]
    exponent_grid = {IDX["alpha"]: grid.alpha, IDX["beta"]: grid.beta}
    options = [[*thetas[:, j], thetas[:, j].mean(), *exponent_grid.get(j, ())] for j in tied]
    mean_logs = np.array([[d[0].mean(), d[1].mean()] for d in data])
    out = []
    for values in itertools.product(*options):
        th = thetas.copy()
        for j, v in zip(tied, values, strict=True):
            if j == IDX["alpha"] and IDX["A"] not in tied:
                th[:, 0] += (v - th[:, 3]) * mean_logs[:, 0]
            if j == IDX["beta"] and IDX["B"] not in tied:
                th[:, 1] += (v - th[:, 4]) * mean_logs[:, 1]
            th[:, j] = v
        out.append(_pack(th, idx))
    return np.array(out)


def fit_joint(data, shared: tuple[str, ...], starts: np.ndarray) -> tuple[np.ndarray, float]:
    """Best joint vector and objective: batched L-BFGS from every start, the best few polished."""
    idx = layout(shared, len(data))
    fun = lambda th: joint_objective(th, idx, data)  # noqa: E731
    x, f = batched_lbfgs(lambda th, _: fun(th), starts, iters=BATCH_ITERS)
    res = min((polish(fun, x[i]) for i in np.argsort(f)[:3]), key=lambda r: r.fun)
    return res.x, float(res.fun)


def _unpack(theta: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Joint vector -> per-family (a, b, e, alpha, beta) rows [K, 5]."""
    return np.stack([theta[..., idx[k]] for k in range(len(idx))], -2)


def simulate_null(theta0: np.ndarray, idx0: np.ndarray, data, sigma: list[float],
                  draws: int, rng: np.random.Generator) -> list[tuple[np.ndarray, ...]]:
    """`draws` data sets from the restricted fit theta0 with Gaussian log-space noise of each
    family's residual standard error: data[k] with logL [draws, n_k]."""
    out = []
    for k, (logN, logD, _) in enumerate(data):
        mu = log_law(theta0[idx0[k]][None], logN, logD)  # [1, n]
        out.append((logN, logD, mu + rng.normal(0.0, sigma[k], (draws, logN.shape[1]))))
    return out


def _per_set(idx: np.ndarray, sims):
    """Objective of joint vectors, each fitted to its own simulated data set (rows of logL)."""
    return lambda th, rows: joint_objective(th, idx, [(n, d, l[rows]) for n, d, l in sims])


def bootstrap_restriction(theta0: np.ndarray, null: tuple[str, ...], alt: tuple[str, ...], data,
                          sigma: list[float], draws: int, seed: int,
                          iters: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """T* = F_null* - F_alt* on `draws` sets simulated from the null fit theta0, and the null
    refits [draws, P0]. Both fits start from the truth of the simulation; the alternative from
    the null refit, so T* >= 0 up to rounding."""
    idx0, idx1 = layout(null, len(data)), layout(alt, len(data))
    sims = simulate_null(theta0, idx0, data, sigma, draws, np.random.default_rng(seed))
    x0, f0 = batched_lbfgs(_per_set(idx0, sims), np.repeat(theta0[None], draws, 0), iters=iters)
    start1 = np.stack([_pack(_unpack(x, idx0), idx1) for x in x0])
    _, f1 = batched_lbfgs(_per_set(idx1, sims), start1, iters=iters)
    return np.maximum(f0 - np.minimum(f1, f0), 0.0), x0


def residual_scale(logL: np.ndarray, log_pred: np.ndarray, n_params: int = 5) -> float:
    """Residual standard error in log space: sqrt(sum r^2 / (n - p))."""
    r = (logL - log_pred).ravel()
    return float(np.sqrt(np.sum(r**2) / max(len(r) - n_params, 1)))


@dataclass
class RestrictionTest:
    """One nested restriction: objective difference, bootstrap p-value, draws."""

    hypothesis: str
    statistic: float
    p: float
    draws: int
    null_params: pd.DataFrame  # the restricted fit, a row per family
    null_boot: np.ndarray  # [draws, K, 5] natural (E, A, B, alpha, beta) of the null refits


@dataclass
class SharedTestResult:
    """Dense against another family on one modality: three fits, two tests, a verdict."""

    group: dict
    families: tuple[str, str]
    shared: tuple[str, ...]
    separate: dict[str, ChinchillaResult]
    exponents: RestrictionTest
    offsets: RestrictionTest | None  # None when only the first restriction was tested
    level: float
    warnings: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.offsets is None:
            return f"{_words(self.shared)} differ" if self.exponents.p < self.level else \
                "no difference detected"
        if self.offsets.p < self.level and self.exponents.p < self.level:
            return f"{_words(self.shared)} differ"
        if self.offsets.p < self.level:
            return f"{_words(tuple(n for n in NAMES if n not in self.shared))} differ"
        return "no difference detected"

    @property
    def p_exponents(self) -> float:
        """Closed-test adjusted p of equal exponents: max of its own and the identical-law p."""
        return max(self.exponents.p, self.offsets.p if self.offsets else 0.0)

    def differences(self, alpha: float | None = None) -> pd.DataFrame:
        """other - dense for alpha, beta, E: separate-fit estimates and percentile intervals."""
        dense, other = (self.separate[f] for f in self.families)
        est = other.params[list(DIFFERENCES)] - dense.params[list(DIFFERENCES)]
        out = pd.DataFrame({"estimate": est})
        if dense.boot is not None and other.boot is not None:
            n = min(len(dense.boot), len(other.boot))
            cols = [NAMES.index(p) for p in DIFFERENCES]
            # the wider of the two fits' expanded levels (LawResult.expanded), and no interval
            # that would not hold its estimate (results.held)
            level = min(r.expanded(alpha or self.level) for r in (dense, other))
            out["lower"], out["upper"] = held(est.to_numpy(float), *interval(
                other.boot[:n, cols] - dense.boot[:n, cols], level, axis=0))
        else:
            out["lower"] = out["upper"] = np.nan
        out.index = [f"{p}_{self.families[1]} - {p}_{self.families[0]}" for p in DIFFERENCES]
        return out

    def shared_params(self, alpha: float | None = None) -> pd.DataFrame:
        """The shared-exponent fit, per family, with intervals from the parametric bootstrap."""
        t = self.exponents
        lo, hi = held(t.null_params.to_numpy(float), *interval(t.null_boot, alpha or self.level, axis=0))
        rows = []
        for k, fam in enumerate(self.families):
            for j, name in enumerate(NAMES):
                rows.append({"family": fam, "param": name, "estimate": t.null_params.loc[fam, name],
                             "lower": lo[k, j], "upper": hi[k, j]})
        return pd.DataFrame(rows)

    def tests(self) -> pd.DataFrame:
        return pd.DataFrame([
            {"hypothesis": t.hypothesis, "T (objective difference)": t.statistic, "p": t.p,
             "bootstrap draws": t.draws} for t in (self.exponents, self.offsets) if t])

    def row(self) -> dict:
        """One line for `compare`: the verdict and both p-values."""
        d = self.differences()
        return {**self.group, "family": self.families[1], "verdict": self.verdict,
                "p_exponents": self.p_exponents,
                "p_offsets": self.offsets.p if self.offsets else np.nan,
                **{f"d{p}": d["estimate"].iloc[i] for i, p in enumerate(DIFFERENCES)},
                **{f"d{p} lower": d["lower"].iloc[i] for i, p in enumerate(DIFFERENCES)},
                **{f"d{p} upper": d["upper"].iloc[i] for i, p in enumerate(DIFFERENCES)}}

    def summary(self) -> str:
        fmt = lambda v: f"{v:.4g}"  # noqa: E731
        lines = [f"shared-exponent test ({', '.join(f'{k}={v}' for k, v in self.group.items())}): "
                 f"{self.families[1]} vs {self.families[0]}, {self.separate[self.families[0]].nobs}"
                 f" + {self.separate[self.families[1]].nobs} points; verdict at level {self.level:g}:"
                 f" {self.verdict}",
                 "p-values: parametric bootstrap of the Huber-objective difference (not a likelihood "
                 "ratio: the Huber objective is not a likelihood); closed testing across the two.",
                 self.tests().to_string(index=False, float_format=fmt), "",
                 f"differences (separate fits, {1 - self.level:.0%} bootstrap intervals):",
                 self.differences().to_string(float_format=fmt), "",
                 f"shared-exponent fit ({1 - self.level:.0%} parametric-bootstrap intervals):",
                 self.shared_params().to_string(index=False, float_format=fmt)]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        num = lambda v: float(v) if np.isfinite(v) else None  # noqa: E731
        return {
            "test": "shared_exponent", "group": self.group, "families": list(self.families),
            "level": self.level, "verdict": self.verdict, "p_exponents_adjusted": self.p_exponents,
            "method": "parametric bootstrap of the summed-Huber objective difference",
            "tests": [{"hypothesis": t.hypothesis, "statistic": t.statistic, "p": t.p,
                       "draws": t.draws} for t in (self.exponents, self.offsets) if t],
            "differences": {k: {c: num(v) for c, v in r.items()}
                            for k, r in self.differences().iterrows()},
            "shared_fit": self.shared_params().to_dict("records"),
            "separate": {f: r.to_dict(self.level) for f, r in self.separate.items()},
            "warnings": self.warnings,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _data(g: pd.DataFrame) -> tuple[np.ndarray, ...]:
    return tuple(np.log(g[c].to_numpy(float))[None, :] for c in ("N", "D", "loss"))


def _natural(theta_K5: np.ndarray) -> np.ndarray:
    """(a, b, e, alpha, beta) -> (E, A, B, alpha, beta) on the last axis."""
    t = np.asarray(theta_K5)
    return np.stack([np.exp(t[..., 2]), np.exp(t[..., 0]), np.exp(t[..., 1]), t[..., 3], t[..., 4]], -1)


def _internal(r: ChinchillaResult) -> np.ndarray:
    E, A, B, al, be = r.params[NAMES].to_numpy(float)
    return np.array([np.log(A), np.log(B), np.log(E), al, be])


def shared_test(df: pd.DataFrame, families: tuple[str, str] = ("dense", "moe"),
                group: dict | None = None, shared: tuple[str, ...] = EXPONENTS,
                bootstrap: int = 1000, draws: int = 999, level: float = 0.05, seed: int = 0,
                offsets: bool = True, separate: dict[str, ChinchillaResult] | None = None
                ) -> SharedTestResult:
    """Test on one modality's runs (columns family, N, D, loss) whether `families` share the
    parameters `shared` (default the exponents), and (`offsets`) whether they share the whole
    law, which the verdict needs. `separate`: the families' Chinchilla fits to these runs, if
    already made (else fitted here with `bootstrap` refits)."""
    group = group or {}
    bad = [s for s in shared if s not in IDX]
    if bad or not shared or len(set(shared)) == 5:
        raise AnalysisError(f"--shared {','.join(shared)}: name some but not all of E, A, B, alpha, beta")
    parts = []
    for fam in families:
        g = df[df["family"] == fam]
        if g.empty:
            raise AnalysisError(f"no {fam} runs{' for ' + str(group) if group else ''} to test")
        parts.append(g)
    grid = Grid()
    separate = {fam: (separate or {}).get(fam) or fit_chinchilla(g, {**group, "family": fam}, bootstrap, seed)
                for fam, g in zip(families, parts, strict=True)}
    data = [_data(g) for g in parts]
    thetas = np.stack([_internal(separate[f]) for f in families])
    idx_s, idx_all = layout(shared, 2), layout(tuple(IDX), 2)
    theta_s, f_s = fit_joint(data, shared, _starts(thetas, idx_s, data, grid))
    if offsets:
        theta_all, f_all = fit_joint(data, tuple(IDX), _starts(thetas, idx_all, data, grid))
        # each fit at least as good as the restricted one below it (nested models)
        theta_s, f_s = _no_worse(data, shared, theta_s, f_s, _pack(_unpack(theta_all, idx_all), idx_s))
    idx_sep = layout((), 2)
    theta_sep, f_sep = _no_worse(data, (), _pack(thetas, idx_sep), None,
                                 _pack(_unpack(theta_s, idx_s), idx_sep))
    sigma = [residual_scale(d[2], log_law(th[None], d[0], d[1]))
             for d, th in zip(data, _unpack(theta_sep, idx_sep), strict=True)]
    tests = []
    todo = [(shared, (), theta_s, f_s, f_sep, f"{_words(shared)} shared")]
    if offsets:
        todo.append((tuple(IDX), shared, theta_all, f_all, f_s,
                     f"one law for both, given {_words(shared)} shared"))
    for null, alt, theta0, f0, f1, name in todo:
        t_star, boot0 = bootstrap_restriction(theta0, null, alt, data, sigma, draws, seed + 1)
        T = max(f0 - f1, 0.0)
        p = (1 + int(np.sum(t_star >= T * (1 - 1e-9)))) / (1 + draws)
        idx0 = layout(null, 2)
        params = pd.DataFrame(_natural(_unpack(theta0, idx0)), index=list(families), columns=NAMES)
        tests.append(RestrictionTest(name, T, p, draws, params, _natural(_unpack(boot0, idx0))))
    result = SharedTestResult(group, families, tuple(shared), separate, tests[0],
                              tests[1] if offsets else None, level)
    for f, r in separate.items():
        result.warnings += [f"{f}: {w}" for w in r.warnings]
    return result


def _no_worse(data, shared, theta, f, candidate) -> tuple[np.ndarray, float]:
    """Polish `candidate` under the `shared` layout; keep whichever of it and theta is better."""
    idx = layout(shared, len(data))
    fun = lambda th: joint_objective(th, idx, data)  # noqa: E731
    res_c = polish(fun, candidate)
    if f is None:
        res_t = polish(fun, theta)
        theta, f = res_t.x, float(res_t.fun)
    return (res_c.x, float(res_c.fun)) if res_c.fun < f else (theta, f)


def _words(names: tuple[str, ...]) -> str:
    s = set(names)
    if s == set(EXPONENTS):
        return "exponents"
    if s == {"E", "A", "B"}:
        return "offsets"
    return ", ".join(names)


def shared_tests(df: pd.DataFrame, shared: tuple[str, ...] = EXPONENTS, bootstrap: int = 1000,
                 draws: int = 999, level: float = 0.05, seed: int = 0,
                 fits: dict[tuple[str, str], ChinchillaResult] | None = None) -> list[SharedTestResult]:
    """One test per modality and non-dense family that has dense runs of the same modality;
    `fits`: Chinchilla fits by (family, modality) already made to these runs. Families are
    `family_key` labels over joint-mixture runs (records.by_family)."""
    out = []
    for modality, g in by_family(df).groupby("modality"):
        if "dense" not in set(g["family"]):
            continue
        for fam in sorted(set(g["family"]) - {"dense"}):
            known = {f: fits[(f, modality)] for f in ("dense", fam) if fits and (f, modality) in fits}
            out.append(shared_test(g, ("dense", fam), {"modality": modality}, shared, bootstrap,
                                   draws, level, seed, separate=known))
    if not out:
        raise AnalysisError("no modality has both dense and MoE/MoT runs to test for shared exponents")
    return out


def shared_table(results: list[SharedTestResult]) -> pd.DataFrame:
    """One row per test: modality, family, verdict, p-values, and the differences in alpha,
    beta and E with their intervals."""
    return pd.DataFrame([r.row() for r in results])
