"""The machine's measured matmul peak, for MFU (model FLOPs utilization)."""

from __future__ import annotations

import time
from functools import cache

import torch


@cache
def matmul_peak(device_type: str = "cpu", dtype: str = "fp32", threads: int | None = None,
                seconds: float = 0.25) -> float:
    """Best FLOP/s of square matmuls (1024 on CPU, 8192 on CUDA) over about `seconds`.
    Cached per process for (device, dtype, threads)."""
    n = 8192 if device_type == "cuda" else 1024
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(0)).to(device_type, dt)
    b = a.T.contiguous()
    sync = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    a @ b
    sync()
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best
