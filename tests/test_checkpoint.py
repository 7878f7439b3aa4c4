"""Checkpoint folders: what killed saves left behind is removed when the next run starts, and only that."""

import os
import subprocess
import sys

from elo_lightning import io
from elo_lightning.checkpoint import clean_checkpoint_leftovers


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
