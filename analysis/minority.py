"""The minority-modality study: loss and MoE - dense against one modality's share of the data.

The claim under test: when one modality is a small share of the training tokens, a dense model
spends its capacity on the majority while separate experts protect the minority. The study is
found in the runs themselves: a modality whose share of a run's tokens (D / D_total) takes
several distinct values across runs that are otherwise matched (same family, modalities, size,
total tokens and seed). Each share's MoE - dense difference is the paired one of
analysis/compare.py, with its document-level SE (analysis/paired.py); the numbers are secondary
(unadjusted 95% intervals, no verdict), since the report's verdicts are its primary table's.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from analysis.compare import POLICY, pairs  # noqa: E402
from analysis.plots import save  # noqa: E402
from analysis.records import family_key, load_docs  # noqa: E402
from analysis.results import held  # noqa: E402
from analysis.tables import render  # noqa: E402

LEVEL_GAP = 0.1  # shares closer than this in log ratio are one level (sampling noise, not an axis)
MATCHED = ["family", "modalities", "N_active", "D_total", "seed"]  # what a share's runs share


def level_values(shares: pd.Series) -> list[float]:
    """The distinct levels the shares take, each as its median: sorted shares more than
    LEVEL_GAP apart in log ratio start a new level, so the mixture sampler's rounding (which
    differs by seed) never counts as one."""
    s = np.sort(shares[shares > 0].to_numpy(float))
    if len(s) == 0:
        return []
    starts = np.flatnonzero(np.diff(np.log(s)) > LEVEL_GAP) + 1
    return [float(np.median(g)) for g in np.split(s, starts)]


def share_levels(shares: pd.Series) -> int:
    """How many distinct levels the shares take (level_values)."""
    return len(level_values(shares))


def find_study(df: pd.DataFrame) -> tuple[str, pd.DataFrame] | None:
    """(the minority modality, the tidy rows of every run in the study, with `family` as
    records.family_key and `share` = D / D_total), or None when no modality's share varies
    across otherwise matched runs. The minority is the varying modality with the smallest
    share; the study's runs are those of matched groups in which its share varies."""
    rows = df.assign(family=family_key(df), share=df["D"] / df["D_total"])
    best, runs = None, set()
    for m, g in rows.groupby("modality"):
        varying = [gg for _, gg in g.groupby(MATCHED) if share_levels(gg["share"]) >= 2]
        if varying and (best is None or g["share"].min() < best[1]):
            best = (m, g["share"].min())
            runs = {r for gg in varying for r in gg["run"]}
    if best is None:
        return None
    return best[0], rows[rows["run"].isin(runs)].reset_index(drop=True)


def _table(m: str, rows: pd.DataFrame, docs: dict) -> pd.DataFrame:
    """One row per dense run, modality and partner family: the minority's share, both losses
    beside the floors, and dL with its unadjusted 95% interval from the document-level SE."""
    minority = rows[rows["modality"] == m].set_index("run")["share"]
    paired = pairs(rows.drop(columns=["share"]), docs=docs)
    se = rows.set_index(["run", "modality"])["loss_se"]
    z = float(stats.norm.ppf(0.975))
    out = []
    for _, d in rows[rows["family"] == "dense"].iterrows():
        base = {"run": d["run"], "N": d["N_active"], "D_total": d["D_total"], "seed": d["seed"],
                f"{m} share": minority[d["run"]], "modality": d["modality"],
                "D": d["D"], "floor_unigram": d["floor_unigram"],
                "floor_bigram": d["floor_bigram"], "loss_dense": d["loss"],
                "loss_dense_se": d["loss_se"]}
        partners = paired[(paired["run_dense"] == d["run"]) & (paired["modality"] == d["modality"])]
        for _, p in partners.iterrows():
            lo, hi = held(p["dL"], p["dL"] - z * p["dL_se"], p["dL"] + z * p["dL_se"])
            out.append({**base, "run_partner": p["run"], "family": p["family"], "loss": p["loss"],
                        "loss_se": se.get((p["run"], d["modality"]), np.nan), "dL": p["dL"],
                        "dL_se": p["dL_se"], "dL lower": float(lo), "dL upper": float(hi)})
        if partners.empty:
            out.append({**base, "run_partner": None, "family": "-", "loss": np.nan,
                        "loss_se": np.nan, "dL": np.nan, "dL_se": np.nan, "dL lower": np.nan,
                        "dL upper": np.nan})
    t = pd.DataFrame(out)
    t["below bigram"] = [_below(r) for _, r in t.iterrows()]
    t["role"] = np.where(t["modality"] == m, "minority", "other")
    t = t.sort_values(["role", "N", "D_total", "seed", f"{m} share", "modality", "family"])
    return t[["run", "run_partner", "modality", "role", f"{m} share", "N", "D_total", "seed",
              "D", "family",
              "loss_dense", "loss_dense_se", "loss", "loss_se", "dL", "dL_se", "dL lower",
              "dL upper", "floor_unigram", "floor_bigram", "below bigram"]].reset_index(drop=True)


