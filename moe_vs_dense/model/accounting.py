"""Parameter, FLOP and memory accounting, computed from the config alone.

Conventions (Kaplan et al. 2020; Hoffmann et al. 2022; nanoGPT):
- embedding params: the input embedding (V x d), plus the output head when untied.
- active params: non-embedding params a token passes through (router, its experts, shared
  parts); with modality routing the largest over modalities.
- training FLOPs per token: 6 x (active params + d x V for the output head, tied or not)
  + 12 x L x d x T for attention scores and values over a context of T tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from moe_vs_dense.config import ModelConfig
from moe_vs_dense.model.moe import experts_per_group


@dataclass(frozen=True)
class Accounting:
    total_params: int
    embedding_params: int
    non_embedding_params: int
    active_params: int
    flops_per_token: int
    n_experts: int

    def to_dict(self) -> dict:
        return asdict(self)


def _ffn_layer(cfg: ModelConfig, layer: int, modalities: list[str]) -> tuple[int, int, int]:
    """(total params, active params, experts) of one layer's FFN."""
    d = cfg.d_model
    if cfg.family == "mot":
        p = 3 * d * cfg.ffn_hidden
        return p * len(modalities), p, len(modalities)
    moe = cfg.moe
    if cfg.family != "moe" or layer % moe.every != moe.every - 1:
        p = 3 * d * cfg.ffn_hidden
        return p, p, 0
    expert = 3 * d * cfg.d_expert
    shared = 3 * d * (moe.d_shared or cfg.d_expert) if moe.shared_expert else 0
    if moe.router == "learned":
        n, k, router = moe.num_experts, moe.top_k, d * moe.num_experts
    else:
        per = experts_per_group(moe, modalities)
        n = sum(per)
        k = max(per) if moe.router == "modality" else moe.top_k
        router = 0 if moe.router == "modality" else d * n
    return n * expert + shared + router, k * expert + shared + router, n


def account(cfg: ModelConfig, vocab_size: int, seq_len: int, modalities: list[str]) -> Accounting:
    d, L = cfg.d_model, cfg.n_layers
    groups = len(modalities) if cfg.family == "mot" else 1
    attn = 4 * d * d + 2 * d  # QKV, output projection, two norms
    total = active = 0
    n_experts = 0
    for layer in range(L):
        ffn_total, ffn_active, n = _ffn_layer(cfg, layer, modalities)
        total += attn * groups + ffn_total
        active += attn + ffn_active
        n_experts = max(n_experts, n)
    total += d  # final norm
    active += d
    embedding = vocab_size * d * (1 if cfg.tie_embeddings else 2)
    flops = 6 * (active + d * vocab_size) + 12 * L * d * seq_len
    return Accounting(total + embedding, embedding, total, active, flops, n_experts)


def memory_estimate(acc: Accounting, cfg: ModelConfig, batch_rows: int, seq_len: int,
                    bytes_per_activation: int = 4) -> dict[str, int]:
    """Training memory in bytes: fp32 weights, grads and AdamW moments, plus activations by
    Korthikanti et al. (2022), s*b*h*(34 + 5*a*s/h) per layer for 2-byte activations, scaled
    to `bytes_per_activation`, and the logits."""
    s, b, h, a = seq_len, batch_rows, cfg.d_model, cfg.n_heads
    per_layer = s * b * h * (34 + 5 * a * s / h) * bytes_per_activation / 2
    logits = 2 * b * s * (acc.embedding_params // (1 if cfg.tie_embeddings else 2) // h) * 4
    out = {"weights": 4 * acc.total_params, "grads": 4 * acc.total_params,
           "optimizer": 8 * acc.total_params,
           "activations": int(cfg.n_layers * per_layer + logits)}
    out["total"] = sum(out.values())
    return out
