"""Synthetic dense and MoE runs from known laws, as a tidy table (the columns of `records`):
efficiency-leverage sets (the MoE is the dense law with its compute multiplied by a known
factor) and sets drawn from each law of the bank."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.records import COLUMNS, FLOORS

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
        "D_total": D, "flops_per_token": flops_per_param * N, "C": flops_per_param * N * D,
        "C_total": flops_per_param * N * D, "loss": np.asarray(loss, float), "loss_se": np.nan,
        "bits_per_unit": np.nan, "n_experts": n_experts, "top_k": 1 if n_experts else 0,
        "granularity": np.nan, **{c: np.nan for c in FLOORS}, "method": "fp32",
        "source_run": None, "storage_bytes": np.nan, "inference_flops_per_token": np.nan, **extra})
    return out[COLUMNS]


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


# truths of the bank's laws (parameters in the order of analysis.law_bank)
# the joint law: A (35.91), delta (-0.2285), E_start (2.07) and E_max (290.45) are Ludziejewski et
# al. (2025) Table 3's; the rest are values of the same size (exponents here positive)
JOINT_TRUTH = {"A": 35.91, "delta": -0.2285, "alpha": 0.19, "gamma": 0.01, "B": 36.0, "omega": -0.05,
               "beta": 0.18, "zeta": -0.026, "E": 1.36, "E_start": 2.07, "E_max": 290.45}
GRANULARITY_TRUTH = {"g": 150.0, "gamma": 0.6, "alpha": 0.33, "A": 200.0, "B": 200.0, "beta": 0.30,
                     "E": 1.2}
ROUTED_TRUTH = {"a": -0.08, "b": -0.05, "c": 0.004, "d": 1.9, "E_start": 1.9, "E_max": 300.0}
CHINCHILLA_TRUTH = {0: (1.2, 300.0, 200.0, 0.35, 0.30), 8: (0.9, 260.0, 200.0, 0.35, 0.30),
                    32: (1.05, 240.0, 220.0, 0.35, 0.30)}
EXPERTS = (1, 4, 16, 64)
GRANULARITIES = (1, 2, 4, 8)


def bank_runs(truth: str, seed: int = 0, noise: float = 0.005, sizes=SIZES, tokens=TOKENS,
              modality: str = "text") -> pd.DataFrame:
    """Runs of one modality drawn from one law of the bank (lognormal noise per run):
    chinchilla: dense, E=8 and E=32 families, each its own Chinchilla law (unequal irreducible
    losses); joint and routed: dense and E in 4, 16, 64; granularity: dense (Chinchilla) and
    E=8 at granularities 1, 2, 4, 8 (column `granularity`)."""
    from analysis.routed import e_hat as clark_e_hat

    rng = np.random.default_rng(seed)
    N, D = (g.ravel() for g in np.meshgrid(sizes, tokens))
    out = []

    def add(loss, e, **extra):
        loss = loss * np.exp(rng.normal(0, noise, len(N)))
        family = "moe" if e > 1 else "dense"
        out.append(rows(family, N, D, loss, modality, seed, e if e > 1 else 0,
                        "learned" if e > 1 else None, 1.0 + (e > 1) * 3.0, 6.0,
                        [f"{modality}-{i}" for i in range(len(N))], **extra))

    if truth == "chinchilla":
        for e, p in CHINCHILLA_TRUTH.items():
            add(chinchilla(N, D, p), max(e, 1))
    elif truth == "joint":
        t = JOINT_TRUTH
        for e in EXPERTS:
            le = np.log(clark_e_hat(e, t["E_start"], t["E_max"]))
            p = (t["E"], t["A"] * np.exp(t["delta"] * le), t["B"] * np.exp(t["omega"] * le),
                 t["alpha"] + t["gamma"] * le, t["beta"] + t["zeta"] * le)
            add(chinchilla(N, D, p), e)
    elif truth == "routed":
        t = ROUTED_TRUTH
        for e in EXPERTS:
            le = np.log(clark_e_hat(e, t["E_start"], t["E_max"]))
            add(np.exp(t["a"] * np.log(N) + t["b"] * le + t["c"] * np.log(N) * le + t["d"]), e)
    elif truth == "granularity":
        t = GRANULARITY_TRUTH
        add(chinchilla(N, D, (t["E"], t["A"] + t["g"], t["B"], t["alpha"], t["beta"])), 1,
            granularity=1.0)
        for G in GRANULARITIES:
            p = (t["E"], t["g"] / G ** t["gamma"] + t["A"], t["B"], t["alpha"], t["beta"])
            add(chinchilla(N, D, p), 8, granularity=float(G))
    else:
        raise ValueError(f"unknown truth {truth!r}")
    df = pd.concat(out, ignore_index=True)
    df["run"] = df["run"] + [f"-{i}" for i in range(len(df))]
    return df