def _level(loss: float, se: float, unigram: float, bigram: float) -> str:
    """Which floors a loss beats: by more than its SE, as the report's floors table reads it."""
    margin = se if np.isfinite(se) else 0.0
    if loss < bigram - margin:
        return "bigram"
    return "unigram" if loss < unigram - margin else "none"


def _below(r: pd.Series) -> str:
    """Which of the pair's runs beat the modality's bigram floor."""
    if np.isnan(r["floor_bigram"]):
        return "no floor"
    dense = _level(r["loss_dense"], r["loss_dense_se"], r["floor_unigram"], r["floor_bigram"])
    if not np.isfinite(r["loss"]):
        return "dense" if dense == "bigram" else "neither"
    other = _level(r["loss"], r["loss_se"], r["floor_unigram"], r["floor_bigram"])
    return {(True, True): "both", (True, False): "dense only",
            (False, True): f"{r['family']} only", (False, False): "neither"}[
        (dense == "bigram", other == "bigram")]


def _figure(m: str, t: pd.DataFrame, path: Path) -> Path:
    """Left: the minority's loss against its share; middle: the other modalities'; right: dL
    against the share with 95% error bars. Floors as grey lines; shares on a log axis; the
    lines of further seeds or sizes fainter."""
    from analysis.plots import COLORS, PALETTE

    share = f"{m} share"
    fams = sorted(set(t["family"]) - {"-"})
    color = {"dense": COLORS["dense"], **{f: PALETTE[i % len(PALETTE)] for i, f in enumerate(fams)}}
    keys = ["N", "D_total", "seed"]
    varying = [k for k in keys if t[k].nunique() > 1]
    tags = {k: " (" + ", ".join(f"{c} {v:.3g}" for c, v in zip(keys, k, strict=True)
                                if c in varying) + ")" if varying else ""
            for k, _ in t.groupby(keys)}
    fade = {k: 1.0 - 0.5 * i / max(1, len(tags) - 1) for i, k in enumerate(tags)}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for role, ax in (("minority", axes[0]), ("other", axes[1])):
        rows = t[t["role"] == role]
        for (mod, *k), gm in rows.groupby(["modality", *keys]):
            label, tag = ("" if role == "minority" else f"{mod}: "), tags[tuple(k)]
            dense = gm.drop_duplicates(share)
            a = fade[tuple(k)]
            ax.errorbar(dense[share], dense["loss_dense"], yerr=_half(dense["loss_dense_se"]),
                        fmt="o-", capsize=3, color=color["dense"], alpha=a,
                        label=f"{label}dense{tag}")
            for f, gf in gm[gm["family"] != "-"].groupby("family"):
                ax.errorbar(gf[share], gf["loss"], yerr=_half(gf["loss_se"]), fmt="s-",
                            capsize=3, color=color[f], alpha=a, label=f"{label}{f}{tag}")
        for mod, gm in rows.groupby("modality"):
            label = "" if role == "minority" else f"{mod}: "
            floors = gm.groupby(share)[["floor_bigram", "floor_unigram"]].median()
            ax.plot(floors.index, floors["floor_bigram"], "--", color="gray", lw=1,
                    label=f"{label}bigram floor")
            ax.plot(floors.index, floors["floor_unigram"], ":", color="gray", lw=1,
                    label=f"{label}unigram floor")
        title = ", ".join(sorted(rows["modality"].unique()))
        ax.set(xscale="log", xlabel=f"{m} share of the training tokens",
               ylabel="held-out loss (nats/token), 95% intervals", title=f"{title} ({role})")
        ax.legend(fontsize=6)
    ax = axes[2]
    for (mod, f, *k), g in t[t["family"] != "-"].groupby(["modality", "family", *keys]):
        g = g.sort_values(share)
        err = np.vstack([g["dL"] - g["dL lower"], g["dL upper"] - g["dL"]])
        ax.errorbar(g[share], g["dL"], yerr=np.nan_to_num(err), capsize=3,
                    fmt="o-" if mod == m else "s--", color=color[f], alpha=fade[tuple(k)],
                    mfc=color[f] if mod == m else "white",
                    label=f"{mod}: {f} - dense{tags[tuple(k)]}")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set(xscale="log", xlabel=f"{m} share of the training tokens", ylabel="dL (nats/token)",
           title="MoE - dense, 95% intervals (document-level SE)")
    ax.legend(fontsize=6)
    ticks = [float(f"{v:.2g}") for v in level_values(t[share])]
    for ax in axes:
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
        ax.minorticks_off()
    fig.suptitle(f"Minority modality: {m} at several shares, total tokens fixed", fontsize=9)
    return save(fig, path)


