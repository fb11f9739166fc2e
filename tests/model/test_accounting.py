import functools
import random
import re

import pytest
import torch

from moe_vs_dense.config import ModelConfig, MoEConfig
from moe_vs_dense.errors import UserError
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
    assert main(["model", "info", "configs/demo.yaml", "--partner", "moe", "--match", "params",
                 "--set", "model.moe.router=learned", "--set", "model.moe.num_experts=64"]) == 2
    err = capsys.readouterr().err
    assert "no moe partner within 1%" in err and "closest widths are 2 (-6.68%)" in err


def _random_config(rng: random.Random) -> ModelConfig | None:
    family = rng.choice(["dense", "moe", "mot"])
    router = rng.choice(["learned", "modality", "modality_group"])
    E = rng.choice([2, 4, 8, 16, 64])
    per = rng.randint(1, 3)
    k = rng.randint(1, min(E if router == "learned" else per, 4))
    try:
        return ModelConfig(family=family, d_model=rng.choice([32, 48, 64, 128]),
                           n_layers=rng.randint(1, 6), n_heads=rng.choice([2, 4]),
                           moe=MoEConfig(router=router, num_experts=E, experts_per_modality=per,
                                         top_k=k, every=rng.choice([1, 1, 2]),
                                         shared_expert=rng.random() < 0.2))
    except ValueError:  # pydantic's ValidationError: a combination the config refuses
        return None


def _mismatch(cfg: ModelConfig, target: str, key: str, width: int) -> float:
    """Relative difference of `key` between cfg's partner of the given width and cfg."""
    update = ({"family": target, "d_ff": width} if target != "moe" else
              {"family": "moe", "moe": cfg.moe.model_copy(update={"d_expert": width})})
    goal = getattr(account(cfg, V, T, MODS), key)
    return getattr(account(cfg.model_copy(update=update), V, T, MODS), key) / goal - 1


def test_partner_is_within_one_percent_or_an_error_naming_the_closest_widths():
    """Over many configs: a partner is within 1% (checked on its own accounting), and unaligned
    only when no multiple of 8 is within 1%; else the error names two adjacent widths that
    bracket the goal (or width 1, already above it), so no width in between can fit."""
    rng = random.Random(0)
    seen = {"partner": 0, "error": 0}
    for _ in range(400):
        cfg = _random_config(rng)
        if cfg is None:
            continue
        target = rng.choice(["moe", "mot"]) if cfg.family == "dense" else "dense"
        match = rng.choice(["flops", "params"])
        mismatch = functools.partial(_mismatch, cfg, target,
                                     "flops_per_token" if match == "flops" else "total_params")
        try:
            p = matched_partner(cfg, V, T, MODS, target=target, match=match)
        except UserError as e:
            seen["error"] += 1
            if "do not depend on its width" in str(e):  # e.g. moe.every > n_layers
                assert mismatch(1) == mismatch(1000)
                continue
            named = [int(w) for w in re.findall(r"(\d+) \([+-][\d.]+%\)", str(e))]
            assert "no " + target + " partner within 1%" in str(e) and named, str(e)
            assert all(abs(mismatch(w)) > 0.01 for w in named)
            if len(named) == 2:
                assert named[1] == named[0] + 1 and mismatch(named[0]) < 0 < mismatch(named[1])
            else:
                assert named == [1] and mismatch(1) > 0
            continue
        seen["partner"] += 1
        width = p.config.d_ff if target != "moe" else p.config.moe.d_expert
        assert abs(mismatch(width)) <= 0.01 and p.mismatch == pytest.approx(mismatch(width))
        aligned = [w for w in range(8, 2 * width + 16, 8) if abs(mismatch(w)) <= 0.01]
        if width % 8:
            assert not aligned, (cfg, target, match, width, aligned)
        else:
            assert min(abs(mismatch(w)) for w in aligned) == pytest.approx(abs(mismatch(width)))
    assert seen["partner"] > 100 and seen["error"] > 5, seen


def test_no_silent_partner_far_from_the_goal():
    cfg = ModelConfig(d_model=32, n_layers=6, n_heads=4, moe=MoEConfig(num_experts=8))
    with pytest.raises(UserError, match=r"closest widths are 10 \(-3.01%\), 11 \(\+1.51%\); "
                                        r"change model.moe.num_experts"):
        matched_partner(cfg, 821, 256, ["text", "code", "dna", "image", "speech", "protein"],
                        match="params")
    p = matched_partner(cfg, 821, 256, ["text", "code", "dna", "image", "speech", "protein"])
    assert p.config.moe.d_expert % 8 == 0 and abs(p.mismatch) <= 0.01
