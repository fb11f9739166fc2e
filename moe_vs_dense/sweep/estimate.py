"""Time estimates for a sweep's runs from a short timing of the real training step on this machine.

Each distinct model (per size and family) is built and stepped a few times on random tokens of
the run's batch shape, with the trainer's own `train_step`, at the workers' thread count. Runs
that share a model but not a vocabulary (the unimodal and bimodal baselines) are scaled by
their FLOPs per token. Evaluation is added as forward passes (a third of a training step per
token) over the validation rows the run's `eval` section asks for.
"""

from __future__ import annotations

import json
import time

from moe_vs_dense.config import Config
from moe_vs_dense.modalities import MODALITIES
from moe_vs_dense.sweep.plan import PlannedRun

VAL_ROWS_GUESS = 1000  # validation rows per stream when `eval.final_rows` is None (all rows)


def step_seconds(cfg: Config, steps: int = 2, warmup: int = 1) -> float:
    """Median seconds of one optimizer step of `cfg`'s model and batch, on CPU."""
    import torch

    from moe_vs_dense.data.tokenizers import vocab_size
    from moe_vs_dense.model.transformer import Transformer
    from moe_vs_dense.train.schedule import optimizer_and_schedule
    from moe_vs_dense.train.step import train_step

    mods, T, B = cfg.data.modalities, cfg.data.seq_len, cfg.train.batch_rows
    V = vocab_size(cfg.data.tokenizers, mods)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Transformer(cfg.model, V, T, mods)
        opt, sched = optimizer_and_schedule(model, cfg.train, steps + warmup)
        x = torch.randint(0, V, (B, T + 1))
        ids = torch.tensor([MODALITIES.index(m) for m in mods])
        m = ids[torch.arange(B) % len(ids)][:, None].expand(B, T + 1).contiguous()
    micro = list(zip(x.chunk(cfg.train.grad_accum), m.chunk(cfg.train.grad_accum), strict=True))
    times = []
    for _ in range(warmup + steps):
        t = time.perf_counter()
        train_step(model, opt, sched, micro, grad_clip=cfg.train.grad_clip)
        times.append(time.perf_counter() - t)
    times = sorted(times[warmup:])
    return times[len(times) // 2]


def _eval_rows(cfg: Config) -> int:
    """Validation rows a run evaluates in total: during training and at the end, all streams."""
    steps = cfg.train.steps(cfg.data.seq_len)
    ev = cfg.eval
    during = (steps // ev.every) * (ev.rows or VAL_ROWS_GUESS) if ev.every else 0
    return len(cfg.data.mixture) * (during + (ev.final_rows or VAL_ROWS_GUESS))


def estimate(runs: list[PlannedRun], threads: int = 1) -> dict[str, float]:
    """Estimated seconds per run id."""
    import torch

    from moe_vs_dense.sweep import check_workers

    check_workers(1, threads)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        timed: dict[str, tuple[float, int]] = {}  # model key -> (seconds per token, FLOPs/token)
        out = {}
        for r in runs:
            cfg = r.config
            key = json.dumps([cfg.model.model_dump(mode="json"), cfg.data.seq_len,
                              cfg.train.batch_rows, cfg.train.grad_accum], sort_keys=True)
            if key not in timed:
                tokens = cfg.train.batch_rows * cfg.data.seq_len
                timed[key] = (step_seconds(cfg) / tokens, r.accounting.flops_per_token)
            per_token, flops = timed[key]
            per_token *= r.accounting.flops_per_token / flops
            train_s = per_token * cfg.train.steps(cfg.data.seq_len) * cfg.train.batch_rows \
                * cfg.data.seq_len
            eval_s = per_token / 3 * _eval_rows(cfg) * cfg.data.seq_len
            out[r.run_id] = train_s + eval_s
        return out
    finally:
        torch.set_num_threads(old)
