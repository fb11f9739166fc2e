"""`moe-vs-dense demo`: real data to a report with intervals, in one command and a fixed time budget.

Fetch the built-in sources, prepare the mixtures, run the demo sweep (configs/sweeps/demo.yaml:
dense, modality-routed MoE and learned-router MoE at matched active FLOPs per token over three
sizes and two token budgets, plus unimodal and bimodal dense baselines), then fit the laws and
write the report. `minutes` scales the token budgets to the time a short timing on this machine
predicts; the scale chosen is saved beside the runs, so running the demo again with the same
budget plans the same runs and resumes them instead of starting over.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

from moe_vs_dense.errors import UserError
from moe_vs_dense.sweep.plan import PlannedRun, expand
from moe_vs_dense.sweep.spec import SweepConfig, load_sweep

SWEEP = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "demo.yaml"
RUN_OVERHEAD_S = 1.0  # start-up, final eval bookkeeping, checkpoints and record writes per run
FIGURES_S = 15.0  # drawing the report's figures and tables
# unequal runs on the workers, and a whole run is slower than its short timing (a 12-min demo
# trained ~2x longer than planned with 1.1 on a busy 2-core machine)
PACKING = 1.6
MIN_SCALE, MAX_SCALE = 0.05, 20.0
REPORT_BOOTSTRAP = 100
FALLBACK_SOURCES = {"fashion_mnist": "mnist"}


def _round_sig(x: float, digits: int = 2) -> int:
    if x <= 0:
        return 1
    return int(round(x, -int(math.floor(math.log10(x))) + digits - 1))


def scaled(sweep: SweepConfig, scale: float, baselines: bool = True) -> SweepConfig:
    """The sweep with every token budget times `scale` (two significant digits), and without
    the unimodal and bimodal baselines unless `baselines`."""
    update = {"tokens": [_round_sig(t * scale) for t in sweep.tokens]}
    if not baselines:
        update.update(unimodal="none", bimodal="none")
    return sweep.model_copy(update=update)


def _fetch(data_dir: str | None, base: dict, log) -> dict:
    """Fetch the demo's sources; substitute a fallback or drop a modality whose source failed."""
    from moe_vs_dense.data.fetch import data_dir as resolve
    from moe_vs_dense.data.fetch import fetch

    root = resolve(data_dir, base.get("data", {}).get("dir"))
    log(f"data directory: {root}")
    mixture = base["data"]["mixture"]
    status = fetch(root, [s["source"] for s in mixture.values()], log=lambda m: log("  " + m))
    base = copy.deepcopy(base)
    for key, stream in list(base["data"]["mixture"].items()):
        if not status.get(stream["source"], "ok").startswith("unavailable"):
            continue
        alt = FALLBACK_SOURCES.get(stream["source"])
        if alt and not fetch(root, [alt], log=lambda m: log("  " + m))[alt].startswith("unavailable"):
            log(f"  {key}: using {alt} instead of {stream['source']}")
            stream["source"] = alt
        else:
            log(f"  {key}: no data; the demo goes on without it")
            del base["data"]["mixture"][key]
    if not base["data"]["mixture"]:
        raise UserError("no data source could be fetched; check the network and rerun")
    return base


