"""Per-modality tokenizers sharing one vocabulary: each owns an id range and a raw unit.

Vocabulary layout: ids 0..1 are PAD and EOD (end of document); then each modality present in
the config, in canonical order, gets `size` consecutive ids starting at its `offset`. Every
token also carries a modality id: the index of its modality in `MODALITIES`.

A document is a list of segments, each a dict with keys modality, text, data, shape, rate
(unused keys are None): text for text/code/dna/protein/junk, uint8 pixels (`data`, `shape`) for
images, int16 samples at `rate` Hz for speech.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from moe_vs_dense.config import TokenizersConfig
from moe_vs_dense.modalities import MODALITIES, RAW_UNIT

PAD, EOD = 0, 1
N_SPECIAL = 2
MODALITY_ID = {m: i for i, m in enumerate(MODALITIES)}


def segment(modality: str, text: str | None = None, data: bytes | None = None,
            shape: list[int] | None = None, rate: int | None = None) -> dict:
    return {"modality": modality, "text": text, "data": data, "shape": shape, "rate": rate}


@dataclass
class Tokenizer:
    """Base: maps one modality's raw content to local ids 0..size-1, shifted by `offset`."""

    modality: str
    offset: int = 0
    size: int = field(init=False, default=0)

    @property
    def raw_unit(self) -> str:
        return RAW_UNIT[self.modality]

    @property
    def lossless(self) -> bool:
        return True

    def encode(self, seg: dict) -> np.ndarray:
        return self._encode(seg).astype(np.int32) + self.offset

    def decode(self, ids: np.ndarray):
        local = np.asarray(ids, dtype=np.int64) - self.offset
        local = local[(local >= 0) & (local < self.size)]
        return self._decode(local)

    def units(self, seg: dict) -> int:
        raise NotImplementedError

    def _encode(self, seg: dict) -> np.ndarray:
        raise NotImplementedError

    def _decode(self, local: np.ndarray):
        raise NotImplementedError

    def show(self, ids: np.ndarray) -> str:
        """A short human-readable rendering of decoded ids (for `data inspect`)."""
        out = self.decode(ids)
        return out if isinstance(out, str) else repr(out)


@dataclass
class ByteTokenizer(Tokenizer):
    """UTF-8 bytes, 256 ids; lossless."""

    def __post_init__(self) -> None:
        self.size = 256

    def units(self, seg: dict) -> int:
        return len(seg["text"].encode())

    def _encode(self, seg: dict) -> np.ndarray:
        return np.frombuffer(seg["text"].encode(), dtype=np.uint8)

    def _decode(self, local: np.ndarray) -> str:
        return local.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


@dataclass
class BPETokenizer(Tokenizer):
    """Byte-level BPE trained by the toolkit on the train split (lossless on any UTF-8 text)."""

    spec: str = ""  # the `tokenizers` JSON

    def __post_init__(self) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_str(self.spec)
        self.size = self._tok.get_vocab_size()

    def units(self, seg: dict) -> int:
        return len(seg["text"].encode())

    def _encode(self, seg: dict) -> np.ndarray:
        return np.asarray(self._tok.encode(seg["text"]).ids, dtype=np.int64)

    def _decode(self, local: np.ndarray) -> str:
        return self._tok.decode(local.tolist())


