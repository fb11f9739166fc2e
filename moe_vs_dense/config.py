"""Typed run configuration: the schema, validated once at the boundary (moe_vs_dense/config_load.py
reads the YAML and names file, line and key path in every error).

Everything downstream trusts a `Config`; nothing re-validates.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from moe_vs_dense.modalities import BUILTIN_SOURCES, MODALITIES, Modality

FileFormat = Literal["txt", "jsonl", "parquet", "fasta", "idx"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- data


class TextTokenizerConfig(Strict):
    """Bytes (256 ids) or a byte-level BPE trained on the train split."""

    kind: Literal["bytes", "bpe"] = "bytes"
    vocab_size: int = Field(1024, ge=260, le=32768)


class DNATokenizerConfig(Strict):
    """Non-overlapping k-mers over ACGT (k=1: single nucleotides); N and tails as single bases."""

    k: int = Field(1, ge=1, le=6)


class ImageTokenizerConfig(Strict):
    """Grayscale pixels quantized to `levels` uniform bins, raster order, between BOI/EOI."""

    levels: int = Field(16, ge=2, le=256)


class SpeechTokenizerConfig(Strict):
    """Mono audio resampled to `sample_rate` and mu-law companded to 256 levels (G.711 mu=255)."""

    sample_rate: int = Field(8000, ge=1000, le=48000)


class ProteinTokenizerConfig(Strict):
    """One token per amino-acid letter (20 standard + B, J, O, U, X, Z)."""


class TokenizersConfig(Strict):
    text: TextTokenizerConfig = TextTokenizerConfig()
    code: TextTokenizerConfig = TextTokenizerConfig()
    dna: DNATokenizerConfig = DNATokenizerConfig()
    image: ImageTokenizerConfig = ImageTokenizerConfig()
    speech: SpeechTokenizerConfig = SpeechTokenizerConfig()
    protein: ProteinTokenizerConfig = ProteinTokenizerConfig()


class StreamConfig(Strict):
    """One component of the data mixture: a source of documents of one modality, and its weight.

    `source` is a built-in name (see `moe-vs-dense data fetch --list`), `files` (local files in
    `paths`) or `hf` (a Hugging Face dataset `name`, or a local dataset directory). `val_docs`
    holds out at least that many documents for validation (beyond `data.val_fraction`): the
    standard error of a final loss falls as 1/sqrt(validation documents), and a record's
    `docs_for_target` says how many its SE target needs.
    """

    modality: Modality | None = None
    source: str
    paths: list[str] = []
    format: FileFormat | None = None
    name: str | None = None
    subset: str | None = None
    split: str = "train"
    column: str = "text"
    label_column: str | None = None
    weight: float = Field(1.0, gt=0)
    max_units: int | None = Field(None, gt=0)
    val_docs: int | None = Field(None, ge=1)
    paired: bool = False

    @model_validator(mode="after")
    def _check_source(self) -> StreamConfig:
        allowed = sorted(BUILTIN_SOURCES) + ["files", "hf"]
        if self.source not in allowed:
            raise ValueError(f"source: unknown source '{self.source}'; allowed: {', '.join(allowed)}")
        if self.source == "files" and not self.paths:
            raise ValueError("paths: source 'files' needs at least one path")
        if self.source == "hf" and not self.name:
            raise ValueError("name: source 'hf' needs a dataset name or directory")
        if self.paired and self.modality not in (None, "image", "speech"):
            raise ValueError("paired: only image (with its label) and speech (with its transcript)")
        return self


class DataConfig(Strict):
    dir: str | None = None
    seq_len: int = Field(256, ge=2)
    val_fraction: float = Field(0.05, gt=0, lt=0.5)
    doc_units: int = Field(4096, ge=16)
    num_proc: int = Field(2, ge=1)
    tokenizers: TokenizersConfig = TokenizersConfig()
    mixture: dict[str, StreamConfig] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _fill_modalities(cls, raw: Any) -> Any:
        """A stream's modality defaults to its key; a key that is no modality must name one."""
        if not isinstance(raw, dict) or not isinstance(raw.get("mixture"), dict):
            return raw
        mixture = {}
        for key, stream in raw["mixture"].items():
            if isinstance(stream, dict) and stream.get("modality") is None:
                if key not in MODALITIES:
                    raise ValueError(
                        f"mixture.{key}: unknown modality '{key}'; use one of "
                        f"{', '.join(MODALITIES)} as the key or set mixture.{key}.modality"
                    )
                stream = {**stream, "modality": key}
            mixture[key] = stream
        return {**raw, "mixture": mixture}

    @model_validator(mode="after")
    def _check_builtin_modality(self) -> DataConfig:
        for key, s in self.mixture.items():
            want = BUILTIN_SOURCES.get(s.source)
            if want is not None and want != s.modality:
                raise ValueError(
                    f"mixture.{key}.source: '{s.source}' holds {want} data, not {s.modality}"
                )
        return self

    @property
    def modalities(self) -> list[str]:
        """Modalities present in the mixture, in canonical order (paired streams add text)."""
        present = {s.modality for s in self.mixture.values()}
        if any(s.paired for s in self.mixture.values()):
            present.add("text")
        return [m for m in MODALITIES if m in present]


