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

__all__ = ["PlannedRun", "SweepConfig", "expand", "load_plan", "load_sweep", "prepare_data",
           "run_sweep"]


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


def run_sweep(runs: list[PlannedRun], out: Path, workers: int = 1, data_dir: str | None = None,
              threads: int = 1, progress: bool = True,
              log: Callable[[str], None] = print) -> dict[str, tuple[str, str]]:
    """Prepare the data, then train what is missing or incomplete; run id -> (status, detail)
    of the runs trained now."""
    from moe_vs_dense.sweep import runner
    from moe_vs_dense.sweep import state as st
    from moe_vs_dense.sweep.tables import write_configs

    write_configs(runs, out, data_dir)
    todo = [r for r in runs if st.run_state(out, r.run_id)[0] not in ("done", "diverged")]
    log(f"{len(runs) - len(todo)} of {len(runs)} runs already finished; {len(todo)} to train "
        f"with {workers} worker(s)")
    if not todo:
        return {}
    prepare_data(todo, data_dir, log)
    return runner.execute(todo, out, workers, data_dir, threads, progress)
