"""The run: config -> trained model, checkpoints, metrics.jsonl and record.json.

`train` decides what the run directory holds (`rundir.check`), opens the data and hands over to
a `Trainer`, whose `run` is a short sequence of named steps: resume, then one optimizer step
per global batch (`train_step`) and, at the steps `Cadence` names, flush (the buffered losses
and grad norms come to the host at once, the only per-step sync; NaN/inf stops the run as
diverged), log, validate, save and write the record; then finish. A killed run resumes from
its newest checkpoint and ends bit-identical to an uninterrupted one (same device, precision
and threads). Only the main process writes."""

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
from moe_vs_dense.train.speed import matmul_peak
from moe_vs_dense.train.state import Cadence, Outcome, TrainerState
from moe_vs_dense.train.step import build, compile_fresh, ran_compiled, split_batch, train_step


def train(cfg: Config, run_dir: str | Path, *, data_root: str | Path | None = None,
          force: bool = False, progress: bool = True, prepare: bool = False) -> dict:
    """Train (or resume) the run in `run_dir` and return its final record. A run already
    completed (or diverged) with the same config returns its record at once; `force`
    continues one to a larger train.tokens (see `rundir.check`)."""
    run_dir = Path(run_dir)
    acc = _accelerator(cfg, run_dir)
    finished = rundir.check(cfg, run_dir, force)
    if finished is not None:
        return finished
    data = rundir.open_data(cfg, data_root, prepare)
    if acc.is_main_process:
        rundir.start(run_dir)
    acc.wait_for_everyone()
    with _threads(cfg.train.threads), torch.random.fork_rng(devices=[]):
        return Trainer(cfg, run_dir, data, acc).run(progress)


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


