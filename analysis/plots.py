"""Figures (matplotlib, Agg): loss vs compute with fitted frontiers, dL vs compute with bands,
the competition/synergy map of modality pairs, and per run a modality x expert heatmap of each
MoE layer's routing."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.compare import delta_curve  # noqa: E402
from analysis.compute import Frontier  # noqa: E402
from analysis.records import by_family  # noqa: E402

COLORS = {"dense": "#1f77b4", "moe": "#d62728", "mot": "#2ca02c"}
PALETTE = ("#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#ff7f0e", "#17becf", "#bcbd22")


def _colors(families) -> dict[str, str]:
    """dense and the bare families as COLORS has them; each MoE family label
    (records.family_key) a colour of its own, in sorted order."""
    labels = sorted(f for f in set(families) if f not in COLORS)
    return {**COLORS, **{f: PALETTE[i % len(PALETTE)] for i, f in enumerate(labels)}}


def _grid(n: int):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def save(fig, path: Path) -> Path:
    """Lay out, write (120 dpi) and close a figure; its path."""
    fig.tight_layout()
    # tight: a figure-level legend placed below the panels is kept, not cut
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


NICE_STEPS = ((1,), (1, 2, 5), (1, 2, 3, 5), (1, 1.5, 2, 3, 4, 5, 6, 8),
              (1, 1.2, 1.4, 1.6, 1.8, 2, 2.5, 3, 3.5, 4, 5, 6, 7, 8, 9),
              (*np.round(np.arange(1, 2, 0.1), 1), *np.round(np.arange(2, 4, 0.2), 1),
               *np.arange(4, 10, 0.5)))


def decimal_log_ticks(ax, most: int = 7) -> None:
    """Plain decimal labels (0.9, 1, 2, 3) on a log-scale y axis, never the mixed
    4x10^0 / 9x10^-1 that matplotlib writes on a narrow range: the finest set of round values
    of which at most `most` fall in the current limits; minor ticks unlabelled."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    lo, hi = sorted(ax.get_ylim())
    if not (np.isfinite(lo) and np.isfinite(hi) and lo > 0):
        return
    decades = range(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 1)
    chosen: list[float] = []
    for steps in reversed(NICE_STEPS):
        ticks = [float(f"{m * 10.0 ** k:.6g}") for k in decades for m in steps]
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) <= most:
            chosen = ticks
            if len(ticks) >= 3:
                break
    if len(chosen) < 2:  # a range too narrow for round values: three inside it
        for digits in range(3, 9):
            chosen = sorted({float(f"{v:.{digits}g}") for v in np.geomspace(lo, hi, 5)[1:-1]})
            if len(chosen) == 3:
                break
    ax.yaxis.set_major_locator(FixedLocator(chosen))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def unbounded_arrow(ax, x, y=None, **kw) -> None:
    """An arrowhead at the top edge above x (data), meaning: the upper bound is unbounded.
    From y (data) when given and inside the axes, else a short arrow just under the edge;
    never clipped to a finite stand-in for the bound."""
    ylo, yhi = sorted(ax.get_ylim())
    inside = y is not None and np.isfinite(y) and ylo < y < yhi
    start = ((x, y), "data") if inside else ((x, 0.86), ax.get_xaxis_transform())
    ax.annotate("", xy=(x, 1.0), xycoords=ax.get_xaxis_transform(), xytext=start[0],
                textcoords=start[1], annotation_clip=False,
                arrowprops={"arrowstyle": "-|>", "color": kw.get("color", "k"), "lw": 0.9,
                            "shrinkA": 0, "shrinkB": 0})


def unbounded_handle():
    """The one legend entry that explains the arrows of unbounded upper bounds."""
    from matplotlib.lines import Line2D

    return Line2D([], [], color="k", marker=r"$\uparrow$", ms=9, ls="none",
                  label="upper bound unbounded (arrow to the top edge)")


def shared_legend(fig, columns: list[list]):
    """One legend for the whole figure, below the panels, one legend column per list of
    handles (shorter columns padded with blank rows, so each column keeps its own kind of entry);
    a label is shown once."""
    from matplotlib.lines import Line2D

    seen: set[str] = set()
    cols = []
    for col in columns:
        keep = []
        for h in col:
            if h.get_label() not in seen:
                seen.add(h.get_label())
                keep.append(h)
        if keep:
            cols.append(keep)
    if not cols:
        return None
    rows = max(len(c) for c in cols)
    handles = [h for c in cols for h in c + [Line2D([], [], ls="none", label=" ")] * (rows - len(c))]
    fig.tight_layout()
    return fig.legend(handles=handles, labels=[h.get_label() for h in handles], loc="upper center",
                      bbox_to_anchor=(0.5, 0.0), ncol=len(cols), fontsize=7, frameon=False)


COMPUTE_LABEL = "training FLOPs on this modality's tokens"


