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
    """Forward hooks on the MoE layers: tokens per expert by modality, and the aux and z losses
    of each validation batch (by batch index, so that ranks' shares merge in data order)."""

    def __init__(self, model: Transformer) -> None:
        self.model = model
        layers = model.moe_layers()
        self.counts = [torch.zeros(len(model.modalities), m.n_experts, dtype=torch.long)
                       for m in layers]
        self.aux: list[dict[int, float]] = [{} for _ in layers]
        self.z: list[dict[int, float]] = [{} for _ in layers]
        self.batch = 0  # index of the batch being scored
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(layers)]

    def _hook(self, i: int):
        def hook(module, args, _out) -> None:
            x_BTD, group_BT = args
            group_N = group_BT.reshape(-1)
            r = module.router(x_BTD.reshape(-1, x_BTD.shape[-1]), group_N)
            pair = group_N[r.tok_A] * module.n_experts + r.exp_A
            flat = torch.bincount(pair, minlength=self.counts[i].numel()).cpu()
            self.counts[i] += flat.view_as(self.counts[i])
            self.aux[i][self.batch] = float(module.stats["aux"])
            self.z[i][self.batch] = float(module.stats["z"])
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def merge(self, others: list[ExpertCounter]) -> None:
        """Add other ranks' counts and per-batch losses (as gathered) to this one's."""
        for o in others:
            for i in range(len(self.counts)):
                self.counts[i] += o.counts[i]
                self.aux[i].update(o.aux[i])
                self.z[i].update(o.z[i])

    def summary(self) -> list[dict]:
        """Per layer: expert use, and the aux and z losses averaged over batches in data order."""
        def mean(d: dict[int, float]) -> float:
            return sum(v for _, v in sorted(d.items())) / max(1, len(d))
        return [expert_summary(i, c.numpy(), self.model.modalities, mean(self.aux[i]),
                               mean(self.z[i])) for i, c in enumerate(self.counts)]

    def __getstate__(self) -> dict:  # what all_gather_object sends: no model, no hooks
        return {"counts": self.counts, "aux": self.aux, "z": self.z}


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

    def add(self, lo: int, s: np.ndarray, n: np.ndarray) -> None:
        """Add one batch's sums and counts of documents lo, lo+1, ... (see `doc_sums`)."""
        hi = lo + len(s)
        if hi > len(self.sums):
            self.sums = np.pad(self.sums, (0, hi - len(self.sums)))
            self.counts = np.pad(self.counts, (0, hi - len(self.counts)))
        self.sums[lo:hi] += s
        self.counts[lo:hi] += n


def doc_sums(doc_M: np.ndarray, nll_M: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(first document, summed loss and token count per document from it) of one batch."""
    lo = int(doc_M.min())
    return lo, np.bincount(doc_M - lo, nll_M), np.bincount(doc_M - lo).astype(np.float64)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 outside torch.distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _score(model: Transformer, data: PreparedData, stream: str, x: np.ndarray, m: np.ndarray,
           eods: int, precision: str) -> dict[str, tuple]:
    """One validation batch: result key -> (first document, loss sums, token counts, rows)."""
    device = next(model.parameters()).device
    x_BT, m_BT = torch.from_numpy(x).to(device), torch.from_numpy(m).to(device)
    with autocast(device, precision):
        logits = model(x_BT[:, :-1], m_BT[:, :-1])
    nll_BT = F.cross_entropy(logits.float().transpose(1, 2), x_BT[:, 1:],
                             reduction="none").double().cpu().numpy()
    doc_BT, mod_BT = doc_ids(x, eods), m[:, 1:]
    out = {}
    for i, mod in enumerate(MODALITIES):
        mask = mod_BT == i
        if mask.any():
            out[stream_key(data, stream, mod)] = (*doc_sums(doc_BT[mask], nll_BT[mask]),
                                                  int(mask.any(axis=1).sum()))
    return out


@torch.no_grad()
def evaluate(model: Transformer, data: PreparedData, rows: int | None, batch_rows: int,
             precision: str = "fp32") -> dict:
    """Loss per modality (nats/token, bits per raw unit, SE, tokens, rows, documents) on the
    first `rows` validation rows of every stream (None: all), expert use per MoE layer, and the
    summed loss and tokens of every validation document (in data order: two runs on the same
    data align document by document, for paired differences).

    Under torch.distributed each rank scores every world-th batch; the per-batch sums are
    gathered and added in data order on every rank, so the result is the one-process result."""
    rank, world = rank_and_world()
    was_training = model.training
    model.eval()
    counter = ExpertCounter(model)
    scored: dict[int, dict[str, tuple]] = {}
    order: list[tuple[int, str]] = []  # (batch index, stream) of every batch, in data order
    try:
        for stream in data.streams:
            eods = 0
            for x, m in val_batches(data, stream, batch_rows, rows):
                b = len(order)
                order.append((b, stream))
                if b % world == rank:
                    counter.batch = b
                    scored[b] = _score(model, data, stream, x, m, eods, precision)
                eods += int((x == EOD).sum())
    finally:
        counter.remove()
        model.train(was_training)
    if world > 1:
        import torch.distributed as dist

        gathered: list = [None] * world
        dist.all_gather_object(gathered, (scored, counter))
        scored = {b: r for part, _ in gathered for b, r in part.items()}
        counter.counts = [torch.zeros_like(c) for c in counter.counts]
        counter.aux, counter.z = [{} for _ in counter.aux], [{} for _ in counter.z]
        counter.merge([c for _, c in gathered])
    return _results(data, order, scored, counter.summary())


def _results(data: PreparedData, order: list[tuple[int, str]], scored: dict[int, dict[str, tuple]],
             experts: list[dict]) -> dict:
    """Add the batches' document sums in data order into losses, SEs and per-document sums."""
    per_doc: dict[str, list[DocSums]] = {}
    n_rows: dict[str, int] = {}
    parts: dict[str, list[tuple[str, str]]] = {}
    acc: dict[tuple[str, str], DocSums] = {}
    for b, stream in order:
        for key, (lo, s, n, r) in scored[b].items():
            if (stream, key) not in acc:
                acc[stream, key] = DocSums()
                per_doc.setdefault(key, []).append(acc[stream, key])
                own = data.meta["streams"][stream]["modality"]
                parts.setdefault(key, []).append((stream, key.split("->")[-1] if "->" in key else own))
            acc[stream, key].add(lo, s, n)
            n_rows[key] = n_rows.get(key, 0) + r
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