def _half(se: pd.Series) -> np.ndarray:
    """Half-widths of 95% normal intervals; 0 where a loss has no SE."""
    return np.nan_to_num(float(stats.norm.ppf(0.975)) * se.to_numpy(float))


READS = {"bigram": "below its bigram floor",
         "unigram": "below its unigram floor but not its bigram floor: less than pair counts give",
         "none": "not below its unigram floor: it learned nothing of this modality"}


def _floor_lines(m: str, t: pd.DataFrame) -> list[str]:
    """One line per pair whose runs do not both beat the modality's bigram floor (by more than
    a loss's SE), saying what each run learned."""
    out = []
    for _, r in t[~t["below bigram"].isin(["both", "no floor"])].iterrows():
        runs = [("dense", r["loss_dense"], r["loss_dense_se"])]
        if r["family"] != "-":
            runs.append((r["family"], r["loss"], r["loss_se"]))
        said = "; ".join(f"{f} {loss:.3f} +- {se:.3f}, "
                         f"{READS[_level(loss, se, r['floor_unigram'], r['floor_bigram'])]}"
                         for f, loss, se in runs)
        out.append(f"- {r['modality']} at {m} share {r[f'{m} share']:.3g} (floors: unigram "
                   f"{r['floor_unigram']:.3f}, bigram {r['floor_bigram']:.3f} nats/token): "
                   f"{said}. Where a run does not beat the bigram floor, this row's dL compares "
                   "how far each run got toward counting statistics, not capacity spent on or "
                   "protected for structure beyond them.")
    return out


def minority_section(df: pd.DataFrame, out: Path,
                     inputs: list[str | Path]) -> tuple[list[str], list[Path]]:
    """The report's minority-modality section (Markdown lines, its table also as minority.csv)
    and its figure; ([], []) when the runs vary no modality's share. `df` is every completed
    run (records.load_runs), `inputs` the run directories (for eval_docs.json)."""
    found = find_study(df)
    if found is None:
        return [], []
    m, rows = found
    levels = share_levels(rows.loc[rows["modality"] == m, "share"])
    title = f"## Minority modality: {m} at {levels} shares of the data"
    if not (rows["family"] == "dense").any():
        return ["", title, "", f"The runs vary {m}'s share of their training tokens, but none of "
                "them is dense: there is no MoE - dense difference to show.", ""], []
    t = _table(m, rows, load_docs(inputs))
    t.to_csv(out / "minority.csv", index=False)
    fig = _figure(m, t, out / "minority.png")
    shares = level_values(t[f"{m} share"])
    others = ", ".join(sorted(t.loc[t["role"] == "other", "modality"].unique()))
    fixed = [c for c in ("N", "D_total", "seed") if t[c].nunique() == 1]
    held_at = "; ".join(f"{c} = {t[c].iloc[0]:.4g}" for c in fixed)
    lines = ["", title, "",
             f"The runs vary {m}'s share of their training tokens (D / D_total, per level: "
             f"{', '.join(f'{s:.2g}' for s in shares)}) while size N (active params), total "
             f"tokens D_total and seed stay fixed within each family ({held_at or 'several'}), so "
             f"a small share means few {m} tokens; the rest goes to {others}. Per share and "
             "modality: the dense loss, its partner's, dL = partner - dense on "
             "the same validation documents with its document-level SE and an unadjusted 95% "
             "normal interval (blank where it would not hold its estimate), and the modality's "
             "unigram and bigram floors (nats/token of count models of the training data on the "
             "same validation rows). Losses in nats/token. Secondary: no verdict here; the "
             f"report's verdicts are the primary table's ({POLICY}).",
             "([minority.csv](minority.csv))", "",
             render(t.drop(columns=[*fixed, "run", "run_partner"])), ""]
    if rows["seed"].nunique() == 1:
        lines += ["One seed: the intervals count validation documents only, not the variation "
                  "between training runs (initialisation, and a data order that changes with the "
                  "mixture), which can move a loss by more than these intervals; a second seed "
                  "per share measures it (`seeds: [0, 1]`).", ""]
    shown = set(t["run"]) | set(t["run_partner"].dropna())
    alone = sorted(set(rows["run"]) - shown)
    if alone:
        lines += [f"Not in the table: {len(alone)} run(s) of the study without a dense partner "
                  f"({', '.join(alone[:5])}{', ...' if len(alone) > 5 else ''}).", ""]
    below = _floor_lines(m, t)
    if below:
        lines += ["Pairs not below their bigram floor:", "", *below, ""]
    if t["dL_se"].isna().all():
        lines += ["No run pair has per-document losses (eval_docs.json): no dL has an interval.",
                  ""]
    lines += [f"Figure {fig.name} (under Figures): loss against {m}'s share per family beside "
              "the floors, for the minority and the rest, and dL against the share.", ""]
    return lines, [fig]
