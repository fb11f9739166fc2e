"""Matched partners: the MoE or MoT model with the same active FLOPs per token (or the same total
params) as a dense model, and the dense model matching an MoE or MoT one.

FLOPs and params are linear in the one free width (d_expert for an MoE target, d_ff for a dense
target), so the match is solved exactly and rounded; the remaining mismatch is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from moe_vs_dense.config import ModelConfig
from moe_vs_dense.model.accounting import Accounting, account


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
                    match: Literal["flops", "params"] = "flops") -> Partner:
    """The partner of `cfg` in family `target` (default: moe for dense, dense otherwise)."""
    target = target or ("moe" if cfg.family == "dense" else "dense")
    if target == cfg.family:
        raise ValueError(f"the partner must be another family than {cfg.family}")
    ref = account(cfg, vocab_size, seq_len, modalities)
    goal = _measure(ref, match)

    def measure(width: int) -> int:
        return _measure(account(_with(cfg, width, target), vocab_size, seq_len, modalities), match)

    lo, hi = measure(8), measure(1032)
    slope = (hi - lo) / 1024
    exact = 8 + (goal - lo) / slope if slope else 8
    candidates = {max(1, round(exact)), max(8, round(exact / 8) * 8)}
    best = min(candidates, key=lambda w: (abs(measure(w) - goal) > 0.01 * goal, w % 8 != 0,
                                          abs(measure(w) - goal)))
    partner = _with(cfg, best, target)
    acc = account(partner, vocab_size, seq_len, modalities)
    return Partner(partner, acc, ref, match, (_measure(acc, match) - goal) / goal)
