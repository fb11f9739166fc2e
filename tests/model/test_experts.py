"""The path the experts really take: grouped_mm where this torch runs it, a plain matmul FFN."""

import pytest
import torch
import torch.nn.functional as F

from moe_vs_dense.config import MoEConfig
from moe_vs_dense.model import experts
from moe_vs_dense.model.experts import SwiGLU
from moe_vs_dense.model.moe import MoE

needs_grouped_mm = pytest.mark.skipif(not hasattr(F, "grouped_mm"),
                                      reason="this torch has no F.grouped_mm")


@pytest.fixture
def fresh_probe():
    experts._grouped_mm_works.cache_clear()
    yield
    experts._grouped_mm_works.cache_clear()


@needs_grouped_mm
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_probe_says_yes_when_first_called_without_autograd(fresh_probe, dtype):
    with torch.no_grad():
        assert experts._grouped_mm_works("cpu", dtype)


@needs_grouped_mm
def test_moe_forward_and_backward_run_on_grouped_mm(fresh_probe, monkeypatch):
    """The first call of the probe happens inside the experts' autograd Function (autograd
    off there); the layer must still take grouped_mm, forward and backward."""
    calls = []
    real = F.grouped_mm

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    torch.manual_seed(0)
    layer = MoE(MoEConfig(num_experts=4, top_k=2), 32, 64, ["text"], 0.02, 0.02)
    x = torch.randn(2, 16, 32, requires_grad=True)
    monkeypatch.setattr(experts.F, "grouped_mm", counting)
    layer(x, torch.zeros(2, 16, dtype=torch.long)).sum().backward()
    # forward: gate, up, down; backward: 3 input and 3 weight gradients (the probe's own two
    # calls count too, once)
    assert len(calls) >= 9
    assert experts._grouped_mm_works("cpu", torch.float32)


def test_dense_ffn_is_three_plain_matmuls(monkeypatch):
    """No routed kernel, no group counts: the dense FFN is silu(x Wg) * (x Wu) Wd."""
    torch.manual_seed(0)
    ffn = SwiGLU(16, 40)
    x = torch.randn(2, 5, 16, requires_grad=True)

    def refuse(*args, **kwargs):
        raise AssertionError("the dense FFN went through the routed-experts kernel")

    monkeypatch.setattr(experts._RoutedGLU, "apply", refuse)
    y = ffn(x)
    w_gate, w_up, w_down = (w[0].detach() for w in (ffn.w_gate, ffn.w_up, ffn.w_down))
    want = (F.silu(x.detach() @ w_gate) * (x.detach() @ w_up)) @ w_down
    torch.testing.assert_close(y, want)
    y.sum().backward()
    assert ffn.w_down.grad.shape == (1, 40, 16) and x.grad is not None
