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
    """Whether grouped_mm runs here (it is new and device-dependent) in both forms the experts
    use: rows times per-group weights, and per-group x^T dy (the weight gradient). Forward
    only and without autograd: the experts' backward is hand-written from the same calls, and
    the probe is first reached inside that autograd Function, where autograd is off."""
    if not hasattr(F, "grouped_mm"):
        return False
    try:
        with torch.no_grad():
            a = torch.randn(8, 16, device=device_type, dtype=dtype)
            b = torch.randn(2, 16, 16, device=device_type, dtype=dtype)
            offs = torch.tensor([3, 8], device=device_type, dtype=torch.int32)
            y = F.grouped_mm(a, b, offs=offs)
            dw = F.grouped_mm(a.t(), y, offs=offs)
        want = torch.cat([a[:3] @ b[0], a[3:] @ b[1]])
        return (y.shape == (8, 16) and dw.shape == (2, 16, 16)
                and torch.allclose(y.float(), want.float(), rtol=0.05, atol=0.05 * float(want.abs().max())))
    except (RuntimeError, NotImplementedError):
        return False


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The autocast dtype where autocast is on for x's device, else x's dtype: autocast does
    not cast the inputs of custom autograd Functions or of grouped_mm."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def can_use_grouped_mm(x: torch.Tensor, w: torch.Tensor) -> bool:
    """For x [T, I] times w [G, I, O], or x_g^T times w = dy [T, O]: both I and O must give
    16-byte-aligned rows (grouped_mm's CUDA kernels require it)."""
    aligned = all((n * x.element_size()) % 16 == 0 for n in (x.shape[-1], w.shape[-1]))
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


def count_ids(ids: torch.Tensor, n: int) -> torch.Tensor:
    """How often each of 0..n-1 occurs in `ids` (int64 [n]). Unlike torch.bincount, which reads
    the largest id back to size its output, it never waits for the GPU."""
    ones = torch.ones_like(ids, dtype=torch.long)
    return torch.zeros(n, dtype=torch.long, device=ids.device).scatter_add_(0, ids.long(), ones)


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


def _glu_forward(x_S, w_gate, w_up, w_down, counts, impl):
    gate = grouped_matmul(x_S, w_gate, counts, impl)
    up = grouped_matmul(x_S, w_up, counts, impl)
    silu = F.silu(gate)
    act = silu * up
    return (gate, up, silu, act), grouped_matmul(act, w_down, counts, impl)


def _glu_backward(dy_S, x_S, w_gate, w_up, w_down, counts, saved, impl):
    """Gradients of down(silu(gate) * up) for the input and the three weights."""
    gate, up, silu, act = saved
    d_down = grouped_weight_grad(act, dy_S, counts, impl)
    d_act = grouped_matmul(dy_S, w_down.transpose(1, 2), counts, impl)
    d_up = d_act * silu
    d_gate = torch.ops.aten.silu_backward.grad_input(d_act.mul_(up), gate, grad_input=d_act)
    dx_S = grouped_matmul(d_gate, w_gate.transpose(1, 2), counts, impl)
    dx_S += grouped_matmul(d_up, w_up.transpose(1, 2), counts, impl)
    return (dx_S, grouped_weight_grad(x_S, d_gate, counts, impl),
            grouped_weight_grad(x_S, d_up, counts, impl), d_down)


