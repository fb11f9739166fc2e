"""The MoE FFN layer: a router, dropless experts on a chosen backend, an optional shared expert.

Backends: `torch` sorts assignments by expert and runs the experts' fused GLU on grouped
matmuls (grouped_mm or a loop); `megablocks` uses megablocks' CUDA sort/gather/scatter kernels
and grouped GEMM on the same weights (optional `[gpu]` extra); `auto` takes megablocks only
where it can run (CUDA, megablocks' ops, grouped GEMM, a bf16 run). All are dropless.
"""

from __future__ import annotations

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


def megablocks_missing() -> str | None:
    """What the megablocks backend lacks on this machine (None: nothing): a CUDA device,
    megablocks' compiled ops (`megablocks_ops`, built only where nvcc and CUDA torch are) and
    grouped GEMM (the `grouped_gemm` package, megablocks' `gg` extra)."""
    if not torch.cuda.is_available():
        return "this machine has no CUDA device"
    try:
        import megablocks.ops  # noqa: F401  (imports the CUDA extension megablocks_ops)
        from megablocks import grouped_gemm_util as gg
    except Exception as e:  # ImportError, or a RuntimeError from Triton or CUDA at import
        return f"megablocks does not import ({type(e).__name__}: {e})"
    if not gg.grouped_gemm_is_available():
        return "grouped GEMM is not installed (the grouped_gemm package, megablocks' gg extra)"
    return None


def resolve_backend(cfg: MoEConfig, precision: str = "fp32") -> str:
    """The backend that will run: `torch`, or `megablocks` where it is usable and the run is
    bf16 (its grouped GEMM has no fp32 kernel). `auto` falls back to torch; `megablocks` asked
    for by name is an error that says what is missing."""
    if cfg.backend == "torch":
        return "torch"
    missing = megablocks_missing()
    if missing is None and precision != "bf16":
        if cfg.backend == "auto":
            return "torch"
        raise UserError(f"model.moe.backend: megablocks runs bf16 only (its grouped GEMM has no "
                        f"{precision} kernel); set train.precision: bf16 or backend: torch")
    if missing is None:
        return "megablocks"
    if cfg.backend == "auto":
        return "torch"
    raise UserError(f"model.moe.backend: megablocks cannot run here: {missing}. On a CUDA node, "
                    "`pip install 'moe-vs-dense[gpu]'` (README, GPU); else use backend: torch")


class MoE(nn.Module):
    def __init__(self, cfg: MoEConfig, d_model: int, d_expert: int, modalities: list[str],
                 init_std: float, out_std: float, precision: str = "fp32") -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.router == "learned":
            n_experts = cfg.num_experts
            self.router = LearnedRouter(d_model, n_experts, cfg.top_k,
                                        cfg.resolved_norm_topk_prob, init_std,
                                        bias_balancing=cfg.bias_balancing)
        else:
            per = experts_per_group(cfg, modalities)
            n_experts = sum(per)
            if cfg.router == "modality":
                self.router = ModalityRouter(per)
            else:
                group = torch.repeat_interleave(torch.arange(len(per)), torch.tensor(per))
                self.router = LearnedRouter(d_model, n_experts, cfg.top_k,
                                            cfg.resolved_norm_topk_prob, init_std, expert_group=group,
                                            bias_balancing=cfg.bias_balancing)
        self.n_experts = n_experts
        self.experts = Experts(n_experts, d_model, d_expert, init_std, out_std)
        self.shared = (SwiGLU(d_model, cfg.d_shared or d_expert, init_std, out_std)
                       if cfg.shared_expert else None)
        self.backend = resolve_backend(cfg, precision)
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
        # one expert per modality: every weight is exactly 1, so skip scaling by it
        w_S = None if self.cfg.router == "modality" and r.top_k == 1 else r.w_A[order]
        y_ND = self.experts(x_ND, r.tok_A[order], counts_E, w_S, self.impl)
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
