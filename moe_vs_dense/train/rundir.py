"""The run directory: its resolved config, resume rules and the prepared data it trains on.

A run directory that already holds a `config.yaml` is resumed; a different config is refused
with the differences listed. `force` continues a run only to a larger train.tokens (the one
change a continuation honours); nothing in the directory changes until the new config is known
to fit it. A completed (or diverged) run with the same config is not trained again.
Keys that cannot change the result (data.dir, data.num_proc, train.threads, run.trackers,
run.log_every) may differ freely.
"""

from __future__ import annotations

import json
from contextlib import suppress
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Identity:
    """What a run directory holds relative to a config: `new` (no run yet), `resume` (same
    config, not finished), `finished` (same config, completed or diverged: `record`), `longer`
    (only a larger train.tokens: a continuation can honour it) or `changed` (anything else).
    `diff` lists the differing keys as 'key: old -> new'."""

    kind: str
    diff: tuple[str, ...] = ()
    record: dict | None = None


def read_config(run_dir: Path) -> dict | None:
    """The resolved config a run directory was started with, or None when it has none."""
    cfg_path = Path(run_dir) / "config.yaml"
    if not cfg_path.is_file():
        return None
    try:
        old = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{cfg_path}: unreadable ({e}); move the run directory away") from None
    if not isinstance(old, dict):
        raise UserError(f"{cfg_path}: not a config mapping; move the run directory away")
    return old


def read_record(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / "record.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def identify(cfg: Config, run_dir: Path) -> Identity:
    """The one place that decides whether `run_dir` holds the run `cfg` describes (used by
    `train` and by the sweep's run states)."""
    old = read_config(run_dir)
    if old is None:
        return Identity("new")
    with suppress(ValueError):  # under today's schema a key added since, at its default, is no difference
        old = resolved(Config.model_validate(old))
    diff = tuple(config_diff(old, resolved(cfg)))
    record = read_record(run_dir)
    finished = record if (record or {}).get("status") in ("completed", "diverged") else None
    if not diff:
        return Identity("finished", record=finished) if finished else Identity("resume")
    old_tokens = flat(old).get("train.tokens")
    longer = (len(diff) == 1 and diff[0].startswith("train.tokens:") and isinstance(old_tokens, int)
              and cfg.train.steps(cfg.data.seq_len)
              > cfg.train.model_copy(update={"tokens": old_tokens}).steps(cfg.data.seq_len)
              and (record or {}).get("status") != "diverged")
    return Identity("longer" if longer else "changed", diff, record)


def check(cfg: Config, run_dir: Path, force: bool) -> dict | None:
    """The finished record when there is nothing to do, None when the run is to train (new,
    resumed, or continued to a larger train.tokens under `force`); a UserError naming the keys
    for any other config change. Writes nothing."""
    ident = identify(cfg, run_dir)
    keys = "\n    ".join(ident.diff)
    if ident.kind == "finished":
        return ident.record
    if ident.kind == "longer" and not force:
        raise UserError(f"{run_dir} was started with a different config:\n    {keys}\n  continue "
                        "it to the larger budget with --force, or use another --out")
    if ident.kind == "changed":
        raise UserError(f"{run_dir} was started with a different config:\n    {keys}\n  a run "
                        "continues (with --force) only to a larger train.tokens; train this "
                        "config into another --out, or delete the directory to start over")
    return None


def start(run_dir: Path) -> None:
    """Create the directory (a clear error when it cannot be written) and clear temporary files
    a killed write left behind."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{run_dir}: cannot write the run directory ({e.strerror or e})") from None
    checkpoint.clean_partial(run_dir)


def write_config(cfg: Config, run_dir: Path) -> None:
    """config.yaml, once the checkpoint (if any) is known to fit this config."""
    try:
        write_text(run_dir / "config.yaml", yaml.safe_dump(resolved(cfg), sort_keys=False))
    except OSError as e:
        raise UserError(f"{run_dir}: cannot write the run directory ({e.strerror or e})") from None


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
