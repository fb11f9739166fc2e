"""Whether the runs identify a law, checked before anything fitted from it is printed.

Two gates every law goes through:
- `check_design` before the fit: enough runs beyond the law's parameters (MIN_RESID_DF, the
  residual degrees of freedom a residual bootstrap needs to have noise to resample), and at
  least MIN_LEVELS distinct values (`level_ids`: within 5% is one) of every variable the law
  is curved in (a power law with an offset, E + A / N^alpha, has three unknowns along N: two
  sizes fit any exponent exactly).
- `check_fit` after it: a well-conditioned optimum (the Jacobian of the log-space fitted values
  by the parameters has full rank and a bounded condition number once its columns are
  scaled to unit length) and no estimate at a bound or at the edge of the start grid.

Both return an `Identification`; `NotIdentified` is the error a fit raises with it, so the
report prints its one line (`Identification.line`) in place of every number from that law.
The thresholds are those at which benchmarks/coverage.py finds the smallest accepted design
covering at its nominal rate (4 sizes x 3 budgets for Chinchilla), not a matter of taste.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError

MIN_LEVELS = 3  # distinct values of a variable the law is curved in
# runs beyond the law's parameters, per law: the least at which the smallest design
# benchmarks/coverage.py tries covers at its nominal rate (Chinchilla: 4 sizes x 3 budgets at 1%
# noise covers E in 0.9-1.0 of trials, 3 x 3 in 0.43-0.73; the bank's joint law, 11 parameters:
# dense and three expert counts on a 3 x 3 grid, 25 beyond, cover the loss at a point 0.875 of
# 40 data sets, on 4 x 3 and 3 x 4 grids, 37 beyond, 0.95-0.975)
MIN_RESID_DF = {"chinchilla": 7, "bimodal": 4, "routed": 6, "granularity": 7, "joint": 37}
# of the column-scaled Jacobian of the log-space fitted values: Chinchilla fits on 3x3 and 4x3
# grids of synthetic runs (1% noise) give 300-1,000; on the demo's 3x2 grid 6e10-2e11
MAX_CONDITION = 1e6
VARIABLES = {"N": ("size", "sizes"), "D": ("token budget", "budgets"),
             "E": ("expert count", "expert counts"), "C": ("compute budget", "budgets"),
             "granularity": ("granularity", "granularities")}
COUNTS = ("E", "granularity")  # variables whose suggested next levels are whole numbers
# values within this share of a level's smallest count as that level: a MoE's router makes its
# active params up to a few % more than its dense partner's, and two sizes 1% apart do not
# bend a curve any more than one does
LEVEL_TOLERANCE = 0.05


def level_ids(values) -> np.ndarray:
    """The level of each value (0, 1, ... in increasing order), values within LEVEL_TOLERANCE of
    a level's smallest joining it."""
    v = np.asarray(values, float)
    order = np.argsort(v, kind="stable")
    ids, level, start = np.empty(len(v), int), -1, -np.inf
    for i in order:
        if not v[i] <= start * (1 + LEVEL_TOLERANCE):
            level, start = level + 1, v[i]
        ids[i] = level
    return ids


def n_levels(values) -> int:
    """Distinct levels of a variable (level_ids)."""
    return int(level_ids(values).max()) + 1 if len(values) else 0


@dataclass(frozen=True)
class Identification:
    """ok: the runs identify the law; otherwise reason says why and suggestion what to add."""

    ok: bool
    reason: str = ""
    suggestion: str = ""

    @property
    def line(self) -> str:
        """The one line a report prints in place of a law that is not identified."""
        if self.ok:
            return ""
        return f"not identified: {self.reason}" + (f"; {self.suggestion}" if self.suggestion else "")


class NotIdentified(AnalysisError):
    """A law the runs do not identify: no estimate, no interval, no verdict."""

    def __init__(self, label: str, ident: Identification):
        self.label, self.ident = label, ident
        super().__init__(f"{label}: {ident.line}")


def _fmt(v: float) -> str:
    return f"{v:.2g}" if v >= 1e4 or v < 1 else f"{v:.3g}"


