"""The training step on the demo data: router-bias balancing sees the whole step."""

from __future__ import annotations

import torch

from moe_vs_dense.data.loader import MixtureLoader
from moe_vs_dense.train.rundir import open_data
from moe_vs_dense.train.step import build, split_batch, train_step, unwrap
from tests.train.conftest import tiny

BIASED = ["model.family=moe", "model.moe.router=learned", "model.moe.num_experts=4",
          "model.moe.top_k=1", "model.moe.bias_balancing=true", "model.moe.d_expert=16",
          "model.moe.bias_update_rate=0.01", "train.batch_rows=8"]


def biases_after_steps(cfg, data, grad_accum: int, steps: int = 1) -> list[torch.Tensor]:
    model, opt, sched = build(cfg, data)
    loader = MixtureLoader(data, cfg.train.batch_rows, cfg.seed)
    for step in range(steps):
        micro = split_batch(*loader.batch(step), 0, 1, grad_accum, torch.device("cpu"))
        train_step(model, opt, sched, micro)
    return [m.router.bias.clone() for m in unwrap(model).moe_layers()]


def test_bias_update_counts_every_micro_batch(demo_data):
    """grad_accum 2 over the same rows moves the router bias exactly as one micro-batch does
    (the update is a sign of integer counts, so any micro-batch left out shows; one step, as
    later steps route with weights that differ by float summation order)."""
    cfg = tiny(*BIASED, "model.n_layers=2")
    data = open_data(cfg, demo_data, prepare=False)
    one = biases_after_steps(cfg, data, grad_accum=1)
    two = biases_after_steps(cfg, data, grad_accum=2)
    four = biases_after_steps(cfg, data, grad_accum=4)
    assert any(b.abs().sum() > 0 for b in one)
    for a, b, c in zip(one, two, four, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-7)
        torch.testing.assert_close(c, a, rtol=0, atol=1e-7)


def test_counts_restart_after_each_update(demo_data):
    cfg = tiny(*BIASED)
    data = open_data(cfg, demo_data, prepare=False)
    model, opt, sched = build(cfg, data)
    loader = MixtureLoader(data, cfg.train.batch_rows, cfg.seed)
    train_step(model, opt, sched, split_batch(*loader.batch(0), 0, 1, 2, torch.device("cpu")))
    assert all(m.load_E is None for m in model.moe_layers())


def test_every_model_of_a_sweep_worker_really_compiles():
    """Ten models of different widths in one process (as a sweep worker trains them): each
    one compiles, where without a Dynamo reset the ninth and later ran eagerly."""
    from moe_vs_dense.config import ModelConfig
    from moe_vs_dense.model.transformer import Transformer
    from moe_vs_dense.train.step import compile_fresh, ran_compiled

    for i in range(10):
        model = Transformer(ModelConfig(d_model=16 + 8 * i, n_heads=2, n_layers=1), 64, 16,
                            ["text"])
        net = compile_fresh(model, backend="eager")
        assert not ran_compiled()
        net(torch.randint(0, 64, (2, 16)))
        assert ran_compiled(), f"model {i} ran eagerly"