class Trainer:
    """One run on one rank: the model, its optimizer and schedule, the data order, the
    trainer state, and the steps of `run` (resume, train, flush, log, validate, checkpoint,
    finish)."""

    def __init__(self, cfg: Config, run_dir: Path, data, acc) -> None:
        tc = cfg.train
        self.cfg, self.run_dir, self.data, self.acc = cfg, run_dir, data, acc
        self.main, self.world, self.rank = acc.is_main_process, acc.num_processes, acc.process_index
        if tc.batch_rows % (tc.grad_accum * self.world):
            raise UserError(f"train.batch_rows: {tc.batch_rows} rows do not split into grad_accum "
                            f"{tc.grad_accum} x {self.world} processes")
        self.cadence = Cadence.create(cfg, tc.steps(data.seq_len))
        self.step_tokens = tc.batch_rows * data.seq_len
        self.model, self.opt, self.sched = build(cfg, data, acc.device)
        self.acct = account(cfg.model, data.vocab.size, data.seq_len, data.meta["modalities"])
        self.loader = MixtureLoader(data, tc.batch_rows, cfg.seed)
        self.state, self.outcome = TrainerState.create(cfg), Outcome()
        self.metrics_path = run_dir / "metrics.jsonl"
        self.extra: dict = {"host": record.host(acc.device, self.world),
                            "moe_backend": self.model.moe_backend}
        self.net = self.model
        self.pending: list[torch.Tensor] = []
        self.compile = False  # torch.compile asked for and possible (set by `wrap`)

    def run(self, progress: bool) -> dict:
        """Resume, then train to the last step (or divergence) and finish; the record of how
        it ended. Any exception is recorded as a failed run and raised again."""
        steps, cfg = self.cadence.steps, self.cfg
        self.resume()
        self.net = self.wrap()
        if self.main and cfg.run.trackers:
            self.acc.init_trackers(self.run_dir.name, config=rundir.flat(rundir.resolved(cfg)))
        bar = tqdm(total=steps * self.step_tokens, initial=self.state.step * self.step_tokens,
                   unit="tok", unit_scale=True, dynamic_ncols=True, mininterval=1.0,
                   disable=not (progress and self.main), desc=self.run_dir.name)
        try:
            self.write_record()
            t0 = time.perf_counter()
            for step in range(self.state.step, steps):
                self.train_step(step)
                bar.update(self.step_tokens)
                n = step + 1
                if not self.cadence.flush(n):
                    continue
                rate = self.flush(n, time.perf_counter() - t0)
                if self.outcome.status == "diverged":
                    return self.write_record()
                if self.cadence.log(n) and self.state.monitor.pending:
                    bar.set_postfix(loss=f"{self.log(n, rate):.3f}", refresh=False)
                if self.cadence.eval(n):
                    self.validate(n)
                if self.cadence.checkpoint(n):
                    self.save(n)
                if self.cadence.eval(n) or self.cadence.checkpoint(n):
                    self.write_record()
                t0 = time.perf_counter()
            bar.close()
            return self.finish()
        except (Exception, KeyboardInterrupt) as e:
            self.outcome.status, self.outcome.error = "failed", f"{type(e).__name__}: {e}"
            with suppress(OSError):
                self.write_record()
            raise
        finally:
            bar.close()
            if self.main and cfg.run.trackers:
                self.acc.end_training()

    def resume(self) -> None:
        """Seed, then load the newest checkpoint if there is one (a clear error when it does not
        fit this model); only then is config.yaml written and metrics.jsonl cut back to it."""
        torch.manual_seed(self.cfg.seed)
        saved = checkpoint.load_latest(self.run_dir)
        if saved is not None:
            why = checkpoint.mismatch(self.model.state_dict(), saved["model"])
            if why:
                raise UserError(f"{self.run_dir}: its checkpoint does not fit this model ({why}); "
                                "use another --out")
            try:
                self.model.load_state_dict(saved["model"])
                self.opt.load_state_dict(saved["optimizer"])
                self.sched.load_state_dict(saved["scheduler"])
                checkpoint.set_rng_state(saved["rng"])
                self.state.load_state_dict(saved["trainer"])
            except (KeyError, ValueError, RuntimeError, TypeError) as e:
                raise UserError(f"{self.run_dir}: its checkpoint does not resume this run "
                                f"({type(e).__name__}: {str(e)[:200]}); use another --out") from None
        if self.main:
            rundir.write_config(self.cfg, self.run_dir)
            metrics.truncate(self.metrics_path, self.state.step)
        self.acc.wait_for_everyone()

    def wrap(self):
        """The model as trained: under DDP when several processes, compiled on CUDA if asked."""
        net = self.acc.prepare_model(self.model) if self.world > 1 else self.model
        self.compile = self.cfg.train.compile and self.acc.device.type == "cuda"
        return compile_fresh(net) if self.compile else net

    def train_step(self, step: int) -> None:
        """One optimizer step on global batch `step`; its loss and grad norm stay on the device."""
        tc = self.cfg.train
        micro = split_batch(*self.loader.batch(step), self.rank, self.world, tc.grad_accum,
                            self.acc.device)
        loss, gnorm = train_step(self.net, self.opt, self.sched, micro, grad_clip=tc.grad_clip,
                                 precision=tc.precision)
        self.pending.append(torch.stack([loss.float(), gnorm.float()]))

    def flush(self, n: int, elapsed: float) -> float:
        """Bring the buffered losses and grad norms to the host (the one host sync), time them,
        feed the monitor, and stop at the first non-finite value as diverged. Tokens/s."""
        values = self.acc.reduce(torch.stack(self.pending), "mean").tolist()
        done = len(values) * self.step_tokens
        self.pending = []
        self.state.train_seconds += elapsed
        self.state.tokens_timed += done
        for i, (lv, gv) in enumerate(values):
            at = n - len(values) + i + 1
            if not (math.isfinite(lv) and math.isfinite(gv)):
                self.outcome.status, self.outcome.diverged_step = "diverged", at
                if self.main:
                    metrics.append(self.metrics_path, {"step": at, "diverged": True, "loss": lv,
                                                       "grad_norm": gv})
                return 0.0
            self.state.monitor.observe(at, lv, gv)
        self.state.step = n
        return done / max(elapsed, 1e-9)

    def log(self, n: int, rate: float) -> float:
        """A metrics line (and tracker log) for the steps since the last one; its mean loss."""
        line = self.state.monitor.line(n, n * self.step_tokens, self.sched.get_last_lr()[0], rate)
        if self.main:
            metrics.append(self.metrics_path, line)
            if self.cfg.run.trackers:
                self.acc.log(line, step=n)
        return line["loss"]

    def evaluate(self, rows: int | None) -> dict:
        return evaluate(self.model, self.data, rows, self.cfg.eval.batch_rows,
                        self.cfg.train.precision)

    def validate(self, n: int) -> None:
        """Score the fixed validation rows and add a point to the eval curve; the metrics line
        also keeps each document's summed loss, so that the change between two evals on the same
        rows gets a paired standard error (analysis/dynamics.py)."""
        ev = self.evaluate(self.cfg.eval.rows)
        self.state.curve.append({
            "step": n, "tokens": n * self.step_tokens,
            "losses": {k: v["loss"] for k, v in ev["losses"].items()},
            "se": {k: v["se"] for k, v in ev["losses"].items()},
            "expert_stats": ev["expert_stats"]})
        if self.main:
            point = self.state.curve[-1]
            metrics.append(self.metrics_path, {
                "step": n, "eval": point["losses"], "se": point["se"],
                "docs": {k: d["nll_sum"] for k, d in ev["docs"].items()},
                "doc_tokens": {k: d["tokens"] for k, d in ev["docs"].items()}})

    def save(self, n: int) -> None:
        """Checkpoint every stateful object (main process), then wait for every rank."""
        if self.main:
            checkpoint.save(self.run_dir, n, {
                "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "rng": checkpoint.rng_state(),
                "trainer": self.state.state_dict()}, self.cfg.run.keep_checkpoints)
        self.acc.wait_for_everyone()

    def finish(self) -> dict:
        """Final evaluation on all final rows, eval_docs.json, the weights, the peak FLOP/s
        behind MFU, and the completed record."""
        tc = self.cfg.train
        self.outcome.final = self.evaluate(self.cfg.eval.final_rows)
        if self.main:
            write_json(self.run_dir / "eval_docs.json", self.outcome.final["docs"])
            weights.save(self.model, self.run_dir / "model.safetensors", self.data.seq_len)
            self.extra["peak_flops"] = tc.peak_flops or matmul_peak(
                self.acc.device.type, tc.precision, torch.get_num_threads())
            self.extra["peak_source"] = ("train.peak_flops" if tc.peak_flops else
                                         f"measured {tc.precision} matmul peak of this device")
        self.outcome.status = "completed"
        return self.write_record()

    def write_record(self) -> dict:
        """record.json from the config, accounting, trainer state and outcome (main process)."""
        o = self.outcome
        self.extra["compiled"] = self.compile and ran_compiled()  # what really ran
        state = {**self.state.state_dict(), "steps": self.cadence.steps, "status": o.status,
                 "error": o.error, "diverged_step": o.diverged_step, "final": o.final}
        rec = record.build_record(self.cfg, self.run_dir, self.acct, self.data,
                                  self.loader.sampler, state, self.extra)
        if self.main:
            record.write(self.run_dir, rec)
        return rec
