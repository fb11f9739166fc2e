"""Every router and backend against a naive per-token reference (outputs and gradients)."""

import sys

import pytest
import torch
import torch.nn.functional as F

from moe_vs_dense.config import MoEConfig
from moe_vs_dense.errors import UserError
from moe_vs_dense.model.experts import can_use_grouped_mm, count_ids
from moe_vs_dense.model.moe import MoE
from moe_vs_dense.model.routers import switch_balance_loss

D, H = 32, 24
MODS = ["text", "dna", "image"]


def assert_close_fp32(got: torch.Tensor, want: torch.Tensor) -> None:
    """An fp32 result against an exact (float64) one or another fp32 path. Summation order
    (BLAS kernel, threads, AVX2 or AMX) moves fp32 sums by about 1e-6 of their terms' scale,
    also for entries that cancel to near 0; a routing, weighting or gradient bug moves them by
    a sizeable share of it."""
    scale = float(want.detach().abs().max())
    torch.testing.assert_close(got.detach().double(), want.detach().double(), rtol=1e-5,
                               atol=1e-5 * scale)


def make(seed=0, **kw) -> MoE:
    torch.manual_seed(seed)
    return MoE(MoEConfig(**kw), D, H, MODS, init_std=0.3, out_std=0.3).double().float()


def reference(layer: MoE, x_ND: torch.Tensor, group_N: torch.Tensor) -> torch.Tensor:
    """Route and compute one token at a time, from the definitions, in x's dtype."""
    cfg, e = layer.cfg, layer.experts
    out = []
    for n in range(x_ND.shape[0]):
        x, g = x_ND[n], int(group_N[n])
        if cfg.router == "modality":
            start = sum(layer.router.experts_per_group[:g])
            count = layer.router.experts_per_group[g]
            chosen = [(start + j, 1.0 / count) for j in range(count)]
        else:
            logits = layer.router.weight.to(x.dtype) @ x
            allowed = list(range(layer.n_experts))
            if cfg.router == "modality_group":
                allowed = [j for j in allowed if int(layer.router.expert_group[j]) == g]
            probs = torch.zeros(layer.n_experts, dtype=x.dtype)
            probs[allowed] = torch.softmax(logits[allowed], dim=0)
            score = probs + (layer.router.bias if cfg.bias_balancing else 0)
            ranked = sorted(allowed, key=lambda j: -float(score[j].detach()))[: cfg.top_k]
            w = probs[ranked]
            if cfg.resolved_norm_topk_prob:
                w = w / w.sum()
            chosen = list(zip(ranked, w, strict=True))
        y = sum(wt * e.expert(j, x[None])[0] for j, wt in chosen)
        if layer.shared is not None:
            y = y + layer.shared(x[None])[0]
        out.append(y)
    return torch.stack(out)


ROUTERS = [
    dict(router="learned", num_experts=6, top_k=1),
    dict(router="learned", num_experts=6, top_k=2),
    dict(router="learned", num_experts=4, top_k=2, shared_expert=True),
    dict(router="learned", num_experts=5, top_k=2, bias_balancing=True),
    dict(router="modality", experts_per_modality=1),
    dict(router="modality", experts_per_modality={"text": 2, "dna": 1, "image": 3}),
    dict(router="modality_group", experts_per_modality=3, top_k=2),
]


@pytest.mark.parametrize("impl", ["grouped_mm", "loop"])
@pytest.mark.parametrize("kw", ROUTERS, ids=lambda kw: "-".join(f"{v}" for v in kw.values()))
def test_matches_naive_reference_outputs_and_gradients(kw, impl):
    layer = make(**kw)
    layer.impl = impl
    if kw.get("bias_balancing"):
        layer.router.bias.copy_(torch.tensor([0.3, -0.2, 0.0, 0.1, -0.4]))
    torch.manual_seed(1)
    x = torch.randn(2, 20, D, requires_grad=True)
    group = torch.randint(0, 3, (2, 20))
    probe = torch.randn(2, 20, D)
    y = layer(x, group)
    (y * probe).sum().backward()
    got = [y, x.grad] + [p.grad for p in layer.parameters()]
    exact = make(**kw).double()
    exact.load_state_dict(layer.state_dict())
    x64 = x.detach().double().requires_grad_()
    ref = reference(exact, x64.reshape(-1, D), group.reshape(-1)).view_as(y)
    (ref * probe.double()).sum().backward()
    want = [ref, x64.grad] + [p.grad if p.grad is not None else torch.zeros_like(p)
                              for p in exact.parameters()]
    for g, w in zip(got, want, strict=True):
        assert_close_fp32(g, w)


