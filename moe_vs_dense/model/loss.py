"""Next-token cross-entropy, overall and per modality (nats/token)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moe_vs_dense.modalities import MODALITIES
from moe_vs_dense.model.experts import count_ids


def lm_loss(logits_BTV: torch.Tensor, targets_BT: torch.Tensor, mods_BT: torch.Tensor):
    """Mean loss, and per canonical modality the summed loss and the token count.

    The modality of a prediction is the modality of the target token."""
    nll_N = F.cross_entropy(logits_BTV.reshape(-1, logits_BTV.shape[-1]).float(),
                            targets_BT.reshape(-1), reduction="none")
    m = mods_BT.reshape(-1)
    sums = torch.zeros(len(MODALITIES), dtype=torch.float64, device=nll_N.device)
    sums.index_add_(0, m, nll_N.detach().double())
    counts = count_ids(m, len(MODALITIES))
    return nll_N.mean(), sums, counts
