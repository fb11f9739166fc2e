"""Routers: which experts each token uses, with what weight, and the balancing losses.

A router returns a `Routing` of flat assignments (token, expert, weight), so a token may use a
different number of experts than another (modality routing with unequal expert counts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from moe_vs_dense.model.experts import count_ids


@dataclass
class Routing:
    tok_A: torch.Tensor  # token index of each assignment
    exp_A: torch.Tensor  # expert index of each assignment
    w_A: torch.Tensor  # weight of each assignment (fp32)
    aux: torch.Tensor  # load-balancing loss (0 for routers without parameters)
    z: torch.Tensor  # router z-loss
    top_k: int | None = None  # assignments per token, when the same for every token


def switch_balance_loss(probs_NE: torch.Tensor, idx_NK: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Switch/GShard load-balancing loss E * sum_e f_e * P_e; equals 1 under uniform routing.
    f_e: fraction of the N*k assignments that went to e; P_e: mean router probability of e."""
    N, k = idx_NK.shape
    f_E = count_ids(idx_NK.reshape(-1), n_experts).to(probs_NE.dtype) / (N * k)
    return n_experts * torch.sum(f_E * probs_NE.mean(0))


def _group_size(expert_group_E: torch.Tensor) -> torch.Tensor:
    """[E]: the number of experts in each expert's group."""
    return _group_sum(torch.ones_like(expert_group_E, dtype=torch.float), expert_group_E)


def _group_sum(v_E: torch.Tensor, expert_group_E: torch.Tensor) -> torch.Tensor:
    """[E]: the sum of v over each expert's group."""
    sums = v_E.new_zeros(len(v_E)).index_add_(0, expert_group_E, v_E)
    return sums[expert_group_E]


def group_balance_loss(probs_NE: torch.Tensor, idx_NK: torch.Tensor, group_N: torch.Tensor,
                       expert_group_E: torch.Tensor) -> torch.Tensor:
    """The switch loss within each group's experts, weighted by the group's share of tokens:
    sum_g (N_g / N) E_g sum_{e in g} f_e P_e, with f_e and P_e over the group's N_g tokens.
    A token's probabilities and choices lie in its own group, so every term is a column sum;
    no host sync (groups absent from the batch add 0)."""
    N, k = idx_NK.shape
    E = probs_NE.shape[1]
    tokens_E = count_ids(group_N, E)[expert_group_E].to(probs_NE.dtype)  # N_g of e's group
    assigned_E = count_ids(idx_NK.reshape(-1), E).to(probs_NE.dtype)
    terms = _group_size(expert_group_E) * assigned_E * probs_NE.sum(0) / tokens_E.clamp(min=1)
    return terms.sum() / (N * k)


class LearnedRouter(nn.Module):
    """Token-choice top-k softmax router (fp32). With `expert_group`, a token only sees the
    experts of its group (modality_group). With bias balancing, a per-expert bias shifts which
    experts are chosen but not their weights (auxiliary-loss-free balancing)."""

    def __init__(self, d_model: int, n_experts: int, top_k: int, norm_topk_prob: bool,
                 init_std: float, expert_group: torch.Tensor | None = None,
                 bias_balancing: bool = False) -> None:
        super().__init__()
        self.n_experts, self.top_k, self.norm_topk_prob = n_experts, top_k, norm_topk_prob
        self.weight = nn.Parameter(torch.randn(n_experts, d_model) * init_std)
        self.register_buffer("expert_group", expert_group, persistent=False)
        self.bias_balancing = bias_balancing
        self.register_buffer("bias", torch.zeros(n_experts))

    def forward(self, x_ND: torch.Tensor, group_N: torch.Tensor | None = None) -> Routing:
        with torch.autocast(x_ND.device.type, enabled=False):  # routing stays in fp32
            logits_NE = F.linear(x_ND.float(), self.weight.float())
        mask_NE = None
        if self.expert_group is not None:
            mask_NE = self.expert_group[None, :] != group_N[:, None]
            logits_NE = logits_NE.masked_fill(mask_NE, float("-inf"))
        probs_NE = torch.softmax(logits_NE, dim=-1)
        scores_NE = probs_NE
        if self.bias_balancing:
            scores_NE = probs_NE + self.bias
            if mask_NE is not None:
                scores_NE = scores_NE.masked_fill(mask_NE, float("-inf"))
        idx_NK = torch.topk(scores_NE, self.top_k, dim=-1).indices
        w_NK = probs_NE.gather(1, idx_NK)
        if self.norm_topk_prob:
            w_NK = w_NK / w_NK.sum(dim=-1, keepdim=True)
        z = torch.logsumexp(logits_NE, dim=-1).pow(2).mean()
        if self.expert_group is None:
            aux = switch_balance_loss(probs_NE, idx_NK, self.n_experts)
        else:
            aux = group_balance_loss(probs_NE, idx_NK, group_N, self.expert_group)
        N = x_ND.shape[0]
        tok_A = torch.arange(N, device=x_ND.device).repeat_interleave(self.top_k)
        return Routing(tok_A, idx_NK.reshape(-1), w_NK.reshape(-1), aux, z, self.top_k)

    @torch.no_grad()
    def update_bias(self, tokens_per_expert: torch.Tensor, rate: float) -> None:
        """Raise the bias of under-loaded experts and lower it for over-loaded ones."""
        load = tokens_per_expert.float()
        if self.expert_group is None:
            target = load.mean().expand_as(load)
        else:
            target = _group_sum(load, self.expert_group) / _group_size(self.expert_group)
        self.bias += rate * torch.sign(target - load)


class ModalityRouter(nn.Module):
    """Deterministic: each token goes to every expert of its modality, with equal weights.
    Assignments are token-major (like top-k routers) and built by arithmetic: with the same
    expert count k in every group, token n's assignments are n*k .. n*k+k-1 (no host sync);
    with unequal counts their total is read back once to size the output."""

    def __init__(self, experts_per_group: list[int]) -> None:
        super().__init__()
        self.experts_per_group = experts_per_group
        self.n_experts = sum(experts_per_group)
        per = torch.tensor(experts_per_group)
        self.register_buffer("start_G", torch.cumsum(per, 0) - per, persistent=False)
        self.register_buffer("count_G", per, persistent=False)
        self.top_k = experts_per_group[0] if len(set(experts_per_group)) == 1 else None

    def forward(self, x_ND: torch.Tensor, group_N: torch.Tensor) -> Routing:
        N, dev = x_ND.shape[0], x_ND.device
        zero = x_ND.new_zeros((), dtype=torch.float32)
        if self.top_k is not None:
            k = self.top_k
            tok_A = torch.arange(N, device=dev).repeat_interleave(k)
            exp_A = (self.start_G[group_N][:, None] + torch.arange(k, device=dev)).reshape(-1)
            w_A = torch.full((N * k,), 1.0 / k, device=dev)
            return Routing(tok_A, exp_A, w_A, zero, zero, k)
        per_N = self.count_G[group_N]
        ends_N = torch.cumsum(per_N, 0)
        total = int(ends_N[-1]) if N else 0  # the one host sync: the number of assignments
        tok_A = torch.repeat_interleave(torch.arange(N, device=dev), per_N, output_size=total)
        slot_A = torch.arange(total, device=dev) - (ends_N - per_N)[tok_A]
        exp_A = self.start_G[group_N][tok_A] + slot_A
        return Routing(tok_A, exp_A, 1.0 / per_N[tok_A].float(), zero, zero, None)
