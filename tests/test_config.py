import pytest

from moe_vs_dense.cli import main
from moe_vs_dense.config_load import load_config
from moe_vs_dense.errors import UserError
from tests.conftest import write_config

DEMO = "configs/demo.yaml"


def test_demo_config_loads_with_defaults():
    cfg = load_config(DEMO)
    assert cfg.data.seq_len == 256
    assert cfg.data.mixture["dna"].modality == "dna"
    assert cfg.data.modalities == ["text", "code", "dna", "image", "speech", "protein"]


def _error(tmp_path, cfg, overrides=None) -> str:
    path = write_config(tmp_path, cfg)
    with pytest.raises(UserError) as e:
        load_config(path, overrides)
    return str(e.value)


def test_nonpositive_weight_names_key_path_line_and_value(tmp_path, small_config):
    small_config["data"]["mixture"]["dna"]["weight"] = -1
    msg = _error(tmp_path, small_config)
    assert "data.mixture.dna.weight: must be > 0 (got -1)" in msg
    lines = (tmp_path / "config.yaml").read_text().splitlines()
    line_no = int(msg.split("config.yaml:")[1].split(":")[0])
    assert lines[line_no - 1].strip().startswith("weight")


def test_unknown_key_lists_allowed_keys(tmp_path, small_config):
    small_config["data"]["seq_length"] = 128
    msg = _error(tmp_path, small_config)
    assert "data.seq_length: unknown key; allowed: dir, seq_len" in msg


def test_unknown_modality(tmp_path, small_config):
    small_config["data"]["mixture"]["video"] = {"source": "files", "paths": ["x.txt"]}
    msg = _error(tmp_path, small_config)
    assert "unknown modality 'video'" in msg and "data.mixture.video" in msg


def test_seq_len_below_two_and_wrong_type(tmp_path, small_config):
    small_config["data"]["seq_len"] = 1
    small_config["data"]["val_fraction"] = "lots"
    msg = _error(tmp_path, small_config)
    assert "data.seq_len: must be >= 2 (got 1)" in msg
    assert "data.val_fraction:" in msg and "'lots'" in msg


def test_builtin_source_modality_mismatch(tmp_path, small_config):
    small_config["data"]["mixture"]["text"] = {"source": "ecoli"}
    assert "'ecoli' holds dna data, not text" in _error(tmp_path, small_config)


def test_set_overrides_apply_and_are_validated(tmp_path, small_config):
    path = write_config(tmp_path, small_config)
    cfg = load_config(path, ["data.seq_len=32", "data.mixture.text.weight=2.5"])
    assert cfg.data.seq_len == 32 and cfg.data.mixture["text"].weight == 2.5
    msg = _error(tmp_path, small_config, ["data.mixture.text.weight=0"])
    assert "--set: data.mixture.text.weight: must be > 0 (got 0)" in msg


