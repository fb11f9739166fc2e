"""Figure: efficiency leverage against compute, one panel per modality, one line per MoE family
with its 95% band; the extrapolated part dashed, the best bank law's extrapolation dotted, the
law-free estimates from the runs as points with their intervals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis.leverage import EXTRAPOLATE, LeverageFit
from analysis.plots import _grid, _save, band


def leverage_vs_compute(fits: list[LeverageFit], best_fits: list[LeverageFit], law_free: pd.DataFrame,
                        path: Path) -> Path | None:
    if not fits:
        return None
    mods = sorted({f.modality for f in fits})
    fig, axes = _grid(len(mods))
    colors = dict(zip(sorted({f.family for f in fits}), ("#d62728", "#2ca02c", "#9467bd", "#8c564b",
                                                        "#e377c2", "#17becf"), strict=False))
    for ax, m in zip(axes, mods, strict=True):
        for f in (f for f in fits if f.modality == m):
            color = colors.get(f.family, "gray")
            lo, hi = f.C_observed.min(), f.C_observed.max()
            C = np.exp(np.linspace(np.log(lo), np.log(hi * max(EXTRAPOLATE)), 120))
            curve = f.curve(C)
            seen = hi >= C
            ax.plot(C[seen], curve["EL"][seen], color=color, label=f"{f.family} (Chinchilla laws)")
            ax.plot(C[~seen], curve["EL"][~seen], color=color, ls="--")
            if "lower" in curve and curve["lower"].notna().any():
                band(ax, C, curve["lower"], curve["upper"], color=color, alpha=0.15)
            for b in (b for b in best_fits if b.modality == m and b.family == f.family):
                ext = C[~seen]
                bc = b.curve(ext)
                ax.plot(ext, bc["EL"], color=color, ls=":", lw=2,
                        label=f"{f.family}, extrapolated by the {b.law} law (best on held-out runs)")
                band(ax, ext, bc["lower"], bc["upper"], facecolor="none", edgecolor=color,
                     hatch="///", lw=0, alpha=0.5)
            free = law_free[(law_free["modality"] == m) & (law_free["family"] == f.family)]
            for _, r in free.iterrows():
                v = r["EL (runs)"]
                if np.isfinite(v) and np.isfinite(r["lower"]) and np.isfinite(r["upper"]):
                    mid = float(np.exp(np.mean(np.log([lo, hi]))))
                    ax.errorbar([mid], [v], yerr=[[v - r["lower"]], [r["upper"] - v]], fmt="o",
                                color=color, ms=4, capsize=2, label=f"{f.family}, from the runs alone")
            ax.axvline(hi, color="gray", lw=0.6, ls=":")
        ax.axhline(1, color="k", lw=0.8)
        ax.set(xscale="log", yscale="log", title=f"{m}: efficiency leverage",
               xlabel="training FLOPs on this modality", ylabel="dense compute / MoE compute")
        ax.legend(fontsize=6)
    return _save(fig, path)
