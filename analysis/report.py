"""`report`: a Markdown report with every table and figure the runs support."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analysis import dynamics, plots
from analysis.answer import answer, at_unigram, fit_noting, noting
from analysis.backtest import backtest, summarize
from analysis.compare import compare_laws, law_points, pairs
from analysis.compress import compress_section
from analysis.compute import DEFINITION, fit_flops_per_token
from analysis.headline import Headline
from analysis.isoflop import MIN_BUDGETS, isoflop
from analysis.junk import junk_section
from analysis.minority import minority_section
from analysis.records import by_family, family_key, load_docs, load_runs
from analysis.results import bound_text
from analysis.shared_exponent import shared_table, shared_tests
from analysis.tables import fits_table, render

HOLDOUT = 3  # largest-compute runs per group the report's backtest predicts
BLANKS = ("Intervals are 95%; a bound the runs do not set reads 'unbounded', and an "
          "estimate neither of whose bounds they set is left blank: not identified.")


def _regime(df: pd.DataFrame) -> str:
    ratio = df["D"] / df["N"]
    return (f"D/N, the tokens of each modality a run trained on over its parameters (N as "
            f"defined above; the records count non-embedding parameters), spans "
            f"{ratio.min():.3g} to {ratio.max():.3g} (median {ratio.median():.3g}). Chinchilla's "
            "compute-optimal ratio of about 20 is all training tokens over all parameters of a "
            "dense text model; on a run of several modalities each modality's D/N counts only "
            "that modality's share of the run's tokens.")


def _precision(df: pd.DataFrame) -> str:
    """How precisely each run's final losses are measured (records carry their SEs)."""
    se = df["loss_se"].dropna() if "loss_se" in df else pd.Series(dtype=float)
    if se.empty:
        return "The runs' final losses carry no standard errors."
    below = int((se <= 0.005).sum())
    return (f"Standard errors of the runs' final losses (validation documents as clusters): "
            f"median {se.median():.2g}, max {se.max():.2g} nats/token; {below} of {len(se)} are "
            "at most 0.005, the trainer's default target (each record's "
            "eval.final.<modality>.docs_for_target says what more validation data would take).")


def _floors(df: pd.DataFrame) -> list[str]:
    """The floors section: each family's best loss beside the loss of count models of the
    training data on the same validation rows."""
    if df["floor_unigram"].isna().all():
        return []
    best = df.loc[df.assign(family=family_key(df)).groupby(
        [family_key(df), "modalities", "modality"])["loss"].idxmin()]
    table = pd.DataFrame({
        "family": family_key(best), "modalities": best["modalities"], "modality": best["modality"],
        "best_loss": best["loss"], "se": best["loss_se"], "uniform": best["floor_uniform"],
        "unigram": best["floor_unigram"], "bigram": best["floor_bigram"],
        "markov": best["floor_markov"],
        "floor_margin": best[["floor_unigram", "floor_bigram"]].min(axis=1) - best["loss"],
    })
    margin, se = table["floor_margin"], table["se"]
    table["beats_floors"] = np.where(table["bigram"].isna(), "?", np.where(
        se.isna(), np.where(margin > 0, "yes (no SE)", "no"), np.where(margin > se, "yes", "no")))
    counts = (df.assign(family=family_key(df), nothing=at_unigram(df))
              .groupby(["family", "modalities", "modality"])["nothing"].sum())
    table["runs_not_beating_unigram"] = [int(counts.get((f, ms, m), 0)) for f, ms, m in
                                         zip(table["family"], table["modalities"],
                                             table["modality"], strict=True)]
    return ["", "## Floors: what counting the training data achieves", "",
            "Each family's best held-out loss (nats/token, with its SE) beside the loss of count "
            "models fitted on the training split and scored on the same validation rows and "
            "tokens: uniform over the modality's ids, unigram, bigram and an order-k Markov "
            "model (Witten-Bell interpolated; k chosen on held-out training rows). "
            "`floor_margin` = the lower of the unigram and bigram floors - best loss (on "
            "incompressible data the bigram model's extra parameters put it above the unigram); "
            "`beats_floors`: by more than its SE. A run at or above its unigram floor has learned "
            "nothing about that modality and is left out of every law fit below; the paired "
            "comparison keeps every pair of a modality some run learned, so which pairs count "
            "does not depend on their outcome. Every run's floors are in runs.csv.", "",
            render(table.sort_values(["modality", "family"]))]