def test_invalid_yaml_reports_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  seq_len: 3\n  mixture: [unclosed\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(path)


def test_cli_user_error_exit_code_2_without_traceback(tmp_path, small_config, capsys):
    small_config["data"]["mixture"]["dna"]["weight"] = -1
    path = write_config(tmp_path, small_config)
    assert main(["data", "prepare", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid config") and "Traceback" not in err
    assert main(["data", "prepare", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def _line(path, text: str) -> int:
    """1-based number of the first line of `path` that contains `text`."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_pair_configs_extend_the_demo():
    demo, moe = load_config(DEMO), load_config("configs/moe_modality.yaml")
    assert moe.data == demo.data and moe.seed == demo.seed
    assert moe.model.family == "moe" and moe.model.moe.d_expert == 176
    assert moe.model.model_copy(update={"family": "dense", "moe": demo.model.moe}) == demo.model
    uni = load_config("configs/unimodal_text.yaml")
    assert list(uni.data.mixture) == ["text"] and uni.data.mixture["text"].source == "austen"
    assert uni.model == demo.model and uni.data.seq_len == demo.data.seq_len


def test_base_chain_merges_key_by_key(tmp_path, small_config):
    (tmp_path / "bases").mkdir()
    write_config(tmp_path / "bases", small_config, "root.yaml")
    (tmp_path / "bases" / "mid.yaml").write_text(
        "base: root.yaml\ndata:\n  seq_len: 32\n  mixture:\n    text: {weight: 3.0}\n")
    child = tmp_path / "child.yaml"
    dna = small_config["data"]["mixture"]["dna"]["paths"]
    child.write_text(f"base: bases/mid.yaml\nmodel: {{d_model: 32}}\ndata:\n  mixture:\n"
                     f"    dna: {{paths: {dna + dna}}}\n")
    cfg = load_config(child)
    assert cfg.data.seq_len == 32 and cfg.model.d_model == 32
    text = cfg.data.mixture["text"]
    assert text.weight == 3.0 and text.paths == small_config["data"]["mixture"]["text"]["paths"]
    assert cfg.data.mixture["dna"].paths == dna + dna  # lists replace, never append
    assert list(cfg.data.mixture) == list(small_config["data"]["mixture"])
    assert cfg.data.doc_units == small_config["data"]["doc_units"]


def test_replace_tag_replaces_the_inherited_mapping(tmp_path, small_config):
    write_config(tmp_path, small_config, "base.yaml")
    child = tmp_path / "child.yaml"
    dna = small_config["data"]["mixture"]["dna"]["paths"]
    child.write_text(f"base: base.yaml\ndata:\n  mixture: !replace\n"
                     f"    dna: {{source: files, paths: {dna}}}\n")
    cfg = load_config(child)
    assert list(cfg.data.mixture) == ["dna"] and cfg.data.seq_len == 64
    child.write_text("base: base.yaml\ndata: !replace\n  seq_len: 32\n")
    assert "data.mixture: required key is missing" in _error_of(child)


def _error_of(path, overrides=None) -> str:
    with pytest.raises(UserError) as e:
        load_config(path, overrides)
    return str(e.value)


def test_errors_name_the_file_and_line_each_value_came_from(tmp_path, small_config):
    small_config["data"]["mixture"]["dna"]["weight"] = -1
    small_config["data"]["val_fraction"] = 0.9
    base = write_config(tmp_path, small_config, "base.yaml")
    child = tmp_path / "child.yaml"
    child.write_text("# the child\nbase: base.yaml\ndata:\n  seq_len: 1\n  val_fraction: 0.7\n")
    msg = _error_of(child, ["data.doc_units=3"])
    assert f"{base}:{_line(base, 'weight: -1')}: data.mixture.dna.weight: must be > 0" in msg
    assert f"{child}:4: data.seq_len: must be >= 2 (got 1)" in msg
    assert f"{child}:5: data.val_fraction: must be < 0.5 (got 0.7)" in msg
    assert "--set: data.doc_units: must be >= 16 (got 3)" in msg


def test_base_errors(tmp_path, small_config):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("base: b.yaml\nseed: 1\n")
    b.write_text("seed: 2\nbase: a.yaml\n")
    assert f"{b}:2: base: a.yaml makes a cycle (" in _error_of(a)
    a.write_text("seed: 1\nbase: nope.yaml\n")
    assert f"{a}:2: base: file not found: {tmp_path / 'nope.yaml'}" in _error_of(a)
    a.write_text("base: [b.yaml]\n")
    assert f"{a}:1: base: must be the name of a YAML file" in _error_of(a)
    b.write_text("data:\n  seq_len: [unclosed\n")
    a.write_text("base: b.yaml\n")
    assert f"{b}:3: invalid YAML" in _error_of(a)


def test_data_paths_are_relative_to_the_file_that_names_them(tmp_path, monkeypatch):
    import shutil

    from moe_vs_dense.sweep.spec import load_sweep
    from tests.conftest import FIXTURES

    (tmp_path / "cfg" / "bases").mkdir(parents=True)
    (tmp_path / "cfg" / "data").mkdir()
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(FIXTURES / "austen_emma.txt", tmp_path / "cfg" / "data" / "emma.txt")
    shutil.copy(FIXTURES / "ecoli_40kb.fna", tmp_path / "cfg" / "genome.fna")
    shutil.copy(FIXTURES / "ecoli_40kb.fna", tmp_path / "elsewhere" / "other.fna")
    (tmp_path / "cfg" / "bases" / "base.yaml").write_text(
        "data:\n  dir: ../cache\n  mixture:\n    dna: {source: files, paths: [../genome.fna]}\n")
    child = tmp_path / "cfg" / "child.yaml"
    child.write_text("base: bases/base.yaml\ndata:\n  mixture:\n"
                     "    text: {source: files, paths: [data/emma.txt]}\n")
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_config(child)
    assert cfg.data.mixture["text"].paths == [str(tmp_path / "cfg" / "data" / "emma.txt")]
    assert cfg.data.mixture["dna"].paths == [str(tmp_path / "cfg" / "genome.fna")]
    assert cfg.data.dir == str(tmp_path / "cfg" / "cache")
    # the command line names files relative to the working directory
    cfg = load_config(child, ["data.mixture.dna.paths=[other.fna]"])
    assert cfg.data.mixture["dna"].paths == [str(tmp_path / "elsewhere" / "other.fna")]
    # a sweep's inline base: relative to the sweep file
    (tmp_path / "cfg" / "sweep.yaml").write_text(
        "name: s\ntokens: [1000]\nsizes: [{d_model: 16, n_layers: 1, n_heads: 2}]\n"
        "families: {dense: {}}\nbase:\n  data: {mixture: {dna: {source: files, paths: [genome.fna]}}}\n")
    _, base = load_sweep(tmp_path / "cfg" / "sweep.yaml")
    assert base["data"]["mixture"]["dna"]["paths"] == [str(tmp_path / "cfg" / "genome.fna")]


def test_a_missing_data_file_names_the_config_line_and_key_path(tmp_path, small_config):
    small_config["data"]["mixture"]["dna"]["paths"] = ["nohdr.fa"]
    path = write_config(tmp_path, small_config)
    msg = _error_of(path)
    assert f"{path}:{_line(path, '- nohdr.fa')}: data.mixture.dna.paths.0: file not found: " \
           f"{tmp_path / 'nohdr.fa'}" in msg
    (tmp_path / "nohdr.fa").mkdir()
    assert "data.mixture.dna.paths.0: is a directory, not a file" in _error_of(path)


def test_a_key_set_twice_names_both_lines(tmp_path, small_config):
    path = write_config(tmp_path, small_config)
    text = path.read_text()
    path.write_text(text + "train: {tokens: 60000}\nmodel: {d_model: 32}\ntrain: {lr: 0.5}\n")
    n = len(text.splitlines())
    assert f"{path}:{n + 3}: train: duplicate key, also set at line {n + 1}" in _error_of(path)
    # nested, and inside a !replace mapping of a base's child
    path.write_text(text.replace("  seq_len: 64\n", "  seq_len: 64\n  seq_len: 32\n"))
    line = _line(path, "seq_len: 32")
    assert f"{path}:{line}: data.seq_len: duplicate key, also set at line {line - 1}" \
        in _error_of(path)
    path.write_text(text)
    child = tmp_path / "child.yaml"
    child.write_text("base: config.yaml\ndata:\n  mixture: !replace\n    dna: {source: ecoli}\n"
                     "    dna: {source: ecoli, weight: 2}\n")
    assert f"{child}:5: data.mixture.dna: duplicate key, also set at line 4" in _error_of(child)
    # the same key in two mappings, and a merge key with an override, are not duplicates
    child.write_text("base: config.yaml\nx: &m {d_model: 32, n_heads: 2}\n"
                     "model: {<<: *m, d_model: 64}\ntrain: {lr: 0.01}\n")
    assert "x: unknown key" in _error_of(child)
    child.write_text("base: config.yaml\nmodel: {d_model: 64}\ntrain: {lr: 0.01}\n"
                     "eval: {rows: 8}\nrun: {log_every: 3}\n")
    assert load_config(child).run.log_every == 3
