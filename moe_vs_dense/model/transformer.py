"""The decoder: one class for every family; only the blocks under comparison differ.

- dense: shared norms, attention projections and SwiGLU FFN.
- moe:   the FFN of every `moe.every`-th layer is an MoE layer (moe.py).
- mot:   Mixture-of-Transformers: norms, QKV/output projections and FFN per modality,
         attention computed over the whole mixed sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from moe_vs_dense.config import ModelConfig
from moe_vs_dense.errors import UserError
from moe_vs_dense.modalities import MODALITIES
from moe_vs_dense.model.experts import (
    Experts,
    SwiGLU,
    compute_dtype,
    count_ids,
    grouped_matmul,
    init_std_out,
)
from moe_vs_dense.model.layers import Rotary, causal_attention
from moe_vs_dense.model.moe import MoE


@dataclass
class GroupPlan:
    """Tokens sorted by modality group, computed once per forward and shared by all layers."""

    group_N: torch.Tensor
    order_N: torch.Tensor
    inverse_N: torch.Tensor
    counts_G: torch.Tensor

    @classmethod
    def build(cls, group_N: torch.Tensor, n_groups: int) -> GroupPlan:
        order = torch.argsort(group_N, stable=True)
        return cls(group_N, order, torch.argsort(order), count_ids(group_N, n_groups))


class GroupRMSNorm(nn.Module):
    """RMSNorm with one weight vector per modality group (one group: a plain RMSNorm)."""

    def __init__(self, groups: int, d: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(groups, d))

    def forward(self, x_BTD: torch.Tensor, plan: GroupPlan | None) -> torch.Tensor:
        if plan is None:  # one weight: the fused kernel applies it
            return F.rms_norm(x_BTD, (x_BTD.shape[-1],), self.weight[0], eps=self.eps)
        w = self.weight[plan.group_N].view_as(x_BTD)
        return F.rms_norm(x_BTD, (x_BTD.shape[-1],), eps=self.eps) * w


class GroupLinear(nn.Module):
    """A bias-free linear map per modality group; weight [G, in, out]."""

    def __init__(self, groups: int, d_in: int, d_out: int, std: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(groups, d_in, d_out) * std)

    def forward(self, x_BTD: torch.Tensor, plan: GroupPlan | None) -> torch.Tensor:
        if plan is None:
            return x_BTD @ self.weight[0].to(x_BTD.dtype)
        dtype = compute_dtype(x_BTD)
        x_ND, w = x_BTD.reshape(-1, x_BTD.shape[-1]).to(dtype), self.weight.to(dtype)
        y_sorted = grouped_matmul(x_ND.index_select(0, plan.order_N), w, plan.counts_G)
        y = y_sorted.index_select(0, plan.inverse_N)
        return y.view(*x_BTD.shape[:-1], -1)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, modalities: list[str], rotary: Rotary,
                 precision: str) -> None:
        super().__init__()
        d, std = cfg.d_model, cfg.init_std
        out_std = init_std_out(std, cfg.n_layers)
        self.per_modality = cfg.family == "mot"
        groups = len(modalities) if self.per_modality else 1
        self.n_heads, self.rotary = cfg.n_heads, rotary
        self.norm1 = GroupRMSNorm(groups, d, cfg.norm_eps)
        self.qkv = GroupLinear(groups, d, 3 * d, std)
        self.out = GroupLinear(groups, d, d, out_std)
        self.norm2 = GroupRMSNorm(groups, d, cfg.norm_eps)
        self.is_moe = cfg.family == "moe" and layer % cfg.moe.every == cfg.moe.every - 1
        if self.is_moe:
            self.ffn = MoE(cfg.moe, d, cfg.d_expert, modalities, std, out_std, precision)
        elif self.per_modality:
            self.ffn = Experts(groups, d, cfg.ffn_hidden, std, out_std)
        else:
            self.ffn = SwiGLU(d, cfg.ffn_hidden, std, out_std)

    def forward(self, x_BTD: torch.Tensor, group_N: torch.Tensor,
                plan: GroupPlan | None) -> torch.Tensor:
        """`plan`: the tokens sorted by modality group, for MoT's per-modality parts only."""
        local = plan if self.per_modality else None
        q, k, v = self.qkv(self.norm1(x_BTD, local), local).chunk(3, dim=-1)
        x_BTD = x_BTD + self.out(causal_attention(q, k, v, self.n_heads, self.rotary), local)
        h = self.norm2(x_BTD, local)
        if self.is_moe:
            return x_BTD + self.ffn(h, group_N.view(x_BTD.shape[:2]))
        if self.per_modality:
            y = self.ffn(h.reshape(-1, h.shape[-1]), plan.order_N, plan.counts_G)
            return x_BTD + y.view_as(x_BTD)
        return x_BTD + self.ffn(h)


