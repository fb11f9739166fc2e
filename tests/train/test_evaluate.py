import os

import numpy as np
import pytest
import torch

from moe_vs_dense.config_load import load_config
from moe_vs_dense.data.loader import PreparedData, val_batches
from moe_vs_dense.data.prepare import prepare
from moe_vs_dense.data.tokenizers import N_SPECIAL
from moe_vs_dense.train.evaluate import evaluate, expert_summary, ratio_se
from moe_vs_dense.train.loop import train
from moe_vs_dense.train.record import docs_for_target, se_shortfall
from moe_vs_dense.train.rundir import open_data
from moe_vs_dense.train.step import build
from tests.conftest import write_config
from tests.train.conftest import ROOT, SMOKE, TINY, tiny


def raw_tokens(data: PreparedData, stream: str) -> np.ndarray:
    """Validation rows as (modality-local) raw token ids: the same content in any mixture."""
    rows = np.concatenate([x for x, _ in val_batches(data, stream, 64)])
    out = rows.copy()
    for tok in data.vocab.tokenizers.values():
        inside = (rows >= tok.offset) & (rows < tok.offset + tok.size) & (rows >= N_SPECIAL)
        out[inside] = rows[inside] - tok.offset
    return out


def test_unimodal_and_joint_runs_score_the_same_validation_tokens(tmp_path, demo_data):
    """A DNA-only baseline and a text+DNA joint run: DNA ids differ (another vocabulary offset)
    but the DNA validation rows hold the same raw tokens, so their losses compare."""
    os.symlink(demo_data / "raw", tmp_path / "raw")
    base = {"seed": 0, "data": {"seq_len": 256, "val_fraction": 0.05, "doc_units": 4096,
                                "num_proc": 1, "mixture": {}}}
    dna = {"source": "ecoli", "max_units": 120000}
    datas = []
    for name, mixture in (("uni", {"dna": dna}),
                          ("joint", {"text": {"source": "austen", "max_units": 120000},
                                     "dna": dna})):
        base["data"]["mixture"] = mixture
        cfg = load_config(write_config(tmp_path, base, f"{name}.yaml"))
        datas.append(PreparedData(prepare(cfg.data, tmp_path, log=lambda _m: None)))
    uni, joint = datas
    assert uni.vocab.tokenizers["dna"].offset != joint.vocab.tokenizers["dna"].offset
    a, b = raw_tokens(uni, "dna"), raw_tokens(joint, "dna")
    assert a.shape == b.shape and len(a) >= 2
    np.testing.assert_array_equal(a, b)


def test_evaluation_is_deterministic_and_independent_of_eval_batch_size(demo_data):
    cfg = tiny(moe=True)
    data = open_data(cfg, demo_data, prepare=False)
    model, _, _ = build(cfg, data)
    first = evaluate(model, data, rows=6, batch_rows=4)
    assert evaluate(model, data, rows=6, batch_rows=4) == first
    other = evaluate(model, data, rows=6, batch_rows=6)
    single = evaluate(model, data, rows=6, batch_rows=1)  # every document crosses batches
    for k, v in first["losses"].items():
        for o in (other, single):
            assert o["losses"][k]["loss"] == pytest.approx(v["loss"], rel=1e-9)
            assert o["losses"][k]["se"] == (v["se"] and pytest.approx(v["se"], rel=1e-9))
            assert o["losses"][k]["tokens"] == v["tokens"] and o["losses"][k]["docs"] == v["docs"]
            assert o["docs"][k]["tokens"] == first["docs"][k]["tokens"]
            assert o["docs"][k]["nll_sum"] == pytest.approx(first["docs"][k]["nll_sum"], rel=1e-9)
    assert first["losses"]["image"]["docs"] >= 2  # an image spans about three rows (batches of 1)
    assert first["losses"]["text"]["tokens"] == 6 * 256
    assert "image->text" in first["losses"] and first["losses"]["image"]["rows"] == 6
    assert 1 <= first["losses"]["text"]["docs"] <= 2  # 6 rows of a 4096-byte document chunk
    assert [s["tokens_per_expert"] for s in other["expert_stats"]] == \
        [s["tokens_per_expert"] for s in first["expert_stats"]]
    assert model.training


