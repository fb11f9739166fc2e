"""Synthetic runs drawn from known laws, for tests, benchmarks and trying the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.chinchilla import NAMES
from analysis.chinchilla import loss as chinchilla_loss

HOFFMANN = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}  # their Approach 3 fit


def chinchilla_law(N, D, t: dict) -> np.ndarray:
    """E + A / N^alpha + B / D^beta (nats/token) for the parameters in t, shaped as N and D."""
    return chinchilla_loss(np.array([t[k] for k in NAMES]), N, D).reshape(np.broadcast(N, D).shape)


def chinchilla_points(n: int, truth: dict | None = None, noise: float = 0.01, seed: int = 0,
                      n_range=(1e6, 1e9), d_range=(1e8, 1e11)) -> pd.DataFrame:
    """n runs with log-uniform N and D, loss from the law times lognormal noise."""
    t = truth or HOFFMANN
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(*np.log(n_range), n))
    D = np.exp(rng.uniform(*np.log(d_range), n))
    loss = chinchilla_law(N, D, t) * np.exp(rng.normal(0, noise, n))
    return pd.DataFrame({"N": N, "D": D, "loss": loss})


def interaction_law(N, D, q: dict) -> np.ndarray:
    """The bimodal interaction -C + A / N^alpha + B / D^beta (nats/token), D = Di + Dj."""
    N, D = np.asarray(N, float), np.asarray(D, float)
    return -q["C"] + q["A"] / N ** q["alpha"] + q["B"] / D ** q["beta"]


def bimodal_runs(unimodal: dict[str, dict], interaction: dict, design: list[tuple[float, float]],
                 noise: float = 0.003, seed: int = 0) -> pd.DataFrame:
    """Tidy rows (run, family, modality, modalities, N, D, loss) of dense runs: for every
    (N, D) of the design a joint run on both modalities with D / 2 tokens of each, and a
    unimodal run of each modality at (N, D / 2). Every loss carries lognormal noise `noise`."""
    rng = np.random.default_rng(seed)
    (i, ti), (j, tj) = unimodal.items()
    rows = []
    for k, (N, D) in enumerate(design):
        joint = interaction_law(N, D, interaction)
        for m, t in ((i, ti), (j, tj)):
            base = float(chinchilla_law(N, D / 2, t))
            rows.append({"run": f"{m}-{k}", "modalities": m, "modality": m, "N": N, "D": D / 2,
                         "loss": base * np.exp(rng.normal(0, noise))})
            rows.append({"run": f"joint-{k}", "modalities": f"{i}+{j}", "modality": m, "N": N,
                         "D": D / 2, "loss": (base + joint) * np.exp(rng.normal(0, noise))})
    return pd.DataFrame(rows).assign(family="dense")


def routed_law(N, E, t: dict) -> np.ndarray:
    """Clark et al.'s routed law: exp(a log N + b log E_hat + c log N log E_hat + d)."""
    from analysis.routed import e_hat

    logN = np.log(np.asarray(N, float))
    le = np.log(e_hat(E, t["E_start"], t["E_max"]))
    return np.exp(t["a"] * logN + t["b"] * le + t["c"] * logN * le + t["d"])


def routed_points(truth: dict, sizes, experts, noise: float = 0.003, seed: int = 0) -> pd.DataFrame:
    """One run per (N, E) of sizes x experts (E = 1: dense), lognormal noise `noise`."""
    rng = np.random.default_rng(seed)
    N, E = (a.ravel() for a in np.meshgrid(np.asarray(sizes, float), np.asarray(experts, float)))
    loss = routed_law(N, E, truth) * np.exp(rng.normal(0, noise, len(N)))
    return pd.DataFrame({"N": N, "E": E, "loss": loss, "family": np.where(E > 1, "moe", "dense"),
                         "n_experts": np.where(E > 1, E, 0).astype(int)})


def record(run_id: str, family: str, modalities: list[str], n_active: int, tokens: dict[str, int],
           losses: dict[str, float], seed: int = 0, n_experts: int = 0, pair_id: str | None = None,
           status: str = "completed", router: str | None = None, n_total: int | None = None) -> dict:
    """A schema-valid record.json for a run with the given outcome."""
    total = sum(tokens.values())
    fpt = 6 * n_active
    return {
        "schema_version": 1, "run_id": run_id, "pair_id": pair_id, "status": status,
        "family": family, "router": router if family == "moe" else None, "seed": seed,
        "modalities": modalities, "model": {"n_experts": n_experts},
        "params": {"total": n_total or n_active, "active": n_active},
        "flops_per_token": fpt, "tokens": {"total": total, "by_modality": tokens},
        "compute": float(fpt * total),
        "eval": {"final": {m: {"loss": v} for m, v in losses.items()}},
    }
