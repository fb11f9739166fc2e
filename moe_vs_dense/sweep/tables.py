"""The plan and status tables, the per-run config files and the scheduler's command list."""

from __future__ import annotations

import shlex
import warnings
from pathlib import Path

import pandas as pd
import yaml

from moe_vs_dense.io import write_text
from moe_vs_dense.sweep import state as st
from moe_vs_dense.sweep.plan import PlannedRun
from moe_vs_dense.sweep.spec import SweepConfig


def out_dir(sweep: SweepConfig, out: str | Path | None = None) -> Path:
    """The sweep's output directory: --out, else the sweep's `out`, else runs/<name>."""
    return Path(out or sweep.out or Path("runs") / sweep.name)


def command(out: Path, run_id: str, data_dir: str | None = None) -> str:
    cmd = ["moe-vs-dense", "train", str(st.config_path(out, run_id)),
           "--out", str(st.run_dir(out, run_id))]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    return shlex.join(cmd)


def write_configs(runs: list[PlannedRun], out: Path, data_dir: str | None = None) -> Path:
    """configs/<run_id>.yaml for every run (rewritten only when changed, never under a run
    trained with another config) and commands.txt, one `moe-vs-dense train` line per run, in
    plan order (line i is array task i)."""
    stale = []
    for r in runs:
        path = st.config_path(out, r.run_id)
        if st.stale(out, r.run_id, r.config):
            stale.append(r.run_id)
            continue
        text = (f"# run {r.run_id} of a sweep; train it with:\n# {command(out, r.run_id, data_dir)}\n"
                + yaml.safe_dump(r.config.model_dump(mode="json"), sort_keys=False))
        if not path.exists() or path.read_text() != text:
            write_text(path, text)
    if stale:
        warnings.warn(f"{len(stale)} run(s) in {out / 'runs'} were trained with another config "
                      f"(e.g. {stale[0]}); their configs/*.yaml are left as they were: `sweep "
                      "status` lists the keys, `sweep run --retrain-stale` trains them again",
                      stacklevel=2)
    path = out / "commands.txt"
    write_text(path, "".join(command(out, r.run_id, data_dir) + "\n" for r in runs))
    return path


def plan_table(runs: list[PlannedRun], seconds: dict[str, float] | None = None) -> pd.DataFrame:
    from moe_vs_dense.sweep.memory import GB, need

    rows = []
    for r in runs:
        acc = r.accounting
        row = {"run": r.run_id, "pair": r.pair_id or "-", "family": r.family,
               "model": r.config.model.family, "router": r.router or "-",
               "active params": acc.active_params, "total params": acc.total_params,
               "tokens": r.tokens, "tokens/param": r.tokens / acc.active_params,
               "FLOPs": r.compute,
               "match": "-" if r.mismatch is None else f"{r.mismatch:+.2%}",
               "grad_accum": r.config.train.grad_accum,
               "memory (GB)": need(r.config, acc)["total"] / GB}
        if seconds is not None:
            row["est. time (s)"] = seconds[r.run_id]
        rows.append(row)
    return pd.DataFrame(rows)


def render_plan(table: pd.DataFrame) -> str:
    fmt = table.copy()
    for c in ("active params", "total params", "tokens"):
        fmt[c] = fmt[c].map(lambda v: f"{v:,}")
    fmt["tokens/param"] = fmt["tokens/param"].map(lambda v: f"{v:.3g}")
    fmt["FLOPs"] = fmt["FLOPs"].map(lambda v: f"{v:.3g}")
    fmt["memory (GB)"] = fmt["memory (GB)"].map(lambda v: f"{v:.3g}")
    if "est. time (s)" in fmt:
        fmt["est. time (s)"] = fmt["est. time (s)"].map(lambda v: f"{v:.1f}")
    return fmt.to_markdown(index=False)


def summary(runs: list[PlannedRun], seconds: dict[str, float] | None, workers: int) -> str:
    n_pairs = len({r.pair_id for r in runs if r.pair_id})
    kinds = pd.Series([r.kind for r in runs]).value_counts().to_dict()
    text = (f"{len(runs)} runs ({', '.join(f'{v} {k}' for k, v in kinds.items())}) in {n_pairs} "
            f"pairs; {sum(r.tokens for r in runs):,} tokens, {sum(r.compute for r in runs):.3g} "
            "training FLOPs")
    if seconds is not None:
        total = sum(seconds.values())
        text += (f"; estimated {total / 60:.1f} min of training on one thread, about "
                 f"{total / max(1, workers) / 60:.1f} min with {workers} worker(s) on this machine")
    return text


def status_table(runs: list[PlannedRun], out: Path) -> pd.DataFrame:
    rows = []
    for r in runs:
        state, detail = st.run_state(out, r.run_id, r.config)
        record = st.read_record(out, r.run_id) or {}
        ev = record.get("eval") or {}
        final = ev.get("final") or {}
        ses = [v.get("se") for v in {**final, **(ev.get("paired") or {})}.values()]
        done = bool(final) and state == "done"
        rows.append({"run": r.run_id, "family": r.family, "state": state,
                     "tokens/s": (record.get("throughput") or {}).get("tokens_per_s"),
                     "mean loss": sum(v["loss"] for v in final.values()) / len(final) if done else None,
                     "max SE (nats)": max((x for x in ses if x is not None), default=None) if done else None,
                     "detail": detail[:80]})
    return pd.DataFrame(rows)


def render_status(table: pd.DataFrame) -> str:
    counts = table["state"].value_counts()
    head = ", ".join(f"{counts.get(s, 0)} {s}" for s in st.STATES if counts.get(s, 0))
    return head + "\n\n" + table.to_markdown(index=False, floatfmt=".4g", missingval="-")