class Transformer(nn.Module):
    """tokens [B, T] and modality ids [B, T] -> logits [B, T, V]; `aux_loss` after forward.
    `precision` (the run's, fp32 or bf16) decides which MoE backend can run; `moe_backend` says
    which one does (None for models without MoE layers)."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, max_len: int,
                 modalities: list[str], precision: str = "fp32") -> None:
        super().__init__()
        self.cfg, self.vocab_size, self.modalities = cfg, vocab_size, list(modalities)
        d = cfg.d_model
        self.embed = nn.Embedding(vocab_size, d)
        nn.init.normal_(self.embed.weight, std=cfg.init_std)
        rotary = Rotary(d // cfg.n_heads, max_len, cfg.rope_theta)
        self.blocks = nn.ModuleList(Block(cfg, i, self.modalities, rotary, precision)
                                    for i in range(cfg.n_layers))
        backends = {m.backend for m in self.moe_layers()}
        self.moe_backend: str | None = backends.pop() if backends else None
        self.norm = GroupRMSNorm(1, d, cfg.norm_eps)
        self.lm_head = None
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(d, vocab_size, bias=False)
            nn.init.normal_(self.lm_head.weight, std=cfg.init_std)
        group = torch.full((len(MODALITIES),), -1, dtype=torch.long)
        for g, m in enumerate(self.modalities):
            group[MODALITIES.index(m)] = g
        self.register_buffer("group_of_modality", group, persistent=False)
        self.aux_loss = torch.zeros(())

    def _modality_ids(self) -> str:
        return ", ".join(f"{MODALITIES.index(m)}={m}" for m in self.modalities)

    def check_modalities(self, mods: np.ndarray | torch.Tensor) -> None:
        """Raise UserError if a modality id of a batch held on the host is not one the model
        was built with. The trainer does not call it: its batches come from data prepared for
        these modalities, and the forward asserts on the device. It is for code that builds
        its own batches and wants a UserError rather than a device-side assert."""
        ids = np.unique(np.asarray(mods.cpu() if isinstance(mods, torch.Tensor) else mods))
        known = {MODALITIES.index(m) for m in self.modalities}
        bad = [int(i) for i in ids if int(i) not in known]
        if bad:
            names = [MODALITIES[i] if 0 <= i < len(MODALITIES) else f"id {i}" for i in bad]
            raise UserError(f"the batch holds {', '.join(names)} tokens, but the model was built "
                            f"for {', '.join(self.modalities)} only")

    def moe_layers(self) -> list[MoE]:
        return [b.ffn for b in self.blocks if b.is_moe]

    def forward(self, tokens_BT: torch.Tensor, mods_BT: torch.Tensor | None = None) -> torch.Tensor:
        if mods_BT is None:
            mods_BT = torch.zeros_like(tokens_BT)
        group_N = self.group_of_modality[mods_BT.reshape(-1)]
        # checked on the device: raises at once on CPU and never makes the host wait for a GPU
        torch._assert_async((group_N >= 0).all(), "a token's modality id is not one the model "
                            f"was built with ({self._modality_ids()})")
        plan = GroupPlan.build(group_N, len(self.modalities)) if self.cfg.family == "mot" else None
        x = self.embed(tokens_BT)
        for block in self.blocks:
            x = block(x, group_N, plan)
        x = self.norm(x, None)
        head = self.embed.weight if self.lm_head is None else self.lm_head.weight
        aux = [m.aux_loss for m in self.moe_layers()]
        self.aux_loss = torch.stack(aux).sum() if aux else x.new_zeros((), dtype=torch.float32)
        return F.linear(x, head.to(x.dtype))

    @torch.no_grad()
    def update_router_bias(self) -> None:
        """Auxiliary-loss-free balancing, once per optimizer step: each biased router moves by
        its tokens per expert summed over every micro-batch of the step and, under
        torch.distributed, over every rank (one all-reduce), so all ranks make the same
        update; then the counts start again."""
        layers = [m for m in self.moe_layers()
                  if getattr(m.router, "bias_balancing", False) and m.load_E is not None]
        if not layers:
            return
        load = torch.cat([m.load_E for m in layers])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)
        for m, load_E in zip(layers, load.split([m.n_experts for m in layers]), strict=True):
            m.router.update_bias(load_E, m.cfg.bias_update_rate)
            m.load_E = None