def solid_dashed(ax, x, y, inside, **kw) -> None:
    """y against x, solid where `inside` (the runs' range) and dashed beyond (extrapolated)."""
    x, y, inside = np.asarray(x, float), np.asarray(y, float), np.asarray(inside, bool)
    ax.plot(x, np.where(inside, y, np.nan), **kw)
    kw.pop("label", None)
    # dashed beyond, overlapping one point so the two pieces join
    near = inside | np.r_[inside[1:], False] | np.r_[False, inside[:-1]]
    ax.plot(x, np.where(~inside | (near & ~inside.all()), y, np.nan), ls="--", **kw)


def band(ax, x, lower, upper, top: float | None = None, **kw) -> bool:
    """A 95% band; where its upper bound is unbounded (inf) it runs to the top of the axes
    (`top`, else the axes' current top) with an arrowhead there, never clipped to a finite
    number; withheld bounds (NaN) leave a gap. True where some of it is unbounded (the caller
    adds unbounded_handle() to its legend once)."""
    x, lo, hi = (np.asarray(v, float) for v in (x, lower, upper))
    open_ = np.isinf(hi) & np.isfinite(lo)
    ax.fill_between(x, lo, np.where(open_, np.nan, hi), **kw)
    if not open_.any():
        return False
    kw.pop("label", None)
    top = ax.get_ylim()[1] if top is None else top
    ax.fill_between(x, lo, np.where(open_, top, np.nan), **{**kw, "alpha": 0.08})
    ax.set_ylim(top=top)
    # one arrowhead per stretch of unbounded points, at its middle
    edges = np.flatnonzero(np.diff(np.r_[0, open_.astype(int), 0]))
    color = kw.get("color", kw.get("edgecolor", "k"))
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        unbounded_arrow(ax, float(np.exp(np.mean(np.log(x[[a, b - 1]])))) if x[a] > 0
                        else float(np.mean(x[[a, b - 1]])), color=color)
    return True


def loss_vs_compute(df: pd.DataFrame, frontiers: dict[tuple[str, str], Frontier],
                    path: Path) -> Path:
    """Runs at their compute C and each family's compute-optimal frontier in the same C
    (families and runs as records.by_family gives them, like the frontiers): solid where C,
    N* and D* all lie within the family's runs, dashed beyond. One legend below the panels."""
    from matplotlib.lines import Line2D

    df = by_family(df)
    colors = _colors(df["family"])
    mods = sorted(df["modality"].unique())
    fig, axes = _grid(len(mods))
    C = np.exp(np.linspace(np.log(df["C"].min() / 3), np.log(df["C"].max() * 3), 100))
    fitted: set[str] = set()
    for ax, m in zip(axes, mods, strict=True):
        for family, g in df[df["modality"] == m].groupby("family"):
            color = colors[family]
            ax.scatter(g["C"], g["loss"], s=14, color=color, alpha=0.7)
            f = frontiers.get((family, m))
            if f is not None:
                fitted.add(family)
                at = f.at(C)
                seen = (at["C"].between(g["C"].min(), g["C"].max()).to_numpy()
                        & at["N_opt"].between(g["N"].min(), g["N"].max()).to_numpy()
                        & at["D_opt"].between(g["D"].min(), g["D"].max()).to_numpy())
                solid_dashed(ax, C, at["loss_opt"], seen, color=color, lw=1.5)
        ax.set(xscale="log", yscale="log", title=m, xlabel=COMPUTE_LABEL,
               ylabel="held-out loss (nats/token)")
        decimal_log_ticks(ax)
    families = sorted(df["family"].unique(), key=lambda f: (f != "dense", f))
    handles = [Line2D([], [], color=colors[f], marker="o", ms=4, alpha=0.8,
                      ls="-" if f in fitted else "none", label=f) for f in families]
    styles = [Line2D([], [], color="gray", marker="o", ms=4, ls="none", label="runs"),
                Line2D([], [], color="gray", ls="-", label="fitted law, compute-optimal"),
                Line2D([], [], color="gray", ls="--", label="extrapolated: C, N* or D* beyond the runs")]
    fig.suptitle("Loss against compute: runs (points) and each family's compute-optimal law\n"
                 "(solid within the runs' C, N* and D*, dashed beyond)", fontsize=9)
    shared_legend(fig, [handles, styles])
    return save(fig, path)


