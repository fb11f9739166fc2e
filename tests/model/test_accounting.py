import pytest
import torch

from moe_vs_dense.config import ModelConfig, MoEConfig
from moe_vs_dense.model.accounting import account, memory_estimate
from moe_vs_dense.model.pairing import matched_partner
from moe_vs_dense.model.transformer import Transformer

V, T = 700, 128
MODS = ["text", "code", "dna", "image"]

CONFIGS = {
    "dense": ModelConfig(d_model=64, n_layers=3, n_heads=4),
    "dense-untied": ModelConfig(d_model=64, n_layers=2, n_heads=4, tie_embeddings=False, d_ff=200),
    "moe-learned": ModelConfig(family="moe", d_model=64, n_layers=3, n_heads=4,
                               moe=MoEConfig(num_experts=8, top_k=2)),
    "moe-every2-shared": ModelConfig(family="moe", d_model=64, n_layers=4, n_heads=4,
                                     moe=MoEConfig(num_experts=4, top_k=1, every=2,
                                                   shared_expert=True, d_shared=40)),
    "moe-modality": ModelConfig(family="moe", d_model=64, n_layers=2, n_heads=4,
                                moe=MoEConfig(router="modality",
                                              experts_per_modality={"text": 2, "code": 1,
                                                                    "dna": 1, "image": 1})),
    "moe-modality-group": ModelConfig(family="moe", d_model=64, n_layers=2, n_heads=4,
                                      moe=MoEConfig(router="modality_group",
                                                    experts_per_modality=2, top_k=1)),
    "mot": ModelConfig(family="mot", d_model=64, n_layers=2, n_heads=4),
}


def active_from_modules(model: Transformer, cfg: ModelConfig) -> int:
    """Active non-embedding params counted on the module tree: one modality's copy of every
    per-modality tensor, the chosen experts' share of expert tensors."""
    total = 0
    G = len(model.modalities)
    for name, p in model.named_parameters():
        if name.startswith("embed") or name.startswith("lm_head"):
            continue
        if cfg.family == "mot" and name.startswith("blocks."):
            total += p.numel() // G
        elif ".ffn.experts." in name:
            m = cfg.moe
            if m.router == "modality":
                k = max(m.experts_per_modality.values()) if isinstance(m.experts_per_modality,
                                                                      dict) else m.experts_per_modality
            else:
                k = m.top_k
            total += p.numel() // p.shape[0] * k
        else:
            total += p.numel()
    return total


@pytest.mark.parametrize("name", CONFIGS)
def test_counts_agree_with_module_tree(name):
    cfg = CONFIGS[name]
    model = Transformer(cfg, V, T, MODS)
    acc = account(cfg, V, T, MODS)
    assert acc.total_params == sum(p.numel() for p in model.parameters())
    emb = model.embed.weight.numel() + (model.lm_head.weight.numel() if model.lm_head else 0)
    assert acc.embedding_params == emb
    assert acc.active_params == active_from_modules(model, cfg)
    expected = 6 * (acc.active_params + cfg.d_model * V) + 12 * cfg.n_layers * cfg.d_model * T
    assert acc.flops_per_token == expected


def test_dense_active_equals_non_embedding_and_memory_is_positive():
    acc = account(CONFIGS["dense"], V, T, MODS)
    assert acc.active_params == acc.non_embedding_params
    mem = memory_estimate(acc, CONFIGS["dense"], batch_rows=16, seq_len=T)
    assert mem["weights"] == 4 * acc.total_params and mem["total"] > 4 * mem["weights"]


@pytest.mark.parametrize("source, target, match", [
    ("dense", "moe", "flops"), ("dense", "mot", "flops"), ("moe-learned", "dense", "flops"),
    ("moe-every2-shared", "dense", "flops"), ("moe-modality", "dense", "flops"),
    ("moe-modality-group", "dense", "flops"), ("mot", "dense", "flops"),
    ("dense", "moe", "params"), ("moe-learned", "dense", "params"),
])
def test_matched_partner_within_one_percent(source, target, match):
    cfg = CONFIGS[source]
    p = matched_partner(cfg, V, T, MODS, target=target, match=match)
    assert p.config.family == target
    key = "flops_per_token" if match == "flops" else "total_params"
    got, want = getattr(p.accounting, key), getattr(account(cfg, V, T, MODS), key)
    assert abs(got - want) / want < 0.01 and p.mismatch == pytest.approx((got - want) / want)
    model = Transformer(p.config, V, T, MODS)  # the partner builds and runs
    assert model(torch.randint(0, V, (1, 8)), torch.zeros(1, 8, dtype=torch.long)).shape == (1, 8, V)


def test_dense_to_moe_uses_experts_config():
    cfg = CONFIGS["dense"].model_copy(update={"moe": MoEConfig(num_experts=8, top_k=2)})
    p = matched_partner(cfg, V, T, MODS)
    assert p.config.moe.num_experts == 8 and p.accounting.total_params > 2 * p.reference.total_params
    assert p.config.moe.d_expert < cfg.ffn_hidden  # each expert is narrower than the dense FFN


def test_model_info_cli(capsys):
    from moe_vs_dense.cli import main

    assert main(["model", "info", "configs/demo.yaml"]) == 0
    out = capsys.readouterr().out
    assert "active params / token" in out and "mismatch +0.000%" in out
    assert main(["model", "info", "configs/demo.yaml", "--set", "model.moe.router=learned",
                 "--set", "model.moe.top_k=2", "--match", "params"]) == 0
    assert "matched on total params" in capsys.readouterr().out
