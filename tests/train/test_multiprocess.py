"""`accelerate launch --multi_gpu --num_processes 2` on CPU trains ONE model on two ranks (the
trainer forces CPU mode itself), matching one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from moe_vs_dense.train import train
from tests.train.conftest import MOE, ROOT, SMOKE, TINY, tiny


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# a learned top-1 router with bias balancing: each step's bias update must count both ranks'
# tokens (rank 0's alone gives another bias, which DDP then copies to rank 1). No aux loss: a
# balance loss over each rank's rows is not the loss over all rows (its gradients differ).
BIASED = ["model.family=moe", "model.moe.router=learned", "model.moe.num_experts=4",
          "model.moe.top_k=1", "model.moe.d_expert=16", "model.moe.bias_balancing=true",
          "model.moe.bias_update_rate=0.01", "model.moe.aux_loss_weight=0"]


@pytest.mark.slow
@pytest.mark.parametrize("moe", [MOE, BIASED], ids=["modality", "learned-bias"])
def test_two_cpu_processes_match_one_process(tmp_path, demo_data, moe):
    sets = TINY + moe + ["train.lr=0.01"]
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(free_port()), "-m", "moe_vs_dense", "train", str(SMOKE), "--out",
           str(tmp_path / "two"), "--data-dir", str(demo_data), "--quiet"]
    cmd += [a for s in sets for a in ("--set", s)]
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "record.json").read_text())
    assert two["host"]["processes"] == 2  # one model on two ranks, not two world-1 copies
    one = train(tiny("train.lr=0.01", *moe), tmp_path / "one", data_root=demo_data,
                progress=False)
    for m, v in one["eval"]["final"].items():
        assert two["eval"]["final"][m]["loss"] == pytest.approx(v["loss"], abs=1e-4)
    a = load_file(tmp_path / "one" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model.safetensors")
    # Adam turns float noise in near-zero gradients (rare tokens' embeddings) into ~1e-5 steps
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == \
        ["checkpoints", "config.yaml", "eval_docs.json", "metrics.jsonl", "model.safetensors",
         "record.json"]
