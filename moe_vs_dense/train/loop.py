"""The run: config -> trained model, checkpoints, metrics.jsonl and record.json.

One optimizer step per global batch (`train_step`); every `run.log_every` steps the buffered
losses and grad norms come to the host at once (the only per-step sync), NaN/inf stops the run
as diverged, and a metrics line is written; every `eval.every` steps the fixed validation rows
are scored; every `run.checkpoint_every` steps (and at the end) a checkpoint is written. A
killed run resumes from its newest checkpoint and ends bit-identical to an uninterrupted one
(same device, precision and threads). Only the main process writes.
"""

from __future__ import annotations

import importlib.util
import math
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
from tqdm import tqdm

from moe_vs_dense.config import Config
from moe_vs_dense.data.loader import MixtureLoader
from moe_vs_dense.errors import UserError
from moe_vs_dense.io import write_json
from moe_vs_dense.model import checkpoint as weights
from moe_vs_dense.model.accounting import account
from moe_vs_dense.train import checkpoint, metrics, record, rundir
from moe_vs_dense.train.evaluate import evaluate
from moe_vs_dense.train.metrics import Monitor
from moe_vs_dense.train.speed import matmul_peak
from moe_vs_dense.train.step import build, compile_fresh, ran_compiled, split_batch, train_step


def train(cfg: Config, run_dir: str | Path, *, data_root: str | Path | None = None,
          force: bool = False, progress: bool = True, prepare: bool = False) -> dict:
    """Train (or resume) the run in `run_dir` and return its final record. A run already
    completed (or diverged) with the same config returns its record at once."""
    run_dir = Path(run_dir)
    acc = _accelerator(cfg, run_dir)
    finished = rundir.check(cfg, run_dir, force)
    if finished is not None:
        return finished
    data = rundir.open_data(cfg, data_root, prepare)
    if acc.is_main_process:
        rundir.start(cfg, run_dir)
    acc.wait_for_everyone()
    with _threads(cfg.train.threads), torch.random.fork_rng(devices=[]):
        return _run(cfg, run_dir, data, acc, progress)


def _accelerator(cfg: Config, run_dir: Path):
    from accelerate import Accelerator

    for t in cfg.run.trackers:
        modules = ["wandb"] if t == "wandb" else ["tensorboard", "tensorboardX"]
        if all(importlib.util.find_spec(m) is None for m in modules):
            raise UserError(f"run.trackers: {t} is not installed (pip install {modules[0]})")
    kwargs = {"log_with": list(cfg.run.trackers), "project_dir": str(run_dir)} if cfg.run.trackers else {}
    # without cpu=True, `accelerate launch --multi_gpu` on a CPU machine trains independent copies
    acc = Accelerator(cpu=not torch.cuda.is_available(), **kwargs)
    kind = acc.distributed_type.value
    if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM", "XLA"):
        raise UserError(f"accelerate launched with {kind}: the trainer supports one process and "
                        "DDP (--multi_gpu) only; checkpoints of sharded models are not built yet")
    return acc


