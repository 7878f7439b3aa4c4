"""Atomic writes and the one JSON reader."""

import json
import os
import stat
import subprocess
import sys

import pytest

from elo_lightning import io
from elo_lightning.errors import ELOError
from elo_lightning.io import (
    OUTPUT_MARKER,
    atomic_dir,
    check_output,
    clean_leftovers,
    read_json,
    write_json_atomic,
    write_output_json,
)


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


def _write(output, kind="detached", text="new", **kw):
    with atomic_dir(output, kind, **kw) as tmp:
        (tmp / "weights.bin").write_text(text)
    return output


def _tree(path):
    return {p.relative_to(path).as_posix(): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_output_has_marker_and_replaces_a_previous_output_of_its_kind(tmp_path):
    out = _write(tmp_path / "out", text="one")
    assert json.loads((out / OUTPUT_MARKER).read_text())["kind"] == "detached"
    _write(out, text="two")
    assert (out / "weights.bin").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or old folder left


@pytest.mark.parametrize("overwrite", [False, True])
def test_non_empty_foreign_directory_is_refused_unless_overwrite(tmp_path, overwrite):
    out = tmp_path / "models"
    (out / "other-model").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me")
    before = _tree(out)
    if overwrite:
        _write(out, overwrite=True)
        assert (out / "weights.bin").is_file() and not (out / "notes.txt").exists()
    else:
        with pytest.raises(ELOError, match="not empty and not a previous detached output"):
            _write(out)
        assert _tree(out) == before


def test_output_of_another_kind_is_refused(tmp_path):
    out = _write(tmp_path / "elo", kind="elo export")
    with pytest.raises(ELOError, match="holds a elo export output"):
        _write(out, kind="detached")
    assert json.loads((out / OUTPUT_MARKER).read_text())["kind"] == "elo export"


def test_empty_directory_is_fine(tmp_path):
    (tmp_path / "out").mkdir()
    assert (_write(tmp_path / "out") / "weights.bin").is_file()


@pytest.mark.parametrize("where", ["same", "parent", "child"])
def test_never_writes_into_or_over_an_input(tmp_path, where):
    model = tmp_path / "runs" / "model"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_text("source weights")
    out = {"same": model, "parent": model.parent, "child": model / "detached"}[where]
    with pytest.raises(ELOError, match=r"the --model .*\(an input\)"):
        _write(out, inputs={"--model": str(model), "--tokenizer": None}, overwrite=True)
    assert (model / "model.safetensors").read_text() == "source weights"
    assert not (model / "detached").exists()


def test_never_writes_over_a_log_or_checkpoint_folder(tmp_path):
    logs = tmp_path / "runs" / "elo" / "version_0"
    (logs / "checkpoints").mkdir(parents=True)
    (logs / "checkpoints" / "last.ckpt").write_text("ckpt")
    for out in (logs, logs.parent, logs / "checkpoints", logs / "export"):
        with pytest.raises(ELOError, match="log folder"):
            _write(out, protected={"log folder": logs}, overwrite=True)
    assert (logs / "checkpoints" / "last.ckpt").read_text() == "ckpt"


def test_symlink_file_and_device_are_refused(tmp_path):
    target = tmp_path / "real"
    _write(target)
    (tmp_path / "link").symlink_to(target)
    (tmp_path / "file").write_text("a file")
    for out, message in ((tmp_path / "link", "symbolic link"), (tmp_path / "file", "is a file"),
                         ("/dev/null", "not a regular file")):
        with pytest.raises(ELOError, match=message):
            _write(out, overwrite=True)
    assert (tmp_path / "link").is_symlink() and (tmp_path / "file").read_text() == "a file"
    with pytest.raises(ELOError, match="not a regular file"):
        write_output_json("/dev/null", {"a": 1}, "eval", overwrite=True)


def test_failed_write_keeps_the_old_output_whole(tmp_path):
    out = _write(tmp_path / "out", text="old")
    with pytest.raises(RuntimeError), atomic_dir(out, "detached") as tmp:
        (tmp / "weights.bin").write_text("half")
        raise RuntimeError("disk full")
    assert _tree(out) == {OUTPUT_MARKER: (out / OUTPUT_MARKER).read_text(), "weights.bin": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failed_swap_puts_the_old_output_back(tmp_path, monkeypatch):
    out = _write(tmp_path / "out", text="old")
    real = os.replace

    def replace(src, dst):
        if str(src).startswith(str(tmp_path / ".out.tmp-")):
            raise OSError("rename failed")
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        _write(out, text="new")
    assert (out / "weights.bin").read_text() == "old"


def test_leftovers_of_dead_writers_are_cleaned_at_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = io._HOST
    stale = [tmp_path / f".out.tmp-{host}-{dead.pid}-abc123", tmp_path / f".out.old-{host}-{dead.pid}-xyz",
             tmp_path / ".out.tmp-k2j4_x9z"]  # the last: a name from before the host/pid scheme
    alive = [tmp_path / f".out.tmp-{host}-{os.getppid()}-live01", tmp_path / f".out.tmp-otherhost-{dead.pid}-abc"]
    foreign = [tmp_path / ".other.tmp-x", tmp_path / "out.tmp-notours"]
    for p in stale + alive + foreign:
        p.mkdir()
    _write(tmp_path / "out")
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in alive + foreign)
    assert clean_leftovers(tmp_path / "out") == []


def test_ordinary_permissions(tmp_path, umask022):
    out = tmp_path / "out"
    with atomic_dir(out, "detached") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w.bin").write_text("x")
        write_json_atomic(tmp / "manifest.json", {"a": 1})
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert modes == {"sub": 0o755, "sub/w.bin": 0o644, "manifest.json": 0o644, OUTPUT_MARKER: 0o644}
    write_json_atomic(tmp_path / "f.json", {})
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o644


def test_json_output_file_replaces_only_its_own_kind(tmp_path):
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    with pytest.raises(ELOError, match="not a previous eval output"):
        write_output_json(notes, {"ppl": 1.0}, "eval")
    assert json.loads(notes.read_text()) == {"mine": True}
    out = write_output_json(tmp_path / "eval.json", {"ppl": 1.0}, "eval")
    write_output_json(out, {"ppl": 2.0}, "eval")
    assert json.loads(out.read_text())["ppl"] == 2.0
    with pytest.raises(ELOError, match="is a directory"):
        write_output_json(tmp_path, {"ppl": 1.0}, "eval", overwrite=True)


def test_check_output_is_cheap_and_has_no_side_effects(tmp_path):
    check_output(tmp_path / "a" / "b", "detached")
    assert not (tmp_path / "a").exists()
