"""Floors: the loss of count models fitted on a stream's training split, scored on its validation
rows exactly as a run scores them, so every loss can be read beside what counting achieves.

Per target modality (the modality of the predicted token, as the evaluator groups losses):
- `uniform`: ln of the modality's ids (its tokenizer's ids plus the end-of-document marker);
- `unigram`: token frequencies, add-one smoothed over those ids;
- `bigram`: order-1 Markov (one token of context), Witten-Bell interpolated with the unigram;
- `markov`: order-k Markov, Witten-Bell interpolated down to the unigram, k in 1..MAX_ORDER
  chosen on the last DEV_FRACTION of the training rows.
All are fitted on the training rows before those (one fit: floors cost seconds per million
tokens at prepare time).
Every count model is told the target's modality (it predicts among that modality's ids), which
the network is not; contexts are the preceding tokens of the same row, as the network sees
(fewer at a row's start: the model backs off to the orders available). Validation rows are never
counted. Results are summed per validation row so the floor of any first-`rows` prefix (the rows
a run scored) can be read off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moe_vs_dense.data.tokenizers import EOD, MODALITY_ID, Vocab
from moe_vs_dense.modalities import MODALITIES

MAX_ORDER = 5
DEV_FRACTION = 0.1
KINDS = ("uniform", "unigram", "bigram", "markov")
SMOOTHING = ("unigram add-one over the modality's ids; Markov orders Witten-Bell interpolated "
             "down to that unigram; fitted on nine tenths of the training rows, the order chosen "
             "on the last tenth")
G = len(MODALITIES)


def support_sizes(vocab: Vocab) -> np.ndarray:
    """Ids a target of each modality can take: its tokenizer's ids plus end-of-document."""
    out = np.zeros(G, dtype=np.int64)
    for m, tok in vocab.tokenizers.items():
        out[MODALITY_ID[m]] = tok.size + 1
    return out


def symbols(ids: np.ndarray, mods: np.ndarray, vocab_size: int) -> np.ndarray:
    """Target symbols: the token id, except end-of-document, which gets one symbol per modality
    (EOD takes its document's last modality), so a symbol names its modality."""
    ids = ids.astype(np.int64)
    return np.where(ids == EOD, vocab_size + mods.astype(np.int64), ids)


@dataclass
class Order:
    """Counts of one Markov order: its contexts (sorted keys), (context, symbol) pairs and their
    counts, and per (context, modality) the total and the number of distinct symbols seen."""

    ctx_keys: np.ndarray
    pair_keys: np.ndarray
    pair_counts: np.ndarray
    ctx_total: np.ndarray
    ctx_distinct: np.ndarray


