"""The trainer: one path from a config to a run directory with record.json (see loop.py)."""

from moe_vs_dense.train.loop import train

__all__ = ["train"]
