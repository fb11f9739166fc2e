"""Matched partners: the MoE or MoT model with the same active FLOPs per token (or the same total
params) as a dense model, and the dense model matching an MoE or MoT one.

FLOPs and params are affine in the one free width (d_expert for an MoE target, d_ff for a dense
target), so the widths within the tolerance are solved exactly: among them a multiple of 8 is
preferred (the closest such), else the closest width. When no width is within the tolerance,
it is an error that names the closest widths and the other dimensions to change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from moe_vs_dense.config import ModelConfig
from moe_vs_dense.errors import UserError
from moe_vs_dense.model.accounting import Accounting, account

TOLERANCE = 0.01  # the largest |mismatch| of a partner


@dataclass(frozen=True)
class Partner:
    config: ModelConfig
    accounting: Accounting
    reference: Accounting
    match: str
    mismatch: float  # (partner - reference) / reference, of the matched quantity


def _measure(acc: Accounting, match: str) -> int:
    return acc.flops_per_token if match == "flops" else acc.total_params


def _with(cfg: ModelConfig, width: int, target: str) -> ModelConfig:
    if target == "dense":
        return cfg.model_copy(update={"family": "dense", "d_ff": width})
    if target == "mot":
        return cfg.model_copy(update={"family": "mot", "d_ff": width})
    moe = cfg.moe.model_copy(update={"d_expert": width})
    return cfg.model_copy(update={"family": "moe", "moe": moe})


def matched_partner(cfg: ModelConfig, vocab_size: int, seq_len: int, modalities: list[str],
                    target: Literal["dense", "moe", "mot"] | None = None,
                    match: Literal["flops", "params"] = "flops",
                    tol: float = TOLERANCE) -> Partner:
    """The partner of `cfg` in family `target` (default: moe for dense, dense otherwise), within
    `tol` of its FLOPs per token or total params; UserError when no width gets there."""
    target = target or ("moe" if cfg.family == "dense" else "dense")
    if target == cfg.family:
        raise UserError(f"--partner: the partner must be another family than {cfg.family}")
    ref = account(cfg, vocab_size, seq_len, modalities)
    goal = _measure(ref, match)

    def measure(width: int) -> int:
        return _measure(account(_with(cfg, width, target), vocab_size, seq_len, modalities), match)

    base, slope = measure(1), measure(2) - measure(1)  # measure(w) = base + slope * (w - 1)
    what = "FLOPs per token" if match == "flops" else "total params"
    key = "d_ff" if target in ("dense", "mot") else "moe.d_expert"
    if slope <= 0:
        raise UserError(f"model.{key}: the {target} partner's {what} do not depend on its width "
                        "(no layer uses it); change model.moe.every or n_layers")
    lo = max(1, math.ceil((goal * (1 - tol) - base) / slope + 1))
    hi = math.floor((goal * (1 + tol) - base) / slope + 1)
    if lo > hi:
        raise UserError(_no_partner(cfg, target, key, what, goal, measure, base, slope, tol))
    exact = (goal - base) / slope + 1
    aligned = [w for w in (math.floor(exact / 8) * 8, math.ceil(exact / 8) * 8) if lo <= w <= hi]
    best = min(aligned or [min(max(round(exact), lo), hi)], key=lambda w: abs(measure(w) - goal))
    partner = _with(cfg, best, target)
    acc = account(partner, vocab_size, seq_len, modalities)
    return Partner(partner, acc, ref, match, (_measure(acc, match) - goal) / goal)


def _no_partner(cfg: ModelConfig, target: str, key: str, what: str, goal: int, measure,
                base: int, slope: int, tol: float) -> str:
    exact = (goal - base) / slope + 1
    near = sorted({max(1, math.floor(exact)), max(1, math.ceil(exact))})
    found = ", ".join(f"{w} ({(measure(w) - goal) / goal:+.2%})" for w in near)
    if target == "moe" and cfg.moe.router == "learned":
        other = "model.moe.num_experts" if what == "total params" else "model.moe.top_k"
    elif target == "moe":
        other = "model.moe.experts_per_modality"
    else:
        other = "model.n_layers or model.d_model"
    return (f"model.{key}: no {target} partner within {tol:.0%} of the {what} of the config "
            f"({goal:,}); the closest widths are {found}; change {other} so that a width fits")
