"""`moe-vs-dense compress`: quantization and pruning of the weights, their storage and FLOP
accounting, a real tiny run compressed and evaluated again, and bad input through the CLI."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from moe_vs_dense.cli import main
from moe_vs_dense.compress import (
    Method,
    compress_model,
    compressible_params,
    parse_method,
    prune,
    quantize,
)
from moe_vs_dense.config import ModelConfig, MoEConfig
from moe_vs_dense.errors import UserError
from moe_vs_dense.model.accounting import account, inference
from moe_vs_dense.model.transformer import Transformer
from tests.train.conftest import tiny

V, T = 300, 64
MODS = ["text", "image"]
CONFIGS = {
    "dense": ModelConfig(d_model=32, n_layers=2, n_heads=2),
    "dense-untied": ModelConfig(d_model=32, n_layers=1, n_heads=2, tie_embeddings=False, d_ff=40),
    "moe-learned-shared": ModelConfig(family="moe", d_model=32, n_layers=2, n_heads=2,
                                      moe=MoEConfig(num_experts=4, top_k=2, shared_expert=True,
                                                    d_shared=24)),
    "moe-modality": ModelConfig(family="moe", d_model=32, n_layers=2, n_heads=2,
                                moe=MoEConfig(router="modality",
                                              experts_per_modality={"text": 2, "image": 1})),
    "mot": ModelConfig(family="mot", d_model=32, n_layers=1, n_heads=2),
}


def test_int8_error_is_small_int4_larger_and_both_on_their_grid():
    torch.manual_seed(0)
    w = torch.randn(3, 64, 40)
    err = {}
    for name, q in (("int8", 127), ("int4", 7)):
        wq = quantize(w, q)
        scale = w.abs().amax(dim=1, keepdim=True) / q
        assert ((wq - w).abs() <= scale / 2 + 1e-6).all()  # round to nearest
        levels = torch.round(wq / scale)
        assert torch.allclose(wq, levels * scale, atol=1e-6) and levels.abs().max() == q
        assert all(len(torch.unique(levels[g, :, j])) <= 2 * q + 1 for g in range(3) for j in range(40))
        err[name] = float((wq - w).pow(2).mean() / w.pow(2).mean())
    assert err["int8"] < 1e-4 < err["int4"] < 0.05
    assert torch.equal(quantize(torch.zeros(1, 4, 2), 127), torch.zeros(1, 4, 2))


def test_prune_zeroes_the_smallest_share_of_each_matrix():
    torch.manual_seed(1)
    w = torch.randn(4, 33, 7)  # 231 weights per matrix: floor(0.5 x 231) = 115 pruned
    out = prune(w, 0.5)
    for g in range(4):
        kept = out[g] != 0
        assert int((~kept).sum()) == 115
        assert w[g][kept].abs().min() >= w[g][~kept].abs().max()
        assert torch.equal(out[g][kept], w[g][kept])
    assert int((prune(w, 0.9) == 0).sum()) == 4 * math.floor(0.9 * 231)


def test_methods_parse_and_bad_ones_are_refused():
    assert parse_method("int8") == Method("int8") and parse_method("prune:0.25") == Method("prune", 0.25)
    for bad in ("int3", "prune", "prune:0", "prune:1", "prune:1.5", "prune:-0.1", "prune:x", "fp16"):
        with pytest.raises(UserError, match="--method"):
            parse_method(bad)


def test_fp32_storage_and_forward_flops_by_hand():
    """d=32, L=2, ffn 88 (SwiGLU 8/3 d rounded), V=300, T=64, tied embeddings."""
    cfg = CONFIGS["dense"]
    f, d, L = cfg.ffn_hidden, 32, 2
    total = L * (4 * d * d + 2 * d + 3 * d * f) + d + V * d
    matrices = L * (4 * d * d + 3 * d * f)
    fp32 = inference(cfg, V, T, MODS)
    assert fp32.storage_bytes == 4 * total == 4 * account(cfg, V, T, MODS).total_params
    assert fp32.flops_per_token == 2 * (total - V * d + d * V) + 4 * L * d * T
    assert 3 * fp32.flops_per_token == account(cfg, V, T, MODS).flops_per_token
    int8 = inference(cfg, V, T, MODS, "int8")
    scales = 4 * L * (3 * d + d + 2 * f + d)  # one fp32 per output channel of each matrix
    assert int8.storage_bytes == 4 * (total - matrices) + matrices + scales
    int4 = inference(cfg, V, T, MODS, "int4")
    assert int4.storage_bytes == 4 * (total - matrices) + matrices // 2 + scales
    assert int8.flops_per_token == int4.flops_per_token == fp32.flops_per_token
    pruned = inference(cfg, V, T, MODS, "prune", 0.5)
    assert pruned.storage_bytes == 4 * (total - matrices) + matrices // 8 + 4 * (matrices // 2)
    assert pruned.flops_per_token == fp32.flops_per_token - 2 * (matrices // 2)


@pytest.mark.parametrize("name", CONFIGS)
def test_accounting_matches_the_compressed_model(name):
    """Storage counted from a compressed model's tensors equals the formula's; so do the
    compressible params and, for pruning, the zeros."""
    cfg = CONFIGS[name]
    torch.manual_seed(2)
    model = Transformer(cfg, V, T, MODS)
    mats = compressible_params(model)
    n_total = sum(p.numel() for p in model.parameters())
    n_comp = sum(p.numel() for p in mats.values())
    assert n_comp == inference(cfg, V, T, MODS).compressed_params
    assert all(".router." not in k and not k.startswith(("embed", "lm_head")) for k in mats)
    channels = sum(p.shape[0] * p.shape[2] for p in mats.values())
    per_matrix = [(p.shape[0], p[0].numel()) for p in mats.values()]
    for bits, method in ((8, "int8"), (4, "int4")):
        want = 4 * (n_total - n_comp) + sum(g * math.ceil(n * bits / 8) for g, n in per_matrix) + 4 * channels
        assert inference(cfg, V, T, MODS, method).storage_bytes == want
    compress_model(model, Method("prune", 0.3))
    zeros = sum(int((p == 0).sum()) for p in compressible_params(model).values())
    assert zeros == sum(g * math.floor(0.3 * n) for g, n in per_matrix)
    nonzero = sum(int((p != 0).sum()) for p in compressible_params(model).values())
    bitmask = sum(g * math.ceil(n / 8) for g, n in per_matrix)
    assert inference(cfg, V, T, MODS, "prune", 0.3).storage_bytes == (
        4 * (n_total - n_comp) + bitmask + 4 * nonzero)
    acc = account(cfg, V, T, MODS)
    pruned = inference(cfg, V, T, MODS, "prune", 0.3)
    assert 0.6 * acc.active_params < pruned.active_nonzero < acc.active_params


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_data):
    """A tiny dense run and its MoE partner on the real demo data, trained until text and code
    are well below their uniform floors (a few seconds each)."""
    from moe_vs_dense.train import train

    root = tmp_path_factory.mktemp("compress")
    runs = {}
    for name, moe in (("dense", False), ("moe", True)):
        cfg = tiny("train.tokens=65536", "train.lr=0.01", "eval.final_rows=8", moe=moe)
        train(cfg, root / name, data_root=demo_data, progress=False)
        runs[name] = root / name
    return root, runs


def test_compressed_runs_evaluate_on_the_source_rows(trained, demo_data, capsys):
    from analysis.records import load_runs

    root, runs = trained
    src = json.loads((runs["moe"] / "record.json").read_text())
    floors, final = src["eval"]["floors"], src["eval"]["final"]
    assert all(final[k]["loss"] < floors[k]["uniform"] - 1.5 for k in ("text", "code"))  # learned
    assert src["inference"]["storage_bytes"] == 4 * src["params"]["total"]
    assert main(["compress", str(runs["moe"]), "--method", "int8", "--method", "int4",
                 "--method", "prune:0.5", "--data-dir", str(demo_data)]) == 0
    recs = {m: json.loads((root / f"moe__{m}" / "record.json").read_text())
            for m in ("int8", "int4", "prune0.5")}
    delta = {m: max(abs(v["delta"]) for v in r["compressed"]["delta"].values()) for m, r in recs.items()}
    assert delta["int8"] < 0.01  # near-lossless at 8 bits
    assert delta["int8"] < delta["int4"] and delta["int8"] < delta["prune0.5"]
    for m, r in recs.items():
        assert r["compressed"]["source_run"] == "moe" and r["run_id"] == f"moe__{m}"
        assert r["compute"] == src["compute"] and r["tokens"] == src["tokens"]
        for k, v in r["eval"]["final"].items():
            s = src["eval"]["final"][k]
            assert (v["tokens"], v["docs"], v["rows"]) == (s["tokens"], s["docs"], s["rows"])
            d = r["compressed"]["delta"][k]
            assert d["delta"] == pytest.approx(v["loss"] - s["loss"], abs=1e-9)
            assert (d["se"] is None) == (v["docs"] < 2)
            assert d["se"] is None or d["se"] < v["se"]  # the same documents: paired SE
    assert recs["int4"]["inference"]["storage_bytes"] < recs["int8"]["inference"]["storage_bytes"] \
        < src["inference"]["storage_bytes"]
    assert recs["prune0.5"]["inference"]["flops_per_token"] < src["inference"]["flops_per_token"]
    out = capsys.readouterr().out
    assert out.count("bytes") == 3 and "forward FLOPs/token" in out
    df, records = load_runs([root])
    assert sorted(df["run"].unique()) == ["dense", "moe"] and len(records) == 2
    every, _ = load_runs([root], compressed=True)
    rows = every[every["run"] == "moe__int4"]
    assert set(rows["method"]) == {"int4"} and set(rows["source_run"]) == {"moe"}
    assert set(every.loc[every["run"] == "dense", "method"]) == {"fp32"}
    # rerun: refused without --skip-existing, skipped with it
    assert main(["compress", str(runs["moe"]), "--method", "int8"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["compress", str(root), "--method", "int8", "--skip-existing",
                 "--data-dir", str(demo_data)]) == 0
    assert (root / "dense__int8" / "record.json").is_file()
    assert not (root / "moe__int8__int8").exists()


def test_bad_input_is_a_clear_error_and_writes_nothing(trained, tmp_path, capsys):
    _, runs = trained
    before = sorted(p.name for p in runs["dense"].parent.iterdir())

    def refused(argv: list[str], words: str) -> None:
        assert main(["compress", *argv]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err
        assert sorted(p.name for p in runs["dense"].parent.iterdir()) == before
    run = str(runs["dense"])
    refused([run, "--method", "int2"], "unknown method")
    refused([run, "--method", "prune:1.5"], "(0, 1)")
    refused([run, "--method", "prune:0"], "(0, 1)")
    refused([str(tmp_path / "nowhere"), "--method", "int8"], "no such run directory")
    refused([run, "--method", "int8", "--method", "int4", "--out", str(tmp_path / "x")],
            "--out names one output")
    refused([run, "--method", "int8", "--out", str(runs["moe"])], "already exists")
    running = tmp_path / "running"
    shutil.copytree(runs["dense"], running)
    rec = json.loads((running / "record.json").read_text())
    (running / "record.json").write_text(json.dumps({**rec, "status": "running"}))
    assert main(["compress", str(running), "--method", "int8"]) == 2
    assert "not completed" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["running"]
