"""The linear-CE memory benchmark: one point in this process (tiny shape), and its table."""

from __future__ import annotations

import pytest

from elo_lightning.bench.memory import memory_point, table


def test_points_compare_the_losses_and_the_table_has_their_ratio():
    points = [memory_point("configs/models/tiny-llama.json", 16, kind, steps=1, vocab_size=1024)
              for kind in ("off", "chunked")]
    off, chunked = points
    assert off["impl"] == "off" and chunked["impl"] == "chunked" and chunked["vocab_size"] == 1024
    assert chunked["losses"] == pytest.approx(off["losses"], rel=1e-5)
    assert all(p["peak_rss_gb"] >= p["rss_after_build_gb"] > 0 for p in points)
    md = table({"points": points})
    assert md.splitlines()[0].startswith("| seq |") and "peak chunked/off" in md and md.count("\n| 16 |") == 1
