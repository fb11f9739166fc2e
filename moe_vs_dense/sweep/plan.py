"""Expand a sweep into its runs: one validated run config each, with run and pair ids.

Every run of a pair (the anchor and its matched partners at one size, budget, seed and setting
of the top-level axes) has the same data config, seed, batch and token budget, so the same data
order, tokens per modality and validation rows; only the model block under comparison differs.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moe_vs_dense.config import Config
from moe_vs_dense.config_load import set_path, validate
from moe_vs_dense.errors import UserError
from moe_vs_dense.model.accounting import Accounting, account
from moe_vs_dense.sweep.spec import SweepConfig

# model keys a matched family may not change: everything but the block under comparison
MATCHED_FREE = {"family", "moe", "d_ff"}


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    pair_id: str | None
    family: str  # the sweep's family name, or uni_<modality> / bi_<a>_<b> for baselines
    kind: str  # "paired" (the anchor and its partners), "unimodal" or "bimodal"
    config: Config
    accounting: Accounting
    mismatch: float | None  # partner vs anchor, of the matched quantity

    @property
    def tokens(self) -> int:
        return self.config.train.tokens

    @property
    def compute(self) -> float:
        return float(self.accounting.flops_per_token) * self.tokens

    @property
    def router(self) -> str | None:
        m = self.config.model
        return m.moe.router if m.family == "moe" else None


def token_label(n: int) -> str:
    """250000 -> 250k, 1000000 -> 1M, 1500000 -> 1.5M."""
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= size:
            return f"{n / size:.4g}{unit}"
    return str(n)


def _value_label(v: Any) -> str:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return re.sub(r"[^A-Za-z0-9_.]", "", str(v))
    return hashlib.sha1(json.dumps(v, sort_keys=True).encode()).hexdigest()[:6]


def _key_labels(keys: list[str]) -> dict[str, str]:
    """Shortest unambiguous suffix of each key path: num_experts, or dna_weight beside text_weight."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            label = "_".join(parts[-n:])
            clash = [k for k in keys if k != key and "_".join(k.split(".")[-n:]) == label]
            if not clash:
                break
        out[key] = label
    return out


def _settings(axes: list[dict[str, list[Any]]]) -> list[dict[str, Any]]:
    """Every combination of the axes: zipped within an axis, product across axes."""
    per_axis = [[dict(zip(axis, values, strict=True)) for values in zip(*axis.values(), strict=True)]
                for axis in axes]
    return [{k: v for d in combo for k, v in d.items()} for combo in itertools.product(*per_axis)]


def _apply(raw: dict, updates: dict[str, Any]) -> dict:
    for key, value in updates.items():
        set_path(raw, key, copy.deepcopy(value))
    return raw


class _Builder:
    def __init__(self, sweep: SweepConfig, base: dict, source: str) -> None:
        self.sweep, self.base, self.source = sweep, base, source
        keys = [k for axis in sweep.axes for k in axis]
        keys += [k for f in sweep.families.values() for axis in f.axes for k in axis]
        self.labels = _key_labels(sorted(set(keys)))

    def suffix(self, setting: dict[str, Any]) -> str:
        return "".join(f"-{self.labels[k]}{_value_label(v)}" for k, v in setting.items())

    def config(self, raw: dict, run_id: str, pair_id: str | None) -> Config:
        raw = _apply(copy.deepcopy(raw), {"run.pair_id": pair_id})
        return validate(Config, raw, source=f"{self.source} (run {run_id})")

    def accounting(self, cfg: Config) -> Accounting:
        from moe_vs_dense.data.tokenizers import vocab_size

        mods = cfg.data.modalities
        return account(cfg.model, vocab_size(cfg.data.tokenizers, mods), cfg.data.seq_len, mods)


