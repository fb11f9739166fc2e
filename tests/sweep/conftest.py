"""The prepared demo mix (the README's install command prepares it) for sweep runs on real data."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_vs_dense.config import load_config
from moe_vs_dense.data.fetch import data_dir
from moe_vs_dense.data.prepare import cache_key
from moe_vs_dense.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def demo_data() -> Path:
    """The data root holding the prepared demo mix (skips, naming the command, if it is not)."""
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    root = data_dir(None, cfg.data.dir)
    try:
        ready = (root / "prepared" / cache_key(cfg.data, root) / "meta.json").is_file()
    except UserError:
        ready = False
    if not ready:
        pytest.skip("demo data not prepared: run `moe-vs-dense data fetch && moe-vs-dense data "
                    "prepare configs/demo.yaml`")
    return root
