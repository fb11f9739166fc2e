from pathlib import Path

import pytest
import torch

from moe_vs_dense.config import ModelConfig, MoEConfig
from moe_vs_dense.config_load import load_config
from moe_vs_dense.errors import UserError
from moe_vs_dense.modalities import MODALITIES
from moe_vs_dense.model import checkpoint
from moe_vs_dense.model.experts import Experts
from moe_vs_dense.model.loss import lm_loss
from moe_vs_dense.model.transformer import GroupLinear, Transformer
from tests.conftest import write_config

V, T = 300, 32
MODS = ["text", "dna"]
FAMILIES = {
    "dense": ModelConfig(d_model=64, n_layers=2, n_heads=4),
    "moe": ModelConfig(family="moe", d_model=64, n_layers=2, n_heads=4,
                       moe=MoEConfig(num_experts=4, top_k=2)),
    "moe-modality": ModelConfig(family="moe", d_model=64, n_layers=2, n_heads=4,
                                moe=MoEConfig(router="modality")),
    "mot": ModelConfig(family="mot", d_model=64, n_layers=2, n_heads=4),
}


def batch(seed=0, B=4):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, V, (B, T + 1), generator=g)
    mods = torch.randint(0, 2, (B, T + 1), generator=g) * 2  # text=0, dna=2
    return tokens, mods


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_overfits_one_batch(family):
    torch.manual_seed(0)
    model = Transformer(FAMILIES[family], V, T, MODS)
    tokens, mods = batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(120):
        logits = model(tokens[:, :-1], mods[:, :-1])
        loss, _, _ = lm_loss(logits, tokens[:, 1:], mods[:, 1:])
        first = first or loss.item()
        opt.zero_grad()
        (loss + model.aux_loss).backward()
        opt.step()
    assert first > 5.0 and loss.item() < 0.5  # from ~ln(300) to memorized


@pytest.mark.parametrize("family", FAMILIES)
def test_causal(family):
    torch.manual_seed(0)
    model = Transformer(FAMILIES[family], V, T, MODS).eval()
    tokens, mods = batch()
    a = model(tokens[:, :-1], mods[:, :-1])
    tokens[:, 20:] = (tokens[:, 20:] + 7) % V
    b = model(tokens[:, :-1], mods[:, :-1])
    torch.testing.assert_close(a[:, :20], b[:, :20])
    assert (a[:, 20:] - b[:, 20:]).abs().max() > 1e-3


def test_mot_with_shared_weights_equals_dense():
    """MoT differs from dense only in per-modality copies: equal copies give equal outputs."""
    torch.manual_seed(0)
    dense = Transformer(FAMILIES["dense"], V, T, MODS)
    mot = Transformer(FAMILIES["mot"], V, T, MODS)
    with torch.no_grad():
        mot.embed.weight.copy_(dense.embed.weight)
        for bd, bm in zip(dense.blocks, mot.blocks, strict=True):
            for name in ("norm1", "norm2"):
                getattr(bm, name).weight.copy_(getattr(bd, name).weight.expand(2, -1))
            bm.qkv.weight.copy_(bd.qkv.weight.expand(2, -1, -1))
            bm.out.weight.copy_(bd.out.weight.expand(2, -1, -1))
            for name in ("w_gate", "w_up", "w_down"):
                getattr(bm.ffn, name).copy_(getattr(bd.ffn, name).expand(2, -1, -1))
    tokens, mods = batch()
    tokens, mods = tokens[:, :T], mods[:, :T]
    torch.testing.assert_close(mot(tokens, mods), dense(tokens, mods), atol=1e-5, rtol=1e-5)
    assert mods.unique().tolist() == [0, 2]  # both modalities took their own (equal) weights


@pytest.mark.parametrize("family", FAMILIES)
def test_autocast_runs_ffn_and_projections_in_bf16(family):
    """autocast does not reach custom autograd Functions or grouped_mm: the experts, the dense
    FFN and MoT's per-modality projections cast themselves, with fp32 master weights."""
    torch.manual_seed(0)
    model = Transformer(FAMILIES[family], V, T, MODS)
    tokens, mods = batch()
    want = model(tokens[:, :-1], mods[:, :-1])
    dtypes = []
    for m in model.modules():
        if isinstance(m, (Experts, GroupLinear)):
            m.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(tokens[:, :-1], mods[:, :-1])
        loss = lm_loss(logits, tokens[:, 1:], mods[:, 1:])[0] + model.aux_loss
    loss.backward()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    torch.testing.assert_close(logits.float(), want, atol=0.05, rtol=0.05)
    for p in model.parameters():
        assert p.grad is None or (p.grad.dtype == torch.float32 and p.grad.isfinite().all())


def test_loss_per_modality_sums_to_total():
    tokens, mods = batch()
    logits = torch.randn(4, T + 1, V)
    loss, sums, counts = lm_loss(logits, tokens, mods)
    assert counts[0] + counts[2] == tokens.numel() and counts[1] == 0
    assert sums.sum().item() / counts.sum().item() == pytest.approx(loss.item(), rel=1e-5)


@pytest.mark.parametrize("family", ["dense", "moe", "mot"])
def test_checkpoint_round_trip(tmp_path, family):
    model = Transformer(FAMILIES[family], V, T, MODS).eval()
    checkpoint.save(model, tmp_path / "m.safetensors", T)
    again = checkpoint.load(tmp_path / "m.safetensors").eval()
    tokens, mods = batch()
    tokens, mods = tokens[:, :T], mods[:, :T]
    torch.testing.assert_close(again(tokens, mods), model(tokens, mods), atol=0, rtol=0)
    (tmp_path / "bad.safetensors").write_bytes(b"nonsense")
    with pytest.raises(UserError, match="not a moe-vs-dense checkpoint"):
        checkpoint.load(tmp_path / "bad.safetensors")


