"""Tiny runs on the real demo data (prepared by the README's main job) for trainer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moe_vs_dense.config import Config
from moe_vs_dense.config_load import load_config

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"
# 8 steps of 4 rows x 256 tokens; eval every 4 steps; a checkpoint every 2.
TINY = ["model.d_model=16", "model.n_heads=2", "model.n_layers=1", "train.batch_rows=4",
        "train.tokens=8192", "train.threads=1", "eval.every=4", "eval.rows=2",
        "eval.final_rows=4", "eval.batch_rows=4", "run.log_every=2", "run.checkpoint_every=2",
        "run.pair_id=tiny"]
MOE = ["model.family=moe", "model.moe.router=modality", "model.moe.d_expert=48"]


def tiny(*extra: str, moe: bool = False) -> Config:
    return load_config(SMOKE, TINY + (MOE if moe else []) + list(extra))


@pytest.fixture(autouse=True)
def one_thread():
    """Tests time nothing; one thread keeps them quick on a shared, loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