def _routing(records: list[dict], out: Path) -> list[str]:
    """For every learned-router run, the mutual information between a token's modality and its
    expert per MoE layer, and its modality x expert heatmaps: does the router separate
    modalities by itself?"""
    learned = sorted((r for r in records if r.get("router") == "learned" and r.get("expert_stats")),
                     key=lambda r: r["compute"])
    if not learned:
        return []
    rows, figs = [], []
    for r in learned:
        for s in r["expert_stats"]:
            mi, h = s.get("modality_expert_mi_bits"), s.get("modality_entropy_bits")
            rows.append({"run": r["run_id"], "layer": s["layer"], "experts": len(s["tokens_per_expert"]),
                         "MI_bits": mi, "modality_entropy_bits": h,
                         "MI_share": mi / h if mi is not None and h else np.nan,
                         "dead_experts": s.get("dead_experts"), "imbalance": s.get("imbalance")})
        fig = plots.expert_use(r, out / f"expert_use_{r['run_id']}.png")
        if fig is not None:
            figs.append(fig)
    return (["", "## Does a learned router separate modalities?", "",
             "Per learned-router run (by compute) and MoE layer, on the final validation rows: the "
             "mutual information between a token's modality and its expert (bits; "
             "`MI_share` = MI / modality entropy: 1 when experts separate modalities completely, "
             "0 when routing ignores modality), then each run's modality x expert heatmaps "
             "(share of each modality's tokens per expert, scale 0..1).", "",
             render(pd.DataFrame(rows)), ""] + [f"![{p.stem}]({p.name})" for p in figs])


def _headline(h: Headline | None, out: Path) -> list[str]:
    """The efficiency-leverage section: tables (also as CSV and LaTeX) and its figure."""
    from analysis.headline import sections
    from analysis.plots_leverage import leverage_vs_compute

    if h is None:
        return []
    lines = ["", "## Efficiency leverage: the dense compute that separate experts are worth", ""]
    frames = {"leverage": h.leverage.drop(columns="verdict"), "leverage_from_runs": h.law_free,
              "law_bank": h.ranking}
    for (name, frame), (title, why, table), (_, _, tex) in zip(
            frames.items(), sections(h), sections(h, "latex"), strict=True):
        if frame.empty:
            lines += [f"### {title}", "", table, ""]
            continue
        frame.to_csv(out / f"{name}.csv", index=False)
        (out / f"{name}.tex").write_text(tex)
        lines += [f"### {title}", "", why, f"([{name}.csv]({name}.csv), [{name}.tex]({name}.tex))",
                  "", table, ""]
    fig = leverage_vs_compute(h.fits, h.best_fits, h.law_free, out / "leverage_vs_compute.png")
    if fig is not None:
        lines += [f"![{fig.stem}]({fig.name})", ""]
    return lines


def _primary(table: pd.DataFrame, caveats: list[str], out: Path) -> list[str]:
    """The report's first table: one answer per MoE family and modality (headline.primary), and
    below it what the table cannot say (modalities no run learned, shares it pools)."""
    from analysis.headline import primary_text

    said = [f"- {c}" for c in caveats]
    if table.empty:
        return ["## Primary answer: one per MoE family and modality", "", *said, ""] if said else []
    table.to_csv(out / "primary.csv", index=False)
    (out / "primary.tex").write_text(render(table, "latex"))
    return ["## Primary answer: one per MoE family and modality", "", primary_text(table),
            "([primary.csv](primary.csv), [primary.tex](primary.tex))", "", render(table), "",
            *said, *([""] if said else [])]


