import pytest
import torch

from moe_vs_dense.config import TrainConfig
from moe_vs_dense.train.schedule import lr_factor, optimizer_and_schedule, param_groups


def test_warmup_then_cosine_to_the_floor():
    f = [lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    assert lr_factor(54, 100, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5, abs=0.02)


def test_token_budget_sets_steps_and_warmup():
    cfg = TrainConfig(tokens=1_000_000, batch_rows=16, warmup=0.05)
    assert cfg.steps(256) == 245  # ceil(1e6 / 4096)
    assert cfg.warmup_steps(245) == 12
    assert TrainConfig(warmup=30).warmup_steps(245) == 30


def test_weight_decay_on_matrices_only_and_schedule_drives_the_lr():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.1)
    assert [p.ndim for p in decay["params"]] == [2]
    assert sorted(p.ndim for p in no_decay["params"]) == [1, 1, 1]
    assert no_decay["weight_decay"] == 0.0
    opt, sched = optimizer_and_schedule(model, TrainConfig(lr=1.0, warmup=2, min_lr_ratio=0.0), 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:2] == pytest.approx([0.5, 1.0]) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