class _RoutedGLU(torch.autograd.Function):
    """Dropless experts as one autograd node: gather each assignment's token (rows sorted by
    expert), run its expert's GLU, scale by its routing weight, and sum back per token. The
    backward gathers and scatters with index_select / index_add_ (no index_put accumulation)
    and folds the routing weight into the output gradient in place. Gate and up are separate
    [S, h] matmuls: a fused [S, 2h] buffer reaches glibc's 32 MiB mmap threshold sooner (8192
    fp32 rows of h=512) and is then mapped and page-faulted afresh on every call."""

    @staticmethod
    def forward(ctx, x_ND, tok_S, w_S, counts, w_gate, w_up, w_down, impl):
        x_S = x_ND if tok_S is None else x_ND.index_select(0, tok_S)
        saved, y_S = _glu_forward(x_S, w_gate, w_up, w_down, counts, impl)
        ctx.save_for_backward(x_S, tok_S, w_S, counts, w_gate, w_up, w_down, *saved,
                              y_S if w_S is not None and w_S.requires_grad else None)
        ctx.impl, ctx.n = impl, x_ND.shape[0]
        if w_S is not None:
            y_S = y_S * w_S[:, None].to(y_S.dtype)
        if tok_S is None:
            return y_S
        return y_S.new_zeros(ctx.n, y_S.shape[1]).index_add_(0, tok_S, y_S)

    @staticmethod
    def backward(ctx, dout_ND):
        x_S, tok_S, w_S, counts, w_gate, w_up, w_down, *saved, y_S = ctx.saved_tensors
        dy_S = dout_ND.contiguous() if tok_S is None else dout_ND.index_select(0, tok_S)
        d_w = None
        if y_S is not None:
            d_w = torch.linalg.vecdot(dy_S.float(), y_S.float()).to(w_S.dtype)
        if w_S is not None:  # dy_S is our own buffer when gathered, so scale it in place
            w = w_S[:, None].to(dy_S.dtype)
            dy_S = dy_S * w if tok_S is None else dy_S.mul_(w)
        dx_S, *d_weights = _glu_backward(dy_S, x_S, w_gate, w_up, w_down, counts, saved, ctx.impl)
        dx = dx_S if tok_S is None else dx_S.new_zeros(ctx.n, dx_S.shape[1]).index_add_(0, tok_S, dx_S)
        return dx, None, d_w, None, *d_weights, None


class Experts(nn.Module):
    """E SwiGLU experts, each weight stacked over experts as [E, in, out]."""

    def __init__(self, n_experts: int, d_model: int, d_expert: int, init_std: float,
                 out_std: float) -> None:
        super().__init__()
        self.n_experts, self.d_expert = n_experts, d_expert
        self.w_gate = nn.Parameter(torch.randn(n_experts, d_model, d_expert) * init_std)
        self.w_up = nn.Parameter(torch.randn(n_experts, d_model, d_expert) * init_std)
        self.w_down = nn.Parameter(torch.randn(n_experts, d_expert, d_model) * out_std)

    def forward(self, x_ND: torch.Tensor, tok_S: torch.Tensor | None, counts_E: torch.Tensor,
                w_S: torch.Tensor | None = None, impl: str = "auto") -> torch.Tensor:
        """sum over assignments s of token n: w_S[s] * expert_s(x_ND[n]), as [N, D].

        Assignments s are sorted by expert, counts_E[e] of them for expert e; tok_S[s] is the
        token of assignment s (None: the rows of x_ND themselves, already sorted); w_S[s] its
        routing weight (None: 1)."""
        dtype = compute_dtype(x_ND)
        return _RoutedGLU.apply(x_ND.to(dtype), tok_S, w_S, counts_E, self.w_gate.to(dtype),
                                self.w_up.to(dtype), self.w_down.to(dtype), impl)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e applied to rows x with plain matmuls (the dense FFN, references, export)."""
        dtype = compute_dtype(x)
        w_gate, w_up, w_down = (w[e].to(dtype) for w in (self.w_gate, self.w_up, self.w_down))
        return (F.silu(x @ w_gate) * (x @ w_up)) @ w_down


class SwiGLU(Experts):
    """The dense FFN: one expert that every token uses, as three plain matmuls (no routing,
    no group counts, nothing that waits for the device)."""

    def __init__(self, d_model: int, d_ff: int, init_std: float = 0.02,
                 out_std: float = 0.02) -> None:
        super().__init__(1, d_model, d_ff, init_std, out_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.expert(0, x)


def init_std_out(init_std: float, n_layers: int) -> float:
    """Residual-branch output projections are scaled down with depth (GPT-2)."""
    return init_std / math.sqrt(2 * n_layers)
