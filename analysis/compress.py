"""The report section of the train-large-then-compress study (Li et al. 2020), for dense and MoE.

Compressed runs (`moe-vs-dense compress`) are the source run's weights quantized or pruned
and scored again on the same validation documents; their training compute is the source's.
The section shows, per modality and family, loss against storage bytes and against forward
FLOPs per token before and after compression, and tests the claim: at equal training compute,
does a larger model compressed beat a smaller model trained on more tokens? Two trained runs
count as equal training compute when their compute differs by at most `COMPUTE_TOLERANCE`
(a sweep's sizes and budgets rarely meet exactly; the ratio is printed). The difference is read
on the documents both scored (analysis/paired.py), so each document's own difficulty cancels.
A verdict is given only where the compressed larger model stores (or, separately, computes)
no more than the smaller one and both trained runs beat their bigram floors, with Holm's
correction over every verdict row of the section.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.errors import AnalysisError
from analysis.paired import pair_difference
from analysis.records import family_key, load_docs, load_runs, trained
from analysis.results import held
from analysis.tables import render

COMPUTE_TOLERANCE = 0.15  # |C_larger / C_smaller - 1| at most this: "equal training compute"
METHOD_ORDER = ("fp32", "int8", "int4")


def _method_key(m: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(m), m) if m in METHOD_ORDER else (len(METHOD_ORDER), m)


def before_after(every: pd.DataFrame, docs: dict) -> pd.DataFrame:
    """One row per (run, modality) of every trained run and of each compressed version of it:
    loss with SE, the change from the source's loss with its SE over the documents both
    scored (`docs`: records.load_docs), storage and forward FLOPs, bigram floor."""
    rows = every.assign(family=family_key(every))
    rows["source"] = rows["source_run"].fillna(rows["run"])
    base = rows[trained(rows)].set_index(["source", "modality"])["loss"]
    rows["source_loss"] = [base.get((s, m), np.nan) for s, m in zip(rows["source"], rows["modality"],
                                                                    strict=True)]
    rows["dL_vs_source"] = rows["loss"] - rows["source_loss"]
    rows["dL_se"] = [_doc_se(docs, r, s, m) if r != s else np.nan
                     for r, s, m in zip(rows["run"], rows["source"], rows["modality"], strict=True)]
    rows["order"] = [_method_key(m) for m in rows["method"]]
    rows = rows.sort_values(["modality", "family", "N_total", "D", "source", "order"])
    return pd.DataFrame({
        "modality": rows["modality"], "family": rows["family"], "source": rows["source"],
        "method": rows["method"], "C": rows["C_total"], "storage_MB": rows["storage_bytes"] / 1e6,
        "fwd_MFLOPs_per_token": rows["inference_flops_per_token"] / 1e6, "loss": rows["loss"],
        "se": rows["loss_se"], "dL_vs_source": rows["dL_vs_source"], "dL_se": rows["dL_se"],
        "floor_bigram": rows["floor_bigram"],
    }).reset_index(drop=True)


def _doc_se(docs: dict, run: str, source: str, modality: str) -> float:
    a, b = docs.get(run, {}).get(modality), docs.get(source, {}).get(modality)
    if a is None or b is None:
        return math.nan
    try:
        return pair_difference(a, b)[1]
    except AnalysisError:
        return math.nan


def _beats_bigram(loss: float, se: float, floor: float) -> bool:
    return bool(np.isfinite(floor) and loss < floor - (se if np.isfinite(se) else 0.0))


def _within(runs: pd.DataFrame):
    """(larger, smaller) trained runs of one family and modality at equal training compute."""
    for _, g in runs.groupby(["family", "modality"]):
        for big in g.itertuples():
            for small in g.itertuples():
                if (small.N_total < big.N_total
                        and abs(big.C_total / small.C_total - 1) <= COMPUTE_TOLERANCE):
                    yield big, small


def _partners(runs: pd.DataFrame):
    """(MoE/MoT run, its dense partner) of each pair and modality: the same size, tokens, data
    order and training compute."""
    for _, g in runs[runs["pair"].notna()].groupby(["pair", "modality"]):
        dense = g[g["family"] == "dense"]
        for other in g[g["family"] != "dense"].itertuples():
            for d in dense.itertuples():
                yield other, d


def claim_rows(every: pd.DataFrame, docs: dict, partners: bool = False) -> pd.DataFrame:
    """Each version (as trained, or compressed) of a larger trained run against a smaller trained
    run at equal training compute: of the same family and modality with fewer total params and
    compute within COMPUTE_TOLERANCE, or (`partners`) an MoE/MoT run's versions against its dense
    partner. dL = L_version - L_smaller on the documents both scored, its SE, 95% interval, the
    storage and forward-FLOP ratios (version over smaller run), and whether both trained runs
    beat their bigram floors."""
    rows = every.assign(family=family_key(every))
    runs = rows[trained(rows)]
    out = []
    for big, small in (_partners(runs) if partners else _within(runs)):
        versions = rows[((rows["run"] == big.run) | (rows["source_run"] == big.run))
                        & (rows["modality"] == big.modality)]
        for v in versions.itertuples():
            a, b = docs.get(v.run, {}).get(v.modality), docs.get(small.run, {}).get(v.modality)
            dl, se = (pair_difference(a, b) if a is not None and b is not None
                      else (v.loss - small.loss, math.nan))
            learned = (_beats_bigram(big.loss, big.loss_se, big.floor_bigram)
                       and _beats_bigram(small.loss, small.loss_se, small.floor_bigram))
            out.append({
                "family": big.family, "modality": v.modality, "larger": big.run,
                "method": v.method, "smaller": small.run, "C_ratio": big.C_total / small.C_total,
                "storage_ratio": v.storage_bytes / small.storage_bytes,
                "fwd_flops_ratio": v.inference_flops_per_token / small.inference_flops_per_token,
                "L_larger": v.loss, "L_smaller": small.loss, "dL": dl, "se": se,
                "both_beat_bigram": learned, "order": _method_key(v.method)})
    table = pd.DataFrame(out)
    if table.empty:
        return table
    z = stats.norm.ppf(0.975)
    lo, hi = held(table["dL"], table["dL"] - z * table["se"], table["dL"] + z * table["se"])
    table["lower"], table["upper"] = lo, hi
    table["p"] = 2 * stats.norm.sf(np.abs(table["dL"] / table["se"]))
    return table.sort_values(["modality", "family", "larger", "smaller", "order"]).drop(
        columns="order").reset_index(drop=True)


def verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """`at`: what the larger version matches the smaller at (storage and/or forward FLOPs: no
    more than it), or why the row gets no verdict; Holm over the verdict rows; `verdict`."""
    from statsmodels.stats.multitest import multipletests

    at = []
    for r in table.itertuples():
        cheaper = [w for w, ratio in (("storage", r.storage_ratio), ("fwd FLOPs", r.fwd_flops_ratio))
                   if ratio <= 1]
        if not r.both_beat_bigram:
            at.append("- (a trained run does not beat its bigram floor)")
        elif not cheaper:
            at.append("- (larger on storage and fwd FLOPs)")
        elif not np.isfinite(r.se) or not np.isfinite(r.lower):
            at.append("- (no document-level SE)")
        else:
            at.append(" and ".join(f"<= {w}" for w in cheaper))
    table = table.assign(at=at)
    tested = ~table["at"].str.startswith("-")
    table["p_holm"] = np.nan
    if tested.any():
        table.loc[tested, "p_holm"] = multipletests(table.loc[tested, "p"], method="holm")[1]
    table["verdict"] = np.where(~tested, "", np.where(
        table["p_holm"] >= 0.05, "no difference resolved",
        np.where(table["dL"] < 0, "larger better", "smaller better")))
    return table


def figure(ba: pd.DataFrame, path: Path) -> Path | None:
    """Per modality: loss against storage (top) and against forward FLOPs per token (bottom),
    each trained run (labelled with its run id up to the seed) joined to its compressed
    versions, bigram floor dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from analysis.plots import _colors, save

    mods = sorted(ba["modality"].unique())
    if not mods:
        return None
    fig, axes = plt.subplots(2, len(mods), figsize=(4.6 * len(mods), 7.0), squeeze=False)
    colors = _colors(ba["family"])
    markers = {"fp32": "o", "int8": "s", "int4": "v"}
    for j, m in enumerate(mods):
        g = ba[ba["modality"] == m]
        for i, (x, label) in enumerate((("storage_MB", "storage (MB, weights as stored)"),
                                        ("fwd_MFLOPs_per_token", "forward MFLOPs per token"))):
            ax = axes[i][j]
            for _, s in g.groupby("source", sort=False):
                c = colors[s["family"].iloc[0]]
                base = s[s["method"] == "fp32"]
                for r in s[s["method"] != "fp32"].itertuples():  # each version joined to its run
                    if len(base):
                        ax.plot([base[x].iloc[0], getattr(r, x)], [base["loss"].iloc[0], r.loss],
                                color=c, lw=0.7, alpha=0.5)
                for r in s.itertuples():
                    if r.method == "fp32":
                        ax.annotate(r.source.split("-s")[0], (getattr(r, x), r.loss), fontsize=6,
                                    xytext=(3, 3), textcoords="offset points", color=c)
                    ax.errorbar(getattr(r, x), r.loss, yerr=r.se if np.isfinite(r.se) else None,
                                marker=markers.get(r.method, "x"), color=c, ms=5, lw=0.8,
                                mfc="white" if r.method != "fp32" else c)
            floor = g["floor_bigram"].dropna()
            if len(floor):
                ax.axhline(floor.median(), color="grey", ls="--", lw=0.8)
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(f"{m} loss (nats/token)")
            ax.set_title(m)
    handles = [plt.Line2D([], [], color=c, lw=2, label=f) for f, c in colors.items()
               if f in set(ba["family"])]
    handles += [plt.Line2D([], [], marker=mk, ls="", color="k", mfc="white" if k != "fp32" else "k",
                           label=k) for k, mk in markers.items() if k in set(ba["method"])]
    if ba["method"].str.startswith("prune").any():
        handles += [plt.Line2D([], [], marker="x", ls="", color="k", label="pruned")]
    handles += [plt.Line2D([], [], color="grey", ls="--", label="bigram floor")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
               bbox_to_anchor=(0.5, -0.03))
    return save(fig, path)