# ---------------------------------------------------------------- model


class MoEConfig(Strict):
    """Mixture-of-experts FFN. `learned`: token-choice top-k softmax router over `num_experts`.
    `modality`: every token goes to all experts of its modality (no router parameters).
    `modality_group`: experts split into per-modality groups, learned top-k inside the group."""

    router: Literal["learned", "modality", "modality_group"] = "learned"
    num_experts: int = Field(8, ge=1)
    experts_per_modality: int | dict[Modality, int] = 1
    top_k: int = Field(1, ge=1)
    d_expert: int | None = Field(None, ge=1)
    every: int = Field(1, ge=1)
    shared_expert: bool = False
    d_shared: int | None = Field(None, ge=1)
    norm_topk_prob: bool | None = None
    aux_loss_weight: float = Field(0.01, ge=0)
    z_loss_weight: float = Field(0.001, ge=0)
    bias_balancing: bool = False
    bias_update_rate: float = Field(0.001, ge=0)
    backend: Literal["auto", "torch", "megablocks"] = "torch"

    @model_validator(mode="after")
    def _check(self) -> MoEConfig:
        if self.router == "learned" and self.top_k > self.num_experts:
            raise ValueError(f"top_k: must be <= num_experts ({self.num_experts}) (got {self.top_k})")
        per = self.experts_per_modality
        counts = list(per.values()) if isinstance(per, dict) else [per]
        if self.router == "modality_group" and counts and self.top_k > min(counts):
            raise ValueError(f"top_k: must be <= the experts of each modality ({min(counts)}) "
                             f"(got {self.top_k})")
        if any(v < 1 for v in counts):
            raise ValueError("experts_per_modality: must be >= 1")
        if self.router != "modality" and self.top_k == 1 and self.norm_topk_prob:
            raise ValueError("norm_topk_prob: a normalised top-1 router gives every token weight "
                             "1, so the language-model loss gives the router no gradient; use "
                             "top_k >= 2 or norm_topk_prob: false")
        return self

    @property
    def resolved_norm_topk_prob(self) -> bool:
        """norm_topk_prob with its default filled in: normalise the weights of top_k >= 2."""
        return self.top_k > 1 if self.norm_topk_prob is None else self.norm_topk_prob