def _partner(b: _Builder, anchor: Config, cfg: Config, match: str, run_id: str) -> tuple[Config, float]:
    """`cfg` with its free width solved so that it matches the anchor's FLOPs (or params)."""
    from moe_vs_dense.data.tokenizers import vocab_size
    from moe_vs_dense.model.pairing import matched_partner

    a, m = anchor.model.model_dump(), cfg.model.model_dump()
    changed = sorted(k for k in a if a[k] != m[k] and k not in MATCHED_FREE)
    if changed:
        raise UserError(f"{b.source}: run {run_id}: a matched family may only change model.family "
                        f"and model.moe, not model.{', model.'.join(changed)}; set match: none")
    if cfg.model.family == "dense":
        raise UserError(f"{b.source}: run {run_id}: only the anchor may be a matched dense family; "
                        "set match: none for another dense family")
    mods = anchor.data.modalities
    ref = anchor.model.model_copy(update={"moe": cfg.model.moe})
    try:
        p = matched_partner(ref, vocab_size(anchor.data.tokenizers, mods), anchor.data.seq_len, mods,
                            target=cfg.model.family, match=match)
    except (ValueError, UserError) as e:
        raise UserError(f"{b.source}: run {run_id}: no matched partner: {e}") from None
    if abs(p.mismatch) > 0.01:
        raise UserError(f"{b.source}: run {run_id}: the best {cfg.model.family} partner misses the "
                        f"anchor's {'FLOPs per token' if match == 'flops' else 'total params'} by "
                        f"{p.mismatch:+.2%} (more than 1%)")
    return cfg.model_copy(update={"model": p.config}), p.mismatch


def _subset(raw: dict, modalities: list[str]) -> dict | None:
    """The raw config trained on the streams of `modalities` only (paired labels dropped), or
    None when the mixture lacks one of them."""
    mixture = raw["data"]["mixture"]
    keep = {k: {**s, "paired": False} for k, s in mixture.items()
            if (s.get("modality") or k) in modalities}
    if {(s.get("modality") or k) for k, s in keep.items()} != set(modalities):
        return None
    out = copy.deepcopy(raw)
    out["data"]["mixture"] = keep
    return out


def _share(raw: dict, modalities: list[str]) -> float:
    mixture = raw["data"]["mixture"]
    w = {k: float(s.get("weight", 1.0)) for k, s in mixture.items()}
    return sum(w[k] for k, s in mixture.items() if (s.get("modality") or k) in modalities) / sum(
        w.values())


def _baselines(sweep: SweepConfig, cfg: Config) -> list[list[str]]:
    streams = [m for m in cfg.data.modalities
               if any(s.modality == m for s in cfg.data.mixture.values())]
    uni = streams if sweep.unimodal == "all" else [] if sweep.unimodal == "none" else sweep.unimodal
    bi = (list(map(list, itertools.combinations(streams, 2))) if sweep.bimodal == "all"
          else [] if sweep.bimodal == "none" else sweep.bimodal)
    return [[m] for m in uni] + [sorted(p, key=streams.index) if set(p) <= set(streams) else p
                                 for p in bi]


def _check_stream_axes(sweep: SweepConfig, common: dict, source: str) -> None:
    """An axis over a stream's key (a mixture weight) must name a stream of the mixture: set
    on a missing one it would add a stream without a source."""
    streams = (common.get("data") or {}).get("mixture") or {}
    where = [(f"axes.{i}", axis) for i, axis in enumerate(sweep.axes)]
    where += [(f"families.{n}.axes.{i}", axis) for n, f in sweep.families.items()
              for i, axis in enumerate(f.axes)]
    for at, axis in where:
        for key in axis:
            parts = key.split(".")
            if parts[:2] == ["data", "mixture"] and len(parts) > 3 and parts[2] not in streams:
                raise UserError(f"{source}: {at}: {key}: the mixture has no stream '{parts[2]}' "
                                f"(streams: {', '.join(streams) or 'none'})")


def _check_weights(cfg: Config, run_id: str, source: str) -> None:
    """Every stream gets rows: the sampler deals rows in cycles of MixtureSampler.cycle, and a
    weight that rounds to none of them would fail at the first training step, not here."""
    from moe_vs_dense.data.loader import MixtureSampler, largest_remainder

    names = list(cfg.data.mixture)
    w = np.array([cfg.data.mixture[k].weight for k in names])
    counts = largest_remainder(w, MixtureSampler.cycle)
    for k, c, wk in zip(names, counts, w, strict=True):
        if c == 0:
            raise UserError(f"{source}: run {run_id}: data.mixture.{k}.weight: {wk:g} is "
                            f"{wk / w.sum():.2g} of the mixture's weight, below the sampler's "
                            f"resolution (1 row in {MixtureSampler.cycle}); raise it")


