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
                    bytes_per_activation: int = 4, attention_scores: bool = True,
                    modalities: list[str] | None = None) -> dict[str, int]:
    """Training memory in bytes of one process at a micro-batch of `batch_rows` rows: fp32
    weights, gradients and AdamW moments (16 bytes per parameter), and the tensors saved for
    the backward pass, per layer and token 16*d bytes that stay fp32 under autocast (norm
    inputs, residual stream) plus, at `bytes_per_activation` (4 fp32, 2 bf16), 9*d (QKV, RoPE'd
    q and k, attention output) + 4*f (SwiGLU at the active FFN width f) + 2*k*d (MoE token
    permutation, k experts per token) + 2*n_heads*T for materialized attention scores
    (`attention_scores`: False for the flash and memory-efficient SDPA kernels), then the fp32
    logits and their gradient, and under bf16 the autocast copies of the weights (2 bytes per
    parameter). Checked against the tensors autograd really saves (tests/sweep/test_memory.py);
    no allocator slack or CUDA context: leave headroom."""
    s, b, h, a = seq_len, batch_rows, cfg.d_model, cfg.n_heads
    bpa = bytes_per_activation
    mods = modalities or ["text"]
    per_token = 0.0
    for layer in range(cfg.n_layers):
        _, ffn_active, n = _ffn_layer(cfg, layer, mods)
        f = ffn_active / (3 * h)
        k = 0 if n == 0 else 1 if cfg.family == "mot" else (
            max(experts_per_group(cfg.moe, mods)) if cfg.moe.router == "modality" else cfg.moe.top_k)
        per_token += 16 * h + bpa * (9 * h + 4 * f + 2 * k * h + (2 * a * s if attention_scores else 0))
    vocab = acc.embedding_params // (1 if cfg.tie_embeddings else 2) // h
    casts = 2 * acc.total_params if bpa == 2 else 0
    out = {"weights": 4 * acc.total_params, "grads": 4 * acc.total_params,
           "optimizer": 8 * acc.total_params,
           "activations": int(s * b * (per_token + 8 * vocab) + casts)}
    out["total"] = sum(out.values())
    return out