def test_grouped_mm_only_on_aligned_rows_of_both_operands():
    """The weight gradient pairs x [T, I] with dy [T, O]; an unaligned I alone must fall back."""
    x_aligned, x_odd = torch.randn(8, 64), torch.randn(8, 66)
    assert can_use_grouped_mm(x_aligned, torch.randn(8, 24)) == can_use_grouped_mm(
        x_aligned, torch.randn(2, 64, 24))
    assert not can_use_grouped_mm(x_odd, torch.randn(8, 24))
    assert not can_use_grouped_mm(x_odd, torch.randn(2, 66, 24))
    assert not can_use_grouped_mm(x_aligned, torch.randn(2, 64, 26))


def test_modality_routing_isolates_experts():
    layer = make(router="modality", experts_per_modality=2)
    x = torch.randn(3, 16, D, requires_grad=True)
    group = torch.full((3, 16), 1)  # every token is dna (group 1 -> experts 2, 3)
    layer(x, group).pow(2).sum().backward()
    counts = layer.stats["tokens_per_expert"]
    assert counts.tolist() == [0, 0, 48, 48, 0, 0]
    grads = [w.grad for w in (layer.experts.w_gate, layer.experts.w_up, layer.experts.w_down)]
    for j in range(6):
        assert [bool(g[j].abs().sum() > 0) for g in grads] == [j in (2, 3)] * 3


def test_modality_group_routes_inside_the_group():
    layer = make(router="modality_group", experts_per_modality=2, top_k=1)
    group = torch.randint(0, 3, (4, 30))
    layer(torch.randn(4, 30, D), group)
    r = layer.router(torch.randn(120, D), group.reshape(-1))
    assert torch.equal(layer.router.expert_group[r.exp_A], group.reshape(-1)[r.tok_A])


def test_learned_router_stays_fp32_under_autocast():
    layer = make(router="learned", num_experts=6, top_k=2)
    x = torch.randn(200, D)
    want = layer.router(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = layer.router(x)
    assert got.w_A.dtype == torch.float32
    assert torch.equal(got.exp_A, want.exp_A)
    torch.testing.assert_close(got.w_A, want.w_A)


def test_balance_loss_is_minimal_under_uniform_routing():
    E, N = 8, 4000
    uniform_idx = torch.arange(N).remainder(E)[:, None]
    uniform_probs = torch.full((N, E), 1.0 / E)
    assert switch_balance_loss(uniform_probs, uniform_idx, E).item() == pytest.approx(1.0)
    torch.manual_seed(0)
    for _ in range(20):
        logits = torch.randn(N, E) * 2
        probs = torch.softmax(logits, -1)
        idx = probs.argmax(-1, keepdim=True)
        assert switch_balance_loss(probs, idx, E).item() > 1.0
    skewed = torch.zeros(N, 1, dtype=torch.long)
    assert switch_balance_loss(F.one_hot(skewed[:, 0], E).float(), skewed, E).item() == pytest.approx(E)


def test_bias_update_moves_load_toward_balance():
    layer = make(router="learned", num_experts=4, top_k=1, bias_balancing=True)
    layer.router.update_bias(torch.tensor([10, 0, 5, 5]), rate=0.1)
    assert layer.router.bias.tolist() == pytest.approx([-0.1, 0.1, 0.0, 0.0])
    # within groups: each expert is compared with its own group's mean load
    grouped = make(router="modality_group", experts_per_modality=2, top_k=1, bias_balancing=True)
    groups = grouped.router.expert_group.tolist()
    load = torch.tensor([float(10 * g + i % 2) for i, g in enumerate(groups)])
    grouped.router.update_bias(load, rate=0.1)
    assert groups == [0, 0, 1, 1, 2, 2]
    assert grouped.router.bias.tolist() == pytest.approx([0.1, -0.1] * 3)


def test_megablocks_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="model.moe.backend: megablocks cannot run here: this "
                                        "machine has no CUDA device"):
        make(router="learned", backend="megablocks")
    assert make(router="learned", backend="auto").backend == "torch"


