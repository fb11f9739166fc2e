"""Sweep configs and plans: matched pairs, shared data order, axes, baselines, errors, commands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from moe_vs_dense.cli import main
from moe_vs_dense.config_load import load_config
from moe_vs_dense.data.tokenizers import vocab_size
from moe_vs_dense.errors import UserError
from moe_vs_dense.model.accounting import account
from moe_vs_dense.sweep import load_plan
from tests.conftest import small_mixture

ROOT = Path(__file__).resolve().parents[2]


def sweep_file(tmp_path: Path, **over) -> Path:
    sweep = {
        "name": "t",
        "base": {"seed": 0, "data": {"dir": str(tmp_path / "data"), "seq_len": 64,
                                     "val_fraction": 0.2, "doc_units": 512, "num_proc": 1,
                                     "mixture": small_mixture()}},
        "set": {"train.batch_rows": 4},
        "sizes": [{"d_model": 32, "n_layers": 2, "n_heads": 2},
                  {"d_model": 48, "n_layers": 3, "n_heads": 4}],
        "tokens": [10000, 30000],
        "seeds": [0, 1],
        "families": {
            "dense": {},
            "moe_modality": {"set": {"model.family": "moe", "model.moe.router": "modality"}},
            "moe_learned": {"set": {"model.family": "moe", "model.moe.router": "learned",
                                    "model.moe.num_experts": 4, "model.moe.top_k": 1}},
            "mot": {"set": {"model.family": "mot"}},
        },
    } | over
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def _acc(cfg):
    mods = cfg.data.modalities
    return account(cfg.model, vocab_size(cfg.data.tokenizers, mods), cfg.data.seq_len, mods)


def test_partners_match_the_anchor_flops_and_share_its_data_order(tmp_path):
    _, runs = load_plan(sweep_file(tmp_path))
    assert len(runs) == 2 * 2 * 2 * 4
    pairs: dict[str, list] = {}
    for r in runs:
        pairs.setdefault(r.pair_id, []).append(r)
    assert len(pairs) == 8
    for pair_id, members in pairs.items():
        anchor = next(r for r in members if r.family == "dense")
        assert {r.family for r in members} == {"dense", "moe_modality", "moe_learned", "mot"}
        for r in members:
            assert r.config.run.pair_id == pair_id
            got, want = _acc(r.config).flops_per_token, _acc(anchor.config).flops_per_token
            assert abs(got - want) <= 0.01 * want, (r.run_id, got, want)
            # same data, seed, batch and budget: the same batches at every step
            assert r.config.data == anchor.config.data
            assert (r.config.seed, r.config.train.batch_rows, r.config.train.tokens) == (
                anchor.config.seed, anchor.config.train.batch_rows, anchor.config.train.tokens)
        moe = next(r for r in members if r.family == "moe_modality").config.model
        assert moe.family == "moe" and moe.moe.router == "modality"
        assert moe.d_model == anchor.config.model.d_model
    assert {r.config.seed for r in runs} == {0, 1}
    assert {r.config.train.tokens for r in runs} == {10000, 30000}


def test_pair_members_draw_identical_batches(tmp_path):
    from moe_vs_dense.data.loader import MixtureLoader, PreparedData
    from moe_vs_dense.data.prepare import prepare

    path = sweep_file(tmp_path, sizes=[{"d_model": 32, "n_layers": 1, "n_heads": 2}],
                      tokens=[5000], seeds=[3])
    _, runs = load_plan(path)
    batches = []
    for r in runs:
        data = PreparedData(prepare(r.config.data, tmp_path / "data", log=lambda _m: None))
        loader = MixtureLoader(data, r.config.train.batch_rows, r.config.seed)
        batches.append([loader.batch(s) for s in range(4)])
    for other in batches[1:]:
        for (t0, m0), (t1, m1) in zip(batches[0], other, strict=True):
            assert np.array_equal(t0, t1) and np.array_equal(m0, m1)


def test_match_params_matches_total_params(tmp_path):
    _, runs = load_plan(sweep_file(tmp_path, match="params", seeds=[0], tokens=[10000],
                                   families={"dense": {}, "moe": {"set": {
                                       "model.family": "moe", "model.moe.router": "learned",
                                       "model.moe.num_experts": 4}}}))
    for anchor, moe in zip(runs[::2], runs[1::2], strict=True):
        a, m = _acc(anchor.config).total_params, _acc(moe.config).total_params
        assert abs(m - a) <= 0.01 * a
        assert _acc(moe.config).active_params < _acc(anchor.config).active_params


def test_expert_count_and_width_axes(tmp_path):
    fam = {"set": {"model.family": "moe", "model.moe.router": "learned"},
           "axes": [{"model.moe.num_experts": [4, 8]},
                    {"model.moe.top_k": [1, 2], "model.moe.every": [1, 2]}]}
    _, runs = load_plan(sweep_file(tmp_path, seeds=[0], tokens=[10000], sizes=[
        {"d_model": 32, "n_layers": 2, "n_heads": 2}], families={"dense": {}, "moe": fam}))
    moe = [r for r in runs if r.family == "moe"]
    assert len(moe) == 4
    got = {(r.config.model.moe.num_experts, r.config.model.moe.top_k, r.config.model.moe.every)
           for r in moe}
    assert got == {(4, 1, 1), (4, 2, 2), (8, 1, 1), (8, 2, 2)}
    assert "d32l2-t10k-s0-moe-num_experts8-top_k2-every2" in {r.run_id for r in moe}
    # more active experts at matched FLOPs: narrower experts (the granularity axis)
    widths = {r.config.model.moe.top_k: r.config.model.d_expert
              for r in moe if r.config.model.moe.num_experts == 8}
    assert widths[2] < widths[1]
    assert len({r.pair_id for r in runs}) == 1


def test_mixture_share_axis_changes_the_pair(tmp_path):
    _, runs = load_plan(sweep_file(tmp_path, seeds=[0], tokens=[10000],
                                   sizes=[{"d_model": 32, "n_layers": 1, "n_heads": 2}],
                                   axes=[{"data.mixture.dna.weight": [0.25, 1.0]}]))
    pairs = {r.pair_id for r in runs}
    assert pairs == {"d32l1-t10k-s0-weight0.25", "d32l1-t10k-s0-weight1.0"}
    for r in runs:
        assert r.config.data.mixture["dna"].weight == float(r.pair_id.split("weight")[1])


def test_unimodal_and_bimodal_baselines_see_the_joint_runs_tokens(tmp_path):
    _, runs = load_plan(sweep_file(tmp_path, seeds=[0], tokens=[50000], unimodal="all",
                                   bimodal=[["text", "dna"]],
                                   sizes=[{"d_model": 32, "n_layers": 1, "n_heads": 2}],
                                   families={"dense": {}}))
    by = {r.family: r for r in runs}
    assert set(by) == {"dense", "uni_text", "uni_code", "uni_dna", "uni_image", "uni_protein",
                       "bi_text_dna"}
    assert by["uni_dna"].config.data.modalities == ["dna"]
    assert by["uni_image"].config.data.modalities == ["image"]  # labels dropped
    assert by["uni_dna"].tokens == 10000  # 5 equal streams: a fifth of the budget
    assert by["bi_text_dna"].tokens == 20000
    assert by["bi_text_dna"].config.data.modalities == ["text", "dna"]
    assert all(by[k].pair_id is None for k in by if k != "dense")
    assert by["uni_text"].config.model == by["dense"].config.model


def test_errors_name_the_file_line_and_key(tmp_path):
    path = sweep_file(tmp_path, tokens=[1000, -5])
    with pytest.raises(UserError, match=r"sweep.yaml:\d+: tokens: must be positive"):
        load_plan(path)
    path = sweep_file(tmp_path, families={"dense": {}, "moe": {
        "set": {"model.family": "moe"}, "axes": [{"model.moe.num_experts": [2, 4],
                                                  "model.moe.top_k": [1]}]}})
    with pytest.raises(UserError, match=r"sweep.yaml:\d+: families.moe.axes.0: the value lists"):
        load_plan(path)
    path = sweep_file(tmp_path, sizez=[])
    with pytest.raises(UserError, match="sizez: unknown key"):
        load_plan(path)
    path = sweep_file(tmp_path, families={"dense": {}, "moe": {"set": {"model.moe.top_kk": 2}}})
    with pytest.raises(UserError, match=r"run d32l2-t10k-s0-moe.*model.moe.top_kk: unknown key"):
        load_plan(path)
    path = sweep_file(tmp_path, families={"dense": {}, "moe": {"set": {
        "model.family": "moe", "model.d_model": 64}}})
    with pytest.raises(UserError, match="may only change model.family and model.moe"):
        load_plan(path)


def test_plan_command_writes_one_loadable_config_and_command_per_run(tmp_path, capsys):
    path = sweep_file(tmp_path, seeds=[0], tokens=[10000])
    out = tmp_path / "out"
    assert main(["sweep", "plan", str(path), "--out", str(out), "--no-timing"]) == 0
    text = capsys.readouterr().out
    _, runs = load_plan(path)
    commands = (out / "commands.txt").read_text().splitlines()
    assert len(commands) == len(runs)
    for r, cmd in zip(runs, commands, strict=True):
        assert r.run_id in text
        assert cmd == f"moe-vs-dense train {out}/configs/{r.run_id}.yaml --out {out}/runs/{r.run_id}"
        assert load_config(out / "configs" / f"{r.run_id}.yaml") == r.config
    for col in ("active params", "total params", "tokens/param", "FLOPs"):
        assert col in text


def test_demo_sweep_has_three_sizes_three_budgets_both_routers_and_no_baselines():
    sweep, runs = load_plan(ROOT / "configs" / "sweeps" / "demo.yaml")
    assert len(sweep.sizes) >= 3 and len(sweep.tokens) >= 3
    routers = {r.router for r in runs if r.config.model.family == "moe"}
    assert routers == {"modality", "learned"}
    assert {r.kind for r in runs} == {"paired"}
    assert runs[0].config.data.modalities == ["text", "image"]
    assert all(abs(r.mismatch) <= 0.01 for r in runs if r.mismatch is not None)


def test_competition_study_has_baselines_with_enough_steps():
    sweep, runs = load_plan(ROOT / "configs" / "studies" / "competition.yaml")
    kinds = {r.kind for r in runs}
    assert kinds == {"paired", "unimodal", "bimodal"} and len(sweep.tokens) >= 3
    uni = [r for r in runs if r.kind == "unimodal"]
    assert {m for r in uni for m in r.config.data.modalities} == {"text", "code", "image"}
    assert min(r.config.train.steps(r.config.data.seq_len) for r in uni) >= 60
