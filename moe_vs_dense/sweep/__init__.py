"""Paired sweeps: expand a sweep config into matched runs, plan them, run them, report status.

spec.py (the typed sweep config), plan.py (expansion and pairing), estimate.py (time per run),
tables.py (plan/status tables, config files, commands), state.py (run states and locks),
runner.py (worker processes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from moe_vs_dense.sweep.plan import PlannedRun, expand, load_plan
from moe_vs_dense.sweep.spec import SweepConfig, load_sweep

__all__ = ["PlannedRun", "SweepConfig", "check_workers", "expand", "load_plan", "load_sweep",
           "prepare_data", "run_sweep"]


def prepare_data(runs: list[PlannedRun], data_dir: str | None,
                 log: Callable[[str], None] = print) -> None:
    """Prepare every distinct data mixture of `runs` once, before any worker starts."""
    from moe_vs_dense.data.fetch import data_dir as resolve
    from moe_vs_dense.data.prepare import prepare

    seen = []
    for r in runs:
        if r.config.data not in seen:
            seen.append(r.config.data)
    for i, data in enumerate(seen):
        mods = "+".join(data.modalities)
        log(f"data {i + 1}/{len(seen)} ({mods})")
        prepare(data, resolve(data_dir, data.dir), log=lambda _m: None)


def check_workers(workers: int, threads: int) -> None:
    """Worker and thread counts are positive: a bad count never reaches a worker process."""
    from moe_vs_dense.errors import UserError

    for flag, n in (("--workers", workers), ("--threads", threads)):
        if not isinstance(n, int) or n < 1:
            raise UserError(f"{flag}: must be a whole number of at least 1 (got {n})")


def set_aside_stale(runs: list[PlannedRun], out: Path, retrain: bool,
                    log: Callable[[str], None] = print) -> None:
    """Runs trained with another config than the sweep's are an error naming each run and the
    keys, unless `retrain`: then each such run directory moves to DIR/stale/<run_id>-<n> (kept,
    never relabelled) and the run trains again from scratch."""
    from moe_vs_dense.errors import UserError
    from moe_vs_dense.sweep import state as st

    stale = {r.run_id: d for r in runs if (d := st.stale(out, r.run_id, r.config))}
    if not stale:
        return
    lines = "\n".join(f"    {k}: {v}" for k, v in stale.items())
    if not retrain:
        raise UserError(f"{out}: {len(stale)} run(s) were trained with another config than the "
                        f"sweep's:\n{lines}\n  revert the sweep, use another --out, or rerun "
                        "with --retrain-stale (the old runs move to DIR/stale/)")
    for run_id in stale:
        with st.try_lock(out, run_id) as got:
            if not got:
                raise UserError(f"{out}: run {run_id} is stale and another process is training "
                                "it; stop that sweep first")
            n = 0
            while (dest := out / "stale" / f"{run_id}-{n}").exists():
                n += 1
            dest.parent.mkdir(parents=True, exist_ok=True)
            st.run_dir(out, run_id).rename(dest)
            log(f"{run_id}: trained with another config; moved to {dest}, training it again")


def run_sweep(runs: list[PlannedRun], out: Path, workers: int = 1, data_dir: str | None = None,
              threads: int = 1, progress: bool = True, log: Callable[[str], None] = print,
              retrain_stale: bool = False) -> dict[str, tuple[str, str]]:
    """Prepare the data, then train what is missing or incomplete; run id -> (status, detail)
    of the runs trained now. Runs trained with another config are refused (see
    `set_aside_stale`) before anything is written."""
    from moe_vs_dense.sweep import runner
    from moe_vs_dense.sweep import state as st
    from moe_vs_dense.sweep.tables import write_configs

    check_workers(workers, threads)
    set_aside_stale(runs, out, retrain_stale, log)
    write_configs(runs, out, data_dir)
    todo = [r for r in runs if st.run_state(out, r.run_id, r.config)[0] not in ("done", "diverged")]
    log(f"{len(runs) - len(todo)} of {len(runs)} runs already finished; {len(todo)} to train "
        f"with {workers} worker(s)")
    if not todo:
        return {}
    prepare_data(todo, data_dir, log)
    return runner.execute(todo, out, workers, data_dir, threads, progress)
