"""IsoFLOP profiles (Hoffmann et al. 2022, Approach 2): for each compute budget with runs of at
least three sizes, a parabola of loss in log N gives the loss-optimal N; across budgets,
log N_opt = a log C + k gives the exponent a of N*(C) ~ C^a (OLS, statsmodels). Identified, as
analysis/identify.py asks of every law, only from MIN_BUDGETS budgets with an interior optimum:
a line through two points has no residual to give it an interval."""

from __future__ import annotations

import numpy as np
import pandas as pd
import statsmodels.api as sm

MIN_BUDGETS = 3


def budgets(df: pd.DataFrame, rel_tol: float = 0.1) -> pd.Series:
    """Budget index per row: runs within `rel_tol` of a budget's smallest compute share it."""
    order = np.argsort(df["C"].to_numpy())
    labels = np.empty(len(df), dtype=int)
    start, label = None, -1
    for i in order:
        c = df["C"].iloc[i]
        if start is None or c > start * (1 + rel_tol):
            start, label = c, label + 1
        labels[i] = label
    return pd.Series(labels, index=df.index)


def isoflop(df: pd.DataFrame, rel_tol: float = 0.1) -> tuple[pd.DataFrame, dict | None]:
    """Per budget: C, runs, N_opt, loss_opt; and the exponent fit when MIN_BUDGETS or more
    budgets have an interior optimum. Rows are (family, modality)-homogeneous input."""
    rows = []
    for _, g in df.groupby(budgets(df, rel_tol)):
        if g["N"].nunique() < 3:
            continue
        x = np.log(g["N"].to_numpy(float))
        a, b, c = np.polyfit(x, g["loss"].to_numpy(float), 2)
        if a <= 0:
            continue  # no minimum: the budget's sizes do not bracket the optimum
        x_opt = -b / (2 * a)
        if not x.min() <= x_opt <= x.max():
            continue
        rows.append({"C": float(np.exp(np.log(g["C"]).mean())), "runs": len(g),
                     "N_opt": float(np.exp(x_opt)), "loss_opt": float(c - b * b / (4 * a))})
    table = pd.DataFrame(rows, columns=["C", "runs", "N_opt", "loss_opt"])
    if len(table) < MIN_BUDGETS:
        return table, None
    ols = sm.OLS(np.log(table["N_opt"]), sm.add_constant(np.log(table["C"]))).fit()
    lo, hi = ols.conf_int().iloc[1]
    return table, {"a": float(ols.params.iloc[1]), "a_lower": float(lo), "a_upper": float(hi),
                   "budgets": len(table)}
