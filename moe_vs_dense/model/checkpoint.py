"""Model weights as safetensors, with the model config stored in the file's metadata."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_model

from moe_vs_dense.config import ModelConfig
from moe_vs_dense.errors import UserError
from moe_vs_dense.io import atomic_path
from moe_vs_dense.model.transformer import Transformer


def save(model: Transformer, path: Path, max_len: int) -> None:
    meta = {"model": model.cfg.model_dump_json(), "vocab_size": str(model.vocab_size),
            "max_len": str(max_len), "modalities": json.dumps(model.modalities)}
    with atomic_path(Path(path)) as tmp:
        save_model(model, str(tmp), metadata=meta)


def load(path: Path) -> Transformer:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        cfg = ModelConfig.model_validate_json(meta["model"])
        # the weights are the same on every backend; torch runs anywhere, in any precision
        cfg = cfg.model_copy(update={"moe": cfg.moe.model_copy(update={"backend": "torch"})})
        model = Transformer(cfg, int(meta["vocab_size"]), int(meta["max_len"]),
                            json.loads(meta["modalities"]))
        load_model(model, str(path))
    except (OSError, KeyError, ValueError, RuntimeError, SafetensorError) as e:
        raise UserError(f"{path}: not a moe-vs-dense checkpoint ({e})") from None
    return model