@pytest.mark.parametrize("gg_ok", [True, False])
def test_megablocks_backend_needs_grouped_gemm_and_bf16(monkeypatch, gg_ok):
    """With CUDA and megablocks' ops present: grouped GEMM missing names the gg extra; fp32
    is refused by name and `auto` falls back to torch; the model says which backend runs."""
    from moe_vs_dense.config import ModelConfig
    from moe_vs_dense.model.moe import resolve_backend
    from moe_vs_dense.model.transformer import Transformer

    _standin_megablocks(monkeypatch, grouped_gemm=gg_ok)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    auto, named = MoEConfig(backend="auto"), MoEConfig(backend="megablocks")
    assert resolve_backend(auto, "fp32") == "torch"
    if gg_ok:
        assert resolve_backend(auto, "bf16") == resolve_backend(named, "bf16") == "megablocks"
        with pytest.raises(UserError, match="megablocks runs bf16 only.*train.precision: bf16"):
            resolve_backend(named, "fp32")
        model = Transformer(ModelConfig(family="moe", d_model=32, n_heads=2, moe=auto), 64, 16,
                            ["text"], precision="bf16")
        assert model.moe_backend == "megablocks"
        assert Transformer(ModelConfig(family="moe", d_model=32, n_heads=2, moe=auto), 64, 16,
                           ["text"]).moe_backend == "torch"
    else:
        assert resolve_backend(auto, "bf16") == "torch"
        with pytest.raises(UserError, match="grouped_gemm package, megablocks' gg extra.*gpu"):
            resolve_backend(named, "bf16")


def test_megablocks_whose_ops_were_never_built_is_a_clear_error(monkeypatch):
    """pip installs megablocks without its CUDA extension where nvcc is absent; importing its
    ops then fails, which must be named rather than crash in the first forward."""
    from moe_vs_dense.model.moe import resolve_backend

    _standin_megablocks(monkeypatch)
    monkeypatch.setitem(sys.modules, "megablocks.ops", None)  # import raises ImportError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(UserError, match="megablocks does not import"):
        resolve_backend(MoEConfig(backend="megablocks"), "bf16")


def test_dense_model_has_no_moe_backend():
    from moe_vs_dense.config import ModelConfig
    from moe_vs_dense.model.transformer import Transformer

    assert Transformer(ModelConfig(d_model=32, n_heads=2), 64, 16, ["text"]).moe_backend is None


def _standin_megablocks(monkeypatch, grouped_gemm: bool = True) -> None:
    """megablocks' ops with the semantics of its Triton kernels, in torch: gather row i from
    token indices[i] // k; scatter row i, times weights[indices[i]], back to that token and
    sum over its k slots. Tests our glue (index order, weights, counts) without CUDA."""
    import types

    def gather(x, indices, bin_ids, bins, k):
        return x[indices.long() // k]

    def scatter(x, indices, bin_ids, weights, bins, k):
        idx = indices.long()
        rows = torch.zeros(len(idx), x.shape[1], dtype=x.dtype).index_copy(
            0, idx, x * weights[idx, None])
        return rows.view(-1, k, x.shape[1]).sum(1)

    def gmm(a, b, batch_sizes, trans_b=False):
        parts = a.split(batch_sizes.tolist())
        return torch.cat([p @ (b[g].t() if trans_b else b[g]) for g, p in enumerate(parts)])

    ops = types.SimpleNamespace(
        sort=lambda x, end_bit: torch.sort(x, stable=True),
        histogram=lambda x, n: torch.bincount(x, minlength=n).int(),
        inclusive_cumsum=lambda x, dim: torch.cumsum(x, dim).int(),
        gather=gather, scatter=scatter)
    gg = types.SimpleNamespace(ops=types.SimpleNamespace(gmm=gmm),
                               grouped_gemm_is_available=lambda: grouped_gemm)
    package = types.ModuleType("megablocks")
    package.ops, package.grouped_gemm_util = ops, gg
    monkeypatch.setitem(sys.modules, "megablocks", package)
    monkeypatch.setitem(sys.modules, "megablocks.ops", ops)


def _outputs_and_grads(layer: MoE, x: torch.Tensor, group: torch.Tensor) -> list[torch.Tensor]:
    x = x.detach().requires_grad_()
    layer.zero_grad()
    y = layer(x, group)
    (y * torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y)).sum().backward()
    return [y.detach(), x.grad] + [p.grad.clone() for p in layer.parameters()]


@pytest.mark.parametrize("kw", [dict(router="learned", num_experts=6, top_k=2),
                                dict(router="modality", experts_per_modality=2)])
def test_megablocks_glue_matches_torch_backend(monkeypatch, kw):
    layer = make(**kw)
    _standin_megablocks(monkeypatch)
    torch.manual_seed(2)
    x, group = torch.randn(2, 20, D), torch.randint(0, 3, (2, 20))
    want = _outputs_and_grads(layer, x, group)
    layer.backend = "megablocks"
    for got, ref in zip(_outputs_and_grads(layer, x, group), want, strict=True):
        assert_close_fp32(got, ref)


