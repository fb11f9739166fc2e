"""Loss and gradient-norm monitoring: `metrics.jsonl` lines and spike counts.

The loop hands over the per-step values it buffered since the last flush (one host sync per
flush); the monitor counts spikes step by step, so its state does not depend on when flushes
happen and resumes exactly from a checkpoint.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from moe_vs_dense.io import write_text


@dataclass
class Spikes:
    """A value spikes when it exceeds the mean of the previous `window` values by `sigma`
    standard deviations."""

    sigma: float
    window: int
    recent: list[float] = field(default_factory=list)
    count: int = 0
    steps: list[int] = field(default_factory=list)

    def observe(self, step: int, value: float) -> None:
        if len(self.recent) == self.window:
            mean = sum(self.recent) / self.window
            sd = math.sqrt(sum((v - mean) ** 2 for v in self.recent) / (self.window - 1))
            if value > mean + self.sigma * max(sd, 1e-6 * abs(mean)):
                self.count += 1
                self.steps = (self.steps + [step])[-100:]
        self.recent = (self.recent + [value])[-self.window:]


@dataclass
class Monitor:
    """Per-step loss and grad norm since the last log line, and spike counters."""

    loss: Spikes
    grad: Spikes
    max_grad_norm: float = 0.0
    pending: list[tuple[int, float, float]] = field(default_factory=list)

    @classmethod
    def create(cls, sigma: float, window: int) -> Monitor:
        return cls(Spikes(sigma, window), Spikes(sigma, window))

    def observe(self, step: int, loss: float, grad_norm: float) -> None:
        self.loss.observe(step, loss)
        self.grad.observe(step, grad_norm)
        self.max_grad_norm = max(self.max_grad_norm, grad_norm)
        self.pending.append((step, loss, grad_norm))

    def line(self, step: int, tokens: int, lr: float, tokens_per_s: float) -> dict:
        """The metrics line for the steps since the last one (mean loss, mean and max grad norm)."""
        losses = [p[1] for p in self.pending]
        grads = [p[2] for p in self.pending]
        self.pending = []
        return {"step": step, "tokens": tokens, "loss": sum(losses) / len(losses),
                "grad_norm": sum(grads) / len(grads), "grad_norm_max": max(grads), "lr": lr,
                "tokens_per_s": tokens_per_s, "loss_spikes": self.loss.count,
                "grad_norm_spikes": self.grad.count}

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> Monitor:
        return cls(Spikes(**state["loss"]), Spikes(**state["grad"]), state["max_grad_norm"],
                   [tuple(p) for p in state["pending"]])


def append(path: Path, line: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def truncate(path: Path, step: int) -> None:
    """Keep the lines of steps up to `step` (a resumed run rewrites what follows); drop a line
    cut short by a kill."""
    if not path.exists():
        return
    keep = []
    for raw in path.read_text().splitlines():
        try:
            if json.loads(raw)["step"] <= step:
                keep.append(raw)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    write_text(path, "".join(r + "\n" for r in keep))
