"""Synthetic dense and MoE runs from known laws, as a tidy table (the columns of `records`):
efficiency-leverage sets (the MoE is the dense law with its compute multiplied by a known
factor) and sets drawn from each law of the bank."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.records import COLUMNS

DENSE = {"text": (1.2, 300.0, 200.0, 0.35, 0.30), "dna": (1.3, 150.0, 400.0, 0.30, 0.32)}
SIZES = (1e6, 3e6, 1e7, 3e7, 1e8)
TOKENS = (2e7, 6e7, 2e8, 6e8, 2e9)


def chinchilla(N, D, p) -> np.ndarray:
    E, A, B, al, be = p
    return E + A / np.asarray(N, float) ** al + B / np.asarray(D, float) ** be


def rows(family: str, N, D, loss, modality: str, seed: int = 0, n_experts: int = 0,
         router: str | None = None, total_per_active: float = 1.0, flops_per_param: float = 6.0,
         pair: list | None = None, **extra) -> pd.DataFrame:
    """Tidy rows for runs of one family on one modality (C = flops_per_param x N x D)."""
    N, D = np.asarray(N, float), np.asarray(D, float)
    n = len(N)
    out = pd.DataFrame({
        "run": [f"{family}-{router or ''}{n_experts}-{modality}-{i}-s{seed}" for i in range(n)],
        "family": family, "router": router, "seed": seed, "status": "completed",
        "pair": pair if pair is not None else [None] * n, "modality": modality,
        "modalities": modality, "N": N, "N_active": N, "N_total": N * total_per_active, "D": D,
        "D_total": D, "C": flops_per_param * N * D, "loss": np.asarray(loss, float),
        "bits_per_unit": np.nan, "n_experts": n_experts, **extra})
    return out[COLUMNS + list(extra)]


def leverage_runs(factors: dict[str, float], seed: int = 0, noise: float = 0.005,
                  sizes=SIZES, tokens=TOKENS, n_experts: int = 8, flops_per_param: float = 12.0,
                  paired: bool = True) -> pd.DataFrame:
    """Dense and MoE (learned router, n_experts) runs on a size x token grid per modality; the MoE
    on modality m has the dense law's loss at k_m times the parameters, so its compute-optimal
    loss at compute C is the dense one at k_m C: EL = k_m exactly. Lognormal noise per run;
    runs at the same size and tokens share a pair id when `paired`."""
    rng = np.random.default_rng(seed)
    N, D = (g.ravel() for g in np.meshgrid(sizes, tokens))
    out = []
    for m, k in factors.items():
        p = DENSE[m]
        pair = [f"{m}-{i}" for i in range(len(N))] if paired else None
        for family, n_eff, e in (("dense", N, 0), ("moe", k * N, n_experts)):
            loss = chinchilla(n_eff, D, p) * np.exp(rng.normal(0, noise, len(N)))
            out.append(rows(family, N, D, loss, m, seed, e, "learned" if e else None,
                            4.0 if e else 1.0, flops_per_param, pair))
    return pd.concat(out, ignore_index=True)