def expand(sweep: SweepConfig, base: dict, source: str = "<sweep>") -> list[PlannedRun]:
    """Every run of the sweep, anchors first within each pair, then partners, then baselines."""
    b = _Builder(sweep, base, source)
    _check_stream_axes(sweep, _apply(copy.deepcopy(base), sweep.set), source)
    runs: list[PlannedRun] = []
    for size, budget, seed, setting in itertools.product(
            sweep.sizes, sweep.tokens, sweep.seeds, _settings(sweep.axes)):
        common = _apply(copy.deepcopy(base), sweep.set)
        _apply(common, {f"model.{k}": v for k, v in size.model_dump(exclude={"name"}).items()
                        if v is not None})
        _apply(common, {"seed": seed, "train.tokens": budget, **setting})
        pair_id = f"{size.label}-t{token_label(budget)}-s{seed}{b.suffix(setting)}"
        anchor_raw = _apply(copy.deepcopy(common), sweep.families[sweep.anchor].set)
        anchor_id = f"{pair_id}-{sweep.anchor}"
        anchor = b.config(anchor_raw, anchor_id, pair_id)
        _check_weights(anchor, anchor_id, source)
        runs.append(PlannedRun(anchor_id, pair_id, sweep.anchor, "paired", anchor,
                               b.accounting(anchor), None))
        for name, fam in sweep.families.items():
            if name == sweep.anchor:
                continue
            for own in _settings(fam.axes):
                run_id = f"{pair_id}-{name}{b.suffix(own)}"
                raw = _apply(_apply(copy.deepcopy(common), fam.set), own)
                match = fam.match or sweep.match
                cfg = b.config(raw, run_id, pair_id if match != "none" else None)
                mismatch = None
                if match != "none":
                    _same_pair(b, anchor, cfg, run_id)
                    cfg, mismatch = _partner(b, anchor, cfg, match, run_id)
                runs.append(PlannedRun(run_id, cfg.run.pair_id, name, "paired", cfg,
                                       b.accounting(cfg), mismatch))
        for mods in _baselines(sweep, anchor):
            raw = _subset(anchor_raw, mods)
            if raw is None:
                raise UserError(f"{source}: {'bimodal' if len(mods) == 2 else 'unimodal'}: the "
                                f"base mixture has no stream of {' or '.join(mods)}")
            raw["train"]["tokens"] = max(1, round(budget * _share(anchor_raw, mods)))
            kind = "unimodal" if len(mods) == 1 else "bimodal"
            family = ("uni_" if len(mods) == 1 else "bi_") + "_".join(mods)
            run_id = f"{pair_id}-{family}"
            cfg = b.config(raw, run_id, None)
            runs.append(PlannedRun(run_id, None, family, kind, cfg, b.accounting(cfg), None))
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.run_id] = seen.get(r.run_id, 0) + 1
    dup = [k for k, n in seen.items() if n > 1]
    if dup:
        raise UserError(f"{source}: the sweep names {len(dup)} runs twice (e.g. {dup[0]}); give "
                        "sizes distinct names or axes distinct values")
    return runs


def _same_pair(b: _Builder, anchor: Config, cfg: Config, run_id: str) -> None:
    """A partner must see the anchor's data order and tokens: same data, seed, batch, budget."""
    diffs = [k for k, x, y in (("data", anchor.data, cfg.data), ("seed", anchor.seed, cfg.seed),
                               ("train.tokens", anchor.train.tokens, cfg.train.tokens),
                               ("train.batch_rows", anchor.train.batch_rows, cfg.train.batch_rows))
             if x != y]
    if diffs:
        raise UserError(f"{b.source}: run {run_id}: a matched family must keep the anchor's "
                        f"{', '.join(diffs)} (same data order and tokens); set match: none")


def load_plan(path: str | Path, overrides: list[str] | None = None) -> tuple[SweepConfig, list[PlannedRun]]:
    """The sweep and its runs, each checked against the memory of the GPU it trains on: the
    sweep's `device_memory_gb` (grad_accum set to fit), else this machine's GPU if any."""
    from moe_vs_dense.sweep import memory
    from moe_vs_dense.sweep.spec import load_sweep

    sweep, base = load_sweep(path, overrides)
    runs = expand(sweep, base, str(path))
    if sweep.device_memory_gb is not None:
        return sweep, memory.fit(runs, int(sweep.device_memory_gb * memory.GB), True,
                                 f"{path}: device_memory_gb")
    device = memory.device_memory()
    if device is not None:
        runs = memory.fit(runs, device, False, "this machine's GPU")
    return sweep, runs
