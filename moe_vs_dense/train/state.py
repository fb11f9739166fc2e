"""The trainer's own state, and when the loop logs, evaluates and checkpoints.

`TrainerState` is what a checkpoint saves besides the model, optimizer, scheduler and RNG:
how far the run got, its eval curve, its timing and its loss/grad-norm monitor. It has
`state_dict`/`load_state_dict` like every other saved object, so resume is "load the states of
the same objects". The outcome of a run (status, error, final eval) is not resume state and
lives in `Outcome`. `Cadence` says at which steps the loop does what.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moe_vs_dense.config import Config
from moe_vs_dense.train.metrics import Monitor


@dataclass
class TrainerState:
    """Optimizer steps done, eval curve, seconds and tokens timed, and the monitor."""

    monitor: Monitor
    step: int = 0
    curve: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    tokens_timed: int = 0

    @classmethod
    def create(cls, cfg: Config) -> TrainerState:
        return cls(Monitor.create(cfg.run.spike_sigma, cfg.run.spike_window))

    def state_dict(self) -> dict:
        return {"step": self.step, "curve": self.curve, "train_seconds": self.train_seconds,
                "tokens_timed": self.tokens_timed, "monitor": self.monitor.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        """From `state_dict` (checkpoints of older versions carried outcome keys too: ignored)."""
        self.step, self.curve = d["step"], d["curve"]
        self.train_seconds, self.tokens_timed = d["train_seconds"], d["tokens_timed"]
        self.monitor = Monitor.from_state(d["monitor"])


@dataclass
class Outcome:
    """How the run ended so far: running, completed, diverged or failed."""

    status: str = "running"
    error: str | None = None
    diverged_step: int | None = None
    final: dict | None = None  # the final evaluation, once completed


@dataclass(frozen=True)
class Cadence:
    """Which of log, evaluate and checkpoint happen after optimizer step `n` (1-based); the
    last step does all that apply. Losses come to the host only at these steps."""

    steps: int
    log_every: int
    eval_every: int | None
    checkpoint_every: int

    @classmethod
    def create(cls, cfg: Config, steps: int) -> Cadence:
        every = cfg.eval.every
        return cls(steps, cfg.run.log_every, every,
                   cfg.run.checkpoint_every or every or max(1, steps // 10))

    def log(self, n: int) -> bool:
        return n % self.log_every == 0 or n == self.steps

    def eval(self, n: int) -> bool:
        return bool(self.eval_every) and n % self.eval_every == 0

    def checkpoint(self, n: int) -> bool:
        return n % self.checkpoint_every == 0 or n == self.steps

    def flush(self, n: int) -> bool:
        return self.log(n) or self.eval(n) or self.checkpoint(n)
