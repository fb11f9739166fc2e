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


def saved_for_backward(model, x, m, precision: str) -> int:
    """Bytes of the tensors autograd saves for the backward pass of one forward and LM loss
    (each storage once; the parameters themselves not counted)."""
    import torch

    from moe_vs_dense.model.loss import lm_loss
    from moe_vs_dense.train.evaluate import autocast

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast(x.device, precision):
            logits = model(x[:, :-1], m[:, :-1])
        lm_loss(logits, x[:, 1:], m[:, 1:])
    return sum(seen.values())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("family", ["dense", "mot", "moe_modality", "moe_learned_top2"])
def test_activation_estimate_matches_what_autograd_saves(family, precision, demo_data):
    """On a real batch, the estimate is within -10%/+35% of the bytes autograd really keeps
    (CPU SDPA is a flash kernel: no attention scores saved, as on CUDA)."""
    import torch

    from moe_vs_dense.data.loader import MixtureLoader
    from moe_vs_dense.model.transformer import Transformer
    from moe_vs_dense.train.rundir import open_data
    from tests.train.conftest import tiny

    sets = {"dense": [], "mot": ["model.family=mot"], "moe_modality": [],
            "moe_learned_top2": ["model.moe.router=learned", "model.moe.num_experts=4",
                                 "model.moe.top_k=2"]}[family]
    cfg = tiny("model.d_model=128", "model.n_heads=4", "model.n_layers=2", *sets,
               moe=family.startswith("moe"))
    data = open_data(cfg, demo_data, prepare=False)
    mods = data.meta["modalities"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Transformer(cfg.model, data.vocab.size, data.seq_len, mods)
    x, m = (torch.from_numpy(a) for a in MixtureLoader(data, 4, 0).batch(0))
    got = saved_for_backward(model, x, m, precision)
    acc = account(cfg.model, data.vocab.size, data.seq_len, mods)
    est = memory_estimate(acc, cfg.model, 4, data.seq_len, 2 if precision == "bf16" else 4,
                          attention_scores=False, modalities=mods)["activations"]
    assert 0.9 <= est / got <= 1.35, (est, got)
