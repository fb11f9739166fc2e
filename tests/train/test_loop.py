import errno
import json
import math

import jsonschema
import pytest
import torch
from safetensors.torch import load_file

from analysis.records import SCHEMA, load
from moe_vs_dense.cli import main
from moe_vs_dense.errors import UserError
from moe_vs_dense.train import checkpoint, train
from moe_vs_dense.train import loop as loop_module
from tests.train.conftest import tiny


def validate(record: dict) -> None:
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(record)


def test_pair_records_validate_and_analysis_reads_them(tmp_path, demo_data, capsys):
    dense = train(tiny(), tmp_path / "dense", data_root=demo_data, progress=False)
    moe = train(tiny(moe=True), tmp_path / "moe", data_root=demo_data, progress=False)
    for rec in (dense, moe):
        validate(rec)
        assert rec == json.loads((tmp_path / rec["run_id"] / "record.json").read_text())
        assert rec["status"] == "completed" and rec["schema_version"] == 4
        # floors for every result key, on exactly the tokens its loss was scored on
        floors = rec["eval"]["floors"]
        for key, ev in {**rec["eval"]["final"], **rec["eval"]["paired"]}.items():
            f = floors[key]
            assert f["tokens"] == ev["tokens"]
            assert min(f[k] for k in ("uniform", "unigram", "bigram", "markov")) > 0
            assert f["bits_per_unit"]["unigram"] > 0
        assert floors["text"]["markov"] < floors["text"]["bigram"] < floors["text"]["unigram"]
        assert rec["tokens"]["total"] == 8 * 4 * 256
        assert sum(rec["tokens"]["by_modality"].values()) == pytest.approx(8 * 4 * 256, abs=6)
        assert set(rec["eval"]["final"]) == {"text", "code", "dna", "image", "speech", "protein"}
        assert set(rec["eval"]["paired"]) <= {"image->text", "speech->text"}
        assert [c["step"] for c in rec["eval"]["curve"]] == [4, 8]
        assert rec["throughput"]["tokens_per_s"] > 0 and rec["throughput"]["mfu"] > 0
    assert dense["flops_per_token"] == moe["flops_per_token"]
    assert dense["params"]["active"] == moe["params"]["active"]
    # modality routing separates modalities completely: MI = modality entropy, per layer
    (layer,) = moe["expert_stats"]
    assert layer["modality_expert_mi_bits"] == pytest.approx(layer["modality_entropy_bits"])
    assert all(sum(v > 0 for v in counts) == 1 for counts in layer["by_modality"].values())
    assert dense["expert_stats"] == []
    # per-document losses align between partners (same documents, same tokens), for paired SEs
    docs = [json.loads((tmp_path / r / "eval_docs.json").read_text()) for r in ("dense", "moe")]
    assert docs[0].keys() == docs[1].keys() == dense["eval"]["final"].keys() | dense["eval"]["paired"].keys()
    for key, d in docs[0].items():
        assert d["tokens"] == docs[1][key]["tokens"]
        assert sum(d["nll_sum"]) / sum(d["tokens"]) == pytest.approx(
            {**dense["eval"]["final"], **dense["eval"]["paired"]}[key]["loss"])
    df = load([tmp_path])
    assert len(df) == 12 and set(df["family"]) == {"dense", "moe"}
    # granularity = dense FFN width / expert width: 48 / 48 here, none for dense
    assert (df.loc[df["family"] == "moe", "granularity"] == 1.0).all()
    assert df.loc[df["family"] == "dense", "granularity"].isna().all()
    text = df[(df["run"] == "dense") & (df["modality"] == "text")].iloc[0]
    assert text["floor_bigram"] == dense["eval"]["floors"]["text"]["bigram"]
    assert main(["compare", str(tmp_path), "--bootstrap", "10"]) == 0
    assert "text" in capsys.readouterr().out
    lines = [json.loads(x) for x in (tmp_path / "dense" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [2, 4, 6, 8]


def test_version_1_records_still_read(tmp_path):
    from analysis.synthetic import record

    rec = record("old", "dense", ["text"], 1000, {"text": 10}, {"text": 3.0})
    assert rec["schema_version"] == 1
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "record.json").write_text(json.dumps(rec))
    assert load([tmp_path])["loss"].tolist() == [3.0]


def test_completed_run_returns_at_once_and_changed_config_is_refused(tmp_path, demo_data):
    run = tmp_path / "run"
    first = train(tiny(), run, data_root=demo_data, progress=False)
    stamp = [p.stat().st_mtime_ns for p in checkpoint.checkpoints(run)]
    again = train(tiny("train.threads=2"), run, data_root=demo_data, progress=False)  # free key
    assert again == first
    assert [p.stat().st_mtime_ns for p in checkpoint.checkpoints(run)] == stamp
    with pytest.raises(UserError, match=r"train.lr: 0.003 -> 0.001"):
        train(tiny("train.lr=0.001"), run, data_root=demo_data, progress=False)
    longer = train(tiny("train.tokens=12288"), run, data_root=demo_data, progress=False,
                   force=True)
    assert longer["tokens"]["steps"] == 12 and longer["status"] == "completed"


def test_nan_stops_the_run_as_diverged_and_keeps_the_last_good_checkpoint(tmp_path, demo_data,
                                                                          monkeypatch):
    real = loop_module.train_step
    calls = []

    def poisoned(model, *args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # step 5: a weight turns NaN, so the forward really yields NaN
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("nan")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(loop_module, "train_step", poisoned)
    run = tmp_path / "run"
    rec = train(tiny(), run, data_root=demo_data, progress=False)
    validate(rec)
    assert rec["status"] == "diverged" and rec["diverged_step"] == 5
    assert [p.name for p in checkpoint.checkpoints(run)] == ["step-00000002.pt", "step-00000004.pt"]
    state = checkpoint.load_latest(run)
    assert state["trainer"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (run / "model.safetensors").exists()
    assert train(tiny(), run, data_root=demo_data, progress=False) == rec  # not retrained


def test_disk_full_during_checkpoint_is_clear_and_resume_matches(tmp_path, demo_data, monkeypatch):
    ref = train(tiny(), tmp_path / "ref", data_root=demo_data, progress=False)
    real_save = torch.save
    saves = []

    def full_disk(obj, f):
        saves.append(1)
        if len(saves) == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    run = tmp_path / "run"
    with pytest.raises(UserError, match="disk full.*step-00000002.pt still loads"):
        train(tiny(), run, data_root=demo_data, progress=False)
    assert json.loads((run / "record.json").read_text())["status"] == "failed"
    assert [p.name for p in checkpoint.checkpoints(run)] == ["step-00000002.pt"]
    assert not list((run / "checkpoints").glob(".*"))
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    rec = train(tiny(), run, data_root=demo_data, progress=False)
    assert rec["eval"]["final"] == ref["eval"]["final"]
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unprepared_data_and_unwritable_run_dir_are_clear_errors(tmp_path, demo_data):
    with pytest.raises(UserError, match="moe-vs-dense data (fetch|prepare)"):
        train(tiny(), tmp_path / "run", data_root=tmp_path / "empty", progress=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot write the run directory"):
        train(tiny(), tmp_path / "file" / "run", data_root=demo_data, progress=False)


def test_grad_accumulation_matches_one_big_batch(tmp_path, demo_data):
    one = train(tiny(), tmp_path / "one", data_root=demo_data, progress=False)
    two = train(tiny("train.grad_accum=2"), tmp_path / "two", data_root=demo_data, progress=False)
    for m, v in one["eval"]["final"].items():
        assert two["eval"]["final"][m]["loss"] == pytest.approx(v["loss"], abs=1e-4)


def test_bf16_autocast_on_cpu_trains(tmp_path, demo_data):
    rec = train(tiny("train.precision=bf16", "train.tokens=4096"), tmp_path / "bf16",
                data_root=demo_data, progress=False)
    assert rec["status"] == "completed"
    assert all(math.isfinite(v["loss"]) for v in rec["eval"]["final"].values())


def test_short_real_run_learns_every_modality(tmp_path, demo_data):
    cfg = tiny("model.d_model=32", "train.tokens=122880", "train.batch_rows=8", "eval.every=1000",
               "run.checkpoint_every=1000", "train.lr=0.01", "eval.final_rows=40")
    rec = train(cfg, tmp_path / "run", data_root=demo_data, progress=False)
    uniform = math.log(rec["data"]["vocab_size"])
    losses = {m: v["loss"] for m, v in rec["eval"]["final"].items()}
    assert all(v < uniform - 1.0 for v in losses.values()), f"{uniform=}, {losses=}"
    for v in rec["eval"]["final"].values():  # an SE needs two documents (speech's are long)
        assert (v["se"] is None) == (v["docs"] < 2)
        assert v["se"] is None or 0 < v["se"] < 1


def test_runs_leave_no_global_state_and_finished_runs_return_fast(tmp_path, demo_data):
    import time

    torch.manual_seed(7)
    rng = torch.get_rng_state()
    rec = train(tiny("train.threads=2"), tmp_path / "run", data_root=demo_data, progress=False)
    assert torch.get_num_threads() == 1 and torch.equal(torch.get_rng_state(), rng)
    assert rec["host"]["threads"] == 2
    t = time.perf_counter()
    assert train(tiny(), tmp_path / "run", data_root=demo_data, progress=False) == rec
    assert time.perf_counter() - t < 1.0


def test_missing_tracker_package_is_a_clear_error(tmp_path, demo_data):
    import importlib.util

    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        pytest.skip("tensorboard is installed")
    with pytest.raises(UserError, match="tensorboard is not installed"):
        train(tiny("run.trackers=[tensorboard]"), tmp_path / "run", data_root=demo_data,
              progress=False)


def test_cli_trains_and_reports_user_errors_without_traceback(tmp_path, demo_data, capsys):
    from tests.train.conftest import SMOKE, TINY

    args = ["train", str(SMOKE), "--out", str(tmp_path / "run"), "--quiet"]
    args += [a for s in TINY for a in ("--set", s)]
    assert main(args + ["--data-dir", str(demo_data)]) == 0
    assert "completed, 8,192 tokens" in capsys.readouterr().out
    assert main(args + ["--data-dir", str(demo_data), "--set", "train.lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "train.lr: 0.003 -> 0.1" in err and "Traceback" not in err
