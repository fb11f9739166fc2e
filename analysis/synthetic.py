"""Synthetic runs drawn from known laws, for tests, benchmarks and trying the CLI."""

from __future__ import annotations

import numpy as np
import pandas as pd

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def chinchilla_points(n: int, truth: dict | None = None, noise: float = 0.01, seed: int = 0,
                      n_range=(1e6, 1e9), d_range=(1e8, 1e11)) -> pd.DataFrame:
    """n runs with log-uniform N and D, loss from the law times lognormal noise."""
    t = truth or CHINCHILLA
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(*np.log(n_range), n))
    D = np.exp(rng.uniform(*np.log(d_range), n))
    loss = (t["E"] + t["A"] / N ** t["alpha"] + t["B"] / D ** t["beta"]) * np.exp(rng.normal(0, noise, n))
    return pd.DataFrame({"N": N, "D": D, "loss": loss})


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
