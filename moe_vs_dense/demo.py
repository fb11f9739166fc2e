"""`moe-vs-dense demo`: real data to a report with intervals, in one command and a fixed time budget.

Fetch the built-in sources, prepare the mixture, run the demo sweep (configs/sweeps/demo.yaml:
dense, modality-routed MoE and learned-router MoE at matched active FLOPs per token over three
sizes and four token budgets on text and image), then fit the laws and write the report.
`minutes` scales the token budgets to the time a short timing on this machine predicts, but never
below a design that identifies the headline (`design_problems`): with too little time the learned
router is dropped first, then the demo refuses. The plan is saved beside the runs, so running the
demo again with the same budget plans the same runs and resumes them instead of starting over.
Competition and synergy (unimodal and bimodal baselines) are a study of their own:
configs/studies/competition.yaml.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from contextlib import suppress
from pathlib import Path

from analysis.identify import MIN_LEVELS, MIN_RESID_DF
from moe_vs_dense.config_load import set_path
from moe_vs_dense.errors import UserError
from moe_vs_dense.sweep.plan import PlannedRun, expand
from moe_vs_dense.sweep.spec import SweepConfig, load_sweep

SWEEP = Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "demo.yaml"
RUN_OVERHEAD_S = 1.0  # start-up, final eval bookkeeping, checkpoints and record writes per run
FIGURES_S = 15.0  # drawing the report's figures and tables
# unequal runs on the workers, and a whole run is slower than its short timing (a 12-min demo
# trained ~2x longer than planned with 1.1 on a busy 2-core machine)
PACKING = 1.6
MAX_SCALE = 20.0
REPORT_BOOTSTRAP = 100
FALLBACK_SOURCES = {"fashion_mnist": "mnist"}
# What identifies a Chinchilla law per family and modality: the analysis' own gate (three levels
# of N and of D, and MIN_RESID_DF runs beyond its 5 parameters, set by coverage).
MIN_SIZES = MIN_BUDGETS = MIN_LEVELS
MIN_RUNS = 5 + MIN_RESID_DF["chinchilla"]
# Optimizer steps of each family's smallest and largest runs below which the demo refuses a
# design: shorter runs measure warm-up and the shared output layer, not what a model learned; at
# the largest budget the largest demo models beat their bigram floors on text and image
# (README, "The demo").
MIN_STEPS, MIN_LARGEST_STEPS = 60, 240
OPTIONAL_FAMILIES = ("moe_learned",)  # dropped, in this order, when the time is short
COMPETITION = "configs/studies/competition.yaml"


def _round_sig(x: float, digits: int = 2) -> int:
    if x <= 0:
        return 1
    return int(round(x, -int(math.floor(math.log10(x))) + digits - 1))


def scaled(sweep: SweepConfig, scale: float, families: list[str] | None = None) -> SweepConfig:
    """The sweep with every token budget times `scale` (two significant digits) and only
    `families` (all when None)."""
    update: dict = {"tokens": [_round_sig(t * scale) for t in sweep.tokens]}
    if families is not None:
        update["families"] = {k: v for k, v in sweep.families.items() if k in families}
    return sweep.model_copy(update=update)


def design_problems(runs: list[PlannedRun]) -> list[str]:
    """Why these paired runs would not identify the headline (empty when they do): per family,
    at least MIN_SIZES sizes, MIN_BUDGETS budgets and MIN_RUNS runs, the smallest run at least
    MIN_STEPS optimizer steps and the largest budget at least MIN_LARGEST_STEPS."""
    problems = []
    families = sorted({r.family for r in runs if r.kind == "paired"})
    if len(families) < 2 or "dense" not in families:
        problems.append(f"families {', '.join(families) or 'none'}: the headline compares dense "
                        "with at least one MoE family")
    for family in families:
        rs = [r for r in runs if r.kind == "paired" and r.family == family]
        sizes = {r.accounting.active_params for r in rs}
        steps = sorted({r.config.train.steps(r.config.data.seq_len) for r in rs})
        if len(sizes) < MIN_SIZES:
            problems.append(f"{family}: {len(sizes)} model sizes; a law needs {MIN_SIZES}")
        if len(steps) < MIN_BUDGETS:
            problems.append(f"{family}: {len(steps)} distinct token budgets; a law needs {MIN_BUDGETS}")
        if len(rs) < MIN_RUNS:
            problems.append(f"{family}: {len(rs)} runs; a 5-parameter law needs {MIN_RUNS}, "
                            f"{MIN_RUNS - 5} beyond its parameters")
        if steps and steps[0] < MIN_STEPS:
            problems.append(f"{family}: the shortest run takes {steps[0]} optimizer steps "
                            f"(at least {MIN_STEPS})")
        if steps and steps[-1] < MIN_LARGEST_STEPS:
            problems.append(f"{family}: the longest run takes {steps[-1]} optimizer steps (at least "
                            f"{MIN_LARGEST_STEPS}, where the largest models beat their bigram floors)")
    return problems


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
    from analysis.identify import NotIdentified
    from analysis.synthetic import HOFFMANN, chinchilla_law

    N, D = (a.ravel() for a in np.meshgrid([2e4, 4e4, 7e4, 1e5], [2e5, 5e5, 1e6]))
    noise = np.exp(np.random.default_rng(0).normal(0, 0.01, len(N)))
    points = pd.DataFrame({"N": N, "D": D, "loss": chinchilla_law(N, D, HOFFMANN) * noise})
    t = time.perf_counter()
    fit_chinchilla(points, bootstrap=0)
    grid = time.perf_counter() - t
    with suppress(NotIdentified):  # only the time counts here, not whether a few draws identify
        fit_chinchilla(points, bootstrap=max(1, bootstrap // 10))
    refits = max(0.0, time.perf_counter() - t - 2 * grid) * 10
    return grid + refits


def report_groups(runs: list[PlannedRun]) -> int:
    """Law fits the report makes: per (family, modality) of the paired runs."""
    return len({(r.family, m) for r in runs if r.kind == "paired"
                for m in r.config.data.modalities})


def _plan_seconds(runs: list[PlannedRun], seconds: dict[str, float], scale: float,
                  workers: int) -> float:
    """Wall seconds of the sweep at `scale` times the timed token budgets."""
    total = sum(seconds[r.run_id] * scale + RUN_OVERHEAD_S for r in runs)
    return total * PACKING / workers


def pick(sweep: SweepConfig, base: dict, seconds: dict[str, float], per_fit: float,
         seconds_left: float, workers: int, log=print) -> tuple[SweepConfig, list[PlannedRun], float]:
    """The largest scale of the demo's token budgets (at most MAX_SCALE) whose training and report
    fit `seconds_left`, given each run's timed seconds at scale 1, for the fullest design that
    passes `design_problems` at that scale: all families, then without each OPTIONAL_FAMILIES in
    turn. Refuses (UserError) when none does."""
    families = list(sweep.families)
    tried = []
    while True:
        subset = scaled(sweep, 1.0, families)
        runs = expand(subset, base, str(SWEEP))
        reporting = report_groups(runs) * per_fit + FIGURES_S
        fixed = _plan_seconds(runs, {r.run_id: 0.0 for r in runs}, 0.0, workers)
        per_scale = _plan_seconds(runs, seconds, 1.0, workers) - fixed
        scale = min(MAX_SCALE, (seconds_left - reporting - fixed) / per_scale)
        chosen = scaled(sweep, max(scale, 1e-3), families)
        runs = expand(chosen, base, str(SWEEP))
        problems = design_problems(runs) if scale > 0 else ["no time left to train"]
        if not problems:
            log(f"the report will take about {reporting:.0f} s; training gets the rest")
            return chosen, runs, scale
        tried.append(f"{' + '.join(families)} at token budgets x{scale:.2g}: {'; '.join(problems)}")
        drop = next((f for f in OPTIONAL_FAMILIES if f in families), None)
        if drop is None:
            raise UserError("the time budget is too short for a demo whose runs identify its "
                            "headline (raise --minutes):\n  " + "\n  ".join(tried))
        log(f"  too little time for {drop} as well: {'; '.join(problems)}; the demo goes on "
            f"without it")
        families.remove(drop)


def choose(sweep: SweepConfig, base: dict, seconds_left: float, workers: int,
           bootstrap: int, log) -> tuple[SweepConfig, list[PlannedRun], float]:
    """`pick` from a short timing of each model and of one law fit on this machine."""
    from moe_vs_dense.sweep.estimate import estimate

    log("timing a few training steps of each model and one law fit ...")
    seconds = estimate(expand(sweep, base, str(SWEEP)), threads=1)
    return pick(sweep, base, seconds, fit_seconds(bootstrap), seconds_left, workers, log)


def plan(out: Path, minutes: float, data_dir: str | None, workers: int, start: float,
         bootstrap: int = REPORT_BOOTSTRAP, log=print) -> tuple[list[PlannedRun], float]:
    """Fetch, prepare, and choose the runs (or reuse the plan saved in `out` for this budget);
    returns the runs and the token-budget scale."""
    from moe_vs_dense.io import write_json
    from moe_vs_dense.sweep import prepare_data

    sweep, base = load_sweep(SWEEP)
    for key, value in sweep.set.items():  # the demo's own mixture, before fetching its sources
        if key.startswith("data."):
            set_path(base, key, copy.deepcopy(value))
    log(f"== 1/4 fetch real data for {', '.join(base['data']['mixture'])} (budget {minutes:g} min, "
        f"{workers} workers)")
    out.mkdir(parents=True, exist_ok=True)
    base = _fetch(data_dir, base, log)
    sweep = sweep.model_copy(update={"set": {k: v for k, v in sweep.set.items()
                                             if k != "data.mixture"}})
    all_runs = expand(sweep, base, str(SWEEP))
    mixtures = {r.config.data.model_dump_json() for r in all_runs}
    log(f"== 2/4 prepare the {len(mixtures)} data mixture(s) of the runs, with their floors "
        "(cached after the first time)")
    prepare_data(all_runs, data_dir, log=lambda m: log("  " + m))
    saved_path = out / "demo_plan.json"
    saved = json.loads(saved_path.read_text()) if saved_path.exists() else {}
    if (saved.get("minutes") == minutes and "families" in saved
            and saved.get("modalities") == sorted(base["data"]["mixture"])):
        scale = saved["scale"]
        runs = expand(scaled(sweep, scale, saved["families"]), base, str(SWEEP))
        log(f"== 3/4 plan: the plan of the earlier run in {out} (token budgets x{scale:.3g})")
        return runs, scale
    log("== 3/4 plan")
    seconds_left = minutes * 60 - (time.monotonic() - start)
    chosen, runs, scale = choose(sweep, base, seconds_left, workers, bootstrap, log)
    write_json(saved_path, {"minutes": minutes, "scale": scale, "families": list(chosen.families),
                            "modalities": sorted(base["data"]["mixture"])})
    return runs, scale


def demo(out: str | Path = "runs/demo", minutes: float = 12.0, data_dir: str | None = None,
         workers: int | None = None, bootstrap: int = REPORT_BOOTSTRAP, log=print) -> Path:
    """Run the demo into `out` within about `minutes`; returns the report's path."""
    from moe_vs_dense.outputs import writable_dir
    from moe_vs_dense.sweep import run_sweep
    from moe_vs_dense.sweep.tables import plan_table, render_plan, summary

    if not minutes > 0 or math.isinf(minutes):
        raise UserError(f"--minutes {minutes:g}: the time budget must be a positive number")
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: must be at least 1")
    start = time.monotonic()
    out = writable_dir(out, "--out")
    if data_dir:
        writable_dir(data_dir, "--data-dir")
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    runs, scale = plan(out, minutes, data_dir, workers, start, bootstrap, log)
    table = plan_table(runs)
    log(render_plan(table))
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
    """report/ from the demo's paired runs, with a pointer to the competition study."""
    from analysis.report import write_report

    files = [out / "runs" / r.run_id / "record.json" for r in runs]
    report = write_report([f for f in files if f.exists()], out / "report", bootstrap=bootstrap)
    link = os.path.relpath(SWEEP.parents[2] / COMPETITION, report.parent.resolve())
    with open(report, "a") as f:
        f.write(f"\n## Competition and synergy\n\nNot part of the demo: at its budgets, unimodal "
                "and bimodal baselines would take too few optimizer steps to measure competition "
                f"rather than step counts. The study of its own is [{COMPETITION}]({link}) "
                "(about half an hour on a 2-core CPU): "
                f"`moe-vs-dense sweep run {COMPETITION} --workers 2`, then "
                "`moe-vs-dense report runs/competition/runs --out runs/competition/report`.\n")
    return report
