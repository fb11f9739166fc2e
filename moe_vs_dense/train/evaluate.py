"""Held-out loss on each stream's fixed validation rows, with standard errors and expert use.

The rows are the first `rows` of each stream's validation split: prepare assigns documents to
validation by a hash of their key and packs each stream on its own, so every run whose mixture
holds the stream (a paired partner, a unimodal baseline, a joint run) scores the same raw tokens
(token ids differ between mixtures only by the modality's offset in the shared vocabulary).

Losses are grouped by the stream's own modality ("text", "image", ...); tokens of another
modality inside a paired stream (an image's label, a clip's transcript) are reported apart as
"image->text", "speech->text". The standard error treats each validation document (as
prepared: a source document, or a `doc_units` chunk of a long one) as one independent cluster
of tokens: the ratio-estimator SE over documents, with no assumption that tokens within a
document are independent (they are not: a row-level or token-level SE would be too small).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from moe_vs_dense.data.loader import PreparedData, val_batches
from moe_vs_dense.data.prepare import bits_per_unit
from moe_vs_dense.data.tokenizers import EOD
from moe_vs_dense.modalities import MODALITIES
from moe_vs_dense.model.transformer import Transformer
from moe_vs_dense.train.step import autocast

SE_METHOD = ("ratio estimator with documents as clusters (tokens between end-of-document "
             "markers; tokens within a document not assumed independent)")


def ratio_se(sums_R: np.ndarray, counts_R: np.ndarray) -> tuple[float, float | None]:
    """Mean loss per token over clusters (sums and token counts per cluster) and its standard
    error (None from a single cluster)."""
    keep = counts_R > 0
    s, n = sums_R[keep], counts_R[keep]
    loss = float(s.sum() / n.sum())
    r = len(n)
    if r < 2:
        return loss, None
    var = r / (r - 1) * np.sum((s - loss * n) ** 2) / n.sum() ** 2
    return loss, float(math.sqrt(var))


class ExpertCounter:
    """Forward hooks on the MoE layers: tokens per expert by modality during evaluation."""

    def __init__(self, model: Transformer) -> None:
        self.model = model
        layers = model.moe_layers()
        self.counts = [torch.zeros(len(model.modalities), m.n_experts, dtype=torch.long)
                       for m in layers]
        self.aux = [0.0] * len(layers)
        self.z = [0.0] * len(layers)
        self.calls = 0
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(layers)]

    def _hook(self, i: int):
        def hook(module, args, _out) -> None:
            x_BTD, group_BT = args
            group_N = group_BT.reshape(-1)
            r = module.router(x_BTD.reshape(-1, x_BTD.shape[-1]), group_N)
            pair = group_N[r.tok_A] * module.n_experts + r.exp_A
            flat = torch.bincount(pair, minlength=self.counts[i].numel()).cpu()
            self.counts[i] += flat.view_as(self.counts[i])
            self.aux[i] += float(module.stats["aux"])
            self.z[i] += float(module.stats["z"])
            if i == 0:
                self.calls += 1
        return hook

    def close(self) -> list[dict]:
        for h in self.handles:
            h.remove()
        return [expert_summary(i, c.numpy(), self.model.modalities, self.aux[i] / max(1, self.calls),
                               self.z[i] / max(1, self.calls)) for i, c in enumerate(self.counts)]


def expert_summary(layer: int, counts_GE: np.ndarray, modalities: list[str], aux: float,
                   z: float) -> dict:
    """One layer's expert use: totals, per modality, imbalance, dead experts, and the mutual
    information between a token's modality and its expert (bits; equal to the modality entropy
    when the router separates modalities completely, 0 when routing ignores modality)."""
    total_E = counts_GE.sum(axis=0).astype(np.float64)
    p = counts_GE / max(1, counts_GE.sum())
    pg, pe = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
    nz = p > 0
    mi = float(np.sum(p[nz] * np.log2(p[nz] / (pg @ pe)[nz])))
    h_mod = float(-np.sum(pg[pg > 0] * np.log2(pg[pg > 0])))
    return {
        "layer": layer,
        "tokens_per_expert": total_E.astype(np.int64).tolist(),
        "by_modality": {m: counts_GE[g].tolist() for g, m in enumerate(modalities)
                        if counts_GE[g].sum() > 0},
        "imbalance": float(total_E.max() / max(total_E.mean(), 1e-9)),
        "dead_experts": int((total_E == 0).sum()),
        "aux_loss": aux,
        "z_loss": z,
        "modality_expert_mi_bits": mi,
        "modality_entropy_bits": h_mod,
    }


def stream_key(data: PreparedData, stream: str, modality: str) -> str:
    own = data.meta["streams"][stream]["modality"]
    return own if modality == own else f"{own}->{modality}"


def tokens_per_unit(data: PreparedData, key_streams: dict[str, list[tuple[str, str]]]) -> dict:
    """Tokens per raw unit of each result key, from the validation split's counts."""
    out = {}
    for key, parts in key_streams.items():
        tok = units = 0
        for stream, m in parts:
            c = data.meta["streams"][stream]["val"]["modalities"].get(m, {})
            tok, units = tok + c.get("tokens", 0), units + c.get("units", 0)
        out[key] = tok / units if units else None
    return out


