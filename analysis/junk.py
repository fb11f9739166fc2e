"""The junk-data study (configs/studies/junk.yaml): each real modality's held-out loss with junk
(a hex-digest dump, moe_vs_dense/data/junk.py) in the mixture minus without it, per family, and
which experts the junk tokens take.

A run with junk is matched to a run without junk of the same family, size, seed and number of
optimizer steps two ways: at equal tokens of the real modality (the junk run's batch holds the
clean run's real rows plus the junk) and at equal total tokens, i.e. equal training compute (the
junk run sees fewer real tokens). Runs of different step counts are not paired: at these scales
more, smaller steps lower the loss by more than junk raises it. Each
pair's difference and standard error come from the per-document losses on the same validation
documents (analysis/paired.py); pairs of several sizes or budgets are combined by its
random-effects meta-regression.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402
from statsmodels.stats.multitest import multipletests  # noqa: E402

from analysis.paired import DocLosses, combine, pair_difference  # noqa: E402
from analysis.plots import modality_expert_shares, save  # noqa: E402
from analysis.records import family_key, load_docs  # noqa: E402
from analysis.results import held  # noqa: E402
from analysis.tables import render  # noqa: E402

JUNK = "junk"
SAME = 0.02  # token counts within 2% are "equal" (the sampler rounds rows per stream)
COMPARISONS = ("equal real tokens and steps", "equal compute and steps")


def _family(df: pd.DataFrame) -> pd.Series:
    """The family label without the expert count of modality routing (a junk run has one
    expert more: junk's own), so a run pairs with its clean twin."""
    label = family_key(df)
    by_modality = df["router"].isin(["modality", "modality_group"])
    return label.where(~by_modality, label.str.replace(r" E=\d+", "", regex=True))


def _arms(df: pd.DataFrame, records: list[dict]) -> pd.DataFrame:
    """Rows of the real modalities with the run's size, whether it trained on junk, and the
    real modalities it trained on."""
    size = {r["run_id"]: (r.get("model") or {}).get("d_model") for r in records}
    layers = {r["run_id"]: (r.get("model") or {}).get("n_layers") for r in records}
    steps = {r["run_id"]: r["tokens"].get("steps") for r in records}
    rows = df[df["modality"] != JUNK].copy()
    mods = rows["modalities"].astype(str).str.split("+")
    rows["has_junk"] = mods.map(lambda m: JUNK in m)
    rows["real"] = mods.map(lambda m: "+".join(x for x in m if x != JUNK))
    rows["family"] = _family(rows)
    rows["size"] = [f"d{size.get(r)}l{layers.get(r)}" for r in rows["run"]]
    rows["steps"] = [steps.get(r) for r in rows["run"]]
    return rows


def junk_pairs(df: pd.DataFrame, records: list[dict],
               docs: dict[str, dict[str, DocLosses]]) -> pd.DataFrame:
    """One row per (comparison, family, real modality, clean run, junk run) of equal optimizer
    steps: the losses, the bigram floor, dL = L_with_junk - L_without and its document-level SE
    (NaN without eval_docs.json). `learned` is False where either run does not beat its unigram
    floor."""
    arms = _arms(df, records)
    keys = ["family", "size", "seed", "real", "modality"]
    out = []
    for key, g in arms.groupby(keys):
        clean, dirty = g[~g["has_junk"]], g[g["has_junk"]]
        for _, c in clean.iterrows():
            for _, j in dirty.iterrows():
                if j["steps"] != c["steps"]:
                    continue
                for comparison, col in zip(COMPARISONS, ("D", "D_total"), strict=True):
                    if abs(j[col] / c[col] - 1) > SAME:
                        continue
                    dl, se = j["loss"] - c["loss"], math.nan
                    a, b = docs.get(j["run"], {}).get(key[-1]), docs.get(c["run"], {}).get(key[-1])
                    if a is not None and b is not None and np.array_equal(a.tokens, b.tokens):
                        dl, se = pair_difference(a, b)
                    learned = bool(c["loss"] < c["floor_unigram"] and j["loss"] < j["floor_unigram"]) \
                        if np.isfinite(c["floor_unigram"]) else True
                    out.append({"comparison": comparison, **dict(zip(keys, key, strict=True)),
                                "steps": c["steps"], "D_without": c["D"], "D_with": j["D"],
                                "tokens_without": c["D_total"], "tokens_with": j["D_total"],
                                "N": c["N"], "L_without": c["loss"], "L_with": j["loss"],
                                "floor_bigram": c["floor_bigram"], "dL": dl, "se": se,
                                "learned": learned, "run_without": c["run"], "run_with": j["run"]})
    table = pd.DataFrame(out)
    if len(table):
        z = stats.norm.ppf(0.975)
        lo, hi = held(table["dL"], table["dL"] - z * table["se"], table["dL"] + z * table["se"])
        table["lower"], table["upper"] = lo, hi
    return table


def combined(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per comparison, family and real modality: the pairs' dL combined at the design's centre
    (analysis/paired.combine), with its 95% interval where it holds its estimate, and a
    verdict at 5% after Holm's correction over the rows that have an interval and two or more
    seeds (one seed's document-level SE leaves out the variation between seeds)."""
    rows = []
    ok = pairs[pairs["learned"]]
    for (comparison, label, modality), g in ok.groupby(["comparison", "family", "modality"]):
        c = combine(g["dL"].to_numpy(), g["se"].to_numpy(), g["N"].to_numpy(),
                    g["D_without"].to_numpy())
        lo, hi = held(c.dL, c.lower, c.upper)
        rows.append({"comparison": comparison, "family": label, "modality": modality,
                     "pairs": len(g), "seeds": g["seed"].nunique(), "dL": c.dL, "se": c.se,
                     "lower": float(lo), "upper": float(hi), "p": c.p, "model": c.model})
    table = pd.DataFrame(rows, columns=["comparison", "family", "modality", "pairs", "seeds", "dL",
                                        "se", "lower", "upper", "p", "model"])
    tested = table["lower"].notna() & table["p"].notna() & (table["seeds"] > 1)
    table.insert(10, "p_holm", np.nan)
    if tested.any():
        table.loc[tested, "p_holm"] = multipletests(table.loc[tested, "p"], 0.05, "holm")[1]
    table.insert(11, "verdict", np.where(
        table["lower"].isna(), "no interval",
        np.where(table["seeds"] < 2, "no verdict: one seed",
                 np.where(~tested | (table["p_holm"] >= 0.05), "no significant difference",
                          np.where(table["dL"] > 0, "junk hurts", "junk helps")))))
    return table


def junk_experts(records: list[dict]) -> pd.DataFrame:
    """Per MoE run trained on junk and MoE layer: the share of junk tokens each expert takes,
    the expert taking most of them, and what share of that expert's tokens are junk."""
    rows = []
    for r in sorted(records, key=lambda r: (r.get("router") or "", r["compute"])):
        if JUNK not in r["modalities"] or r.get("family") != "moe":
            continue
        for s in r.get("expert_stats") or []:
            by = s.get("by_modality") or {}
            if sum(by.get(JUNK, [])) <= 0:
                continue
            width = len(s["tokens_per_expert"])
            share = modality_expert_shares(s, [JUNK], width)[0]
            top = int(np.nanargmax(share))
            total_top = sum(float(v[top]) for v in by.values() if len(v) > top)
            rows.append({"run": r["run_id"], "router": r.get("router"), "layer": s["layer"],
                         "junk_share_per_expert": " ".join(f"{v:.2f}" for v in share),
                         "top_expert": top, "junk_share_top": float(share[top]),
                         "junk_of_top_expert": float(by[JUNK][top]) / total_top
                         if total_top else math.nan})
    return pd.DataFrame(rows)


def junk_losses(df: pd.DataFrame) -> pd.DataFrame:
    """Each junk run's held-out loss on the junk itself beside its floors (nats per hex digit)."""
    rows = df[df["modality"] == JUNK]
    return pd.DataFrame({"family": _family(rows), "run": rows["run"], "tokens": rows["D_total"],
                         "junk_tokens": rows["D"], "loss": rows["loss"], "se": rows["loss_se"],
                         "unigram": rows["floor_unigram"], "bigram": rows["floor_bigram"],
                         "above_unigram": rows["loss"] - rows["floor_unigram"]}
                        ).sort_values(["family", "tokens"])


def plot(pairs: pd.DataFrame, path: Path) -> Path:
    """dL (with junk - without) of every pair by family and modality, one panel per comparison,
    with each pair's 95% document-level interval where it holds its estimate; marker by the
    clean run's total tokens, seeds side by side."""
    fig, axes = plt.subplots(1, len(COMPARISONS), figsize=(5.2 * len(COMPARISONS), 3.6),
                             squeeze=False, sharey=True)
    pairs = pairs[pairs["learned"]]
    labels = sorted(pairs["family"].unique())
    mods = sorted(pairs["modality"].unique())
    budgets = sorted(pairs["tokens_without"].unique())
    colors = dict(zip(labels, ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b"), strict=False))
    markers = dict(zip(budgets, "osD^v", strict=False))
    seeds = sorted(pairs["seed"].unique())
    slots = [(f, b, sd) for f in labels for b in budgets for sd in seeds]
    named: set[str] = set()
    for ax, comparison in zip(axes.flat, COMPARISONS, strict=True):
        g = pairs[pairs["comparison"] == comparison]
        if g.empty:
            ax.text(0.5, 0.5, "no pairs", transform=ax.transAxes, ha="center", color="grey")
        for k, m in enumerate(mods):
            for i, (label, budget, seed) in enumerate(slots):
                row = g[(g["family"] == label) & (g["modality"] == m)
                        & (g["tokens_without"] == budget) & (g["seed"] == seed)]
                if row.empty:
                    continue
                r = row.iloc[0]
                x = k + (i - (len(slots) - 1) / 2) * 0.8 / len(slots)
                err = None if np.isnan(r["lower"]) else [[r["dL"] - r["lower"]], [r["upper"] - r["dL"]]]
                name = f"{label}, clean run {budget:.3g} tokens"
                ax.errorbar([x], [r["dL"]], yerr=err, fmt=markers[budget], color=colors[label],
                            capsize=3, label=None if name in named else name)
                named.add(name)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(range(len(mods)), mods)
        ax.set_title(f"at {comparison}", fontsize=9)
        ax.set_xlim(-0.6, len(mods) - 0.4)
    axes.flat[0].set_ylabel("loss with junk - without (nats/token)")
    fig.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=7)
    fig.suptitle("what junk in the mixture costs each real modality, per pair (95% intervals)",
                 fontsize=9)
    return save(fig, path)


def junk_section(df: pd.DataFrame, records: list[dict], out: Path,
                 inputs: list[str | Path]) -> tuple[list[str], list[Path]]:
    """The report's junk section and its figure; ([], []) when the runs hold no junk study
    (no run trained on junk with a clean twin of its family, size and seed)."""
    if JUNK not in set(df["modality"]):
        return [], []
    pairs = junk_pairs(df, records, load_docs(inputs))
    if pairs.empty:
        return [], []
    table = combined(pairs)
    pairs.to_csv(out / "junk_pairs.csv", index=False)
    lines = ["", "## Junk data: what an incompressible stream costs each modality", "",
             "Runs trained with a hex-digest dump in the mixture (modality `junk`: md5 digests of "
             "a counter, one token per hex digit, incompressible: ln 16 = 2.773 nats/digit on "
             "held-out lines) against runs of the same family, size, seed and number of "
             "optimizer steps without it. `equal real tokens and steps`: both saw the same "
             "tokens of the modality in as many steps (the junk run's batches hold the junk on "
             "top of the clean run's rows); `equal compute and steps`: both trained on the same "
             "total tokens in the same batches, so the junk run saw fewer of the modality. Runs "
             "of different step counts are not paired: at these scales more, smaller steps "
             "lower the loss by more than junk raises it. dL = loss with junk - "
             "loss without (nats/token) on the same validation documents; its SE from the "
             "per-document differences; pairs combined by `model`, 95% interval (none printed "
             "where it would not hold its estimate); verdicts at 5% after Holm's correction "
             "over this table's rows with two or more seeds (secondary to the primary table; "
             "one seed's interval holds evaluation noise only, not the variation between "
             "seeds, so it gets no verdict). dL > 0: junk hurts. "
             "A family whose dL is near 0 where dense's is positive keeps the junk out of the "
             "other modalities' way. Modality routing gives junk an expert of its own (its "
             "family label drops the expert count); the junk run's vocabulary also has 16 more "
             "ids (hex digits), which a model must learn to give no weight on real tokens.", ""]
    if len(table):
        lines += [render(table), ""]
    skipped = pairs[~pairs["learned"]]
    if len(skipped):
        lines += [f"Left out ({len(skipped)} pairs): a run at or above its unigram floor on the "
                  "modality has learned nothing about it: "
                  + ", ".join(sorted(set(skipped["family"] + "/" + skipped["modality"]))), ""]
    lines += ["Every pair, with its losses beside the bigram floor of the modality "
              "([junk_pairs.csv](junk_pairs.csv)):", "",
              render(pairs.drop(columns=["run_without", "run_with", "learned", "real"])), ""]
    own = junk_losses(df)
    if len(own):
        lines += ["The junk itself (nats per hex digit): no model can beat ln 16 = 2.773 on "
                  "held-out lines, and the unigram floor on the same rows (ln 16 plus the "
                  "documents' end markers and add-one smoothing) is what a model that learned "
                  "nothing but the digit frequencies scores; a loss above that floor "
                  "(`above_unigram`) is what fitting the training lines costs on new ones.", "",
                  render(own), ""]
    experts = junk_experts(records)
    if len(experts):
        lines += ["Which experts the junk tokens use (final validation rows): per MoE run and "
                  "layer, the share of junk tokens each expert takes (experts in order), the "
                  "expert taking most, and the share of that expert's tokens that are junk (1: "
                  "an expert of junk alone). The modality x expert heatmaps are under the "
                  "learned-router section.", "", render(experts), ""]
    return lines, [plot(pairs, out / "junk_dloss.png")] if len(table) else []
