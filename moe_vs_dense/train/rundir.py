"""The run directory: its resolved config, resume rules and the prepared data it trains on.

A run directory that already holds a `config.yaml` is resumed; a different config is refused
with the differences listed unless `force`. A completed (or diverged) run with the same config
is not trained again. Keys that cannot change the result (data.dir, data.num_proc,
train.threads, run.trackers, run.log_every) may differ freely.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from moe_vs_dense.config import Config
from moe_vs_dense.data.fetch import data_dir
from moe_vs_dense.data.loader import PreparedData
from moe_vs_dense.errors import UserError
from moe_vs_dense.io import write_text
from moe_vs_dense.train import checkpoint

FREE_KEYS = ("data.dir", "data.num_proc", "train.threads", "run.trackers", "run.log_every")


def resolved(cfg: Config) -> dict:
    return cfg.model_dump(mode="json")


def flat(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def config_diff(old: dict, new: dict) -> list[str]:
    """'key: old -> new' for every leaf key that differs (ignoring FREE_KEYS)."""
    a, b = flat(old), flat(new)
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in keys
            if a.get(k) != b.get(k) and not any(k == f or k.startswith(f + ".") for f in FREE_KEYS)]


def check(cfg: Config, run_dir: Path, force: bool) -> dict | None:
    """The finished record when there is nothing to do; raise UserError on a config change."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        return None
    try:
        old = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{cfg_path}: unreadable ({e}); move the run directory away") from None
    diff = config_diff(old, resolved(cfg))
    if diff and not force:
        raise UserError(f"{run_dir} was started with a different config:\n    " + "\n    ".join(diff)
                        + "\n  resume with --force to accept the new config, or use another --out")
    rec_path = run_dir / "record.json"
    if not diff and rec_path.is_file():
        try:
            record = json.loads(rec_path.read_text())
        except json.JSONDecodeError:
            return None
        if record.get("status") in ("completed", "diverged"):
            return record
    return None


def start(cfg: Config, run_dir: Path) -> None:
    """Create the directory (a clear error when it cannot be written), write config.yaml and
    clear temporary files a killed write left behind."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", yaml.safe_dump(resolved(cfg), sort_keys=False))
    except OSError as e:
        raise UserError(f"{run_dir}: cannot write the run directory ({e.strerror or e})") from None
    checkpoint.clean_partial(run_dir)


def open_data(cfg: Config, data_root: str | Path | None, prepare: bool) -> PreparedData:
    """The config's prepared data; prepared here only when `prepare`, else an error naming the
    command that prepares it."""
    from moe_vs_dense.data.prepare import cache_key
    from moe_vs_dense.data.prepare import prepare as do_prepare

    root = data_dir(str(data_root) if data_root else None, cfg.data.dir)
    path = root / "prepared" / cache_key(cfg.data, root)
    if not (path / "meta.json").is_file():
        if not prepare:
            raise UserError(f"the data of this config is not prepared in {root}; run "
                            "`moe-vs-dense data prepare CONFIG` with the same config, --set and "
                            "--data-dir options (or train with --prepare)")
        path = do_prepare(cfg.data, root)
    return PreparedData(path)
