"""Figure: efficiency leverage against compute, one panel per modality, one line per MoE family
with its 95% band; the extrapolated part dashed, the best bank law's extrapolation dotted, the
law-free estimates from the runs as points with their intervals. The y limits come from the
finite estimates and finite bounds only (log scale, padded, within Y_RANGE; the panel says what
lies beyond); an unbounded upper bound is an arrow to the top edge, explained once in the
legend below the panels."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from analysis.leverage import EXTRAPOLATE, LeverageFit
from analysis.plots import (
    _colors,
    _grid,
    band,
    decimal_log_ticks,
    save,
    shared_legend,
    unbounded_arrow,
    unbounded_handle,
)

Y_RANGE = (1e-2, 1e2)  # the widest y range drawn; finite values beyond are named in the panel
PAD = 0.15  # of the log-range, each side (at least a tenth of a decade)
# the law-free frame's compute of the runs it compares, where it carries one
FREE_C = "C (runs compared)"


def _values(*arrays) -> np.ndarray:
    """The finite, positive values of the arrays (what can set a log axis' limits)."""
    v = np.concatenate([np.atleast_1d(np.asarray(a, float)) for a in arrays] or [np.array([])])
    return v[np.isfinite(v) & (v > 0)]


def _limits(values: np.ndarray) -> tuple[float, float]:
    """Padded log limits around the values and EL = 1, clamped to Y_RANGE."""
    logs = np.log10(np.r_[values, 1.0])
    lo, hi = logs.min(), logs.max()
    pad = max(PAD * (hi - lo), 0.1)
    return (max(10 ** (lo - pad), Y_RANGE[0]), min(10 ** (hi + pad), Y_RANGE[1]))


def _free_rows(law_free: pd.DataFrame, m: str) -> pd.DataFrame:
    if law_free is None or law_free.empty or "modality" not in law_free:
        return pd.DataFrame(columns=["family", "EL (runs)", "lower", "upper"])
    return law_free[law_free["modality"] == m]


def _free_compute(r, fit: LeverageFit | None) -> float:
    """Where a law-free estimate sits on the compute axis: the compute of the runs it compares
    where the frame carries it, else the middle (log) of its MoE runs' compute; NaN when
    neither is known (a family whose laws were not identified)."""
    c = r.get(FREE_C, np.nan) if hasattr(r, "get") else np.nan
    if c is not None and np.isfinite(c) and c > 0:
        return float(c)
    if fit is not None:
        return float(np.exp(np.mean(np.log([fit.C_observed.min(), fit.C_observed.max()]))))
    return np.nan


def _fmt(v: float) -> str:
    return f"{v:.3g}" if np.isfinite(v) else ("unbounded" if v > 0 else "n/a")


def leverage_vs_compute(fits: list[LeverageFit], best_fits: list[LeverageFit], law_free: pd.DataFrame,
                        path: Path) -> Path | None:
    free_all = law_free if law_free is not None else pd.DataFrame()
    mods = sorted({f.modality for f in fits}
                  | (set(free_all["modality"]) if "modality" in free_all else set()))
    if not mods:
        return None
    fig, axes = _grid(len(mods))
    families = sorted({f.family for f in fits}
                      | (set(free_all["family"]) if "family" in free_all else set()))
    colors = _colors(families)
    unbounded_any = dotted_any = laws_drawn = bands_drawn = drawn = False
    for ax, m in zip(axes, mods, strict=True):
        # everything the panel draws, computed first: its finite values set the y limits
        lines = []
        for f in (f for f in fits if f.modality == m):
            lo, hi = f.C_observed.min(), f.C_observed.max()
            C = np.exp(np.linspace(np.log(lo), np.log(hi * max(EXTRAPOLATE)), 120))
            curve = f.curve(C)
            seen = hi >= C
            best = [(b, b.curve(C[~seen])) for b in best_fits
                    if b.modality == m and b.family == f.family]
            lines.append((f, C, curve, seen, hi, best))
        fit_of = {f.family: f for f, *_ in lines}
        notes, points = [], []
        for _, r in _free_rows(free_all, m).iterrows():
            fam, v = r["family"], float(r["EL (runs)"])
            lo_, up = float(r["lower"]), float(r["upper"])
            x = _free_compute(r, fit_of.get(fam))
            if not np.isfinite(v):
                notes.append(f"{fam}: no estimate from the runs alone")
            elif not np.isfinite(x):
                notes.append(f"{fam}: EL from the runs alone {v:.3g} [{_fmt(lo_)}, {_fmt(up)}], "
                             "not drawn: its laws are not identified, so nothing says at which compute")
            else:
                points.append((fam, x, v, lo_, up))
        values = _values(*(c[k] for _, _, c, *_ in lines for k in ("EL", "lower", "upper")
                           if k in c),
                         *(bc[k] for *_, best in lines for _, bc in best
                           for k in ("EL", "lower", "upper") if k in bc),
                         *(p[2:] for p in points))
        ax.set_title(f"{m}: efficiency leverage")
        if not values.size:  # nothing to draw: the panel says so, and why
            ax.set(xticks=[], yticks=[])
            why = ("no law fit and no estimate from the runs that can be placed" if not lines
                   else "no finite estimate")
            ax.text(0.5, 0.5, "\n".join(textwrap.fill(n, 55) for n in [f"nothing to draw: {why}", *notes]),
                    transform=ax.transAxes, fontsize=7, ha="center", va="center")
            continue
        drawn = True
        ylo, yhi = _limits(values)
        ax.set_yscale("log")
        ax.set_ylim(ylo, yhi)
        ax.autoscale(enable=False, axis="y")
        beyond = values[(values > yhi) | (values < ylo)]
        if beyond.size:
            notes.insert(0, "beyond the axes: " + ", ".join(w for w in (
                f"values up to {beyond.max():.3g}" if (beyond > yhi).any() else "",
                f"down to {beyond.min():.3g}" if (beyond < ylo).any() else "") if w))
        for f, C, curve, seen, hi, best in lines:
            laws_drawn = True
            color = colors.get(f.family, "gray")
            ax.plot(C[seen], curve["EL"][seen], color=color, label=f"{f.family}: from the Chinchilla laws")
            ax.plot(C[~seen], curve["EL"][~seen], color=color, ls="--")
            if "lower" in curve and curve["lower"].notna().any():
                bands_drawn = True
                unbounded_any |= band(ax, C, curve["lower"], curve["upper"], top=yhi, color=color,
                                      alpha=0.15, lw=0)
            for b, bc in best:
                dotted_any = True
                ax.plot(C[~seen], bc["EL"], color=color, ls=":", lw=2,
                        label=f"{f.family}: extrapolated by the {b.law} law (best on held-out runs)")
                if "lower" in bc and bc["lower"].notna().any():
                    unbounded_any |= band(ax, C[~seen], bc["lower"], bc["upper"], top=yhi,
                                          facecolor="none", edgecolor=color, hatch="///", lw=0,
                                          alpha=0.5)
            ax.axvline(hi, color="gray", lw=0.6, ls=":")
        for fam, x, v, lo_, up in points:
            color = colors.get(fam, "gray")
            yerr = [[v - lo_ if np.isfinite(lo_) else 0.0], [up - v if np.isfinite(up) else 0.0]]
            ax.errorbar([x], [v], yerr=yerr, fmt="o", color=color, ms=4, capsize=2,
                        label=f"{fam}: from the runs alone")
            if np.isinf(up):
                unbounded_any = True
                unbounded_arrow(ax, x, v, color=color)
        ax.axhline(1, color="k", lw=0.8)
        if notes:
            ax.text(0.02, 0.03, "\n".join(textwrap.fill(n, 60) for n in notes), transform=ax.transAxes,
                    fontsize=6, va="bottom", ha="left",
                    bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})
        ax.set(xscale="log", xlabel="training FLOPs on this modality",
               ylabel="dense compute / MoE compute")
        lo, hi = ax.get_xlim()
        if hi / lo < 10:  # a decade at least, so points are not pressed to the edges
            mid = np.sqrt(lo * hi)
            ax.set_xlim(mid / 10**0.5, mid * 10**0.5)
        ax.xaxis.set_minor_formatter(NullFormatter())
        decimal_log_ticks(ax)
    style = []
    if laws_drawn:
        style += [Line2D([], [], color="gray", ls="-", label="laws, within the MoE runs' compute"),
                  Line2D([], [], color="gray", ls="--", label="laws, extrapolated beyond the largest "
                         "run (dotted vertical line)")]
    if bands_drawn:
        style.append(Line2D([], [], color="gray", lw=6, alpha=0.25, label="95% bootstrap band"))
    if dotted_any:
        style.append(Line2D([], [], color="gray", ls=":", lw=2, label="best bank law, extrapolated"))
    if unbounded_any:
        style.append(unbounded_handle())
    if drawn:
        style.append(Line2D([], [], color="k", lw=0.8, label="EL = 1: the experts save no compute"))
    per_family = sorted((h for ax in axes for h in ax.get_legend_handles_labels()[0]),
                        key=lambda h: h.get_label())
    shared_legend(fig, [per_family, style])
    return save(fig, path)