def write_report(inputs: list[str | Path], out: Path, bootstrap: int = 1000,
                 params: str = "active") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    df, records = load_runs(inputs, params)
    docs = load_docs(inputs)
    lines = ["# moe-vs-dense report", "",
             f"{df['run'].nunique()} completed runs, modalities: "
             f"{', '.join(sorted(df['modality'].unique()))}. "
             "Losses are held-out nats/token; N is the "
             f"{'active' if params == 'active' else 'total'} parameter count; D is tokens of "
             f"the modality. Compute: {DEFINITION}",
             "", _regime(df), "", _precision(df), ""]
    first = len(lines)
    lines += ["## Runs", "",
             "Every run, one row per modality, is in [runs.csv](runs.csv).", "",
             render(df.assign(family=family_key(df)).groupby(["family", "modalities", "modality"]).agg(
                 runs=("run", "nunique"), N_min=("N", "min"), N_max=("N", "max"),
                 D_min=("D", "min"), D_max=("D", "max"), C_min=("C", "min"), C_max=("C", "max"),
                 best_loss=("loss", "min"), max_loss_se=("loss_se", "max")).reset_index())]
    df.sort_values(["modality", "family", "C"]).to_csv(out / "runs.csv", index=False)
    a = answer(df, docs, bootstrap)
    notes, every_run, df, chin, chin_gaps, table = (a.notes, a.runs, a.fitted, a.chinchilla,
                                                    a.chinchilla_gaps, a.paired)
    lines += _floors(every_run)
    lines[first:first] = _primary(a.primary, a.caveats, out)
    if df.empty:
        lines += ["", "No run beats its unigram floor on any modality: there is nothing to fit.",
                  *_routing(records, out), "", "## Notes", ""] + [f"- {n}" for n in notes]
        (out / "report.md").write_text("\n".join(lines) + "\n")
        return out / "report.md"
    lines += _headline(a.headline, out)
    fronts = a.frontiers()
    if chin or chin_gaps:
        lines += ["", "## Fitted laws: L = E + A/N^alpha + B/D^beta", "",
                  "Intervals: 95% residual bootstrap (resampled log-space residuals added to the "
                  "fit, refitted), expanded percentiles; a blank interval would not have held its "
                  "estimate. Groups the runs do not identify get no estimate, only what to add.",
                  ""]
        if chin:
            lines += [render(fits_table(chin)), ""]
        lines += chin_gaps
        for r in chin:
            f = fronts[(r.group["family"], r.group["modality"])]
            co = f.at(np.array([1e18]))
            lines.append(f"- {r.label()}: N* ~ C^{co.attrs['a']:.3f}, D* ~ C^{co.attrs['b']:.3f}; "
                         f"FLOPs per token ~ {f.flops.k:.3g} N^{f.flops.s:.3f} (within "
                         f"{f.flops.max_error:.1%} of every run)"
                         + "".join(f"; warning: {w}" for w in r.warnings))
    iso_rows, iso_gaps = [], []
    for (family, modality), g in by_family(df).groupby(["family", "modality"]):
        table_g, exp = isoflop(g)
        if exp is None and len(table_g):
            iso_gaps.append(f"- family={family}, modality={modality}: not identified: "
                            f"{len(table_g)} budget(s) with an interior optimum, the exponent "
                            f"needs {MIN_BUDGETS}; add budgets with at least three sizes around "
                            "their optimum")
        if exp is not None:
            approach3 = fronts.get((family, modality))
            a3 = approach3.at(np.array([1.0])).attrs["a"] if approach3 else np.nan
            iso_rows.append({"family": family, "modality": modality, **exp,
                             "a (Approach 3)": a3})
    if iso_rows:
        lines += ["", "## IsoFLOP profiles (Approach 2): N* ~ C^a", "",
                  "Budgets with at least three sizes whose loss parabola in log N has an interior "
                  "minimum; the interval is OLS's 95%.", "", render(pd.DataFrame(iso_rows))]
    if iso_gaps:
        lines += ([] if iso_rows else ["", "## IsoFLOP profiles (Approach 2): N* ~ C^a", ""])
        lines += [""] + iso_gaps
    figs = [plots.loss_vs_compute(df, fronts, out / "loss_vs_compute.png")]
    pair_rows = pairs(every_run, docs=docs)
    if table is not None:
        lines += ["", "## MoE/MoT minus dense on matched pairs (nats/token)", "",
                  "dL < 0 means the experts reach a lower loss. Runs pair by pair_id, else by "
                  "seed and modalities with compute and tokens within 1%; `unpaired` counts "
                  "MoE/MoT runs with no dense partner (why: under Notes). Each pair's SE from its "
                  "per-document differences (eval_docs.json); the pairs combined by `model` at "
                  "the design's centre (N_centre, D_centre); 95% interval from it; p_holm and "
                  "verdict are the primary table's (Holm over every row).", "", render(table)]
    c_min, c_max = df["C"].min(), df["C"].max() * 100
    points = law_points(fronts, df, 100.0) if fronts else pd.DataFrame()
    if len(points):
        lines += ["", "## From the fitted laws, along compute-optimal frontiers", "",
                  "At the smallest, median and largest observed compute of each modality and 10x "
                  "and 100x beyond the largest run (extrapolated, marked so). L: each family's "
                  "compute-optimal loss with the 95% prediction interval of a new run at that "
                  "N*, D* (bootstrap refits x resampled residuals); dL = L_moe - L_dense with "
                  "its 95% bootstrap band (secondary: unadjusted, no verdict). C is FLOPs on the "
                  "modality's tokens; `C (whole run)` the compute "
                  "of a whole run of the family's mixture that spends C on this modality (median "
                  "ratio over its runs), the cost to read a crossover by. `extrapolated in`: "
                  "what lies outside the runs at that row (C beyond the largest run, or a "
                  "family's N* or D* outside its runs' sizes or tokens).", "",
                  render(points.drop(columns="verdict", errors="ignore")),
                  "", "Where dL changes sign, from "
                  f"{c_min:.3g} to {c_max:.3g} FLOPs:", "",
                  render(compare_laws(fronts, c_min, c_max, df=df))]
        figs.append(plots.delta_vs_compute(fronts, pair_rows, c_min, c_max,
                                           out / "delta_vs_compute.png", df["C"].max()))
    tests = noting("shared-exponent test", lambda: shared_tests(
        df, bootstrap=bootstrap, draws=max(bootstrap, 99), fits=a.fits), notes)
    if tests:
        lines += ["", "## Exponent or offset: do dense and MoE/MoT share alpha and beta?", "",
                  "Per modality, dense and the other family fitted jointly with shared exponents "
                  "(separate E, A, B), with one law for both, and separately, on the same "
                  "summed-Huber objective. The Huber objective is not a likelihood, so each "
                  "restriction is tested by a parametric bootstrap of the objective difference "
                  f"({max(bootstrap, 99)} simulated data sets from the restricted fit with the "
                  "separate fits' residuals as noise). Closed testing at 5%: \"exponents "
                  "differ\" needs both restrictions rejected; \"offsets differ\" only one law "
                  "for both. p_exponents is closed-test adjusted. Differences: separate fits, "
                  "95% bootstrap intervals. Secondary: p-values only, the verdicts are the primary "
                  "table's.", "", render(shared_table(tests).drop(columns="verdict", errors="ignore"))]
    bt = noting("backtest", lambda: backtest(df, HOLDOUT, bootstrap=bootstrap), notes)
    if bt is not None:
        s = summarize(bt)
        lines += ["", f"## Backtest: predicting the {HOLDOUT} largest-compute runs", "",
                  f"Each (family, modality) refitted without its {HOLDOUT} largest-compute runs "
                  "(and any tied with them), which are then predicted with 95% prediction "
                  "intervals (parameter uncertainty and residual scatter). `beyond`: the run's "
                  f"compute over the largest training run's. {int(s['covered'].sum())} of "
                  f"{int(s['held_out'].sum())} held-out runs were covered.", "",
                  render(bt.drop(columns=["law"])), "", render(s)]
    bimodal, bimodal_gaps = fit_noting("bimodal law", df, "bimodal", bootstrap, notes)
    if bimodal or bimodal_gaps:
        lines += ["", "## Competition and synergy (Aghajanyan et al. 2023)", "",
                  "The joint run's loss over what the unimodal laws predict, I(N, D) = -C + A / "
                  "N^alpha + B / D^beta (nats/token; > 0 competition, < 0 synergy). " + BLANKS, ""]
        if bimodal:
            lines += [render(fits_table(bimodal)), ""]
        lines += bimodal_gaps
        for r in bimodal:
            b = r.barrier()
            joint = df[(family_key(df) == r.group["family"]) & (df["modalities"] == r.group["pair"])]
            fpt = fit_flops_per_token(joint["N"], joint["flops_per_token"])(b["N"])
            where = (f"N = {b['N']:.3g} (total compute {fpt * b['tokens_per_param'] * b['N']:.3g} "
                     "FLOPs)" if np.isfinite(b["N"]) else "no sign change in 1e3..1e16 params")
            ci = (f", 95% interval N in [{bound_text(b['N_lower'], '.3g')}, "
                  f"{bound_text(b['N_upper'], '.3g')}]"
                  if not np.isnan(b.get("N_lower", np.nan)) else "")
            lines.append(f"- {r.label()}: competition barrier at D/N = {b['tokens_per_param']:.3g}: "
                         f"{where}{ci}; sign of the fitted interaction at the runs (not a test): "
                         + ", ".join(f"{v} x{c}" for v, c in r.points["verdict"].value_counts().items()))
    if bimodal:
        figs.append(plots.competition_map(bimodal, out / "competition_map.png"))
    routed, routed_gaps = fit_noting("routed law", df, "routed", bootstrap, notes)
    if routed or routed_gaps:
        lines += ["", "## Routed-MoE law (Clark et al. 2022)", "",
                  "log L = a log N + b log Ehat + c log N log Ehat + d, one fit per router, "
                  "experts per token and token count (Ehat: the expert count, saturating). "
                  + BLANKS, ""]
        lines += ([render(fits_table(routed)), ""] if routed else []) + routed_gaps
    dyn_lines, dyn_figs = dynamics.section(every_run, records, out, inputs)
    lines, figs = lines + dyn_lines, figs + dyn_figs
    junk_lines, junk_figs = junk_section(every_run, records, out, inputs)
    lines += junk_lines
    figs += junk_figs
    section, section_figs = minority_section(every_run, out, inputs)
    lines, figs = lines + section, figs + section_figs
    study, study_figs = compress_section(df, records, out, inputs)
    lines += study
    figs += study_figs
    lines += _routing(records, out)
    lines += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in figs if p is not None]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
