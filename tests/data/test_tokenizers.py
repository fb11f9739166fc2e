from pathlib import Path

import numpy as np
import pytest

from moe_vs_dense.config import TokenizersConfig
from moe_vs_dense.data.tokenizers import (
    EOD,
    MODALITY_ID,
    BPETokenizer,
    ByteTokenizer,
    DNATokenizer,
    ImageTokenizer,
    ProteinTokenizer,
    SpeechTokenizer,
    Vocab,
    build_vocab,
    mulaw_decode,
    mulaw_encode,
    segment,
    train_bpe,
    vocab_size,
)
from moe_vs_dense.modalities import MODALITIES
from tests.conftest import FIXTURES, stdlib_files

EMMA = (FIXTURES / "austen_emma.txt").read_text()


@pytest.mark.parametrize("modality", ["text", "code"])
def test_bytes_round_trip_unicode(modality):
    tok = ByteTokenizer(modality, offset=7)
    text = EMMA[:2000] + " naïve café — ∑ 🙂\n\ttabs"
    ids = tok.encode(segment(modality, text=text))
    assert ids.min() >= 7 and ids.max() < 7 + 256
    assert tok.decode(ids) == text
    assert tok.units(segment(modality, text=text)) == len(ids)


def test_bpe_trained_on_real_code_round_trips_and_compresses():
    code = "".join(Path(p).read_text() for p in stdlib_files())
    spec = train_bpe([code], vocab_size=600)
    tok = BPETokenizer("code", offset=2, spec=spec)
    assert tok.size == 600
    sample = Path(stdlib_files()[0]).read_text()[:3000] + "\n  odd   spacing\t\tand ünïcode\n"
    ids = tok.encode(segment("code", text=sample))
    assert tok.decode(ids) == sample
    assert len(ids) < 0.7 * len(sample.encode())  # BPE merges bytes


@pytest.mark.parametrize("k", [1, 2, 3])
def test_dna_kmer_round_trip(k):
    seq = "".join((FIXTURES / "ecoli_40kb.fna").read_text().split("\n")[1:])[:5000]
    seq = seq[:1000] + "NNNN" + seq[1000:2003] + "N" + seq[2003:]
    tok = DNATokenizer("dna", offset=3, k=k)
    ids = tok.encode(segment("dna", text=seq))
    assert tok.decode(ids) == seq
    assert len(ids) <= len(seq) // k + 2 * k + 5  # k-mers cover all but run tails
    assert ids.max() < 3 + tok.size


def test_dna_maps_other_letters_to_n():
    tok = DNATokenizer("dna")
    assert tok.decode(tok.encode(segment("dna", text="acgtRYk"))) == "ACGTNNN"


def test_image_lossless_at_256_levels_and_quantizes_otherwise():
    from moe_vs_dense.data.formats import read_idx

    img = read_idx(FIXTURES / "fashion_t10k_120_images.idx")[0]
    seg = segment("image", data=img.tobytes(), shape=[28, 28])
    full = ImageTokenizer("image", levels=256)
    assert full.lossless and not ImageTokenizer("image", levels=16).lossless
    ids = full.encode(seg)
    assert len(ids) == 28 * 28 + 2 and ids[0] == full.boi and ids[-1] == full.eoi
    assert np.array_equal(full.decode(ids), img.reshape(-1))
    q16 = ImageTokenizer("image", levels=16)
    dec = q16.decode(q16.encode(seg)).astype(int)
    assert np.abs(dec - img.reshape(-1)).max() <= 8  # half a bin of 16
    assert len(np.unique(q16.encode(seg)[1:-1])) <= 16


def test_mulaw_codes_round_trip_and_error_is_small():
    codes = np.arange(256)
    assert np.array_equal(mulaw_encode(mulaw_decode(codes)), codes)
    x = np.linspace(-1, 1, 10001)
    err = np.abs(mulaw_decode(mulaw_encode(x)) - x)
    assert err.max() < 0.022 and err[np.abs(x) < 0.01].max() < 3e-4  # finer near zero


def test_speech_resamples_to_8khz(speech_wavs):
    from moe_vs_dense.data.sources import _read_wav

    samples, rate = _read_wav(speech_wavs[0])
    seg = segment("speech", data=samples.tobytes(), rate=rate)
    tok = SpeechTokenizer("speech", sample_rate=8000)
    ids = tok.encode(seg)
    n = tok.units(seg)
    assert abs(n - len(samples) * 8000 / rate) <= 1
    assert len(ids) == n + 2 and ids[0] == tok.bos and ids[-1] == tok.eos
    # the codes survive a decode/encode cycle exactly
    assert np.array_equal(mulaw_encode(tok.decode(ids)), ids[1:-1])


def test_protein_round_trip():
    text = (FIXTURES / "uniprot_sample.fasta").read_text().split("\n")[1]
    tok = ProteinTokenizer("protein", offset=9)
    assert tok.decode(tok.encode(segment("protein", text=text))) == text


def test_vocab_size_before_training_matches_the_built_vocab():
    mods = list(MODALITIES)
    cfg = TokenizersConfig(image={"levels": 64}, dna={"k": 2})
    assert vocab_size(cfg, mods) == build_vocab(cfg, mods).size
    assert vocab_size(cfg, ["dna", "protein"]) == build_vocab(cfg, ["dna", "protein"]).size
    bpe = TokenizersConfig(text={"kind": "bpe", "vocab_size": 300})
    spec = train_bpe([(FIXTURES / "austen_emma.txt").read_text()], 300)
    assert vocab_size(bpe, mods) == build_vocab(bpe, mods, {"text": spec}).size


def test_vocab_ranges_disjoint_and_modality_ids():
    vocab = build_vocab(TokenizersConfig(), list(MODALITIES))
    spans = [(t.offset, t.offset + t.size) for t in vocab.tokenizers.values()]
    assert spans[0][0] == 2 and all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    doc = [segment("image", data=bytes(range(16)), shape=[4, 4]), segment("text", text=" Bag")]
    ids, mods, units = vocab.encode(doc)
    assert ids[-1] == EOD and units == {"image": 16, "text": 4}
    assert (mods[:18] == MODALITY_ID["image"]).all() and (mods[18:] == MODALITY_ID["text"]).all()
    again = Vocab.from_json(vocab.to_json())
    assert again.size == vocab.size and np.array_equal(again.encode(doc)[0], ids)