def test_ratio_se_covers_at_the_nominal_rate_with_correlated_tokens():
    """Rows share a random effect (tokens inside a row are correlated) and have unequal token
    counts; the 95% interval of the row-clustered SE must cover the true mean ~95% of the time."""
    rng = np.random.default_rng(0)
    truth, hits, reps = 2.0, 0, 1000
    for _ in range(reps):
        n = rng.integers(50, 257, size=200).astype(float)
        effect = rng.normal(0, 0.3, size=200)
        sums = n * (truth + effect) + rng.normal(0, 1.0, size=200) * np.sqrt(n)
        loss, se = ratio_se(sums, n)
        hits += abs(loss - truth) <= 1.96 * se
    assert 0.93 <= hits / reps <= 0.97


def test_docs_for_target_predicts_the_se_of_a_larger_split():
    """From the SE over 60 documents, the documents needed for a 4x smaller SE; scoring that
    many documents (documents of unequal length and difficulty) gives about the target."""
    rng = np.random.default_rng(1)

    def docs(k):
        n = rng.integers(100, 4000, size=k).astype(float)
        return n * (3.0 + rng.normal(0, 0.3, size=k)), n

    predicted, reached = [], []
    for _ in range(200):
        _, se = ratio_se(*docs(60))
        need = docs_for_target(60, se, se / 4)
        predicted.append(need)
        reached.append(ratio_se(*docs(need))[1] / (se / 4))
    assert 900 <= np.median(predicted) <= 1050  # 60 x 16, up to the small sample's noise
    assert 0.9 <= np.median(reached) <= 1.1
    assert docs_for_target(60, None, 0.005) is None


def test_se_shortfall_names_the_losses_and_the_knob():
    loss = {"loss": 3.0, "se": 0.02, "docs": 35, "docs_for_target": 560}
    rec = {"eval": {"final": {"code": loss, "dna": {**loss, "se": 0.001, "docs_for_target": 2}},
                    "paired": {"speech->text": {**loss, "se": None, "docs": 1,
                                                "docs_for_target": None}},
                    "target_se": 0.005, "rows_per_stream": {"curve": 16, "final": 64}}}
    line = se_shortfall(rec)
    assert "code 0.0200 (35 docs, ~560 needed)" in line and "dna" not in line
    assert "speech->text (one document: no SE)" in line and "eval.final_rows" in line
    rec["eval"]["rows_per_stream"]["final"] = None
    assert "data.mixture.<stream>.val_docs" in se_shortfall(rec)
    assert "eval.final_rows" not in se_shortfall(rec)
    del loss["docs_for_target"]  # a record written before the field existed
    assert "code 0.0200 (35 docs, ~560 needed)" in se_shortfall(rec)
    rec["eval"]["final"] = {"dna": rec["eval"]["final"]["dna"]}
    rec["eval"]["paired"] = {}
    assert se_shortfall(rec) is None


@pytest.mark.slow
def test_val_docs_bring_every_final_se_under_the_target_on_real_data(tmp_path, demo_data):
    """Text, DNA and protein with enough validation documents held out (val_docs) and all of
    them scored: every final loss of a short real run has an SE under 0.005 nats."""
    os.symlink(demo_data / "raw", tmp_path / "raw")
    (tmp_path / "se.yaml").write_text(f"""base: {SMOKE}
data:
  mixture: !replace
    text: {{source: austen, val_docs: 150}}
    dna: {{source: ecoli, max_units: 1000000}}
    protein: {{source: uniprot, max_units: 1000000, val_docs: 400}}
""")
    cfg = load_config(tmp_path / "se.yaml", TINY + [
        "train.tokens=65536", "train.batch_rows=16", "model.d_model=32", "eval.final_rows=null",
        "eval.batch_rows=32", "eval.every=null", "run.checkpoint_every=null"])
    rec = train(cfg, tmp_path / "run", data_root=tmp_path, progress=False, prepare=True)
    ev = rec["eval"]
    # (the last, partial row of a split is dropped, and a short document with it)
    assert 148 <= ev["final"]["text"]["docs"] <= 150
    assert 395 <= ev["final"]["protein"]["docs"] <= 400
    assert ev["se_target_met"] and se_shortfall(rec) is None
    for v in ev["final"].values():
        assert 0 < v["se"] <= 0.005 and v["docs_for_target"] <= v["docs"]