def fit_seconds(bootstrap: int = REPORT_BOOTSTRAP) -> float:
    """Seconds one law fit of the report takes here (the start grid and `bootstrap` refits),
    timed with a tenth of the refits on synthetic points of the demo's scale, on the smallest
    grid the fit's identification gate accepts (4 sizes x 3 budgets)."""
    import numpy as np
    import pandas as pd

    from analysis.chinchilla import fit_chinchilla
    from analysis.synthetic import CHINCHILLA, chinchilla_law

    N, D = (a.ravel() for a in np.meshgrid([2e4, 4e4, 7e4, 1e5], [2e5, 5e5, 1e6]))
    noise = np.exp(np.random.default_rng(0).normal(0, 0.01, len(N)))
    points = pd.DataFrame({"N": N, "D": D, "loss": chinchilla_law(N, D, CHINCHILLA) * noise})
    t = time.perf_counter()
    fit_chinchilla(points, bootstrap=0)
    grid = time.perf_counter() - t
    fit_chinchilla(points, bootstrap=max(1, bootstrap // 10))
    refits = max(0.0, time.perf_counter() - t - 2 * grid) * 10
    return grid + refits


def report_groups(runs: list[PlannedRun]) -> int:
    """Law fits the reports make: per (family, modality) of the paired runs; with baselines,
    per unimodal modality and per bimodal pair."""
    groups = len({(r.config.model.family, m) for r in runs if r.kind == "paired"
                  for m in r.config.data.modalities})
    return groups + len({tuple(r.config.data.modalities) for r in runs if r.kind != "paired"})


def _plan_seconds(runs: list[PlannedRun], seconds: dict[str, float], scale: float,
                  workers: int) -> float:
    """Wall seconds of the sweep at `scale` times the timed token budgets."""
    total = sum(seconds[r.run_id] * scale + RUN_OVERHEAD_S for r in runs)
    return total * PACKING / workers


def choose(sweep: SweepConfig, base: dict, seconds_left: float, workers: int,
           bootstrap: int, log) -> tuple[SweepConfig, list[PlannedRun], float]:
    """The largest scale of the demo's token budgets whose training and report fit
    `seconds_left`, from a short timing; the baselines (and competition/synergy with them) are
    dropped when even a quarter of the nominal budgets does not fit with them."""
    from moe_vs_dense.sweep.estimate import estimate

    log("timing a few training steps of each model and one law fit ...")
    runs = expand(sweep, base, str(SWEEP))
    seconds = estimate(runs, threads=1)
    per_fit = fit_seconds(bootstrap)
    for baselines in (True, False):
        subset = [r for r in runs if baselines or r.kind == "paired"]
        reporting = report_groups(subset) * per_fit + FIGURES_S
        fixed = _plan_seconds(subset, {r.run_id: 0.0 for r in subset}, 0.0, workers)
        per_scale = _plan_seconds(subset, seconds, 1.0, workers) - fixed
        scale = (seconds_left - reporting - fixed) / per_scale
        if scale >= 0.25 or not baselines:
            break
    log(f"the report will take about {reporting:.0f} s; training gets the rest")
    scale = float(min(MAX_SCALE, max(MIN_SCALE, scale)))
    chosen = scaled(sweep, scale, baselines)
    return chosen, expand(chosen, base, str(SWEEP)), scale


def plan(out: Path, minutes: float, data_dir: str | None, workers: int, start: float,
         bootstrap: int = REPORT_BOOTSTRAP, log=print) -> tuple[list[PlannedRun], float]:
    """Fetch, prepare, and choose the runs (or reuse the plan saved in `out` for this budget);
    returns the runs and the token-budget scale."""
    from moe_vs_dense.io import write_json
    from moe_vs_dense.sweep import prepare_data

    sweep, base = load_sweep(SWEEP)
    log(f"== 1/4 fetch real data for every modality (budget {minutes:g} min, {workers} workers)")
    out.mkdir(parents=True, exist_ok=True)
    base = _fetch(data_dir, base, log)
    all_runs = expand(sweep, base, str(SWEEP))
    mixtures = {r.config.data.model_dump_json() for r in all_runs}
    log(f"== 2/4 prepare the {len(mixtures)} data mixtures of the runs (cached after the first time)")
    prepare_data(all_runs, data_dir, log=lambda m: log("  " + m))
    saved_path = out / "demo_plan.json"
    saved = json.loads(saved_path.read_text()) if saved_path.exists() else {}
    if (saved.get("minutes") == minutes and "baselines" in saved
            and saved.get("modalities") == sorted(base["data"]["mixture"])):
        scale = saved["scale"]
        runs = expand(scaled(sweep, scale, saved["baselines"]), base, str(SWEEP))
        log(f"== 3/4 plan: the plan of the earlier run in {out} (token budgets x{scale:.3g})")
        return runs, scale
    log("== 3/4 plan")
    seconds_left = minutes * 60 - (time.monotonic() - start)
    chosen, runs, scale = choose(sweep, base, seconds_left, workers, bootstrap, log)
    write_json(saved_path, {"minutes": minutes, "scale": scale, "baselines": chosen.unimodal != "none",
                            "modalities": sorted(base["data"]["mixture"])})
    return runs, scale


def demo(out: str | Path = "runs/demo", minutes: float = 12.0, data_dir: str | None = None,
         workers: int | None = None, bootstrap: int = REPORT_BOOTSTRAP, log=print) -> Path:
    """Run the demo into `out` within about `minutes`; returns the report's path."""
    from moe_vs_dense.sweep import run_sweep
    from moe_vs_dense.sweep.tables import plan_table, render_plan, summary

    start = time.monotonic()
    out = Path(out)
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    runs, scale = plan(out, minutes, data_dir, workers, start, bootstrap, log)
    table = plan_table(runs)
    paired = table[table["pair"] != "-"]
    log(render_plan(paired))
    log(f"\nplus {len(table) - len(paired)} unimodal/bimodal dense baselines "
        f"(every run: {out / 'plan.csv'})")
    log(summary(runs, None, workers) + f"; token budgets x{scale:.3g} of configs/sweeps/demo.yaml")
    table.to_csv(out / "plan.csv", index=False)
    log(f"   train (Ctrl-C stops; the same command resumes; {time.monotonic() - start:.0f} s so far)")
    outcome = run_sweep(runs, out, workers, data_dir, threads=1, log=log)
    for run_id, (status, why) in outcome.items():
        if status != "completed":
            log(f"  {run_id}: {status} {why}")
    log("== 4/4 fit the laws and write the report")
    report = write_reports(out, runs, bootstrap)
    log(f"report: {report} ({(time.monotonic() - start) / 60:.1f} min in all)")
    return report


def write_reports(out: Path, runs: list[PlannedRun], bootstrap: int = REPORT_BOOTSTRAP) -> Path:
    """report/ from the paired runs (laws, matched pairs, expert use, frontiers) and
    report/baselines/ from the unimodal and bimodal runs (competition and synergy). Two reports,
    because the analysis groups laws by family and modality alone: a one-modality dense baseline
    would otherwise enter the joint dense runs' law."""
    from analysis.report import write_report

    def records(kinds: tuple[str, ...]) -> list[Path]:
        files = [out / "runs" / r.run_id / "record.json" for r in runs if r.kind in kinds]
        return [f for f in files if f.exists()]

    report = write_report(records(("paired",)), out / "report", bootstrap=bootstrap)
    baselines = records(("unimodal", "bimodal"))
    if not baselines:
        with open(report, "a") as f:
            f.write("\n## Competition and synergy\n\nNot in this plan: the time budget had no room "
                    "for the unimodal and bimodal baselines (a larger --minutes adds them).\n")
        return report
    extra = write_report(baselines, out / "report" / "baselines", bootstrap=bootstrap)
    link = extra.relative_to(report.parent)
    with open(report, "a") as f:
        f.write(f"\n## Competition and synergy\n\nFrom the unimodal and bimodal dense baselines: "
                f"[{link}]({link}).\n")
    return report
