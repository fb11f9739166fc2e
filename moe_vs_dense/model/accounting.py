"""Parameter, FLOP and memory accounting, computed from the config alone.

Conventions (Kaplan et al. 2020; Hoffmann et al. 2022; nanoGPT):
- embedding params: the input embedding (V x d), plus the output head when untied.
- active params: non-embedding params a token passes through (router, its experts, shared
  parts); with modality routing the largest over modalities.
- training FLOPs per token: 6 x (active params + d x V for the output head, tied or not)
  + 12 x L x d x T for attention scores and values over a context of T tokens.
- inference (one forward pass): 2 x (active params + d x V) + 4 x L x d x T FLOPs per token, a
  third of training; storage is the bytes of every weight at the precision it is stored in.
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class Matrices:
    """`total` (stored) and `active` (used by one token) weight matrices of shape d_in x d_out."""

    total: int
    active: int
    d_in: int
    d_out: int


def compressible(cfg: ModelConfig, modalities: list[str]) -> list[Matrices]:
    """The weight matrices that compression touches (moe_vs_dense/compress.py): attention QKV and
    output projections and every FFN, expert and shared-expert matrix (per modality group for
    MoT). Embeddings, output head, norms and routers are not among them."""
    d, out = cfg.d_model, []
    groups = len(modalities) if cfg.family == "mot" else 1
    for layer in range(cfg.n_layers):
        out += [Matrices(groups, 1, d, 3 * d), Matrices(groups, 1, d, d)]
        _, _, n = _ffn_layer(cfg, layer, modalities)
        if n == 0 or cfg.family == "mot":
            f, total, active = cfg.ffn_hidden, max(n, 1), 1
        else:
            moe, f, total = cfg.moe, cfg.d_expert, n
            active = (max(experts_per_group(moe, modalities)) if moe.router == "modality"
                      else moe.top_k)
            if moe.shared_expert:
                s = moe.d_shared or cfg.d_expert
                out += [Matrices(1, 1, d, s), Matrices(1, 1, d, s), Matrices(1, 1, s, d)]
        out += [Matrices(total, active, d, f), Matrices(total, active, d, f),
                Matrices(total, active, f, d)]
    return out


METHODS = {"fp32": 32, "int8": 8, "int4": 4}  # bits per stored weight of the quantized matrices


@dataclass(frozen=True)
class Inference:
    """What a model costs to keep and to run: `storage_bytes` of all its weights as stored, and
    `flops_per_token` of one forward pass (zero weights of a pruned model not counted: a sparse
    kernel skips them); `active_nonzero` params per token that are not pruned away."""

    method: str
    storage_bytes: int
    flops_per_token: int
    active_nonzero: int
    compressed_params: int

    def to_dict(self) -> dict:
        return asdict(self)


def pruned_per_matrix(ratio: float, numel: int) -> int:
    """Weights magnitude pruning zeroes in one matrix: floor(ratio x its size)."""
    return math.floor(ratio * numel)


def inference(cfg: ModelConfig, vocab_size: int, seq_len: int, modalities: list[str],
              method: str = "fp32", ratio: float = 0.0) -> Inference:
    """Storage and forward FLOPs of the model as trained (`fp32`), quantized (`int8`, `int4`:
    each compressible matrix at that many bits per weight plus one fp32 scale per output
    channel) or pruned (`prune`: each compressible matrix loses `pruned_per_matrix` weights and
    is stored as a bitmask of one bit per position plus its kept weights at fp32). Everything
    else (embeddings, head, norms, routers) stays fp32, 4 bytes per param."""
    acc = account(cfg, vocab_size, seq_len, modalities)
    mats = compressible(cfg, modalities)
    n_comp = sum(m.total * m.d_in * m.d_out for m in mats)
    rest = 4 * (acc.total_params - n_comp)
    active = acc.active_params
    if method == "prune":
        stored = sum(m.total * (math.ceil(m.d_in * m.d_out / 8)
                                + 4 * (m.d_in * m.d_out - pruned_per_matrix(ratio, m.d_in * m.d_out)))
                     for m in mats)
        active -= sum(m.active * pruned_per_matrix(ratio, m.d_in * m.d_out) for m in mats)
    elif method in METHODS:
        bits = METHODS[method]
        scales = 0 if method == "fp32" else 4 * sum(m.total * m.d_out for m in mats)
        stored = sum(m.total * math.ceil(m.d_in * m.d_out * bits / 8) for m in mats) + scales
    else:
        raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}, prune")
    d, L = cfg.d_model, cfg.n_layers
    flops = 2 * (active + d * vocab_size) + 4 * L * d * seq_len
    return Inference(method, rest + stored, flops, active, n_comp)
