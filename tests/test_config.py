import pytest

from moe_vs_dense.cli import main
from moe_vs_dense.config import load_config
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
