"""The sweep config: a base run config and the axes it is varied along, typed and validated once.

A sweep is sizes x token budgets x seeds x families (x any further axes). The `anchor` family
(dense) defines every size; each other family is its matched partner (active FLOPs per token,
or total params) built by `moe_vs_dense.model.pairing`. Unimodal and bimodal dense baselines
are trained on the per-modality tokens the joint runs see, for competition and synergy.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from moe_vs_dense.config import Strict
from moe_vs_dense.config_load import validate
from moe_vs_dense.errors import UserError
from moe_vs_dense.modalities import MODALITIES

Match = Literal["flops", "params", "none"]


def _check_axes(axes: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
    """Every axis maps key paths to value lists of one length (zipped); axes multiply."""
    for i, axis in enumerate(axes):
        if not axis:
            raise ValueError(f"{i}: an axis needs at least one key path")
        lengths = {len(v) for v in axis.values()}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(f"{i}: the value lists of one axis must be non-empty and of "
                             f"equal length (they vary together); got lengths "
                             f"{', '.join(str(len(v)) for v in axis.values())}")
    return axes


class FamilySpec(Strict):
    """One family of the sweep: key-path overrides of the run config (e.g. `model.family: moe`),
    how it is matched to the anchor, and axes of its own (e.g. `model.moe.num_experts: [4, 8]`)."""

    set: dict[str, Any] = {}
    match: Match | None = None
    axes: list[dict[str, list[Any]]] = []

    @field_validator("axes")
    @classmethod
    def _axes(cls, v: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
        return _check_axes(v)


class SizeSpec(Strict):
    """One anchor model size: model keys; `name` labels it in run ids (default d<d>l<L>)."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.]+$")
    d_model: int = Field(ge=8)
    n_layers: int = Field(ge=1)
    n_heads: int = Field(ge=1)
    d_ff: int | None = Field(None, ge=1)

    @property
    def label(self) -> str:
        return self.name or f"d{self.d_model}l{self.n_layers}"


class SweepConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    base: str | dict[str, Any]
    set: dict[str, Any] = {}
    out: str | None = None
    sizes: list[SizeSpec] = Field(min_length=1)
    tokens: list[int] = Field(min_length=1)
    seeds: list[int] = [0]
    match: Match = "flops"
    anchor: str = "dense"
    families: dict[str, FamilySpec] = Field(min_length=1)
    unimodal: Literal["all", "none"] | list[str] = "none"
    bimodal: Literal["all", "none"] | list[list[str]] = "none"
    axes: list[dict[str, list[Any]]] = []
    device_memory_gb: float | None = Field(None, gt=0)  # GPU each run trains on (sweep/memory.py)

    @field_validator("axes")
    @classmethod
    def _axes(cls, v: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
        return _check_axes(v)

    @field_validator("tokens")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(t < 1 for t in v):
            raise ValueError("must be positive token counts")
        return v

    @field_validator("unimodal")
    @classmethod
    def _modalities(cls, v):
        for m in v if isinstance(v, list) else []:
            if m not in MODALITIES:
                raise ValueError(f"unknown modality '{m}'; use {', '.join(MODALITIES)}")
        return v

    @field_validator("bimodal")
    @classmethod
    def _pairs(cls, v):
        for pair in v if isinstance(v, list) else []:
            if len(pair) != 2 or len(set(pair)) != 2 or any(m not in MODALITIES for m in pair):
                raise ValueError(f"each pair must be two different modalities of "
                                 f"{', '.join(MODALITIES)} (got {pair})")
        return v

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        if self.anchor not in self.families:
            raise ValueError(f"anchor: no family '{self.anchor}' (families: "
                             f"{', '.join(self.families)})")
        if self.families[self.anchor].axes:
            raise ValueError(f"families.{self.anchor}.axes: the anchor has no axes of its own; "
                             "use the sweep's top-level axes")
        for name in self.families:
            if not name.replace("_", "").isalnum():
                raise ValueError(f"families.{name}: a family name is letters, digits and _")
        labels = [s.label for s in self.sizes]
        if len(set(labels)) != len(labels):
            raise ValueError("sizes: two sizes have the same label; give them distinct `name`s")
        return self


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> tuple[SweepConfig, dict]:
    """The validated sweep and its base run config as a raw mapping (a file is read relative to
    the sweep file, with its own `base:` chain merged in). Errors name the file, line and key path."""
    from moe_vs_dense.config_load import apply_overrides, read_with_bases, read_yaml, resolve_paths

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: sweep file not found")
    raw, where = read_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys")
    resolve_paths(raw.get("base"), path.parent)
    apply_overrides(raw, where, overrides or [])
    sweep = validate(SweepConfig, raw, source=str(path), where=where)
    if isinstance(sweep.base, dict):
        return sweep, copy.deepcopy(sweep.base)
    base_path = path.parent / sweep.base
    if not base_path.is_file():
        raise UserError(f"{where.get(('base',), path)}: base: config file {base_path} not found")
    base, _ = read_with_bases(base_path, (base_path.resolve(),))
    return sweep, base
