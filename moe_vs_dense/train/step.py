"""The training step every run, benchmark and sweep estimate goes through.

`build` makes the model, AdamW and its schedule from a config; `train_step` runs one optimizer
step over micro-batches (gradient accumulation), with the MoE aux/z losses added, clipping,
the schedule and router-bias balancing. It returns device tensors and never syncs the host.
`autocast` is the run's precision; `compile_fresh` and `ran_compiled` compile a model and say
whether it really ran compiled.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
from torch import nn
from torch._dynamo.utils import counters

from moe_vs_dense.config import Config
from moe_vs_dense.data.loader import PreparedData
from moe_vs_dense.model.loss import lm_loss
from moe_vs_dense.model.transformer import Transformer
from moe_vs_dense.train.schedule import optimizer_and_schedule


def autocast(device: torch.device, precision: str):
    """The context a forward runs in: bf16 autocast for `precision: bf16`, else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def compile_fresh(net: nn.Module, backend: str = "inductor") -> nn.Module:
    """torch.compile with Dynamo's state reset first. A sweep worker trains many models in one
    process; without the reset Dynamo stops recompiling a function after its recompile limit
    (8 shapes), and later models run eagerly."""
    torch._dynamo.reset()
    counters.clear()
    return torch.compile(net, backend=backend)


def ran_compiled() -> bool:
    """Whether Dynamo compiled any graph since the last `compile_fresh` (else all ran eagerly)."""
    return counters["stats"]["unique_graphs"] > 0


def unwrap(model: nn.Module) -> Transformer:
    """The Transformer inside DDP and torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def build(cfg: Config, data: PreparedData, device: torch.device | str = "cpu"):
    """(model, optimizer, scheduler) for `cfg` on `data`, initialized from `cfg.seed` without
    touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Transformer(cfg.model, data.vocab.size, data.seq_len, data.meta["modalities"],
                            cfg.train.precision)
    model = model.to(device)
    optimizer, scheduler = optimizer_and_schedule(model, cfg.train, cfg.train.steps(data.seq_len))
    return model, optimizer, scheduler


def split_batch(tokens, mods, rank: int, world: int, micro: int, device) -> list[tuple]:
    """This rank's share of a global batch (numpy [B, T+1]), in `micro` micro-batches on `device`."""
    per_rank = len(tokens) // world
    x = torch.from_numpy(tokens[rank * per_rank:(rank + 1) * per_rank])
    m = torch.from_numpy(mods[rank * per_rank:(rank + 1) * per_rank])
    nb = device.type == "cuda"
    return [(a.to(device, non_blocking=nb), b.to(device, non_blocking=nb))
            for a, b in zip(x.chunk(micro), m.chunk(micro), strict=True)]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, micro_batches,
               *, grad_clip: float | None = None,
               precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over micro-batches of (tokens [b, T+1], modality ids [b, T+1]) of equal
    size. Returns (mean LM loss, gradient norm before clipping) as device tensors."""
    core = unwrap(model)
    n = len(micro_batches)
    total = None
    for i, (x, m) in enumerate(micro_batches):
        last = i == n - 1
        sync = nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(x.device, precision):
                logits = model(x[:, :-1], m[:, :-1])
            loss, _, _ = lm_loss(logits, x[:, 1:], m[:, 1:])
            ((loss + core.aux_loss) / n).backward()
        total = loss.detach() if total is None else total + loss.detach()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or math.inf)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    core.update_router_bias()
    return total / n, norm
