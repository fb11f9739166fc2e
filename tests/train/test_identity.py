"""A run directory never lies about what trained it: `--force` continues a run only to a larger
train.tokens, and a refused or failed attempt changes nothing in the directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from moe_vs_dense.errors import UserError
from moe_vs_dense.train import train
from moe_vs_dense.train.rundir import identify
from tests.train.conftest import tiny


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_force_refuses_a_changed_lr_and_leaves_the_run_untouched(tmp_path, demo_data):
    run = tmp_path / "run"
    first = train(tiny(), run, data_root=demo_data, progress=False)
    before = snapshot(run)
    with pytest.raises(UserError, match=r"(?s)train.lr: 0.003 -> 0.001.*only to a larger train.tokens"):
        train(tiny("train.lr=0.001"), run, data_root=demo_data, progress=False, force=True)
    assert snapshot(run) == before  # no relabelled config, record or weights metadata
    assert train(tiny(), run, data_root=demo_data, progress=False) == first


def test_failed_force_to_another_family_changes_nothing(tmp_path, demo_data):
    run = tmp_path / "moe"
    first = train(tiny(moe=True), run, data_root=demo_data, progress=False)
    before = snapshot(run)
    with pytest.raises(UserError, match="model.family: 'moe' -> 'dense'"):
        train(tiny(), run, data_root=demo_data, progress=False, force=True)
    assert snapshot(run) == before
    assert train(tiny(moe=True), run, data_root=demo_data, progress=False) == first


def test_larger_budget_needs_force_and_a_smaller_one_is_refused(tmp_path, demo_data):
    run = tmp_path / "run"
    train(tiny(), run, data_root=demo_data, progress=False)
    assert identify(tiny("train.tokens=12288"), run).kind == "longer"
    assert identify(tiny("train.tokens=4096"), run).kind == "changed"
    assert identify(tiny("train.tokens=8000"), run).kind == "changed"  # same 8 steps: a relabel
    with pytest.raises(UserError, match="with --force"):
        train(tiny("train.tokens=12288"), run, data_root=demo_data, progress=False)
    with pytest.raises(UserError, match="only to a larger train.tokens"):
        train(tiny("train.tokens=4096"), run, data_root=demo_data, progress=False, force=True)


def test_a_checkpoint_of_another_model_is_a_short_clear_error(tmp_path, demo_data):
    dense, moe = tmp_path / "dense", tmp_path / "moe"
    train(tiny(), dense, data_root=demo_data, progress=False)
    train(tiny(moe=True), moe, data_root=demo_data, progress=False)
    odd = tmp_path / "odd"
    odd.mkdir()
    shutil.copy(dense / "config.yaml", odd / "config.yaml")
    shutil.copytree(moe / "checkpoints", odd / "checkpoints")
    before = snapshot(odd)
    with pytest.raises(UserError, match="checkpoint does not fit this model") as e:
        train(tiny(), odd, data_root=demo_data, progress=False)
    assert len(str(e.value)) < 600 and "tensors" in str(e.value)
    assert snapshot(odd) == before


def test_a_key_added_since_at_its_default_is_no_difference(tmp_path, demo_data):
    run = tmp_path / "run"
    first = train(tiny(), run, data_root=demo_data, progress=False)
    text = (run / "config.yaml").read_text()
    assert "  spike_window: " in text
    (run / "config.yaml").write_text("".join(line for line in text.splitlines(keepends=True)
                                             if "spike_window" not in line))
    assert identify(tiny(), run).kind == "finished"
    assert identify(tiny("run.spike_window=7"), run).diff == ("run.spike_window: 50 -> 7",)
    assert train(tiny(), run, data_root=demo_data, progress=False) == first


def test_an_optimizer_state_that_does_not_fit_is_a_clear_error(tmp_path, demo_data):
    import torch

    from moe_vs_dense.train import checkpoint

    run = tmp_path / "run"
    train(tiny("train.tokens=4096"), run, data_root=demo_data, progress=False)
    path = checkpoint.checkpoints(run)[-1]
    saved = torch.load(path, weights_only=True)
    saved["optimizer"]["param_groups"] = saved["optimizer"]["param_groups"][:1]
    torch.save(saved, path)
    before = snapshot(run)
    with pytest.raises(UserError, match="checkpoint does not resume this run.*ValueError"):
        train(tiny(), run, data_root=demo_data, progress=False, force=True)
    assert snapshot(run) == before
