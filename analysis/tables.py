"""Tables as Markdown, CSV or LaTeX, from pandas."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.results import LawResult, bound_text


def bounds_in_words(table: pd.DataFrame, floatfmt: str = ".4g") -> pd.DataFrame:
    """Interval bound columns (named with lower or upper) as text: an infinite bound reads
    "unbounded", a withheld one (NaN) is left blank."""
    cols = [c for c in table.columns if ("lower" in str(c) or "upper" in str(c))
            and pd.api.types.is_float_dtype(table[c]) and np.isinf(table[c]).any()]
    if not cols:
        return table
    out = table.copy()
    for c in cols:
        out[c] = [bound_text(v, floatfmt) for v in table[c]]
    return out


def render(table: pd.DataFrame, fmt: str = "md", floatfmt: str = ".4g") -> str:
    """Markdown, CSV or LaTeX; in Markdown and LaTeX an infinite interval bound reads "unbounded"
    and a withheld number (NaN) is left blank (CSV keeps inf and leaves NaN empty, for machines)."""
    if fmt in ("md", "latex"):
        table = bounds_in_words(table, floatfmt)
    if fmt == "md":
        return table.astype(object).where(table.notna(), None).to_markdown(
            index=False, floatfmt=floatfmt, missingval="")
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "latex":
        return table.to_latex(index=False, float_format=lambda v: format(v, floatfmt),
                              escape=True, na_rep="")
    raise AnalysisError(f"unknown format {fmt!r}; use md, csv or latex")


def fits_table(results: list[LawResult], alpha: float = 0.05) -> pd.DataFrame:
    """One row per fit: group, points, each parameter as estimate and interval bounds (the
    estimate blank where the runs do not identify it: `LawResult.withheld`)."""
    rows = []
    for r in results:
        ci = r.conf_int(alpha)
        row = {**r.group, "points": r.nobs}
        for k, v in r.estimates(alpha).items():
            row[k] = v
            row[f"{k} lower"], row[f"{k} upper"] = ci.loc[k, "lower"], ci.loc[k, "upper"]
        row["converged"] = r.converged
        rows.append(row)
    return pd.DataFrame(rows)
