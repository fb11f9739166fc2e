"""Parts every family shares: RoPE and the causal attention core."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Rotary(nn.Module):
    """Rotary position embedding in the rotate-half layout (as Llama), cached up to max_len."""

    def __init__(self, head_dim: int, max_len: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        emb = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, x_BHTD: torch.Tensor) -> torch.Tensor:
        T = x_BHTD.shape[-2]
        cos, sin = self.cos[:T].to(x_BHTD.dtype), self.sin[:T].to(x_BHTD.dtype)
        x1, x2 = x_BHTD.chunk(2, dim=-1)
        return x_BHTD * cos + torch.cat([-x2, x1], dim=-1) * sin


def causal_attention(q_BTD: torch.Tensor, k_BTD: torch.Tensor, v_BTD: torch.Tensor,
                     n_heads: int, rotary: Rotary) -> torch.Tensor:
    """Multi-head causal self-attention over the whole sequence (SDPA), RoPE on q and k."""
    B, T, D = q_BTD.shape

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(B, T, n_heads, D // n_heads).transpose(1, 2)

    q, k, v = rotary(heads(q_BTD)), rotary(heads(k_BTD)), heads(v_BTD)
    y_BHTd = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y_BHTd.transpose(1, 2).reshape(B, T, D)
