"""Floors: count models of the training split scored on validation rows, against known answers
and a naive reference."""

import math
from collections import Counter

import numpy as np
import pytest

from moe_vs_dense.config import TokenizersConfig
from moe_vs_dense.data import floors
from moe_vs_dense.data.tokenizers import EOD, MODALITY_ID, build_vocab

VOCAB = build_vocab(TokenizersConfig(), ["text", "dna"])
DNA, TEXT = VOCAB.tokenizers["dna"], VOCAB.tokenizers["text"]
L = 65  # rows of 64 targets


def rows_of(local: np.ndarray, tok=DNA) -> tuple[np.ndarray, np.ndarray]:
    ids = tok.offset + local[: len(local) // L * L]
    return ids.reshape(-1, L), np.full((len(ids) // L, L), MODALITY_ID[tok.modality])


def dna_floors(train: np.ndarray, val: np.ndarray, rows: int | None = None) -> dict:
    f = floors.stream_floors(*rows_of(train), *rows_of(val), VOCAB)
    return floors.floors_over([f["dna"]], rows)


def markov_chain(P: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cum = P.cumsum(axis=1)
    u = rng.random(n)
    s = np.zeros(n, dtype=np.int64)
    for i in range(1, n):
        s[i] = min(len(P) - 1, np.searchsorted(cum[s[i - 1]], u[i]))
    return s


def test_periodic_sequence_bigram_is_zero_and_uniform_is_ln_of_the_ids():
    seq = np.tile(np.arange(4), 5000)
    f = dna_floors(seq, seq[1:3000])
    assert f["uniform"] == pytest.approx(math.log(DNA.size + 1))  # ACGTN and end-of-document
    assert f["unigram"] == pytest.approx(math.log(4), abs=1e-3)
    assert f["bigram"] < 0.01 and f["markov"] < 0.01


def test_higher_order_is_chosen_where_one_token_of_context_is_ambiguous():
    seq = np.tile(np.array([0, 1, 2, 3, 1, 0, 3, 2]), 3000)  # each token has two successors
    f = dna_floors(seq, seq[3:5000])
    assert f["bigram"] == pytest.approx(math.log(2), abs=0.01)
    # only a row's first target (one token of context) stays ambiguous
    assert f["markov"] == pytest.approx(math.log(2) / (L - 1), abs=0.002)
    assert f["markov_order"][0] >= 2


def test_markov_source_bigram_converges_to_the_entropy_rate():
    P = np.array([[0.7, 0.1, 0.1, 0.1], [0.2, 0.5, 0.2, 0.1],
                  [0.25, 0.25, 0.25, 0.25], [0.05, 0.05, 0.1, 0.8]])
    w, v = np.linalg.eig(P.T)
    pi = np.real(v[:, np.argmin(abs(w - 1))])
    pi /= pi.sum()
    rate = -np.sum(pi[:, None] * P * np.log(P))
    f = dna_floors(markov_chain(P, 200_000, 0), markov_chain(P, 60_000, 1))
    assert f["bigram"] == pytest.approx(rate, abs=0.015)
    assert f["unigram"] == pytest.approx(-np.sum(pi * np.log(pi)), abs=0.015)
    assert f["markov"] <= f["bigram"] + 0.005  # a higher order gains nothing on an order-1 source


def test_floors_use_only_training_counts():
    """Validation data from another source: a model that had counted it would score ~0."""
    f = dna_floors(np.tile(np.arange(4), 5000), np.tile(np.arange(4)[::-1], 800))
    assert f["bigram"] > 2.0


def test_any_first_rows_prefix_and_rows_are_scored_on_their_own():
    P = np.full((4, 4), 0.25) + np.eye(4)
    P /= P.sum(axis=1, keepdims=True)
    train_RL, mods_RL = rows_of(markov_chain(P, 20_000, 2))
    val_RL, vmods_RL = rows_of(markov_chain(P, 3_000, 3))
    n_fit = len(train_RL) - int(len(train_RL) * floors.DEV_FRACTION)  # as stream_floors fits
    model = floors.fit(train_RL[:n_fit].reshape(-1), mods_RL[:n_fit].reshape(-1), VOCAB, 3)
    whole = floors.score(model, val_RL, vmods_RL)
    for r in (0, 5):
        alone = floors.score(model, val_RL[r : r + 1], vmods_RL[r : r + 1])
        for k, v in alone.items():
            np.testing.assert_allclose(v[0], whole[k][r])
    f = floors.stream_floors(train_RL, mods_RL, val_RL, vmods_RL, VOCAB)["dna"]
    got = floors.floors_over([f], 7)
    assert got["tokens"] == 7 * (L - 1)
    assert got["unigram"] == pytest.approx(whole["unigram"][:7].mean(), rel=1e-6)
    assert got["bigram"] == pytest.approx(whole["order1"][:7].mean(), rel=1e-6)


def naive_nll(train: list[tuple[int, int]], row: list[tuple[int, int]], order: int) -> list[float]:
    """Witten-Bell by dictionaries, as floors.py documents it: (id, modality) tokens; targets
    conditioned on their modality; EOD a symbol per modality; contexts within the row."""
    sym = [(i, g) for i, g in train]
    uni = Counter(sym)
    per_mod = Counter(g for _, g in sym)
    support = {MODALITY_ID[m]: t.size + 1 for m, t in VOCAB.tokenizers.items()}
    tables = []
    for n in range(1, order + 1):
        c = Counter((tuple(x for x, _ in train[i - n : i]), sym[i]) for i in range(n, len(train)))
        tables.append(c)
    out = []
    for j in range(1, len(row)):
        s = row[j]
        g = s[1]
        p = (uni[s] + 1) / (per_mod[g] + support[g])
        for n in range(1, min(order, j) + 1):
            h = tuple(x for x, _ in row[j - n : j])
            pairs = {w: c for (hh, w), c in tables[n - 1].items() if hh == h and w[1] == g}
            c_h, t_h = sum(pairs.values()), len(pairs)
            if c_h:
                p = (pairs.get(s, 0) + t_h * p) / (c_h + t_h)
        out.append(-math.log(p))
    return out


def test_fast_path_matches_a_naive_reference_with_two_modalities_and_end_of_document():
    rng = np.random.default_rng(4)
    ids, mods = [], []
    for _ in range(60):  # documents: some DNA bases then a short text label, then EOD
        n_dna, n_txt = rng.integers(3, 9), rng.integers(1, 3)
        ids += (list(DNA.offset + rng.integers(0, 3, n_dna))
                + list(TEXT.offset + 48 + rng.integers(0, 2, n_txt)) + [EOD])
        mods += [MODALITY_ID["dna"]] * n_dna + [MODALITY_ID["text"]] * (n_txt + 1)
    ids, mods = np.array(ids), np.array(mods)
    cut = len(ids) * 3 // 4
    model = floors.fit(ids[:cut], mods[:cut], VOCAB, 3)
    row = slice(cut, cut + 40)
    got = floors.score(model, ids[row][None], mods[row][None])
    train = list(zip(ids[:cut].tolist(), mods[:cut].tolist(), strict=True))
    val = list(zip(ids[row].tolist(), mods[row].tolist(), strict=True))
    for order in (1, 3):
        want = naive_nll(train, val, order)
        np.testing.assert_allclose(got[f"order{order}"][0], want, rtol=1e-9)
