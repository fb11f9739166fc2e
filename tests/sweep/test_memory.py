"""Memory before a run starts: the plan checks every run against the GPU it trains on, sets the
grad_accum that fits, and refuses what fits at no grad_accum, with the numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe_vs_dense.errors import UserError
from moe_vs_dense.model.accounting import account, memory_estimate
from moe_vs_dense.sweep import load_plan, memory
from tests.sweep.test_run import tiny_sweep

ROOT = Path(__file__).resolve().parents[2]
GPU_STUDY = ROOT / "configs" / "sweeps" / "gpu_study.yaml"


def test_gpu_study_plans_only_runs_that_fit_one_141_gb_gpu():
    sweep, runs = load_plan(GPU_STUDY)
    assert sweep.device_memory_gb == 141
    budget = memory.HEADROOM * 141 * memory.GB
    for r in runs:
        assert memory.need(r.config, r.accounting)["total"] <= budget, r.run_id
        assert r.config.train.batch_rows == 256  # the global batch is the sweep's
    raised = [r for r in runs if r.config.train.grad_accum > 1]
    assert raised and all(memory.need(r.config, r.accounting, r.config.train.grad_accum // 2)
                          ["total"] > budget for r in raised)  # the smallest that fits
    assert max(r.accounting.total_params for r in runs) > 3e9


def test_runs_that_fit_at_no_grad_accum_are_refused_with_the_numbers():
    big = "sizes=[{d_model: 2048, n_layers: 20, n_heads: 16}]"
    with pytest.raises(UserError, match=r"(?s)cannot fit 90% of 141.0 GB.*d2048l20-t250M-s0-"
                                        r"moe_group: 1\d\d.\d GB \(weights 33.\d, gradients .*"
                                        r"at 1 row\(s\) of 1024 tokens"):
        load_plan(GPU_STUDY, [big])


def test_without_the_key_a_device_is_checked_and_grad_accum_suggested(tmp_path):
    _, runs = load_plan(tiny_sweep(tmp_path, [4096]))
    assert all(r.config.train.grad_accum == 1 for r in runs)
    small = memory.need(runs[0].config, runs[0].accounting)["total"]
    with pytest.raises(UserError, match=r"(?s)do not fit.*grad_accum 1; grad_accum 2 needs"):
        memory.fit(runs, int(small / memory.HEADROOM * 0.99), False, "this machine's GPU")
    assert memory.fit(runs, int(small / memory.HEADROOM * 0.99), True, "test")[0] \
        .config.train.grad_accum > 1


def test_activations_scale_with_the_micro_batch_and_state_is_16_bytes_a_parameter(tmp_path):
    _, runs = load_plan(tiny_sweep(tmp_path, [4096]))
    cfg = runs[1].config  # the MoE partner
    acc = account(cfg.model, 1000, 256, cfg.data.modalities)
    one = memory_estimate(acc, cfg.model, 1, 256, modalities=cfg.data.modalities)
    eight = memory_estimate(acc, cfg.model, 8, 256, modalities=cfg.data.modalities)
    assert eight["activations"] == pytest.approx(8 * one["activations"], rel=1e-6)
    assert one["weights"] + one["grads"] + one["optimizer"] == 16 * acc.total_params
    top2 = cfg.model.model_copy(update={"moe": cfg.model.moe.model_copy(
        update={"router": "learned", "num_experts": 4, "top_k": 2})})
    top1 = top2.model_copy(update={"moe": top2.moe.model_copy(update={"top_k": 1})})
    acts = [memory_estimate(account(m, 1000, 256, ["text"]), m, 4, 256)["activations"]
            for m in (top1, top2)]
    assert acts[1] > acts[0]  # two experts per token keep more activations