def compress_section(df: pd.DataFrame, records: list[dict], out: Path,
                     inputs: list[str | Path]) -> tuple[list[str], list[Path]]:
    """The report's section on compressed runs under `inputs`, for the (run, modality) rows of
    `df` (the report's trained runs after its floor check), or ([], []) when there are none.
    `records` is the report's list (trained runs only); the compressed ones are read here."""
    if not any(Path(p).is_dir() or Path(p).is_file() for p in inputs):
        return [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report already said what it skipped
        try:
            every, _ = load_runs(inputs, compressed=True)
        except AnalysisError:
            return [], []
    # the (run, modality) rows the report kept (a run at its unigram floor is left out), and
    # the compressed versions of those
    kept = set(zip(df["run"], df["modality"], strict=True))
    every = every[[(s if isinstance(s, str) else r, m) in kept for r, s, m in
                   zip(every["run"], every["source_run"], every["modality"], strict=True)]]
    if trained(every).all():
        return [], []
    docs = load_docs(inputs)
    ba = before_after(every, docs)
    ba.to_csv(out / "compress.csv", index=False)
    table = claim_rows(every, docs)
    lines = ["", "## Train large, then compress (Li et al. 2020)", "",
             "Each trained run beside its compressed versions (`moe-vs-dense compress`: the same "
             "weights quantized per output channel to int8/int4, or magnitude-pruned per matrix, "
             "and scored again on the same validation documents; embeddings, norms and routers stay "
             "fp32). Loss in nats/token with its SE; `dL_vs_source` is the version's loss minus "
             "its trained run's, `dL_se` its SE over the documents both scored; `storage_MB` "
             "counts every weight as stored (quantization scales and pruning bitmasks included); "
             "forward FLOPs per token skip pruned zeros. C is the "
             "training compute (FLOPs on all tokens), the same for a run and its versions. Every "
             "row is in [compress.csv](compress.csv).", "",
             render(ba.rename(columns={"source": "run"}), floatfmt=".4g"), ""]
    fig = figure(ba, out / "compress_loss_vs_cost.png")
    figs = [fig] if fig is not None else []
    if fig is not None:  # shown under the report's Figures
        lines += [f"Loss against storage and forward FLOPs: [{fig.name}]({fig.name}) (Figures).", ""]
    within, partner = claim_rows(every, docs), claim_rows(every, docs, partners=True)
    if not partner.empty:  # uncompressed, that is the report's primary comparison
        partner = partner[partner["method"] != "fp32"].reset_index(drop=True)
    if within.empty and partner.empty:
        lines += [f"Larger against smaller at equal training compute: not identified: no two "
                  f"trained runs of one family and modality have training compute within "
                  f"{COMPUTE_TOLERANCE:.0%} of each other with different sizes, and no MoE/MoT "
                  "run has a dense partner; a sweep whose sizes' FLOPs per token step by the same "
                  "factor as its token budgets (configs/studies/compress.yaml) gives such pairs."]
        return lines, figs
    table = verdicts(pd.concat([within.assign(comparison="same family, larger vs smaller"),
                                partner.assign(comparison="MoE/MoT vs its dense partner")],
                               ignore_index=True))
    table.to_csv(out / "compress_claim.csv", index=False)
    n = int((table["verdict"] != "").sum())
    lines += [f"Each row below: a larger run (as trained, `fp32`, or compressed) against a smaller "
              "trained run at equal training compute (`C_ratio` larger/smaller, within "
              f"{COMPUTE_TOLERANCE:.0%}). dL = L_larger - L_smaller (nats/token) on the validation "
              "documents both scored, SE from the per-document differences, 95% normal interval. "
              "`storage_ratio` and `fwd_flops_ratio`: the larger version's over the smaller run's. "
              "A verdict is given only where the larger version costs no more (`at`: storage "
              "and/or forward FLOPs at most the smaller's) and both trained runs beat their bigram "
              f"floors: {n} rows over both tables, p-values Holm-adjusted over all of them "
              "(`p_holm`), verdicts at 5%. Other rows have no verdict and say why in `at`. "
              "([compress_claim.csv](compress_claim.csv))", ""]
    shown = table.drop(columns=["both_beat_bigram", "p", "comparison"])
    for kind, title, why in (
            ("same family, larger vs smaller",
             "### Larger and compressed, or smaller and trained longer (Li et al.'s claim)",
             "Within each family: a larger model trained on fewer tokens against a smaller one "
             "trained on more, at the same training compute."),
            ("MoE/MoT vs its dense partner",
             "### Experts compressed against their dense partner",
             "Each MoE/MoT run's compressed versions (`larger`: more total params) against its "
             "dense partner as trained (same size, tokens and active FLOPs: equal training "
             "compute and, unpruned, equal forward FLOPs): compressed, the experts can be compared "
             "at equal storage. Uncompressed, this is the report's primary comparison, not "
             "repeated here.")):
        part = table["comparison"] == kind
        if part.any():
            lines += [title, "", why, "", render(shown[part], floatfmt=".4g"), ""]
        else:
            lines += [title, "", "Not identified: no such pairs among the runs.", ""]
    return lines, figs