def test_checkpoint_of_a_megablocks_run_loads_anywhere(tmp_path):
    """A model trained on megablocks (CUDA, bf16) loads on the torch backend, same weights."""
    cfg = ModelConfig(family="moe", d_model=32, n_layers=1, n_heads=2,
                      moe=MoEConfig(num_experts=4, top_k=2, backend="megablocks"))
    model = Transformer(cfg.model_copy(update={"moe": MoEConfig(num_experts=4, top_k=2)}), V, T,
                        MODS).eval()
    model.cfg = cfg  # as saved by a run on megablocks
    checkpoint.save(model, tmp_path / "m.safetensors", T)
    again = checkpoint.load(tmp_path / "m.safetensors").eval()
    assert again.moe_backend == "torch"
    tokens, mods = batch()
    torch.testing.assert_close(again(tokens[:, :T], mods[:, :T]), model(tokens[:, :T], mods[:, :T]))


@pytest.mark.parametrize("cfg", [
    ModelConfig(d_model=64, n_layers=2, n_heads=4),
    ModelConfig(d_model=64, n_layers=2, n_heads=2, tie_embeddings=False, d_ff=96),
    ModelConfig(family="moe", d_model=64, n_layers=2, n_heads=4, moe=MoEConfig(num_experts=4, top_k=2)),
    ModelConfig(family="moe", d_model=64, n_layers=2, n_heads=4,
                moe=MoEConfig(num_experts=5, top_k=3, d_expert=48)),
], ids=["llama-tied", "llama-untied", "mixtral-top2", "mixtral-top3"])
def test_export_matches_transformers(tmp_path, cfg):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = Transformer(cfg, V, T, ["text"]).eval()
    from moe_vs_dense.model.export import to_hf

    to_hf(model, tmp_path, T)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    tokens = batch()[0][:, :T]
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    assert ours.std() > 0.01  # the comparison is not between two constant outputs


def test_export_refuses_what_mixtral_cannot_hold(tmp_path):
    from moe_vs_dense.model.export import to_hf

    cfg = ModelConfig(family="moe", d_model=32, n_layers=2, n_heads=4,
                      moe=MoEConfig(router="modality"))
    with pytest.raises(UserError, match="Mixtral holds only a learned router"):
        to_hf(Transformer(cfg, V, T, MODS), tmp_path, T)


def _config_error(tmp_path, small_config, model: dict) -> str:
    small_config["model"] = model
    with pytest.raises(UserError) as e:
        load_config(write_config(tmp_path, small_config))
    return str(e.value)


def test_bad_model_configs_name_the_key(tmp_path, small_config):
    msg = _config_error(tmp_path, small_config,
                        {"family": "moe", "moe": {"num_experts": 4, "top_k": 5}})
    assert "model.moe.top_k: must be <= num_experts (4) (got 5)" in msg
    msg = _config_error(tmp_path, small_config, {"d_model": 130, "n_heads": 4})
    assert "model.n_heads: d_model 130 is not divisible by n_heads 4" in msg
    msg = _config_error(tmp_path, small_config, {"family": "moe", "moe": {
        "router": "modality", "experts_per_modality": {"text": 1, "speech": 2}}})
    assert "model.moe.experts_per_modality.speech: the data has no speech" in msg
    msg = _config_error(tmp_path, small_config, {"family": "moe", "moe": {"router": "magic"}})
    assert "model.moe.router: must be one of 'learned', 'modality' or 'modality_group'" in msg
    for router in ("learned", "modality_group"):
        msg = _config_error(tmp_path, small_config, {"family": "moe", "moe": {
            "router": router, "top_k": 1, "norm_topk_prob": True}})
        assert "model.moe.norm_topk_prob: a normalised top-1 router" in msg and "no gradient" in msg


def test_top1_router_weights_carry_the_loss_gradient():
    """Un-normalised top-1 (the default) weights each token by its router probability, so the
    router learns from the language-model loss alone (no balancing losses here)."""
    from moe_vs_dense.model.moe import MoE

    torch.manual_seed(0)
    layer = MoE(MoEConfig(num_experts=4, top_k=1, aux_loss_weight=0, z_loss_weight=0), 32, 16,
                MODS, init_std=0.3, out_std=0.3)
    layer(torch.randn(2, 8, 32), torch.zeros(2, 8, dtype=torch.long)).square().sum().backward()
    assert layer.router.weight.grad.abs().max() > 1e-6


def test_demo_configs_build(tmp_path):
    for path in sorted(Path("configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.model.d_model >= 8


def test_a_modality_the_model_was_not_built_with_is_an_error():
    """Text tokens on a DNA+image model used to get DNA's experts, silently."""
    cfg = ModelConfig(family="moe", d_model=32, n_layers=1, n_heads=4,
                      moe=MoEConfig(router="modality"))
    model = Transformer(cfg, V, T, ["dna", "image"])
    tokens = torch.randint(2, V, (2, 8))
    dna, image, text = (MODALITIES.index(m) for m in ("dna", "image", "text"))
    ok = torch.tensor([[dna] * 4 + [image] * 4] * 2)
    model.check_modalities(ok.numpy())
    assert model(tokens, ok).shape == (2, 8, V)
    bad = ok.clone()
    bad[1, 5] = text
    with pytest.raises(UserError, match="holds text tokens, but the model was built for dna, image"):
        model.check_modalities(bad.numpy())
    with pytest.raises(RuntimeError, match="modality id is not one the model was built with"):
        model(tokens, bad)