def delta_vs_compute(frontiers: dict[tuple[str, str], Frontier], pair_table: pd.DataFrame,
                     c_min: float, c_max: float, path: Path, c_observed: float | None = None
                     ) -> Path | None:
    """dL from the laws against C (dashed beyond c_observed, the largest run's compute), and
    the observed pairs at their own C (the same unit)."""
    combos = [(f, m) for (f, m) in sorted(frontiers) if f != "dense" and ("dense", m) in frontiers]
    if not combos:
        return None
    fig, axes = _grid(len(combos))
    C = np.exp(np.linspace(np.log(c_min), np.log(c_max), 150))
    colors = _colors(f for f, _ in combos)
    for ax, (family, m) in zip(axes, combos, strict=True):
        curve = delta_curve(frontiers[(family, m)], frontiers[("dense", m)], C)
        color = colors[family]
        seen = curve["C"].to_numpy() <= (c_observed or np.inf)
        solid_dashed(ax, curve["C"], curve["dL"], seen, color=color,
                     label="from the fitted laws (dashed: beyond the largest run)")
        handles = []
        if "lower" in curve and band(ax, curve["C"], curve["lower"], curve["upper"], color=color,
                                     alpha=0.2, label="95% bootstrap band"):
            handles.append(unbounded_handle())
        obs = pair_table[(pair_table["family"] == family) & (pair_table["modality"] == m)]
        if len(obs):
            ax.scatter(obs["C"], obs["dL"], s=14, color="k", label="observed pairs")
        ax.axhline(0, color="gray", lw=0.8, ls="--")
        ax.set(xscale="log", title=f"{m}: {family} - dense", xlabel=COMPUTE_LABEL,
               ylabel="dL (nats/token)")
        ax.legend(handles=ax.get_legend_handles_labels()[0] + handles, fontsize=7)
    return save(fig, path)


def competition_map(bimodal_results, path: Path) -> Path | None:
    """Fitted interaction (nats/token) of each modality pair at the median joint-run scale;
    red = competition, blue = synergy. One panel per family."""
    if not bimodal_results:
        return None
    families = sorted({r.group["family"] for r in bimodal_results})
    fig, axes = _grid(len(families))
    for ax, family in zip(axes, families, strict=True):
        rs = [r for r in bimodal_results if r.group["family"] == family]
        mods = sorted({m for r in rs for m in r.group["pair"].split("+")})
        mat = np.full((len(mods), len(mods)), np.nan)
        for r in rs:
            i, j = (mods.index(m) for m in r.group["pair"].split("+"))
            val = float(np.median(r.interaction(r.points["N"], r.points["D"])))
            mat[i, j] = mat[j, i] = val
        lim = np.nanmax(np.abs(mat)) if np.isfinite(mat).any() else 1.0
        im = ax.imshow(mat, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_xticks(range(len(mods)), mods, rotation=45)
        ax.set_yticks(range(len(mods)), mods)
        ax.set_title(f"{family}: interaction (+ competes, - synergy)", fontsize=9)
        fig.colorbar(im, ax=ax, label="nats/token")
    return save(fig, path)


def modality_expert_shares(layer: dict, mods: list[str], width: int) -> np.ndarray:
    """[modality, expert]: the share of each modality's tokens that each expert receives (rows
    sum to 1; NaN for a modality with no tokens in this layer)."""
    mat = np.full((len(mods), width), np.nan)
    for i, m in enumerate(mods):
        row = np.asarray(layer["by_modality"].get(m, []), float)
        if row.sum() > 0:
            mat[i] = 0.0
            mat[i, : len(row)] = row / row.sum()
    return mat


def expert_use(record: dict, path: Path) -> Path | None:
    """One run's routing: per MoE layer, a modality x expert heatmap of the share of each
    modality's tokens that each expert receives (rows sum to 1, colour scale 0..1), with the
    mutual information between modality and expert in the title (bits; the modality entropy
    when experts separate modalities completely, 0 when routing ignores modality)."""
    layers = [s for s in record.get("expert_stats") or [] if s.get("by_modality")]
    if not layers:
        return None
    mods = sorted({m for s in layers for m in s["by_modality"]})
    width = max(len(s["tokens_per_expert"]) for s in layers)
    fig, axes = plt.subplots(1, len(layers), squeeze=False,
                             figsize=(1.6 + (0.5 * width + 0.9) * len(layers), 1.4 + 0.45 * len(mods)))
    for ax, s in zip(axes.flat, layers, strict=True):
        shares = modality_expert_shares(s, mods, width)
        if width <= 16:
            for (i, e), v in np.ndenumerate(shares):
                if np.isfinite(v):
                    ax.text(e, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if v > 0.6 else "white")
        im = ax.imshow(shares, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(width))
        ax.set_yticks(range(len(mods)), mods if ax is axes.flat[0] else [])
        mi, h = s.get("modality_expert_mi_bits"), s.get("modality_entropy_bits")
        what = f"MI {mi:.2f} of {h:.2f} bits" if mi is not None and h is not None else "MI unknown"
        ax.set(xlabel="expert", title=f"layer {s['layer']}: {what}")
        ax.title.set_fontsize(9)
    fig.suptitle(f"{record['run_id']}: share of each modality's tokens per expert", fontsize=9,
                 y=1.08)
    fig.colorbar(im, ax=list(axes.flat), label="share of the modality's tokens")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
