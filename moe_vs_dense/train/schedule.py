"""AdamW with weight decay on matrices only, and linear warmup then cosine decay to a floor."""

from __future__ import annotations

import math

import torch
from torch import nn

from moe_vs_dense.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Matrices (embeddings, projections, experts: ndim >= 2) decay; vectors (norms) do not."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, steps: int, warmup: int, floor: float) -> float:
    """Multiplier of the peak LR for optimizer step `step` (0-based): linear warmup to 1 over
    `warmup` steps, then cosine from 1 down to `floor` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, steps - 1 - warmup)
    progress = min(1.0, (step - warmup) / span)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def optimizer_and_schedule(model: nn.Module, cfg: TrainConfig, steps: int):
    """AdamW over `param_groups` and a LambdaLR following `lr_factor`."""
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                            betas=cfg.betas, eps=cfg.eps, **fused)
    warmup = cfg.warmup_steps(steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, steps, warmup, cfg.min_lr_ratio))
    return opt, sched
