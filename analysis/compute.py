"""One definition of training compute, used by every table, fit, plot and report.

A run spends `flops_per_token` training FLOPs on every token it trains on (the record's count:
6 x (active params + d x V) + 12 x L x d x T, so attention and the output head are in). Its
compute on modality m is C = flops_per_token x D_m, with D_m its tokens of m; its total
compute is C_total = flops_per_token x D_total (the record's `compute`). A per-modality law
L_m(N, D_m) is compared along its compute-optimal frontier in the same C: FLOPs per token as a
function of N is a power law k N^s fitted to the group's runs, and the frontier minimizes
L_m(N, D) subject to k N^s D = C. Chinchilla's C = 6 N D is the case k = 6, s = 1; it leaves out
attention and the output head and, on a run of several modalities, mixes up per-modality and
total compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.chinchilla import NAMES, ChinchillaResult
from analysis.chinchilla import frontier as chinchilla_frontier
from analysis.records import by_family
from analysis.results import held, interval

DEFINITION = ("C is training FLOPs spent on a modality's tokens: FLOPs per token (6 x (active "
              "params + d x V) + 12 x L x d x T, attention and output head included) times the "
              "tokens of that modality; a run's total compute is FLOPs per token times all its "
              "tokens. Along a frontier, FLOPs per token is k N^s fitted to the group's runs.")


@dataclass(frozen=True)
class FlopsPerToken:
    """Training FLOPs per token as k N^s; `max_error`: its largest relative error on the runs
    it was fitted to."""

    k: float
    s: float
    max_error: float = 0.0

    def __call__(self, N) -> np.ndarray:
        return self.k * np.asarray(N, float) ** self.s


def fit_flops_per_token(N, flops_per_token) -> FlopsPerToken:
    """Least squares in log-log space; with a single model size, s = 1."""
    logN, logF = np.log(np.asarray(N, float)), np.log(np.asarray(flops_per_token, float))
    if np.ptp(logN) > 0:
        s, logk = np.polyfit(logN, logF, 1)
    else:
        s, logk = 1.0, float(np.mean(logF - logN))
    err = float(np.max(np.abs(np.expm1(logk + s * logN - logF))))
    return FlopsPerToken(float(np.exp(logk)), float(s), err)


def frontier(p: np.ndarray, C: np.ndarray, flops: FlopsPerToken):
    """N*(C), D*(C) and L*(C) minimizing E + A/N^alpha + B/D^beta subject to flops(N) x D = C,
    for params (E, A, B, alpha, beta). With M = N^s it is Chinchilla's frontier for
    (E, A, B, alpha/s, beta) at 6 C / k."""
    E, A, B, al, be = p
    m, d, loss = chinchilla_frontier(np.array([E, A, B, al / flops.s, be]), 6 * C / flops.k)
    return m ** (1 / flops.s), d, loss


@dataclass(frozen=True)
class Frontier:
    """A Chinchilla fit and the FLOPs per token of its group: the compute-optimal frontier."""

    fit: ChinchillaResult
    flops: FlopsPerToken

    def at(self, C, alpha: float = 0.05) -> pd.DataFrame:
        """N_opt, D_opt and loss_opt at compute C, with bootstrap intervals when the fit has
        draws (expanded percentiles, as the fit's own); attrs a and b: the exponents of
        N* ~ C^a and D* ~ C^b."""
        C = np.atleast_1d(np.asarray(C, float))
        n, d, loss = frontier(self.fit.params[NAMES].to_numpy(), C, self.flops)
        out = pd.DataFrame({"C": C, "N_opt": n, "D_opt": d, "loss_opt": loss})
        draws = self.draws(C)
        if draws is not None:
            for j, name in enumerate(("N_opt", "D_opt", "loss_opt")):
                out[f"{name}_lower"], out[f"{name}_upper"] = held(out[name], *interval(
                    draws[:, j], self.fit.expanded(alpha), axis=0))
        al, be, s = self.fit.params["alpha"], self.fit.params["beta"], self.flops.s
        out.attrs["a"], out.attrs["b"] = be / (al + s * be), al / (al + s * be)
        return out

    def draws(self, C: np.ndarray) -> np.ndarray | None:
        """[draws, 3 (N, D, loss), len(C)] from the fit's bootstrap refits, or None."""
        boot = self.fit.boot
        if boot is None or len(boot) < 2:
            return None
        return np.array([frontier(p, C, self.flops) for p in boot])


def frontiers(df: pd.DataFrame, fits: dict[tuple[str, str], ChinchillaResult]
              ) -> dict[tuple[str, str], Frontier]:
    """Per (family, modality) fit: its frontier, with FLOPs per token fitted to the group's runs
    (columns family, modality, N, flops_per_token of the tidy table; records.by_family groups)."""
    df = by_family(df)
    out = {}
    for (family, modality), fit in fits.items():
        g = df[(df["family"] == family) & (df["modality"] == modality)]
        out[(family, modality)] = Frontier(fit, fit_flops_per_token(g["N"], g["flops_per_token"]))
    return out
