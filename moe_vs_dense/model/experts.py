"""Expert weights and the grouped matmul that runs them on tokens sorted by expert.

`grouped_matmul(x_sorted, w_GIO, counts)` multiplies the rows of each group by that group's
weight. It uses `torch.nn.functional.grouped_mm` where this torch build runs it for the device
and dtype (probed once) and the strides are 16-byte aligned, else a loop over groups. Both are
dropless: every row is computed.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def _grouped_mm_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether grouped_mm runs forward and backward here (it is new and device-dependent)."""
    if not hasattr(F, "grouped_mm"):
        return False
    try:
        a = torch.randn(8, 16, device=device_type, dtype=dtype, requires_grad=True)
        b = torch.randn(2, 16, 16, device=device_type, dtype=dtype, requires_grad=True)
        offs = torch.tensor([3, 8], device=device_type, dtype=torch.int32)
        out = F.grouped_mm(a, b, offs=offs)
        out.backward(torch.ones_like(out))
        return True
    except (RuntimeError, NotImplementedError):
        return False


def can_use_grouped_mm(x: torch.Tensor, w: torch.Tensor) -> bool:
    aligned = all((n * x.element_size()) % 16 == 0 for n in w.shape[1:])
    return aligned and x.dtype == w.dtype and _grouped_mm_works(x.device.type, x.dtype)


def grouped_matmul(x_TI: torch.Tensor, w_GIO: torch.Tensor, counts_G: torch.Tensor,
                   impl: str = "auto") -> torch.Tensor:
    """Rows x_TI, sorted by group with counts_G rows per group, times that group's w_GIO."""
    if impl == "grouped_mm" or (impl == "auto" and can_use_grouped_mm(x_TI, w_GIO)):
        offs = torch.cumsum(counts_G, 0).to(torch.int32)
        return F.grouped_mm(x_TI, w_GIO, offs=offs)
    chunks = torch.split(x_TI, counts_G.tolist())
    return torch.cat([c @ w_GIO[g] for g, c in enumerate(chunks)])


class Experts(nn.Module):
    """E SwiGLU experts, weights stacked as [E, in, out] (gate and up fused)."""

    def __init__(self, num: int, d_model: int, hidden: int, init_std: float, out_std: float) -> None:
        super().__init__()
        self.num, self.hidden = num, hidden
        self.w_gate_up = nn.Parameter(torch.randn(num, d_model, 2 * hidden) * init_std)
        self.w_down = nn.Parameter(torch.randn(num, hidden, d_model) * out_std)

    def forward(self, x_sorted: torch.Tensor, counts_E: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        w1 = self.w_gate_up.to(x_sorted.dtype)
        gate, up = grouped_matmul(x_sorted, w1, counts_E, impl).chunk(2, dim=-1)
        h = F.silu(gate) * up
        return grouped_matmul(h, self.w_down.to(h.dtype), counts_E, impl)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e applied to rows x with plain matmuls (for references and export)."""
        gate, up = (x @ self.w_gate_up[e]).chunk(2, dim=-1)
        return (F.silu(gate) * up) @ self.w_down[e]


def init_std_out(init_std: float, n_layers: int) -> float:
    """Residual-branch output projections are scaled down with depth (GPT-2)."""
    return init_std / math.sqrt(2 * n_layers)