def train_bpe(texts, vocab_size: int) -> str:
    """Train a byte-level BPE on an iterable of strings; return its JSON spec."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok.to_str()


_BASES = "ACGTN"
_BASE_CODE = np.full(256, 4, dtype=np.int64)
for _i, _c in enumerate("ACGT"):
    _BASE_CODE[ord(_c)] = _i
    _BASE_CODE[ord(_c.lower())] = _i


@dataclass
class DNATokenizer(Tokenizer):
    """A, C, G, T, N (anything else -> N; lower case soft-masking is dropped), plus, for k > 1,
    4^k ids for non-overlapping k-mers of ACGT runs; run tails shorter than k stay single bases.
    Lossless on upper-case ACGTN."""

    k: int = 1

    def __post_init__(self) -> None:
        self.size = 5 + (4**self.k if self.k > 1 else 0)

    @property
    def lossless(self) -> bool:
        return False  # only on upper-case ACGTN

    def units(self, seg: dict) -> int:
        return len(seg["text"])

    def _encode(self, seg: dict) -> np.ndarray:
        codes = _BASE_CODE[np.frombuffer(seg["text"].encode("latin-1", "replace"), np.uint8)]
        if self.k == 1:
            return codes
        out = []
        is_n = codes == 4
        # split into runs of ACGT and runs of N
        edges = np.flatnonzero(np.diff(is_n.astype(np.int8))) + 1
        for run in np.split(codes, edges):
            if len(run) == 0:
                continue
            if run[0] == 4:
                out.append(run)
                continue
            full = len(run) // self.k * self.k
            kmers = run[:full].reshape(-1, self.k) @ (4 ** np.arange(self.k - 1, -1, -1))
            out.append(5 + kmers)
            out.append(run[full:])
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def _decode(self, local: np.ndarray) -> str:
        chars = []
        for t in local.tolist():
            if t < 5:
                chars.append(_BASES[t])
            else:
                v = t - 5
                chars.append("".join("ACGT"[(v // 4**j) % 4] for j in range(self.k - 1, -1, -1)))
        return "".join(chars)


@dataclass
class ImageTokenizer(Tokenizer):
    """BOI, then each pixel of a grayscale image in raster order quantized to `levels` uniform
    bins (q = p * levels // 256, decoded to the bin centre), then EOI. Lossless at 256 levels."""

    levels: int = 16

    def __post_init__(self) -> None:
        self.size = self.levels + 2
        self.boi, self.eoi = self.levels, self.levels + 1

    @property
    def lossless(self) -> bool:
        return self.levels == 256

    def units(self, seg: dict) -> int:
        return int(np.prod(seg["shape"]))

    def _encode(self, seg: dict) -> np.ndarray:
        pixels = np.frombuffer(seg["data"], dtype=np.uint8).astype(np.int64)
        q = (pixels * self.levels) >> 8
        return np.concatenate([[self.boi], q, [self.eoi]])

    def _decode(self, local: np.ndarray) -> np.ndarray:
        q = local[local < self.levels]
        return ((q * 256 + 128) // self.levels).astype(np.uint8)

    def show(self, ids: np.ndarray) -> str:
        pixels = self.decode(ids)
        side = math.isqrt(len(pixels))
        if side == 0:
            return "<no pixels>"
        ramp = " .:-=+*#%@"
        rows = pixels[: side * side].reshape(side, side)
        return "\n".join("".join(ramp[int(p) * len(ramp) // 256] for p in row) for row in rows)


MU = 255


def mulaw_encode(x: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> codes 0..255 (G.711-style mu-law, mu = 255)."""
    x = np.clip(x, -1.0, 1.0)
    y = np.sign(x) * np.log1p(MU * np.abs(x)) / np.log1p(MU)
    return np.floor((y + 1) / 2 * MU + 0.5).astype(np.int64)


def mulaw_decode(codes: np.ndarray) -> np.ndarray:
    y = np.asarray(codes, dtype=np.float64) / MU * 2 - 1
    return np.sign(y) * ((1 + MU) ** np.abs(y) - 1) / MU


@dataclass
class SpeechTokenizer(Tokenizer):
    """BOS, mono audio resampled to `sample_rate` and mu-law companded to 256 codes, EOS.
    Lossy (8-bit mu-law); codes round-trip exactly."""

    sample_rate: int = 8000

    def __post_init__(self) -> None:
        self.size = 258
        self.bos, self.eos = 256, 257

    @property
    def lossless(self) -> bool:
        return False

    def resampled(self, seg: dict) -> np.ndarray:
        """Float samples in [-1, 1] at `sample_rate`."""
        x = np.frombuffer(seg["data"], dtype=np.int16).astype(np.float64) / 32768.0
        rate = int(seg["rate"])
        if rate != self.sample_rate:
            from scipy.signal import resample_poly

            g = math.gcd(rate, self.sample_rate)
            x = resample_poly(x, self.sample_rate // g, rate // g)
        return x

    def units(self, seg: dict) -> int:
        n = len(seg["data"]) // 2
        return -(-n * self.sample_rate // int(seg["rate"]))

    def _encode(self, seg: dict) -> np.ndarray:
        return np.concatenate([[self.bos], mulaw_encode(self.resampled(seg)), [self.eos]])

    def _decode(self, local: np.ndarray) -> np.ndarray:
        return mulaw_decode(local[local < 256])

    def show(self, ids: np.ndarray) -> str:
        x = self.decode(ids)
        if len(x) == 0:
            return "<no samples>"
        secs = len(x) / self.sample_rate
        rms = float(np.sqrt(np.mean(x**2)))
        return f"<{len(x)} samples, {secs:.2f} s at {self.sample_rate} Hz, rms {rms:.3f}>"


PROTEIN_ALPHABET = "ACDEFGHIKLMNPQRSTVWYBJOUXZ"
_PROTEIN_CODE = np.full(256, PROTEIN_ALPHABET.index("X"), dtype=np.int64)
for _i, _c in enumerate(PROTEIN_ALPHABET):
    _PROTEIN_CODE[ord(_c)] = _i
    _PROTEIN_CODE[ord(_c.lower())] = _i


@dataclass
class ProteinTokenizer(Tokenizer):
    """One id per amino-acid letter; anything else maps to X. Lossless on upper-case letters."""

    def __post_init__(self) -> None:
        self.size = len(PROTEIN_ALPHABET)

    def units(self, seg: dict) -> int:
        return len(seg["text"])

    def _encode(self, seg: dict) -> np.ndarray:
        return _PROTEIN_CODE[np.frombuffer(seg["text"].encode("latin-1", "replace"), np.uint8)]

    def _decode(self, local: np.ndarray) -> str:
        return "".join(PROTEIN_ALPHABET[t] for t in local.tolist())


HEX_DIGITS = "0123456789abcdef"
_HEX_CODE = np.full(256, -1, dtype=np.int64)
for _i, _c in enumerate(HEX_DIGITS):
    _HEX_CODE[ord(_c)] = _i
    _HEX_CODE[ord(_c.upper())] = _i


@dataclass
class HexTokenizer(Tokenizer):
    """One id per hex digit (16 ids); everything else (the line ends of a hash dump) is dropped,
    so a stream of random digests is exactly incompressible: ln 16 nats/token. Lossless on the
    digits; line ends are not kept."""

    def __post_init__(self) -> None:
        self.size = 16

    @property
    def lossless(self) -> bool:
        return False  # line ends are dropped

    def units(self, seg: dict) -> int:
        return int((_HEX_CODE[np.frombuffer(seg["text"].encode(), np.uint8)] >= 0).sum())

    def _encode(self, seg: dict) -> np.ndarray:
        codes = _HEX_CODE[np.frombuffer(seg["text"].encode(), np.uint8)]
        return codes[codes >= 0]

    def _decode(self, local: np.ndarray) -> str:
        return "".join(HEX_DIGITS[t] for t in local.tolist())


@dataclass
class Vocab:
    """The shared vocabulary: one tokenizer per modality present, each at its own offset."""

    tokenizers: dict[str, Tokenizer]

    @property
    def size(self) -> int:
        last = list(self.tokenizers.values())[-1]
        return last.offset + last.size

    def encode(self, doc: list[dict]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """ids, modality ids (EOD takes the last segment's modality), raw units per modality."""
        ids, mods, units = [], [], {}
        for seg in doc:
            m = seg["modality"]
            tok = self.tokenizers[m]
            t = tok.encode(seg)
            ids.append(t)
            mods.append(np.full(len(t), MODALITY_ID[m], dtype=np.uint8))
            units[m] = units.get(m, 0) + tok.units(seg)
        ids.append(np.array([EOD], dtype=np.int32))
        mods.append(np.array([MODALITY_ID[doc[-1]["modality"]]], dtype=np.uint8))
        return np.concatenate(ids), np.concatenate(mods), units

    def modality_of_id(self, token: int) -> str | None:
        for m, tok in self.tokenizers.items():
            if tok.offset <= token < tok.offset + tok.size:
                return m
        return None

    def show(self, ids: np.ndarray) -> list[tuple[str, str]]:
        """Split ids into runs of one modality and render each run."""
        out: list[tuple[str, str]] = []
        run: list[int] = []
        current = None
        for t in list(map(int, ids)) + [-1]:
            m = self.modality_of_id(t) if t >= N_SPECIAL else None
            if m != current and run:
                out.append((current, self.tokenizers[current].show(np.array(run))))
                run = []
            if t == EOD:
                out.append(("eod", "<end of document>"))
            current = m
            if m is not None:
                run.append(t)
        return out

    def to_json(self) -> str:
        rows = []
        for m, tok in self.tokenizers.items():
            row = {"modality": m, "offset": tok.offset, "size": tok.size, "kind": type(tok).__name__}
            for key in ("k", "levels", "sample_rate", "spec"):
                if hasattr(tok, key):
                    row[key] = getattr(tok, key)
            rows.append(row)
        return json.dumps(rows)

    @classmethod
    def from_json(cls, text: str) -> Vocab:
        kinds = {c.__name__: c for c in (ByteTokenizer, BPETokenizer, DNATokenizer,
                                          ImageTokenizer, SpeechTokenizer, ProteinTokenizer,
                                          HexTokenizer)}
        toks = {}
        for row in json.loads(text):
            extra = {k: row[k] for k in ("k", "levels", "sample_rate", "spec") if k in row}
            toks[row["modality"]] = kinds[row["kind"]](row["modality"], row["offset"], **extra)
        return cls(toks)


def _tokenizer(cfg: TokenizersConfig, m: str, offset: int, bpe_specs: dict[str, str]) -> Tokenizer:
    if m in ("text", "code"):
        tcfg = getattr(cfg, m)
        return (BPETokenizer(m, offset, spec=bpe_specs[m]) if tcfg.kind == "bpe"
                else ByteTokenizer(m, offset))
    if m == "dna":
        return DNATokenizer(m, offset, k=cfg.dna.k)
    if m == "image":
        return ImageTokenizer(m, offset, levels=cfg.image.levels)
    if m == "speech":
        return SpeechTokenizer(m, offset, sample_rate=cfg.speech.sample_rate)
    if m == "junk":
        return HexTokenizer(m, offset)
    return ProteinTokenizer(m, offset)


def vocab_size(cfg: TokenizersConfig, modalities: list[str]) -> int:
    """The shared vocabulary's size, known before any BPE is trained: a BPE tokenizer counts as
    its configured vocab_size (training stops below it only on very little text)."""
    def size(m: str) -> int:
        if m in ("text", "code") and getattr(cfg, m).kind == "bpe":
            return getattr(cfg, m).vocab_size
        return _tokenizer(cfg, m, 0, {}).size

    return N_SPECIAL + sum(size(m) for m in modalities)


def build_vocab(cfg: TokenizersConfig, modalities: list[str],
                bpe_specs: dict[str, str] | None = None) -> Vocab:
    """Tokenizers for `modalities` in canonical order with consecutive id ranges."""
    toks: dict[str, Tokenizer] = {}
    offset = N_SPECIAL
    for m in MODALITIES:
        if m in modalities:
            toks[m] = _tokenizer(cfg, m, offset, bpe_specs or {})
            offset += toks[m].size
    return Vocab(toks)