@contextmanager
def _threads(n: int | None):
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(cfg: Config, run_dir: Path, data, acc, progress: bool) -> dict:
    tc, main = cfg.train, acc.is_main_process
    world, rank, device = acc.num_processes, acc.process_index, acc.device
    if tc.batch_rows % (tc.grad_accum * world):
        raise UserError(f"train.batch_rows: {tc.batch_rows} rows do not split into grad_accum "
                        f"{tc.grad_accum} x {world} processes")
    steps = tc.steps(data.seq_len)
    every = cfg.eval.every
    ckpt_every = cfg.run.checkpoint_every or every or max(1, steps // 10)
    step_tokens = tc.batch_rows * data.seq_len
    model, opt, sched = build(cfg, data, device)
    acct = account(cfg.model, data.vocab.size, data.seq_len, data.meta["modalities"])
    state = {"status": "running", "step": 0, "steps": steps, "curve": [], "final": None,
             "train_seconds": 0.0, "tokens_timed": 0, "error": None, "diverged_step": None,
             "monitor": Monitor.create(cfg.run.spike_sigma, cfg.run.spike_window).state_dict()}
    torch.manual_seed(cfg.seed)
    saved = checkpoint.load_latest(run_dir)
    if saved is not None:
        try:
            model.load_state_dict(saved["model"])
        except RuntimeError as e:
            raise UserError(f"{run_dir}: its checkpoint does not fit this model ({e}); "
                            "use another --out") from None
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        checkpoint.set_rng_state(saved["rng"])
        state.update(saved["trainer"], status="running", steps=steps, final=None)
    monitor = Monitor.from_state(state["monitor"])
    metrics_path = run_dir / "metrics.jsonl"
    if main:
        metrics.truncate(metrics_path, state["step"])
    net = acc.prepare_model(model) if world > 1 else model
    compiled = tc.compile and device.type == "cuda"
    if compiled:
        net = compile_fresh(net)
    loader = MixtureLoader(data, tc.batch_rows, cfg.seed)
    extra = {"compiled": compiled, "host": record.host(device, world)}

    def write_record() -> dict:
        state["monitor"] = monitor.state_dict()
        extra["compiled"] = compiled and ran_compiled()  # what really ran
        rec = record.build_record(cfg, run_dir, acct, data, loader.sampler, state, extra)
        if main:
            record.write(run_dir, rec)
        return rec

    def score(rows):
        return evaluate(model, data, rows, cfg.eval.batch_rows, tc.precision)

    if main and cfg.run.trackers:
        acc.init_trackers(run_dir.name, config=rundir.flat(rundir.resolved(cfg)))
    bar = tqdm(total=steps * step_tokens, initial=state["step"] * step_tokens, unit="tok",
               unit_scale=True, dynamic_ncols=True, mininterval=1.0,
               disable=not (progress and main), desc=run_dir.name)
    try:
        write_record()
        pending: list[torch.Tensor] = []
        t0 = time.perf_counter()
        for step in range(state["step"], steps):
            micro = split_batch(*loader.batch(step), rank, world, tc.grad_accum, device)
            loss, gnorm = train_step(net, opt, sched, micro, grad_clip=tc.grad_clip,
                                     precision=tc.precision)
            pending.append(torch.stack([loss.float(), gnorm.float()]))
            bar.update(step_tokens)
            n = step + 1
            do_eval = bool(every) and n % every == 0
            do_ckpt = n % ckpt_every == 0 or n == steps
            if not (do_eval or do_ckpt or n % cfg.run.log_every == 0 or n == steps):
                continue
            values = acc.reduce(torch.stack(pending), "mean").tolist()  # the one host sync
            elapsed = time.perf_counter() - t0
            state["train_seconds"] += elapsed
            state["tokens_timed"] += len(pending) * step_tokens
            for i, (lv, gv) in enumerate(values):
                if not (math.isfinite(lv) and math.isfinite(gv)):
                    state.update(status="diverged", diverged_step=n - len(values) + i + 1)
                    if main:
                        metrics.append(metrics_path, {"step": state["diverged_step"],
                                                      "diverged": True, "loss": lv, "grad_norm": gv})
                    return write_record()
                monitor.observe(n - len(values) + i + 1, lv, gv)
            state["step"] = n
            rate = len(pending) * step_tokens / max(elapsed, 1e-9)
            pending = []
            if monitor.pending and (n % cfg.run.log_every == 0 or n == steps):
                line = monitor.line(n, n * step_tokens, sched.get_last_lr()[0], rate)
                bar.set_postfix(loss=f"{line['loss']:.3f}", refresh=False)
                if main:
                    metrics.append(metrics_path, line)
                    if cfg.run.trackers:
                        acc.log(line, step=n)
            if do_eval:
                ev = score(cfg.eval.rows)
                state["curve"].append({
                    "step": n, "tokens": n * step_tokens,
                    "losses": {k: v["loss"] for k, v in ev["losses"].items()},
                    "se": {k: v["se"] for k, v in ev["losses"].items()},
                    "expert_stats": ev["expert_stats"]})
                if main:
                    metrics.append(metrics_path, {"step": n, "eval": state["curve"][-1]["losses"]})
            if do_ckpt:
                state["monitor"] = monitor.state_dict()
                if main:
                    checkpoint.save(run_dir, n, {
                        "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "rng": checkpoint.rng_state(),
                        "trainer": {k: v for k, v in state.items() if k != "final"}},
                        cfg.run.keep_checkpoints)
                acc.wait_for_everyone()
            if do_eval or do_ckpt:
                write_record()
            t0 = time.perf_counter()
        bar.close()
        state["final"] = score(cfg.eval.final_rows)
        if main:
            write_json(run_dir / "eval_docs.json", state["final"]["docs"])
            weights.save(model, run_dir / "model.safetensors", data.seq_len)
            extra["peak_flops"] = tc.peak_flops or matmul_peak(device.type, tc.precision,
                                                               torch.get_num_threads())
            extra["peak_source"] = ("train.peak_flops" if tc.peak_flops else
                                    f"measured {tc.precision} matmul peak of this device")
        state["status"] = "completed"
        return write_record()
    except (Exception, KeyboardInterrupt) as e:
        state.update(status="failed", error=f"{type(e).__name__}: {e}")
        with suppress(OSError):
            write_record()
        raise
    finally:
        bar.close()
        if main and cfg.run.trackers:
            acc.end_training()
