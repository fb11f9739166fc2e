import os
import stat

import pytest

from moe_vs_dense.io import atomic_dir, atomic_path, write_json


@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path, umask_022):
    write_json(tmp_path / "record.json", {"a": 1})
    with atomic_dir(tmp_path / "prepared") as d:
        (d / "x.npy").write_bytes(b"0")
    assert stat.S_IMODE((tmp_path / "record.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "prepared").stat().st_mode) == 0o755


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "record.json"
    write_json(target, {"old": True})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == '{\n  "old": true\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]