def next_level(levels: np.ndarray, integer: bool = False) -> float:
    """A value beyond the largest of `levels`, a geometric step on from it (x2 with one level)."""
    levels = np.unique(np.asarray(levels, float))
    hi = levels[-1]
    step = 2.0 if len(levels) < 2 else (hi / levels[0]) ** (1 / (len(levels) - 1))
    value = hi * max(step, 1.5)
    return float(np.ceil(value)) if integer else float(value)


def next_levels(levels: np.ndarray, k: int, integer: bool = False) -> list[float]:
    """k values beyond the largest of `levels`, each a step on from the one before (next_level)."""
    out: list[float] = []
    for _ in range(k):
        out.append(next_level(np.append(levels, out), integer))
    return out


def _ordinal(k: int) -> str:
    return {1: "second", 2: "third", 3: "fourth", 4: "fifth"}.get(k, f"{k + 1}th")


def _count(k: int, column: str) -> str:
    """'3 sizes', '1 size'."""
    one, many = VARIABLES.get(column, (column, column))
    return f"{k} {one if k == 1 else many}"


def design_words(df: pd.DataFrame, columns: tuple[str, ...]) -> str:
    """'6 runs (3 sizes x 2 budgets)' for a full grid ('12 runs (3 sizes x 2 budgets, 2 each)'
    replicated), else '4 runs (at 4 sizes and 4 budgets)'."""
    cols = [c for c in columns if c in df]
    ids = pd.DataFrame({c: level_ids(df[c]) for c in cols})
    counts = [int(ids[c].max()) + 1 if len(ids) else 0 for c in cols]
    parts = [_count(k, c) for k, c in zip(counts, cols, strict=True)]
    runs = f"{len(df)} run{'' if len(df) == 1 else 's'}"
    if not parts:
        return runs
    per_point = ids.groupby(cols).size()
    if len(per_point) == np.prod(counts) and per_point.nunique() == 1:
        each = int(per_point.iloc[0])
        return f"{runs} ({' x '.join(parts)}{f', {each} each' if each > 1 else ''})"
    return f"{runs} (at {', '.join(parts[:-1])} and {parts[-1]})"


def check_design(df: pd.DataFrame, n_params: int, curved: tuple[str, ...], label: str,
                 linear: tuple[str, ...] = (), min_resid_df: int = MIN_RESID_DF["chinchilla"],
                 levels: dict[str, int] | None = None) -> Identification:
    """Before a fit of `n_params` parameters to the rows of df (label: the law's name):
    at least MIN_LEVELS distinct values of every column in `curved` (or `levels[column]`, for a
    variable the law bends more than once), two of every column in `linear`, and
    `min_resid_df` runs beyond the parameters (MIN_RESID_DF holds each law's). The suggestion
    names sweep values that would satisfy it."""
    columns = tuple(curved) + tuple(linear)
    words = design_words(df, columns)
    need = {c: MIN_LEVELS for c in curved} | {c: 2 for c in linear} | (levels or {})
    have = {c: n_levels(df[c]) for c in need}
    short = {c: k for c, k in need.items() if have[c] < k}
    if short:
        adds = []
        for c, k in short.items():
            have_c = have[c]
            name = VARIABLES.get(c, (c, c))[0]
            values = next_levels(df[c].to_numpy(float), k - have_c, integer=c in COUNTS)
            adds.append(f"a {_ordinal(have_c)} {name} (for example {_fmt(values[0])})" if k - have_c == 1
                        else f"{k - have_c} more {VARIABLES.get(c, (c, c))[1]} (for example "
                             f"{' and '.join(map(_fmt, values))})")
        what = ", ".join(_count(have[c], c) for c in short)
        return Identification(
            False, f"{words} for {n_params} parameters; {what}, and the law needs at least "
            + ", ".join(f"{k} {VARIABLES.get(c, (c, c))[1]}" for c, k in short.items()),
            "add " + " and ".join(adds))
    if len(df) < n_params + min_resid_df:
        missing = n_params + min_resid_df - len(df)
        c = min(columns, key=lambda c: have[c]) if columns else None
        hint = ""
        if c is not None:
            name = VARIABLES.get(c, (c, c))[0]
            every = " and ".join(VARIABLES.get(o, (o, o))[0] for o in columns if o != c)
            value = next_level(df[c].to_numpy(float), integer=c in COUNTS)
            hint = f" (for example a {_ordinal(have[c])} {name}, {_fmt(value)}, at every {every})"
        return Identification(
            False, f"{words} for {n_params} parameters; the {label} law's bootstrap needs at "
            f"least {min_resid_df} runs beyond them", f"add {missing} or more runs{hint}")
    return Identification(True)


