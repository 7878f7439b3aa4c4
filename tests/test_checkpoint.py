"""Single-file checkpoints are complete or absent; the newest complete one is found."""

import os
import subprocess
import sys

import pytest
import torch

from elo_lightning import io
from elo_lightning.checkpoint import (
    AtomicCheckpointIO,
    check_complete,
    clean_checkpoint_leftovers,
    is_complete,
    latest_checkpoint,
)
from elo_lightning.errors import ELOError


def test_atomic_checkpoint_io_and_latest(tmp_path):
    io = AtomicCheckpointIO()
    for step in (3, 10, 7):
        io.save_checkpoint({"global_step": step}, tmp_path / f"step{step}.ckpt")
    (tmp_path / ".step99.ckpt.partial").write_bytes(b"half")  # an interrupted save is never a candidate
    (tmp_path / "step50").mkdir()  # a DCP directory without its completion marker
    (tmp_path / "step50" / "__0_0.distcp").write_bytes(b"")
    assert latest_checkpoint(tmp_path) == tmp_path / "step10.ckpt"
    assert torch.load(tmp_path / "step10.ckpt", weights_only=False)["global_step"] == 10
    assert is_complete(tmp_path / "step3.ckpt") and not is_complete(tmp_path / "step50")
    with pytest.raises(ELOError, match="incomplete"):
        check_complete(tmp_path / "step50")
    with pytest.raises(ELOError, match="not found"):
        check_complete(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()  # nothing of a checkpoint in it: not called "interrupted"
    with pytest.raises(ELOError, match="is empty: not a training checkpoint"):
        check_complete(tmp_path / "empty")
    (tmp_path / "empty").rmdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".step99.ckpt.partial", "step10.ckpt", "step3.ckpt",
                                                          "step50", "step7.ckpt"]


def test_leftovers_of_killed_saves_are_removed_and_nothing_else(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = io._HOST
    stale = [tmp_path / f".last.ckpt.partial-{host}-{dead.pid}-ab12.partial",  # AtomicCheckpointIO, killed
             tmp_path / ".epoch=0-step=4.ckpt.x8d_k2.partial"]                  # the same, earlier naming
    stale_dirs = [tmp_path / ".step=4.ckpt.partial", tmp_path / ".step=2.ckpt.old"]  # DCP save / swap, killed
    kept = [tmp_path / f".last.ckpt.partial-{host}-{os.getppid()}-cd34.partial",  # a live save
            tmp_path / "last.ckpt", tmp_path / "notes.partial", tmp_path / ".hidden-notes.txt"]
    for p in stale + kept:
        p.write_text("x")
    for d in stale_dirs:
        d.mkdir()
        (d / "__0_0.distcp").write_text("x")
    assert sorted(clean_checkpoint_leftovers(tmp_path)) == sorted(stale + stale_dirs)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale + stale_dirs)
    assert clean_checkpoint_leftovers(tmp_path / "missing") == [] and clean_checkpoint_leftovers(None) == []
