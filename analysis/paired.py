"""The paired MoE - dense loss difference: per pair from its documents, across pairs by a model.

A pair's dL is the difference of two held-out losses on the same validation documents
(eval_docs.json: summed loss and tokens per document, in data order). Its standard error is
the ratio-estimator SE over documents of the per-document differences, so each document's own
difficulty, which dominates either loss's SE, cancels.

Pairs of different sizes and budgets are not replicates of one quantity. They are combined by
a random-effects meta-regression: dL_i = b0 + b1 (log N_i - mean) + b2 (log D_i - mean) + u_i + e_i
with e_i ~ N(0, SE_i^2) (the document-level SE) and u_i ~ N(0, tau^2) (what differs between
pairs beyond their documents: seeds, sizes the slopes miss). tau^2 is the method-of-moments
estimate (DerSimonian-Laird, generalized to a regression), inference Hartung-Knapp (t with
k - p degrees of freedom, the scale never below 1). The reported dL is b0: the difference at
the design's centre (geometric means of the pairs' N and D). A slope enters only for a
variable with at least two levels and while two residual degrees of freedom remain; with one
pair the pair's own document-level SE is all there is, and the result says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from analysis.errors import AnalysisError


@dataclass(frozen=True)
class DocLosses:
    """Summed loss (nats) and tokens of every validation document of one run and modality."""

    nll_sum: np.ndarray
    tokens: np.ndarray


def pair_difference(other: DocLosses, dense: DocLosses) -> tuple[float, float]:
    """(dL, SE) in nats/token: dL = L_other - L_dense over the documents both runs scored, its
    SE the ratio-estimator SE of the per-document differences (NaN from one document)."""
    if len(other.tokens) != len(dense.tokens) or not np.array_equal(other.tokens, dense.tokens):
        raise AnalysisError(f"the two runs scored different validation documents ({len(other.tokens)} "
                            f"and {len(dense.tokens)}, or different tokens per document)")
    keep = dense.tokens > 0
    d, n = (other.nll_sum - dense.nll_sum)[keep], dense.tokens[keep].astype(float)
    dl = float(d.sum() / n.sum())
    r = len(n)
    if r < 2:
        return dl, math.nan
    return dl, float(math.sqrt(r / (r - 1) * np.sum((d - dl * n) ** 2) / n.sum() ** 2))


@dataclass
class Combined:
    """The pairs' dL combined: estimate at the design's centre, SE, its interval and test."""

    dL: float
    se: float
    lower: float
    upper: float
    p: float
    df: float
    tau: float  # between-pair SD beyond the document-level SEs (nats/token)
    model: str  # in words: which terms, which SEs


def _design(logN: np.ndarray, logD: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Intercept, then a centred slope for log N and log D where they vary, while k - p >= 2."""
    cols, names = [np.ones_like(logN)], ["intercept"]
    for x, name in ((logN, "log N"), (logD, "log D")):
        if len(np.unique(np.round(x, 9))) > 1 and len(x) - (len(cols) + 1) >= 2:
            cols.append(x - x.mean())
            names.append(name)
    return np.column_stack(cols), names


def combine(dL: np.ndarray, se: np.ndarray, N: np.ndarray, D: np.ndarray,
            alpha: float = 0.05) -> Combined:
    """Random-effects meta-regression of the pairs' dL on centred log N and log D (module
    docstring). Pairs without a document-level SE (records without eval_docs.json) make the
    model an ordinary least-squares fit, the scatter between pairs its only error."""
    dL, se = np.asarray(dL, float), np.asarray(se, float)
    k = len(dL)
    if k == 0:
        raise AnalysisError("no pairs to combine")
    X, names = _design(np.log(np.asarray(N, float)), np.log(np.asarray(D, float)))
    p = X.shape[1]
    terms = " + ".join(names)
    have_se = bool(np.isfinite(se).all())
    if k == 1:
        if not have_se:
            return Combined(float(dL[0]), math.nan, math.nan, math.nan, math.nan, 0.0, math.nan,
                            "one pair without per-document losses: no standard error")
        z = stats.norm.ppf(1 - alpha / 2)
        pv = float(2 * stats.norm.sf(abs(dL[0]) / se[0])) if se[0] > 0 else float(dL[0] == 0)
        return Combined(float(dL[0]), float(se[0]), float(dL[0] - z * se[0]), float(dL[0] + z * se[0]),
                        pv, math.inf, math.nan, "one pair: its document-level SE only (the "
                        "variation between seeds and sizes is not measured)")
    if not have_se:
        v = np.zeros(k)
        w = np.ones(k)
        tau2 = math.nan
        model = f"OLS on {terms} (no per-document losses: the scatter between pairs is the error)"
    else:
        v = se**2
        w = 1 / np.maximum(v, 1e-300)
        XtW = X.T * w
        inv = np.linalg.pinv(XtW @ X)
        b = inv @ XtW @ dL
        q = float(np.sum(w * (dL - X @ b) ** 2))
        trace = float(w.sum() - np.trace(inv @ (X.T * w**2) @ X))
        tau2 = max(0.0, (q - (k - p)) / trace) if k > p and trace > 0 else 0.0
        w = 1 / (v + tau2)
        model = (f"random-effects meta-regression on {terms} (document-level SEs, "
                 "DerSimonian-Laird tau^2, Hartung-Knapp t)")
    XtW = X.T * w
    inv = np.linalg.pinv(XtW @ X)
    b = inv @ XtW @ dL
    df = k - p
    resid = dL - X @ b
    if not have_se:
        if df < 1:
            return Combined(float(b[0]), math.nan, math.nan, math.nan, math.nan, 0.0, math.nan,
                            model + "; no residual degrees of freedom: no standard error")
        se0 = math.sqrt(float(np.sum(resid**2)) / df * inv[0, 0])
        tau = math.sqrt(float(np.sum(resid**2)) / df)
    elif df >= 1:
        scale = max(1.0, float(np.sum(w * resid**2)) / df)
        se0 = math.sqrt(scale * inv[0, 0])
        tau = math.sqrt(tau2)
    else:  # as many pairs as terms: known SEs only, tau not estimable
        se0, df, tau = math.sqrt(inv[0, 0]), math.inf, math.nan
        model += "; no residual degrees of freedom: tau not estimable, document-level SEs only"
    dist = stats.t(df) if np.isfinite(df) else stats.norm
    crit = float(dist.ppf(1 - alpha / 2))
    pv = float(2 * dist.sf(abs(b[0]) / se0)) if se0 > 0 else float(b[0] == 0)
    return Combined(float(b[0]), se0, float(b[0] - crit * se0), float(b[0] + crit * se0), pv,
                    float(df), tau, model)