def condition(jac_NP: np.ndarray) -> float:
    """Condition number of the Jacobian with unit-length columns (inf if rank deficient)."""
    norms = np.linalg.norm(jac_NP, axis=0)
    if np.any(norms == 0) or not np.all(np.isfinite(jac_NP)):
        return np.inf
    s = np.linalg.svd(jac_NP / norms, compute_uv=False)
    return float(s[0] / s[-1]) if s[-1] > 0 else np.inf


def numeric_jacobian(fun, theta: np.ndarray, step: float = 1e-6) -> np.ndarray:
    """[n, P] central differences of fun(theta) -> [n] at theta."""
    theta = np.asarray(theta, float)
    cols = []
    for k in range(len(theta)):
        h = step * max(1.0, abs(theta[k]))
        up, down = theta.copy(), theta.copy()
        up[k] += h
        down[k] -= h
        cols.append((fun(up) - fun(down)) / (2 * h))
    return np.stack(cols, 1)


def check_fit(jac_NP: np.ndarray, names: list[str], at_edge: list[str] = (),
              suggestion: str = "") -> Identification:
    """After a fit: the optimum is well conditioned (see `condition`) and no parameter sits on
    a bound or the edge of its start grid (`at_edge` names those that do)."""
    cond = condition(jac_NP)
    if not np.isfinite(cond) or cond > MAX_CONDITION:
        weakest = _weakest(jac_NP, names)
        return Identification(False, f"the optimum is ill conditioned (condition number "
                              f"{'inf' if not np.isfinite(cond) else f'{cond:.2g}'} above "
                              f"{MAX_CONDITION:.0e}; {weakest} is barely constrained)",
                              suggestion or "add runs that widen the range of sizes and budgets")
    if at_edge:
        return Identification(False, f"{', '.join(at_edge)} at the edge of what the fit "
                              "searched (a bound or the start grid)",
                              suggestion or "add runs that widen the range of sizes and budgets")
    return Identification(True)


def _weakest(jac_NP: np.ndarray, names: list[str]) -> str:
    """The parameter that loads most on the smallest singular direction."""
    norms = np.linalg.norm(jac_NP, axis=0)
    if np.any(norms == 0):
        return names[int(np.argmin(norms))]
    v = np.linalg.svd(jac_NP / norms)[2][-1]
    return names[int(np.argmax(np.abs(v)))]


def check_draws(boot_BP: np.ndarray, estimate_P: np.ndarray, names: list[str]) -> Identification:
    """A bootstrap is degenerate when its draws do not vary (a near-zero residual pool makes
    every draw the same data set): then it gives no interval."""
    boot = np.asarray(boot_BP, float)
    finite = boot[np.all(np.isfinite(boot), 1)]
    if len(finite) < 2:
        return Identification(False, "degenerate bootstrap: fewer than two finite draws",
                              "add runs")
    spread = np.ptp(finite, axis=0)
    scale = np.maximum(np.abs(np.asarray(estimate_P, float)), 1e-12)
    flat = spread <= 1e-9 * scale
    if flat.all() or len(np.unique(finite.round(12), axis=0)) < 2:
        return Identification(False, "degenerate bootstrap: every draw gives the same fit "
                              "(the residuals leave no noise to resample)",
                              "add runs beyond the law's parameters")
    return Identification(True)


def interval_ok(estimate, lower, upper) -> np.ndarray:
    """Elementwise: the interval has positive width and contains its estimate."""
    est, lo, hi = (np.asarray(v, float) for v in (estimate, lower, upper))
    return (hi > lo) & (lo <= est) & (est <= hi)
