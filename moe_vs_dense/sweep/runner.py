"""`sweep run`: train what is missing or incomplete in worker processes, safe to kill and rerun.

Each worker is one long-lived process (one thread on CPU) that trains run after run through
`moe_vs_dense.train.train`, so a run starts without re-importing anything. Workers share no
queue: each walks the same ordered list and takes a run only when it gets the run's lock
(`state.try_lock`), so two `sweep run` processes on one directory split the work instead of
doubling it. A run is attempted at most once per invocation; a failed or diverged run is recorded
and the others go on. The parent process only prepares data, starts workers, restarts one that
died, and draws one progress bar for the whole sweep.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from moe_vs_dense.config import Config
from moe_vs_dense.io import write_json, write_text
from moe_vs_dense.sweep import state as st
from moe_vs_dense.sweep.plan import PlannedRun

POLL_S = 0.5


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies, so no orphan keeps training."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _attempt_path(out: Path, run_id: str) -> Path:
    return out / "locks" / f"{run_id}.attempt"


def _claim(out: Path, run_id: str, cfg: Config, token: str) -> bool:
    """Under the run's lock: whether this invocation may train it (not yet tried here, not done,
    not trained with another config)."""
    state, _ = st.run_state(out, run_id, cfg)
    if state in ("done", "diverged", "stale"):
        return False
    path = _attempt_path(out, run_id)
    if path.exists() and path.read_text() == token:
        return False
    write_text(path, token)
    return True


def _train_one(cfg: Config, out: Path, run_id: str, data_root: str | None) -> tuple[str, str]:
    from moe_vs_dense.train import train

    rd = st.run_dir(out, run_id)
    (rd / st.FAILURE).unlink(missing_ok=True)
    try:
        record = train(cfg, rd, data_root=data_root, progress=False)
        return record.get("status", "failed"), str(record.get("error") or "")
    except Exception as e:  # a failed run is recorded and the sweep goes on
        record = st.read_record(out, run_id) or {}
        if record.get("status") in ("failed", "diverged"):
            return record["status"], str(record.get("error") or e)
        msg = f"{type(e).__name__}: {e}"
        write_json(rd / st.FAILURE, {"error": msg, "traceback": traceback.format_exc()})
        return "failed", msg


def worker(wid: int, out: str, runs: list[tuple[str, Config]], token: str, data_root: str | None,
           threads: int, gpu: str | None, events) -> None:
    """Train every run of `runs` that no other process holds, until each one has finished. A
    worker that cannot go on says why (an "error" event) and exits with code 1."""
    try:
        _work(wid, out, runs, token, data_root, threads, gpu, events)
    except Exception as e:
        events.put(("error", wid, "", 0.0, f"{type(e).__name__}: {e}"))
        sys.exit(1)
    events.put(("exit", wid, "", 0.0, ""))


def _work(wid: int, out: str, runs: list[tuple[str, Config]], token: str, data_root: str | None,
          threads: int, gpu: str | None, events) -> None:
    """The worker's loop: take each run whose lock it gets, train it, report start and end."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    if gpu is not None:  # before the first CUDA call, which is where torch reads it
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch

    torch.set_num_threads(threads)
    out_p = Path(out)
    pending = runs
    while pending:
        waiting = []
        for run_id, cfg in pending:
            with st.try_lock(out_p, run_id) as got:
                if not got:
                    waiting.append((run_id, cfg))
                    continue
                if not _claim(out_p, run_id, cfg, token):
                    continue
                events.put(("start", wid, run_id, 0.0, ""))
                t0 = time.perf_counter()
                status, detail = _train_one(cfg, out_p, run_id, data_root)
                events.put(("end", wid, run_id, time.perf_counter() - t0, f"{status}\t{detail}"))
        pending = [(r, c) for r, c in waiting
                   if st.run_state(out_p, r, c)[0] not in ("done", "diverged", "stale")
                   and not (_attempt_path(out_p, r).exists()
                            and _attempt_path(out_p, r).read_text() == token
                            and not st.is_locked(out_p, r))]
        if pending:
            time.sleep(POLL_S)


@dataclass
class Progress:
    """What the parent knows: runs to do, running (by worker), and finished outcomes."""

    runs: dict[str, PlannedRun]
    running: dict[int, str] = field(default_factory=dict)
    outcome: dict[str, tuple[str, str]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)  # worker -> why it stopped early

    def compute_done(self, out: Path) -> float:
        done = sum(self.runs[r].compute for r in self.outcome)
        for run_id in self.running.values():
            done += self.runs[run_id].compute * _fraction(out, self.runs[run_id])
        return done

    def line(self) -> str:
        failed = sum(s == "failed" for s, _ in self.outcome.values())
        diverged = sum(s == "diverged" for s, _ in self.outcome.values())
        extra = (f", {failed} failed" if failed else "") + (f", {diverged} diverged" if diverged else "")
        return f"runs {len(self.outcome)}/{len(self.runs)} done, {len(self.running)} running{extra}"


