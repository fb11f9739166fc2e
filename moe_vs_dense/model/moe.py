"""The MoE FFN layer: a router, dropless experts on a chosen backend, an optional shared expert.

Backends: `torch` sorts assignments by expert and runs the experts' fused GLU on grouped
matmuls (grouped_mm or a loop); `megablocks` uses megablocks' CUDA sort/gather/scatter kernels
and grouped GEMM on the same weights (optional `[gpu]` extra); `auto` takes megablocks only
when CUDA and the package are both there. All are dropless.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from moe_vs_dense.config import MoEConfig
from moe_vs_dense.errors import UserError
from moe_vs_dense.model.experts import Experts, SwiGLU, compute_dtype, count_ids
from moe_vs_dense.model.routers import LearnedRouter, ModalityRouter, Routing


def experts_per_group(cfg: MoEConfig, modalities: list[str]) -> list[int]:
    per = cfg.experts_per_modality
    return [per[m] if isinstance(per, dict) else per for m in modalities]


def resolve_backend(cfg: MoEConfig) -> str:
    have_cuda = torch.cuda.is_available()
    have_mb = importlib.util.find_spec("megablocks") is not None
    if cfg.backend == "auto":
        return "megablocks" if have_cuda and have_mb else "torch"
    if cfg.backend == "megablocks" and not (have_cuda and have_mb):
        why = "no CUDA device" if not have_cuda else "the megablocks package is not installed"
        raise UserError(f"model.moe.backend: megablocks needs CUDA and `pip install "
                        f"moe-vs-dense[gpu]`, but this machine has {why}; use backend: torch")
    return cfg.backend


class MoE(nn.Module):
    def __init__(self, cfg: MoEConfig, d_model: int, hidden: int, modalities: list[str],
                 init_std: float, out_std: float) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.router == "learned":
            n_experts = cfg.num_experts
            self.router = LearnedRouter(d_model, n_experts, cfg.top_k, cfg.normalize_topk,
                                        init_std, bias_balancing=cfg.bias_balancing)
        else:
            per = experts_per_group(cfg, modalities)
            n_experts = sum(per)
            if cfg.router == "modality":
                self.router = ModalityRouter(per)
            else:
                group = torch.repeat_interleave(torch.arange(len(per)), torch.tensor(per))
                self.router = LearnedRouter(d_model, n_experts, cfg.top_k, cfg.normalize_topk,
                                            init_std, expert_group=group,
                                            bias_balancing=cfg.bias_balancing)
        self.n_experts = n_experts
        self.experts = Experts(n_experts, d_model, hidden, init_std, out_std)
        self.shared = (SwiGLU(d_model, cfg.d_shared or hidden, init_std, out_std)
                       if cfg.shared_expert else None)
        self.backend = resolve_backend(cfg)
        self.impl = "auto"  # torch backend: "auto" | "grouped_mm" | "loop" (benchmarks, tests)
        self.aux_loss = torch.zeros(())
        self.stats: dict[str, torch.Tensor] = {}
        # tokens per expert summed over the training micro-batches since the last bias update;
        # a plain attribute, not a buffer, so that DDP does not overwrite it with rank 0's
        self.load_E: torch.Tensor | None = None

    def forward(self, x_BTD: torch.Tensor, group_BT: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BTD.shape
        x_ND = x_BTD.reshape(-1, D)
        r = self.router(x_ND, group_BT.reshape(-1))
        if self.backend == "megablocks":
            y_ND, counts_E = self._megablocks_forward(x_ND, r)
        else:
            y_ND, counts_E = self._torch_forward(x_ND, r)
        if self.shared is not None:
            y_ND = y_ND + self.shared(x_ND)
        self.aux_loss = self.cfg.aux_loss_weight * r.aux + self.cfg.z_loss_weight * r.z
        self.stats = {"tokens_per_expert": counts_E.detach(), "aux": r.aux.detach(),
                      "z": r.z.detach()}
        if self.training and getattr(self.router, "bias_balancing", False):
            self.load_E = counts_E.detach() if self.load_E is None else self.load_E + counts_E.detach()
        return y_ND.view(B, T, D)

    def _torch_forward(self, x_ND: torch.Tensor, r: Routing):
        order = torch.argsort(r.exp_A, stable=True)
        counts_E = count_ids(r.exp_A, self.n_experts)
        y_ND = self.experts(x_ND, r.tok_A[order], counts_E, r.w_A[order], self.impl)
        return y_ND, counts_E

    def _megablocks_forward(self, x_ND: torch.Tensor, r: Routing):
        """megablocks' CUDA permutation kernels and grouped GEMM, on this layer's weights."""
        if r.top_k is None:
            raise UserError("model.moe.backend: megablocks needs the same number of experts per "
                            "token; give every modality the same experts_per_modality")
        import megablocks.ops as mops
        from megablocks import grouped_gemm_util as gg

        k = r.top_k
        x_ND = x_ND.to(compute_dtype(x_ND))
        top_experts = r.exp_A.int()
        end_bit = max(int(self.n_experts - 1).bit_length(), 1)
        with torch.no_grad():
            bin_ids, indices = mops.sort(top_experts, end_bit)
            counts_E = mops.histogram(top_experts, self.n_experts)
            bins = mops.inclusive_cumsum(counts_E, 0).view(-1)
        x = mops.gather(x_ND, indices, bin_ids, bins, k)
        batch_sizes = counts_E.cpu().long()
        e = self.experts
        gate, up, down = (w.to(x.dtype) for w in (e.w_gate, e.w_up, e.w_down))
        act = F.silu(gg.ops.gmm(x, gate, batch_sizes)) * gg.ops.gmm(x, up, batch_sizes)
        y = gg.ops.gmm(act, down, batch_sizes)
        out = mops.scatter(y, indices, bin_ids, r.w_A.to(x.dtype), bins, k)
        return out.view_as(x_ND), counts_E.long()
