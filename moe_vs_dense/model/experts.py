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
    if _use_grouped_mm(impl, x_TI, w_GIO):
        return F.grouped_mm(x_TI, w_GIO, offs=torch.cumsum(counts_G, 0).to(torch.int32))
    if torch.is_grad_enabled() and (x_TI.requires_grad or w_GIO.requires_grad):
        return torch.cat([x_TI[a:b] @ w_GIO[g] for g, (a, b) in enumerate(_bounds(counts_G))])
    out = x_TI.new_empty(x_TI.shape[0], w_GIO.shape[2])
    for g, (a, b) in enumerate(_bounds(counts_G)):
        torch.mm(x_TI[a:b], w_GIO[g], out=out[a:b])
    return out


def grouped_weight_grad(x_TI: torch.Tensor, dy_TO: torch.Tensor, counts_G: torch.Tensor,
                        impl: str = "auto") -> torch.Tensor:
    """Per group g: x_g^T @ dy_g, stacked [G, I, O] (the weight gradient of grouped_matmul)."""
    if _use_grouped_mm(impl, x_TI, dy_TO):
        return F.grouped_mm(x_TI.t(), dy_TO, offs=torch.cumsum(counts_G, 0).to(torch.int32))
    out = x_TI.new_zeros(len(counts_G), x_TI.shape[1], dy_TO.shape[1])
    for g, (a, b) in enumerate(_bounds(counts_G)):
        if b > a:
            torch.mm(x_TI[a:b].t(), dy_TO[a:b], out=out[g])
    return out


def _use_grouped_mm(impl: str, x: torch.Tensor, w: torch.Tensor) -> bool:
    return impl == "grouped_mm" or (impl == "auto" and can_use_grouped_mm(x, w))


def _bounds(counts_G: torch.Tensor) -> list[tuple[int, int]]:
    ends = torch.cumsum(counts_G, 0).tolist()
    return list(zip([0] + ends[:-1], ends, strict=True))


class _GroupedGLU(torch.autograd.Function):
    """down(silu(gate) * up) per expert on rows sorted by expert, with a hand-written backward
    that fills one gradient buffer in place: three elementwise passes, no concatenation."""

    @staticmethod
    def forward(ctx, x, w_gate_up, w_down, counts, impl):
        h = w_down.shape[1]
        a = grouped_matmul(x, w_gate_up, counts, impl)  # [T, 2h]: gate | up
        silu = F.silu(a[:, :h])
        act = silu * a[:, h:]
        ctx.save_for_backward(x, w_gate_up, w_down, counts, a, silu, act)
        ctx.impl = impl
        return grouped_matmul(act, w_down, counts, impl)

    @staticmethod
    def backward(ctx, dy):
        x, w_gate_up, w_down, counts, a, silu, act = ctx.saved_tensors
        impl, h = ctx.impl, w_down.shape[1]
        dy = dy.contiguous()
        d_down = grouped_weight_grad(act, dy, counts, impl)
        d_act = grouped_matmul(dy, w_down.transpose(1, 2), counts, impl)
        da = torch.empty_like(a)
        torch.mul(d_act, silu, out=da[:, h:])  # d up
        torch.mul(d_act, a[:, h:], out=da[:, :h])
        torch.ops.aten.silu_backward.grad_input(da[:, :h], a[:, :h], grad_input=da[:, :h])
        d_gate_up = grouped_weight_grad(x, da, counts, impl)
        dx = grouped_matmul(da, w_gate_up.transpose(1, 2), counts, impl)
        return dx, d_gate_up, d_down, None, None


class Experts(nn.Module):
    """E SwiGLU experts, weights stacked as [E, in, out] (gate and up fused)."""

    def __init__(self, num: int, d_model: int, hidden: int, init_std: float, out_std: float) -> None:
        super().__init__()
        self.num, self.hidden = num, hidden
        self.w_gate_up = nn.Parameter(torch.randn(num, d_model, 2 * hidden) * init_std)
        self.w_down = nn.Parameter(torch.randn(num, hidden, d_model) * out_std)

    def forward(self, x_sorted: torch.Tensor, counts_E: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        dtype = x_sorted.dtype
        return _GroupedGLU.apply(x_sorted, self.w_gate_up.to(dtype), self.w_down.to(dtype),
                                 counts_E, impl)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e applied to rows x with plain matmuls (for references and export)."""
        gate, up = (x @ self.w_gate_up[e]).chunk(2, dim=-1)
        return (F.silu(gate) * up) @ self.w_down[e]


class SwiGLU(Experts):
    """The dense FFN: one expert that every token uses (same kernels as the MoE experts)."""

    def __init__(self, d_model: int, hidden: int, init_std: float = 0.02,
                 out_std: float = 0.02) -> None:
        super().__init__(1, d_model, hidden, init_std, out_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x_ND = x.reshape(-1, x.shape[-1])
        counts = torch.tensor([x_ND.shape[0]], device=x.device)
        return super().forward(x_ND, counts).view_as(x)


def init_std_out(init_std: float, n_layers: int) -> float:
    """Residual-branch output projections are scaled down with depth (GPT-2)."""
    return init_std / math.sqrt(2 * n_layers)