class ModelConfig(Strict):
    """One decoder-only transformer; `family` picks what differs: the FFN (moe) or the FFN,
    attention projections and norms per modality (mot)."""

    family: Literal["dense", "moe", "mot"] = "dense"
    d_model: int = Field(128, ge=8)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(4, ge=1)
    d_ff: int | None = Field(None, ge=1)
    tie_embeddings: bool = True
    rope_theta: float = Field(10000.0, gt=0)
    norm_eps: float = Field(1e-5, gt=0)
    init_std: float = Field(0.02, gt=0)
    moe: MoEConfig = MoEConfig()

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads: d_model {self.d_model} is not divisible by n_heads "
                             f"{self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"n_heads: head size {self.d_model // self.n_heads} must be even (RoPE)")
        return self

    @property
    def ffn_hidden(self) -> int:
        """SwiGLU hidden size: d_ff, else 8/3 d rounded up to a multiple of 8."""
        return self.d_ff or -(-8 * self.d_model // 3 // 8) * 8

    @property
    def d_expert(self) -> int:
        """One expert's hidden size: moe.d_expert, else the dense FFN's split over top_k."""
        return self.moe.d_expert or max(8, self.ffn_hidden // self.moe.top_k)


# ---------------------------------------------------------------- training, evaluation, run


class TrainConfig(Strict):
    """How long and how a model trains. A run's length is a token budget: steps =
    ceil(tokens / (batch_rows x seq_len)). `grad_accum` micro-steps of `batch_rows /
    (grad_accum x processes)` rows each make one optimizer step on `batch_rows` rows."""

    tokens: int = Field(1_000_000, ge=1)
    batch_rows: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup: float = Field(0.05, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float | None = Field(1.0, gt=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    threads: int | None = Field(None, ge=1)
    peak_flops: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.batch_rows % self.grad_accum:
            raise ValueError(f"grad_accum: batch_rows {self.batch_rows} is not divisible by "
                             f"grad_accum {self.grad_accum}")
        if any(not 0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas: each must be in [0, 1) (got {list(self.betas)})")
        return self

    def steps(self, seq_len: int) -> int:
        return -(-self.tokens // (self.batch_rows * seq_len))

    def warmup_steps(self, steps: int) -> int:
        """`warmup` below 1 is a fraction of the steps, from 1 on a number of steps."""
        return min(steps, round(self.warmup * steps) if self.warmup < 1 else int(self.warmup))


class EvalConfig(Strict):
    """Held-out loss on each stream's fixed validation rows (the first rows of its val split,
    the same for every run whose mixture has that stream). `rows` during training, `final_rows`
    at the end (None: all of them)."""

    every: int | None = Field(None, ge=1)
    rows: int | None = Field(64, ge=1)
    final_rows: int | None = Field(None, ge=1)
    batch_rows: int = Field(32, ge=1)
    target_se: float = Field(0.005, gt=0)


class RunConfig(Strict):
    """Bookkeeping of a run: checkpoints (default: at each eval, else every 10% of the steps),
logging every `log_every` steps, trackers, and spikes: a step's loss (grad norm) counts as a
spike when it exceeds the mean of the previous `spike_window` steps by `spike_sigma` of their
standard deviations."""

    pair_id: str | None = None
    checkpoint_every: int | None = Field(None, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    trackers: list[Literal["tensorboard", "wandb"]] = []
    spike_sigma: float = Field(6.0, gt=0)
    spike_window: int = Field(50, ge=2)


# ---------------------------------------------------------------- top level


class Config(Strict):
    seed: int = 0
    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()

    @model_validator(mode="after")
    def _check_experts_vs_data(self) -> Config:
        moe = self.model.moe
        uses_modalities = self.model.family == "mot" or (
            self.model.family == "moe" and moe.router != "learned")
        per = moe.experts_per_modality
        if not uses_modalities or not isinstance(per, dict):
            return self
        have = self.data.modalities
        for m in per:
            if m not in have:
                raise ValueError(f"model.moe.experts_per_modality.{m}: the data has no {m} "
                                 f"(its modalities: {', '.join(have)})")
        missing = [m for m in have if m not in per]
        if missing:
            raise ValueError(f"model.moe.experts_per_modality: no experts for {', '.join(missing)}")
        return self
