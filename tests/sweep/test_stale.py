"""A sweep never reports a run trained with another config as done, never rewrites its config
file, and retrains it only when asked; a worker that cannot work is a failure, and bad
--workers/--threads never reach one."""

from __future__ import annotations

import pytest
import yaml

from moe_vs_dense.cli import main
from moe_vs_dense.errors import UserError
from moe_vs_dense.sweep import load_plan, run_sweep, runner
from moe_vs_dense.sweep.state import config_path, run_dir, run_state
from moe_vs_dense.sweep.tables import write_configs
from moe_vs_dense.train import train
from tests.sweep.test_run import tiny_sweep


def with_lr(path, lr: float):
    """A copy of the sweep file with another train.lr."""
    sweep = yaml.safe_load(path.read_text())
    sweep["set"]["train.lr"] = lr
    changed = path.with_name("changed.yaml")
    changed.write_text(yaml.safe_dump(sweep))
    return changed


def trained(tmp_path, demo_data, *overrides):
    """The tiny sweep with every run trained in this process (no workers), and its plan."""
    path = tiny_sweep(tmp_path, [4096])
    out = tmp_path / "out"
    _, runs = load_plan(path, list(overrides))
    write_configs(runs, out)
    for r in runs:
        train(r.config, run_dir(out, r.run_id), data_root=demo_data, progress=False)
    return path, out, runs


def test_a_changed_sweep_reports_stale_runs_and_rewrites_nothing(tmp_path, demo_data, capsys):
    path, out, runs = trained(tmp_path, demo_data)
    assert [run_state(out, r.run_id, r.config)[0] for r in runs] == ["done", "done"]
    configs = {r.run_id: config_path(out, r.run_id).read_text() for r in runs}
    records = {r.run_id: (run_dir(out, r.run_id) / "record.json").read_bytes() for r in runs}
    path = with_lr(path, 0.001)
    _, changed = load_plan(path)
    for r in changed:
        state, detail = run_state(out, r.run_id, r.config)
        assert state == "stale" and "train.lr: 0.003 -> 0.001" in detail
    with pytest.raises(UserError, match=r"(?s)2 run\(s\) were trained with another config.*"
                                        r"train.lr: 0.003 -> 0.001.*--retrain-stale"):
        run_sweep(changed, out, data_dir=str(demo_data), progress=False)
    args = ["sweep", "run", str(path), "--out", str(out), "--no-progress", "--data-dir",
            str(demo_data)]
    capsys.readouterr()
    assert main(args) == 2
    assert "trained with another config" in capsys.readouterr().err
    assert main(["sweep", "status", str(path), "--out", str(out)]) == 0
    status = capsys.readouterr().out
    assert "2 stale" in status and "done" not in status.split("\n", 1)[0]
    assert main(["sweep", "plan", str(path), "--out", str(out), "--no-timing"]) == 0
    assert "2 run(s) in" in capsys.readouterr().err
    assert {r.run_id: config_path(out, r.run_id).read_text() for r in runs} == configs
    assert {r.run_id: (run_dir(out, r.run_id) / "record.json").read_bytes() for r in runs} == records


def test_bad_workers_and_threads_never_reach_a_worker(tmp_path, demo_data, capsys):
    path = tiny_sweep(tmp_path, [4096])
    out = tmp_path / "out"
    for flag, bad in (("--threads", "0"), ("--threads", "-1"), ("--workers", "0"),
                      ("--workers", "-1")):
        with pytest.raises(SystemExit) as stop:  # the CLI refuses the flag itself
            main(["sweep", "run", str(path), "--out", str(out), flag, bad, "--no-progress"])
        assert stop.value.code == 2
        assert f"argument {flag}: expected a positive whole number" in capsys.readouterr().err
        workers, threads = (int(bad), 1) if flag == "--workers" else (1, int(bad))
        _, runs = load_plan(path)
        with pytest.raises(UserError, match=f"{flag}: must be a whole number of at least 1"):
            run_sweep(runs, out, workers=workers, threads=threads, progress=False)
    assert not out.exists()  # refused before anything was written


def test_a_worker_that_cannot_work_fails_the_runs_it_left(tmp_path, demo_data):
    path = tiny_sweep(tmp_path, [4096])
    out = tmp_path / "out"
    out.mkdir()
    (out / "locks").write_text("")  # a file where the worker makes its lock directory
    _, runs = load_plan(path)
    outcome = runner.execute(runs, out, 1, str(demo_data), 1, progress=False)
    assert set(outcome) == {r.run_id for r in runs}
    assert all(s == "failed" and "worker 0" in why for s, why in outcome.values())


@pytest.mark.slow
def test_retrain_stale_keeps_the_old_run_and_trains_the_new_config(tmp_path, demo_data):
    path, out, runs = trained(tmp_path, demo_data)
    old = {r.run_id: (run_dir(out, r.run_id) / "record.json").read_text() for r in runs}
    _, changed = load_plan(with_lr(path, 0.001))
    outcome = run_sweep(changed, out, data_dir=str(demo_data), progress=False,
                        retrain_stale=True)
    assert {k: v[0] for k, v in outcome.items()} == {r.run_id: "completed" for r in runs}
    for r in changed:
        assert run_state(out, r.run_id, r.config)[0] == "done"
        assert (out / "stale" / f"{r.run_id}-0" / "record.json").read_text() == old[r.run_id]
        assert "lr: 0.001" in config_path(out, r.run_id).read_text()