def _fraction(out: Path, run: PlannedRun) -> float:
    """Share of a running run's tokens already trained, from the last line of its metrics."""
    path = st.run_dir(out, run.run_id) / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            last = f.read().splitlines()[-1]
        return min(1.0, json.loads(last).get("tokens", 0) / max(1, run.tokens))
    except (OSError, IndexError, ValueError):
        return 0.0


def order(runs: list[PlannedRun]) -> list[PlannedRun]:
    """Longest first (by compute), which packs runs onto workers with the least idle tail."""
    return sorted(runs, key=lambda r: -r.compute)


def execute(runs: list[PlannedRun], out: Path, workers: int, data_root: str | None = None,
            threads: int = 1, progress: bool = True) -> dict[str, tuple[str, str]]:
    """Train `runs` (skipping finished ones) with `workers` processes; returns run id ->
    (status, detail) for the runs trained in this invocation. Ctrl-C stops the workers (their
    runs resume on the next call) and raises KeyboardInterrupt."""
    from tqdm import tqdm

    todo = [r for r in order(runs)
            if st.run_state(out, r.run_id, r.config)[0] not in ("done", "diverged", "stale")]
    if not todo:
        return {}
    token = f"{os.getpid()}-{time.time_ns()}"
    gpus = _gpus()
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    payload = [(r.run_id, r.config) for r in todo]
    n = max(1, min(workers, len(todo)))

    def start(wid: int):
        gpu = gpus[wid % len(gpus)] if gpus else None
        p = ctx.Process(target=worker, args=(wid, str(out), payload, token, data_root, threads,
                                             gpu, events), daemon=True)
        p.start()
        return p

    procs = {wid: start(wid) for wid in range(n)}
    exited: set[int] = set()
    restarts = 0
    prog = Progress({r.run_id: r for r in todo})
    bar = tqdm(total=sum(r.compute for r in todo), unit="FLOP", unit_scale=True,
               disable=not progress, dynamic_ncols=True, smoothing=0.05,
               bar_format="{desc} |{bar}| {percentage:3.0f}% [{elapsed}<{remaining}, {rate_fmt}]")
    bar.set_description_str(prog.line())
    try:
        while len(exited) < len(procs):
            try:
                kind, wid, run_id, seconds, detail = events.get(timeout=POLL_S)
                if kind == "start":
                    prog.running[wid] = run_id
                elif kind == "end":
                    prog.running.pop(wid, None)
                    status, _, why = detail.partition("\t")
                    prog.outcome[run_id] = (status, why)
                    if status != "completed":
                        bar.write(f"{run_id}: {status}" + (f" ({why})" if why else ""))
                elif kind == "exit":
                    exited.add(wid)
                elif kind == "error":
                    prog.errors[wid] = detail
                    bar.write(f"worker {wid} stopped: {detail}")
            except queue.Empty:
                pass
            for wid, p in list(procs.items()):
                if wid in exited or p.is_alive() or p.exitcode is None:
                    continue
                if p.exitcode == 0 and wid not in prog.running:  # its "exit" is still queued
                    exited.add(wid)
                    continue
                lost = prog.running.pop(wid, None)
                if lost:  # let the restarted worker resume it in this invocation
                    _attempt_path(out, lost).unlink(missing_ok=True)
                bar.write(f"worker {wid} died (exit code {p.exitcode})"
                          + (f" while training {lost}; it will resume" if lost else ""))
                if lost and restarts < 2 * n:
                    restarts += 1
                    procs[wid] = start(wid)
                else:
                    exited.add(wid)
                    prog.errors.setdefault(wid, f"exit code {p.exitcode}")
            bar.n = min(bar.total, prog.compute_done(out))
            bar.set_description_str(prog.line(), refresh=False)
            bar.refresh()
    except KeyboardInterrupt:
        for p in procs.values():
            if p.is_alive():
                p.terminate()
        for p in procs.values():
            p.join(5)
        raise
    finally:
        bar.close()
    _unfinished(prog, out)
    return prog.outcome


def _unfinished(prog: Progress, out: Path) -> None:
    """When a worker stopped early, every run left untrained by this invocation is a failure
    naming why (never a silent 'trained 0 runs, 0 failed')."""
    if not prog.errors:
        return
    why = "; ".join(f"worker {w}: {e}" for w, e in sorted(prog.errors.items()))
    for run_id, r in prog.runs.items():
        if run_id not in prog.outcome and st.run_state(out, run_id, r.config)[0] not in (
                "done", "diverged", "running"):
            prog.outcome[run_id] = ("failed", f"not trained: {why}")


def _gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (one per worker, round robin)."""
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