@dataclass
class CountModel:
    vocab_size: int
    unigram: np.ndarray  # counts per symbol
    mod_total: np.ndarray  # tokens per modality
    support: np.ndarray  # ids per modality
    orders: list[Order]

    @property
    def n_symbols(self) -> int:
        return self.vocab_size + G


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Index of each key in sorted_keys, -1 where absent."""
    if len(sorted_keys) == 0:
        return np.full(keys.shape, -1, dtype=np.int64)
    idx = np.searchsorted(sorted_keys, keys)
    idx_c = np.minimum(idx, len(sorted_keys) - 1)
    return np.where(sorted_keys[idx_c] == keys, idx_c, -1)


def fit(ids_N: np.ndarray, mods_N: np.ndarray, vocab: Vocab, max_order: int = MAX_ORDER) -> CountModel:
    """Count model of one contiguous training sequence (a stream's training rows, flattened:
    they are consecutive pieces of its token stream)."""
    V = vocab.size
    S = V + G
    x = ids_N.astype(np.int64)
    g = mods_N.astype(np.int64)
    sym = symbols(x, g, V)
    model = CountModel(V, np.bincount(sym, minlength=S), np.bincount(g, minlength=G),
                       support_sizes(vocab), [])
    ctx = np.zeros(len(x), dtype=np.int64)
    for n in range(1, max_order + 1):
        ok = ctx >= 0
        ok[:n] = False
        prev = np.roll(x, n)
        keys, inv = np.unique(ctx[ok] * V + prev[ok], return_inverse=True)
        ctx = np.full(len(x), -1, dtype=np.int64)
        ctx[ok] = inv.reshape(-1)
        pairs, counts = np.unique(ctx[ok] * S + sym[ok], return_counts=True)
        n_ctx = len(keys)
        pair_mod = _symbol_modality(pairs % S, V, g[ok], sym[ok])
        model.orders.append(Order(
            ctx_keys=keys,
            pair_keys=pairs,
            pair_counts=counts,
            ctx_total=np.bincount(ctx[ok] * G + g[ok], minlength=n_ctx * G),
            ctx_distinct=np.bincount(pairs // S * G + pair_mod, minlength=n_ctx * G),
        ))
    return model


def _symbol_modality(sym_P: np.ndarray, V: int, g_N: np.ndarray, sym_N: np.ndarray) -> np.ndarray:
    """Modality of each symbol (a symbol names one modality): from the positions it occurs at."""
    table = np.zeros(V + G, dtype=np.int64)
    table[sym_N] = g_N
    return table[sym_P]


def score(model: CountModel, tokens_RL: np.ndarray, mods_RL: np.ndarray) -> dict[str, np.ndarray]:
    """Negative log-likelihood (nats) of every target position of validation rows [R, T] for the
    uniform model, the unigram (order 0) and each Markov order 1..K ("order1", ...)."""
    V, S = model.vocab_size, model.n_symbols
    X = tokens_RL.astype(np.int64)
    g = mods_RL[:, 1:].astype(np.int64)
    sym = symbols(X[:, 1:], g, V)
    support = model.support[g]
    out = {"uniform": np.log(support.astype(np.float64))}
    p = (model.unigram[sym] + 1.0) / (model.mod_total[g] + support)
    out["unigram"] = -np.log(p)
    T = X.shape[1] - 1
    ctx = np.zeros(g.shape, dtype=np.int64)
    for n, o in enumerate(model.orders, start=1):
        prev = np.full(g.shape, -1, dtype=np.int64)
        prev[:, n - 1:] = X[:, : T - n + 1]  # target j (row position j + 1) sees position j + 1 - n
        ok = (ctx >= 0) & (prev >= 0)
        ctx = np.where(ok, _lookup(o.ctx_keys, np.where(ok, ctx * V + prev, 0)), -1)
        seen = ctx >= 0
        c = np.where(seen, ctx, 0)
        hw = _lookup(o.pair_keys, c * S + sym)
        c_hw = np.where(seen & (hw >= 0), o.pair_counts[np.maximum(hw, 0)], 0)
        c_h = np.where(seen, o.ctx_total[c * G + g], 0) if len(o.ctx_total) else np.zeros_like(c)
        t_h = np.where(seen, o.ctx_distinct[c * G + g], 0) if len(o.ctx_distinct) else np.zeros_like(c)
        p = np.where(c_h > 0, (c_hw + t_h * p) / np.maximum(c_h + t_h, 1), p)
        out[f"order{n}"] = -np.log(p)
    return out


def stream_floors(train_RL: np.ndarray, train_mods_RL: np.ndarray, val_RL: np.ndarray,
                  val_mods_RL: np.ndarray, vocab: Vocab, max_order: int = MAX_ORDER) -> dict:
    """Per target modality of a stream: the Markov order chosen, and per validation row the
    target tokens and the summed loss (nats) of each floor in KINDS. The count model is fitted on
    all training rows but the last DEV_FRACTION, which choose the order (the order with the lowest
    loss on them; 1 where a modality has no tokens there)."""
    n_dev = int(len(train_RL) * DEV_FRACTION) if len(train_RL) > 1 else 0
    n_fit = len(train_RL) - n_dev
    model = fit(np.asarray(train_RL[:n_fit]).reshape(-1),
                np.asarray(train_mods_RL[:n_fit]).reshape(-1), vocab, max_order)
    dev_g = np.asarray(train_mods_RL[n_fit:])[:, 1:]
    dev = score(model, np.asarray(train_RL[n_fit:]), np.asarray(train_mods_RL[n_fit:]))
    nll = score(model, np.asarray(val_RL), np.asarray(val_mods_RL))
    g = np.asarray(val_mods_RL)[:, 1:]
    out = {}
    for i in np.unique(g):
        mask, dev_mask = g == i, dev_g == i
        k = 1
        if dev_mask.any():
            k = 1 + int(np.argmin([dev[f"order{n}"][dev_mask].mean()
                                   for n in range(1, max_order + 1)]))
        per_row = {"uniform": nll["uniform"], "unigram": nll["unigram"],
                   "bigram": nll["order1"], "markov": nll[f"order{k}"]}
        out[MODALITIES[int(i)]] = {
            "markov_order": k,
            "tokens": mask.sum(axis=1).tolist(),
            **{kind: np.where(mask, v, 0.0).sum(axis=1).round(6).tolist()
               for kind, v in per_row.items()},
        }
    return out


def floors_over(parts: list[dict], rows: int | None) -> dict[str, float] | None:
    """Nats/token of each floor over the first `rows` rows (None: all) of one or more streams'
    per-row sums for one target modality (the evaluator pools streams of a result key the same
    way), with the Markov order(s) used; None if no target tokens."""
    n = sum(sum(p["tokens"][:rows]) for p in parts)
    if n == 0:
        return None
    out: dict = {kind: sum(math.fsum(p[kind][:rows]) for p in parts) / n for kind in KINDS}
    out["markov_order"] = sorted({p["markov_order"] for p in parts})
    out["tokens"] = n
    return out
