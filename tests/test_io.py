"""Atomic writes and the one JSON reader."""

import json

import pytest

from elo_lightning.errors import ELOError
from elo_lightning.io import atomic_dir, read_json, write_json_atomic


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("2")
        raise RuntimeError("crash mid-save")
    assert (out / "a.txt").read_text() == "1"  # the old complete directory is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind


def test_write_then_read_json(tmp_path):
    write_json_atomic(tmp_path / "sub" / "r.json", {"x": 1, "path": tmp_path})
    assert read_json(tmp_path / "sub" / "r.json") == {"x": 1, "path": str(tmp_path)}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["r.json"]


def test_read_json_refuses_missing_and_invalid_files(tmp_path):
    with pytest.raises(ELOError, match="no summary at"):
        read_json(tmp_path / "nothing.json", "summary")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ELOError, match="not valid JSON"):
        read_json(tmp_path / "bad.json")
    (tmp_path / "ok.json").write_text(json.dumps([1, 2]))
    assert read_json(tmp_path / "ok.json") == [1, 2]