def test_expert_summary_mutual_information():
    separated = np.array([[10, 0], [0, 30]])
    mixed = np.array([[5, 5], [15, 15]])
    s = expert_summary(0, separated, ["text", "dna"], 0.0, 0.0)
    assert s["modality_expert_mi_bits"] == pytest.approx(s["modality_entropy_bits"])
    assert s["imbalance"] == pytest.approx(1.5) and s["dead_experts"] == 0
    assert expert_summary(0, mixed, ["text", "dna"], 0.0, 0.0)["modality_expert_mi_bits"] == \
        pytest.approx(0.0, abs=1e-12)
    assert s["by_modality"] == {"text": [10, 0], "dna": [0, 30]}


def test_build_does_not_touch_the_global_rng(demo_data):
    cfg = tiny()
    data = open_data(cfg, demo_data, prepare=False)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, _, _ = build(cfg, data)
    assert torch.equal(torch.get_rng_state(), before)
    b, _, _ = build(cfg, data)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(),
                                                  strict=True))


def test_documents_end_at_eod_across_rows():
    from moe_vs_dense.train.evaluate import doc_ids

    rows = np.array([[5, 6, 1, 7], [8, 1, 9, 9]])  # EOD = 1 ends documents 0 and 1
    np.testing.assert_array_equal(doc_ids(rows), [[0, 0, 1], [1, 2, 2]])


# One rank of a two-process evaluation (gloo on CPU): writes rank 0's result as JSON.
RANK_SCRIPT = r"""
import json, sys
import torch
import torch.distributed as dist
from moe_vs_dense.train import evaluate as ev
from moe_vs_dense.train.evaluate import evaluate
from moe_vs_dense.train.rundir import open_data
from moe_vs_dense.train.step import build
from tests.train.conftest import tiny
torch.set_num_threads(1)
dist.init_process_group("gloo")
cfg = tiny(moe=True)
data = open_data(cfg, sys.argv[1], prepare=False)
model, _, _ = build(cfg, data)
scored, real = [], ev._score
ev._score = lambda *a, **k: scored.append(1) or real(*a, **k)
out = evaluate(model, data, rows=5, batch_rows=2)
open(f"{sys.argv[2]}.{dist.get_rank()}", "w").write(str(len(scored)))
if dist.get_rank() == 0:
    open(sys.argv[2], "w").write(json.dumps(out))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_ranks_split_the_validation_rows_and_match_one_process_exactly(tmp_path, demo_data):
    import json
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two.json"
    procs = [subprocess.Popen(
        [sys.executable, "-c", RANK_SCRIPT, str(demo_data), str(out)], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RANK": str(r), "WORLD_SIZE": "2",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)},
        stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    errs = [p.communicate(timeout=240)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    cfg = tiny(moe=True)
    data = open_data(cfg, demo_data, prepare=False)
    model, _, _ = build(cfg, data)
    one = evaluate(model, data, rows=5, batch_rows=2)
    assert json.loads(out.read_text()) == json.loads(json.dumps(one))  # bit for bit
    batches = len(data.streams) * 3  # 5 rows in batches of 2 per stream
    counts = [int((tmp_path / f"two.json.{r}").read_text()) for r in (0, 1)]
    assert counts == [(batches + 1) // 2, batches // 2]  # each rank scored its share only
