"""Memory before a run starts: each run's training memory against the GPU it will train on.

A run trains in one process on one GPU (a sweep worker per GPU). Its memory is
`model.accounting.memory_estimate` at its micro-batch (batch_rows / grad_accum rows): fp32
weights, gradients and AdamW moments, plus activations at the run's precision with the flash
or memory-efficient attention CUDA's SDPA uses. A run fits when that is at most HEADROOM of the
device's memory (the rest is the CUDA context, allocator slack and evaluation).

With the sweep's `device_memory_gb`, every run gets the smallest `train.grad_accum` (from its
own upward, dividing batch_rows) that fits; without it, on a machine with a GPU, runs are
checked against that GPU and a larger grad_accum is suggested. A run that cannot fit at any
grad_accum (its parameter state alone is too large) refuses the sweep, with the numbers.
"""

from __future__ import annotations

from dataclasses import replace

from moe_vs_dense.config import Config
from moe_vs_dense.errors import UserError
from moe_vs_dense.model.accounting import Accounting, memory_estimate

HEADROOM = 0.9  # share of the device's memory a run may plan to use
GB = 1e9


def need(cfg: Config, acc: Accounting, grad_accum: int | None = None) -> dict[str, int]:
    """Bytes one process needs to train `cfg` at `grad_accum` (default: the config's)."""
    g = grad_accum or cfg.train.grad_accum
    return memory_estimate(acc, cfg.model, cfg.train.batch_rows // g, cfg.data.seq_len,
                           2 if cfg.train.precision == "bf16" else 4, attention_scores=False,
                           modalities=cfg.data.modalities)


def describe(mem: dict[str, int]) -> str:
    return (f"{mem['total'] / GB:,.1f} GB (weights {mem['weights'] / GB:,.1f}, gradients "
            f"{mem['grads'] / GB:,.1f}, AdamW {mem['optimizer'] / GB:,.1f}, activations "
            f"{mem['activations'] / GB:,.1f})")


def device_memory() -> int | None:
    """Bytes of this machine's first GPU, or None without one."""
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


def fit(runs: list, device_bytes: int, set_grad_accum: bool, source: str) -> list:
    """`runs` (PlannedRun) with grad_accum raised to fit `device_bytes` when `set_grad_accum`;
    otherwise a UserError suggesting it. A UserError for runs that fit at no grad_accum."""
    budget = HEADROOM * device_bytes
    out, unfit, raise_to = [], [], []
    for r in runs:
        tc = r.config.train
        options = [g for g in range(tc.grad_accum, tc.batch_rows + 1) if tc.batch_rows % g == 0]
        g = next((g for g in options if need(r.config, r.accounting, g)["total"] <= budget), None)
        if g is None:
            rows = tc.batch_rows // options[-1]
            unfit.append(f"{r.run_id}: {describe(need(r.config, r.accounting, options[-1]))} at "
                         f"{rows} row(s) of {r.config.data.seq_len} tokens per micro-step")
        elif g != tc.grad_accum and not set_grad_accum:
            raise_to.append(f"{r.run_id}: {describe(need(r.config, r.accounting))} at grad_accum "
                            f"{tc.grad_accum}; grad_accum {g} needs "
                            f"{need(r.config, r.accounting, g)['total'] / GB:,.1f} GB")
        elif g != tc.grad_accum:
            cfg = r.config.model_copy(update={"train": tc.model_copy(update={"grad_accum": g})})
            r = replace(r, config=cfg)
        out.append(r)
    limit = f"{HEADROOM:.0%} of {device_bytes / GB:,.1f} GB ({source})"
    if unfit:
        raise UserError(f"{len(unfit)} run(s) cannot fit {limit} at any train.grad_accum:\n    "
                        + "\n    ".join(unfit[:20]) + ("\n    ..." if len(unfit) > 20 else "")
                        + "\n  use smaller sizes or fewer experts (sharded training is not built)")
    if raise_to:
        raise UserError(f"{len(raise_to)} run(s) do not fit {limit}:\n    "
                        + "\n    ".join(raise_to[:20]) + ("\n    ..." if len(raise_to) > 20 else "")
                        + "\n  set train.grad_accum, or device_memory_gb in the sweep to set it "
                        "per run")
    return out
