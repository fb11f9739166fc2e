"""`model info`: accounting of a config and of its matched partner, side by side."""

from __future__ import annotations

from moe_vs_dense.config import Config, ModelConfig
from moe_vs_dense.data.tokenizers import vocab_size
from moe_vs_dense.model.accounting import memory_estimate
from moe_vs_dense.model.pairing import matched_partner


def describe(cfg: ModelConfig) -> str:
    base = f"{cfg.family} d={cfg.d_model} L={cfg.n_layers} H={cfg.n_heads}"
    if cfg.family == "moe":
        m = cfg.moe
        experts = (f"E={m.num_experts} k={m.top_k}" if m.router == "learned"
                   else f"{m.experts_per_modality}/modality" + (f" k={m.top_k}"
                                                                 if m.router == "modality_group" else ""))
        return f"{base} {m.router} {experts} d_expert={cfg.d_expert} every={m.every}"
    return f"{base} d_ff={cfg.ffn_hidden}"


def info_table(cfg: Config, partner: str | None = None, match: str = "flops",
               batch_rows: int = 16) -> str:
    import pandas as pd

    mods, T = cfg.data.modalities, cfg.data.seq_len
    V = vocab_size(cfg.data.tokenizers, mods)
    p = matched_partner(cfg.model, V, T, mods, target=partner, match=match)
    rows = {}
    for name, model_cfg, acc in (("config", cfg.model, p.reference),
                                 ("partner", p.config, p.accounting)):
        mem = memory_estimate(acc, model_cfg, batch_rows, T, modalities=mods)
        rows[name] = {"model": describe(model_cfg), "total params": f"{acc.total_params:,}",
                      "embedding params": f"{acc.embedding_params:,}",
                      "non-embedding params": f"{acc.non_embedding_params:,}",
                      "active params / token": f"{acc.active_params:,}",
                      "training FLOPs / token": f"{acc.flops_per_token:,}",
                      "experts per MoE layer": acc.n_experts,
                      f"memory, batch {batch_rows}x{T} (MiB)": f"{mem['total'] / 2**20:,.1f}"}
    table = pd.DataFrame(rows).to_markdown()
    what = "active FLOPs per token" if match == "flops" else "total params"
    return (f"vocabulary {V} ids, context {T} tokens, modalities: {', '.join(mods)}\n\n{table}\n\n"
            f"partner matched on {what}: mismatch {p.mismatch:+.3%}")