def test_megablocks_needs_equal_experts_per_token(monkeypatch):
    layer = make(router="modality", experts_per_modality={"text": 2, "dna": 1, "image": 3})
    _standin_megablocks(monkeypatch)
    layer.backend = "megablocks"
    with pytest.raises(UserError, match="model.moe.backend"):
        layer(torch.randn(1, 6, D), torch.tensor([[0, 1, 2, 0, 1, 2]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="megablocks runs on CUDA only")
def test_megablocks_matches_torch_backend_on_gpu_in_bf16():
    pytest.importorskip("megablocks")
    torch.manual_seed(0)
    layer = MoE(MoEConfig(router="learned", num_experts=8, top_k=2, backend="megablocks"),
                128, 256, MODS, 0.02, 0.02, precision="bf16").cuda()
    x = torch.randn(2, 64, 128, device="cuda")
    group = torch.zeros(2, 64, dtype=torch.long, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = _outputs_and_grads(layer, x, group)
        layer.backend = "torch"
        want = _outputs_and_grads(layer, x, group)
    for g, w in zip(got, want, strict=True):
        scale = float(w.detach().abs().max())
        torch.testing.assert_close(g.float(), w.float(), rtol=2e-2, atol=2e-2 * scale)


def test_count_ids_is_bincount_without_the_host_sync():
    """The counts every MoE layer, group plan and loss use: equal to torch.bincount with
    minlength, ids that never occur included (tokens per expert, dead experts)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 5, (1000,), generator=g)
    assert torch.equal(count_ids(ids, 8), torch.bincount(ids, minlength=8))
    assert count_ids(ids[:0], 3).tolist() == [0, 0, 0]
    assert count_ids(ids.int(), 8).dtype == torch.long


def test_group_balance_loss_is_the_switch_loss_within_each_group():
    """Sync-free form against the per-group definition (tokens of a group, its experts only,
    weighted by the group's share); group 2 has experts but no tokens in the batch."""
    from moe_vs_dense.model.routers import group_balance_loss

    g = torch.Generator().manual_seed(0)
    expert_group = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    group_N = torch.randint(0, 2, (300,), generator=g)
    logits = torch.randn(300, 8, generator=g).masked_fill(
        expert_group[None, :] != group_N[:, None], float("-inf"))
    probs = torch.softmax(logits, -1)
    idx = torch.topk(probs, 2, dim=-1).indices
    want = 0.0
    for grp in (0, 1):
        rows, experts = group_N == grp, torch.nonzero(expert_group == grp).squeeze(1)
        local = torch.searchsorted(experts, idx[rows])
        want += rows.float().mean() * switch_balance_loss(probs[rows][:, experts], local,
                                                          len(experts))
    got = group_balance_loss(probs, idx, group_N, expert_group)
    torch.testing.assert_close(got, torch.as_tensor(want), rtol=1e-6, atol=0)


def test_modality_router_with_equal_expert_counts_never_reads_the_device(monkeypatch):
    """Assignments by arithmetic: no nonzero per modality, no value read back (each is a host
    sync on CUDA); token-major, token n's experts are its modality's, in order."""
    layer = make(router="modality", experts_per_modality=2)
    group = torch.tensor([2, 0, 1, 1, 0])

    def refuse(*args, **kwargs):
        raise AssertionError("the router read a device value back")

    monkeypatch.setattr(torch, "nonzero", refuse)
    monkeypatch.setattr(torch.Tensor, "__int__", refuse)
    monkeypatch.setattr(torch.Tensor, "item", refuse)
    monkeypatch.setattr(torch.Tensor, "tolist", refuse)
    r = layer.router(torch.randn(5, D), group)
    monkeypatch.undo()
    assert r.tok_A.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert r.exp_A.tolist() == [4, 5, 0, 1, 2, 3, 2, 3, 0, 1]
    assert r.w_A.tolist() == [0.5] * 10 and r.top_k == 2


def test_modality_router_with_unequal_expert_counts():
    layer = make(router="modality", experts_per_modality={"text": 2, "dna": 1, "image": 3})
    r = layer.router(torch.randn(4, D), torch.tensor([2, 1, 0, 2]))
    assert r.tok_A.tolist() == [0, 0, 0, 1, 2, 2, 3, 3, 3]
    assert r.exp_A.tolist() == [3, 4, 5, 2, 0, 1, 3, 4, 5]
    assert r.w_A.tolist() == pytest.approx([1 / 3] * 3 + [1.0] + [0.5] * 2 + [1 / 3] * 3)
    assert r.top_k is None