def doc_ids(rows_RT: np.ndarray, first: int = 0) -> np.ndarray:
    """Document index of every target position of consecutive validation rows, counting from
    `first` (the EODs before these rows): documents end at EOD (which belongs to the document
    it ends)."""
    eod = (rows_RT == EOD).reshape(-1)
    doc = first + np.cumsum(eod) - eod
    return doc.reshape(rows_RT.shape)[:, 1:]


class DocSums:
    """Summed loss and tokens per document, added batch by batch (memory grows with the
    documents, not the tokens)."""

    def __init__(self) -> None:
        self.sums = np.zeros(0)
        self.counts = np.zeros(0)

    def add(self, doc_M: np.ndarray, nll_M: np.ndarray) -> None:
        s, n = np.bincount(doc_M, nll_M), np.bincount(doc_M).astype(np.float64)
        if len(s) > len(self.sums):
            self.sums = np.pad(self.sums, (0, len(s) - len(self.sums)))
            self.counts = np.pad(self.counts, (0, len(s) - len(self.counts)))
        self.sums[: len(s)] += s
        self.counts[: len(n)] += n


@torch.no_grad()
def evaluate(model: Transformer, data: PreparedData, rows: int | None, batch_rows: int,
             precision: str = "fp32") -> dict:
    """Loss per modality (nats/token, bits per raw unit, SE, tokens, rows, documents) on the
    first `rows` validation rows of every stream (None: all), expert use per MoE layer, and the
    summed loss and tokens of every validation document (in data order: two runs on the same
    data align document by document, for paired differences)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = ExpertCounter(model)
    per_doc: dict[str, list[DocSums]] = {}
    n_rows: dict[str, int] = {}
    parts: dict[str, list[tuple[str, str]]] = {}
    try:
        for stream in data.streams:
            acc: dict[str, DocSums] = {}
            eods = 0
            for x, m in val_batches(data, stream, batch_rows, rows):
                x_BT, m_BT = torch.from_numpy(x).to(device), torch.from_numpy(m).to(device)
                with autocast(device, precision):
                    logits = model(x_BT[:, :-1], m_BT[:, :-1])
                nll_BT = F.cross_entropy(logits.float().transpose(1, 2), x_BT[:, 1:],
                                         reduction="none").double().cpu().numpy()
                doc_BT, mod_BT = doc_ids(x, eods), m[:, 1:]
                eods += int((x == EOD).sum())
                for i, mod in enumerate(MODALITIES):
                    mask = mod_BT == i
                    if not mask.any():
                        continue
                    key = stream_key(data, stream, mod)
                    if key not in acc:
                        acc[key] = DocSums()
                        per_doc.setdefault(key, []).append(acc[key])
                        parts.setdefault(key, []).append((stream, mod))
                    acc[key].add(doc_BT[mask], nll_BT[mask])
                    n_rows[key] = n_rows.get(key, 0) + int(mask.any(axis=1).sum())
    finally:
        experts = counter.close()
        model.train(was_training)
    tpu = tokens_per_unit(data, parts)
    losses, docs = {}, {}
    for key, accs in per_doc.items():
        s, n = np.concatenate([a.sums for a in accs]), np.concatenate([a.counts for a in accs])
        loss, se = ratio_se(s, n)
        losses[key] = {
            "loss": loss,
            "se": se,
            "bits_per_unit": None if tpu[key] is None else bits_per_unit(loss, tpu[key]),
            "tokens": int(n.sum()),
            "rows": n_rows[key],
            "docs": int((n > 0).sum()),
        }
        docs[key] = {"nll_sum": s.tolist(), "tokens": n.astype(np.int64).tolist()}
    return {"losses": losses, "expert_stats": experts, "docs": docs}
