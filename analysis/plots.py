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


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


COMPUTE_LABEL = "training FLOPs on this modality's tokens"


def solid_dashed(ax, x, y, inside, **kw) -> None:
    """y against x, solid where `inside` (the runs' range) and dashed beyond (extrapolated)."""
    x, y, inside = np.asarray(x, float), np.asarray(y, float), np.asarray(inside, bool)
    ax.plot(x, np.where(inside, y, np.nan), **kw)
    kw.pop("label", None)
    # dashed beyond, overlapping one point so the two pieces join
    near = inside | np.r_[inside[1:], False] | np.r_[False, inside[:-1]]
    ax.plot(x, np.where(~inside | (near & ~inside.all()), y, np.nan), ls="--", **kw)


def band(ax, x, lower, upper, **kw) -> None:
    """A 95% band; where its upper bound is unbounded (inf) it runs to the top of the axes with
    an arrow there, never clipped to a finite number. Withheld bounds (NaN) leave a gap."""
    x, lo, hi = (np.asarray(v, float) for v in (x, lower, upper))
    open_ = np.isinf(hi) & np.isfinite(lo)
    ax.fill_between(x, lo, np.where(open_, np.nan, hi), **kw)
    if open_.any():
        kw.pop("label", None)
        top = ax.get_ylim()[1]
        ax.fill_between(x, lo, np.where(open_, top, np.nan), **{**kw, "alpha": 0.08})
        ax.set_ylim(top=top)
        ax.annotate("upper bound unbounded", (x[open_][0], top), xytext=(0, -12),
                    textcoords="offset points", fontsize=6, arrowprops={"arrowstyle": "->"})


def loss_vs_compute(df: pd.DataFrame, frontiers: dict[tuple[str, str], Frontier],
                    path: Path) -> Path:
    """Runs at their compute C and each family's compute-optimal frontier in the same C
    (families and runs as records.by_family gives them, like the frontiers)."""
    df = by_family(df)
    colors = _colors(df["family"])
    mods = sorted(df["modality"].unique())
    fig, axes = _grid(len(mods))
    C = np.exp(np.linspace(np.log(df["C"].min() / 3), np.log(df["C"].max() * 3), 100))
    for ax, m in zip(axes, mods, strict=True):
        for family, g in df[df["modality"] == m].groupby("family"):
            color = colors[family]
            ax.scatter(g["C"], g["loss"], s=14, color=color, alpha=0.7, label=f"{family} runs")
            f = frontiers.get((family, m))
            if f is not None:
                at = f.at(C)
                seen = (at["C"].between(g["C"].min(), g["C"].max()).to_numpy()
                        & at["N_opt"].between(g["N"].min(), g["N"].max()).to_numpy()
                        & at["D_opt"].between(g["D"].min(), g["D"].max()).to_numpy())
                solid_dashed(ax, C, at["loss_opt"], seen, color=color, lw=1.5,
                             label=f"{family} law, compute-optimal (dashed: C, N* or D* "
                             "beyond the runs)")
        ax.set(xscale="log", yscale="log", title=m, xlabel=COMPUTE_LABEL,
               ylabel="held-out loss (nats/token)")
        ax.legend(fontsize=7)
    return _save(fig, path)


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
        if "lower" in curve:
            band(ax, curve["C"], curve["lower"], curve["upper"], color=color, alpha=0.2,
                 label="95% bootstrap band")
        obs = pair_table[(pair_table["family"] == family) & (pair_table["modality"] == m)]
        if len(obs):
            ax.scatter(obs["C"], obs["dL"], s=14, color="k", label="observed pairs")
        ax.axhline(0, color="gray", lw=0.8, ls="--")
        ax.set(xscale="log", title=f"{m}: {family} - dense", xlabel=COMPUTE_LABEL,
               ylabel="dL (nats/token)")
        ax.legend(fontsize=7)
    return _save(fig, path)


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
    return _save(fig, path)


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
