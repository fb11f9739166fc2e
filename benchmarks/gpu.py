"""Checks that need a CUDA GPU, in one run: backends against a reference, step speed, syncs.

1. Agreement in bf16: the MoE layer on the torch backend (and megablocks where it is usable)
   against an fp32 reference that runs every expert on every token and weights it by the
   routing; outputs and gradients, error over the reference's largest entry (target <= 0.02).
2. Training steps (`train_step`: forward, backward, clipping, fused AdamW, schedule) in bf16
   autocast: a dense model of >= 350M non-embedding params (MFU against the measured bf16
   matmul peak), and its FLOP-matched learned-router MoE (8 experts, top-2) on each usable
   backend: MoE step time over dense step time.
3. torch.compile: the dense step compiled (Dynamo reset first) over eager, and whether any
   graph really compiled.
4. No host sync inside a step: `torch.cuda.set_sync_debug_mode("error")` around one step of
   each model; a sync raises and is reported with the line that made it.

Tokens are uniform draws over the demo's vocabulary (speed does not depend on their values;
a fresh router spreads them about evenly either way). Without CUDA it says so and exits 0.
`--device cpu --small` runs the same code at toy sizes to check the script itself (its
figures mean nothing).

Usage: python benchmarks/gpu.py [--steps 10] [--small] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from moe_vs_dense.config import ModelConfig, MoEConfig, TrainConfig
from moe_vs_dense.config_load import load_config
from moe_vs_dense.data.tokenizers import vocab_size
from moe_vs_dense.model.accounting import account
from moe_vs_dense.model.moe import MoE, megablocks_missing
from moe_vs_dense.model.pairing import matched_partner
from moe_vs_dense.model.transformer import Transformer
from moe_vs_dense.train.schedule import optimizer_and_schedule
from moe_vs_dense.train.speed import matmul_peak
from moe_vs_dense.train.step import compile_fresh, ran_compiled, train_step

ROOT = Path(__file__).resolve().parents[1]
MODS = ["text", "code", "dna"]
ROUTERS = {"learned": dict(router="learned", num_experts=8, top_k=2),
           "modality": dict(router="modality", experts_per_modality=2),
           "modality_group": dict(router="modality_group", experts_per_modality=4, top_k=2)}


def reference(layer: MoE, x_ND: torch.Tensor, group_N: torch.Tensor) -> torch.Tensor:
    """fp32: every expert on every token, times the token's routing weight for it (0 if not
    routed there). The routing is the layer's own fp32 router's; the CPU tests check it."""
    r = layer.router(x_ND.float(), group_N)
    w_NE = torch.zeros(x_ND.shape[0], layer.n_experts, device=x_ND.device)
    w_NE.index_put_((r.tok_A, r.exp_A), r.w_A.float(), accumulate=True)
    e = layer.experts
    y = sum(w_NE[:, j, None] * e.expert(j, x_ND.float()) for j in range(layer.n_experts))
    return y + (layer.shared(x_ND.float()) if layer.shared is not None else 0)


def relative_errors(layer: MoE, x_ND: torch.Tensor, group_N: torch.Tensor, backend: str) -> dict:
    """Max |got - want| / max |want| of the output, the input gradient and each weight's
    gradient: `backend` under bf16 autocast against the fp32 reference."""
    probe = torch.randn_like(x_ND)
    results = []
    for run in ("got", "want"):
        layer.zero_grad()
        x = x_ND.detach().clone().requires_grad_()
        if run == "got":
            layer.backend = backend
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                y = layer(x[None], group_N[None])[0]
        else:
            y = reference(layer, x, group_N)
        (y.float() * probe).sum().backward()
        results.append([y.detach().float(), x.grad.float()]
                       + [p.grad.float() for p in layer.experts.parameters()])
    names = ["output", "input grad", "w_gate grad", "w_up grad", "w_down grad"]
    return {n: float((g - w).abs().max() / w.abs().max().clamp(min=1e-30))
            for n, g, w in zip(names, *results, strict=True)}


def agreement(device: str, small: bool, backends: list[str]) -> dict:
    N, D, H = (256, 64, 128) if small else (4096, 512, 1024)
    out = {}
    for name, kw in ROUTERS.items():
        torch.manual_seed(0)
        layer = MoE(MoEConfig(**kw), D, H, MODS, 0.02, 0.02, precision="bf16").to(device)
        x = torch.randn(N, D, device=device)
        group = torch.randint(0, len(MODS), (N,), device=device)
        for backend in backends:
            if backend == "megablocks" and name == "modality_group":
                continue  # same top-k kernels as learned; megablocks sees only assignments
            out[f"{name}/{backend}"] = relative_errors(layer, x, group, backend)
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step_seconds(model, opt, sched, batch, device: str, steps: int) -> float:
    """Median seconds per training step over `steps` timed steps, after 3 warm-up steps."""
    times = []
    for i in range(steps + 3):
        sync(device)
        t = time.perf_counter()
        train_step(model, opt, sched, batch, grad_clip=1.0, precision="bf16")
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def syncs_in_a_step(model, opt, sched, batch, device: str) -> str:
    """'none', or the error and our line that made the host wait for the GPU."""
    if device != "cuda":
        return "not checked (no CUDA)"
    torch.cuda.set_sync_debug_mode("error")
    try:
        train_step(model, opt, sched, batch, grad_clip=1.0, precision="bf16")
        torch.cuda.set_sync_debug_mode("default")
        return "none"
    except RuntimeError as e:
        torch.cuda.set_sync_debug_mode("default")
        ours = [f for f in traceback.extract_tb(e.__traceback__) if "moe_vs_dense" in f.filename]
        where = f" at {Path(ours[-1].filename).name}:{ours[-1].lineno} ({ours[-1].line})" if ours else ""
        return f"{str(e).splitlines()[0]}{where}"


def model_steps(args, device: str, backends: list[str]) -> dict:
    V = vocab_size(load_config(ROOT / "configs" / "demo.yaml").data.tokenizers, MODS)
    if args.small:
        T, rows, dense = 64, 4, ModelConfig(d_model=64, n_layers=2, n_heads=4)
    else:  # 28 x 12.6M = 352M non-embedding params
        T, rows, dense = 1024, 16, ModelConfig(d_model=1024, n_layers=28, n_heads=16)
    moe = matched_partner(dense.model_copy(update={"moe": MoEConfig(**ROUTERS["learned"])}),
                          V, T, MODS, target="moe").config
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, V, (rows, T + 1), generator=g).to(device)
    mods = torch.randint(0, len(MODS), (rows, T + 1), generator=g).to(device)
    batch = [(tokens, mods)]
    peak = matmul_peak(device, "bf16", torch.get_num_threads(), seconds=1.0)
    out = {"peak_bf16_flops": peak, "tokens_per_step": rows * T}
    cases = [("dense", dense, "torch")] + [(f"moe/{b}", moe, b) for b in backends]
    for name, cfg, backend in cases:
        torch.manual_seed(0)
        model = Transformer(cfg, V, T, MODS, precision="bf16").to(device)
        for m in model.moe_layers():
            m.backend = backend
        opt, sched = optimizer_and_schedule(model, TrainConfig(lr=1e-4), 10**6)
        acc = account(cfg, V, T, MODS)
        s = step_seconds(model, opt, sched, batch, device, args.steps)
        out[name] = {"non_embedding_params": acc.non_embedding_params,
                     "total_params": acc.total_params, "flops_per_token": acc.flops_per_token,
                     "step_s": s, "tokens_per_s": rows * T / s,
                     "mfu": acc.flops_per_token * rows * T / s / peak,
                     "host_syncs": syncs_in_a_step(model, opt, sched, batch, device)}
        if name == "dense":
            t = time.perf_counter()
            net = compile_fresh(model)
            train_step(net, opt, sched, batch, grad_clip=1.0, precision="bf16")
            sync(device)
            out["compile_s"] = time.perf_counter() - t
            out["compiled_step_s"] = step_seconds(net, opt, sched, batch, device, args.steps)
            out["really_compiled"] = ran_compiled()
        del model, opt, sched
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per model")
    ap.add_argument("--small", action="store_true", help="toy sizes (checks the script only)")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: nothing to check (run this on a GPU node)")
        return 0
    device = args.device
    missing = megablocks_missing() if device == "cuda" else "not on CUDA"
    backends = ["torch"] + (["megablocks"] if missing is None else [])
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; grouped_mm: {hasattr(F, 'grouped_mm')}; "
          f"megablocks: {'usable' if missing is None else missing}")
    agree = agreement(device, args.small, backends)
    print(f"\n{'bf16 vs fp32 reference':28s} " + " ".join(f"{k:>12s}" for k in next(iter(agree.values()))))
    for case, errs in agree.items():
        print(f"{case:28s} " + " ".join(f"{v:12.2e}" for v in errs.values()))
    worst = max(max(e.values()) for e in agree.values())
    print(f"worst relative error {worst:.2e} (target <= 0.02)")
    steps = model_steps(args, device, backends)
    dense = steps["dense"]
    print(f"\ntraining steps, bf16 autocast, {steps['tokens_per_step']} tokens/step, measured bf16 "
          f"matmul peak {steps['peak_bf16_flops'] / 1e12:.1f} TFLOP/s")
    print(f"{'model':16s} {'params (non-emb)':>17s} {'step ms':>9s} {'tok/s':>11s} {'MFU':>6s}  host syncs")
    for b in ["dense"] + [f"moe/{b}" for b in backends]:
        r = steps[b]
        print(f"{b:16s} {r['non_embedding_params']:17,d} {r['step_s'] * 1e3:9.1f} "
              f"{r['tokens_per_s']:11,.0f} {r['mfu']:6.1%}  {r['host_syncs']}")
    figures = {"worst_bf16_relative_error": worst, "dense_mfu": dense["mfu"],
               "dense_non_embedding_params": dense["non_embedding_params"],
               "compiled_over_eager_step": steps["compiled_step_s"] / dense["step_s"],
               "really_compiled": steps["really_compiled"], "compile_s": steps["compile_s"]}
    for b in backends:
        figures[f"moe_{b}_over_dense_step"] = steps[f"moe/{b}"]["step_s"] / dense["step_s"]
    figures["host_syncs"] = {b: steps[b]["host_syncs"] for b in ["dense"] + [f"moe/{b}" for b in backends]}
    print(f"torch.compile: first step {steps['compile_s']:.1f} s; compiled/eager step "
          f"{figures['compiled_over_eager_step']:.3f}; graphs compiled: {steps['really_compiled']}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
