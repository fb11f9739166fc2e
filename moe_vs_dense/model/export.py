"""Export to Hugging Face transformers: dense -> Llama, learned-router MoE -> Mixtral.

The exported model gives the same logits as ours (tests check it). Needs `transformers`
(a dev dependency); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from moe_vs_dense.errors import UserError
from moe_vs_dense.model.transformer import Transformer


def _common(model: Transformer, max_len: int) -> dict:
    c = model.cfg
    return dict(vocab_size=model.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers,
                num_attention_heads=c.n_heads, num_key_value_heads=c.n_heads,
                max_position_embeddings=max_len, rms_norm_eps=c.norm_eps,
                rope_theta=c.rope_theta, tie_word_embeddings=c.tie_embeddings,
                hidden_act="silu", bos_token_id=None, eos_token_id=1, pad_token_id=0)


def _attention_and_norms(model: Transformer) -> dict[str, torch.Tensor]:
    sd = {"model.embed_tokens.weight": model.embed.weight,
          "model.norm.weight": model.norm.weight[0]}
    if model.lm_head is not None:
        sd["lm_head.weight"] = model.lm_head.weight
    for i, b in enumerate(model.blocks):
        p = f"model.layers.{i}."
        q, k, v = b.qkv.weight[0].T.chunk(3, dim=0)
        sd.update({p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
                   p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": b.out.weight[0].T,
                   p + "input_layernorm.weight": b.norm1.weight[0],
                   p + "post_attention_layernorm.weight": b.norm2.weight[0]})
    return sd


def _glu(experts, j: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Expert j's gate, up and down weights in nn.Linear layout ([out, in])."""
    return experts.w_gate[j].T, experts.w_up[j].T, experts.w_down[j].T


def _load(hf_model, sd: dict[str, torch.Tensor]) -> None:
    own = hf_model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("rotary_emb.inv_freq")
               and not (k == "lm_head.weight" and hf_model.config.tie_word_embeddings)]
    if missing:
        raise RuntimeError(f"export does not cover {missing[:3]}")
    with torch.no_grad():
        for k, v in sd.items():
            own[k].copy_(v.detach().reshape(own[k].shape))


def to_hf(model: Transformer, out_dir: Path, max_len: int):
    """Build, fill and save the transformers model; returns it."""
    c = model.cfg
    if c.family == "dense":
        from transformers import LlamaConfig, LlamaForCausalLM

        hf = LlamaForCausalLM(LlamaConfig(intermediate_size=c.ffn_hidden, attention_bias=False,
                                          mlp_bias=False, **_common(model, max_len)))
        sd = _attention_and_norms(model)
        for i, b in enumerate(model.blocks):
            p = f"model.layers.{i}.mlp."
            gate, up, down = _glu(b.ffn, 0)
            sd.update({p + "gate_proj.weight": gate, p + "up_proj.weight": up,
                       p + "down_proj.weight": down})
    elif c.family == "moe":
        m = c.moe
        if m.router != "learned" or m.every != 1 or m.shared_expert or m.bias_balancing \
                or not m.resolved_norm_topk_prob:
            raise UserError("export: Mixtral holds only a learned router in every layer with "
                            "normalized top-k weights, no shared expert and no bias balancing")
        from transformers import MixtralConfig, MixtralForCausalLM

        hf = MixtralForCausalLM(MixtralConfig(intermediate_size=c.d_expert,
                                              num_local_experts=m.num_experts,
                                              num_experts_per_tok=m.top_k,
                                              router_jitter_noise=0.0, **_common(model, max_len)))
        sd = _attention_and_norms(model)
        fused = any("experts.gate_up_proj" in k for k in hf.state_dict())
        for i, b in enumerate(model.blocks):
            p = f"model.layers.{i}."
            e = b.ffn.experts
            prefix = p + ("mlp." if any(k.startswith(p + "mlp.") for k in hf.state_dict())
                          else "block_sparse_moe.")
            sd[prefix + "gate.weight"] = b.ffn.router.weight
            if fused:  # transformers >= 5: stacked [E, 2h, d] and [E, d, h]
                sd[prefix + "experts.gate_up_proj"] = torch.cat([e.w_gate, e.w_up], 2).transpose(1, 2)
                sd[prefix + "experts.down_proj"] = e.w_down.transpose(1, 2)
            else:
                for j in range(e.n_experts):
                    gate, up, down = _glu(e, j)
                    sd.update({f"{prefix}experts.{j}.w1.weight": gate,
                               f"{prefix}experts.{j}.w3.weight": up,
                               f"{prefix}experts.{j}.w2.weight": down})
    else:
        raise UserError(f"export: no transformers architecture holds the {c.family} family")
    _load(hf, sd)
    hf.save_pretrained(str(out_dir))
    return hf
