"""`make bench-gpu` dry run: the one-GPU bench's exact command path (its config, every method, per-method
checkpointing, ELO's batch search, MFU against the given peak) on CPU with a tiny shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/bench/gpu-llama-3.1-8b.yaml"


def test_gpu_bench_config_is_the_paper_setting():
    cfg = yaml.safe_load(CONFIG.read_text())
    assert cfg["arch"] == "configs/models/llama-3.1-8b.json" and cfg["seq_len"] == 8192
    assert cfg["precision"] == "bf16-true" and cfg["accelerator"] == "gpu"
    assert set(cfg["methods"].split(",")) == {"elo", "lora", "fft", "freeze"}
    assert "fft" in cfg["checkpointing_methods"] and "elo" not in cfg["checkpointing_methods"]
    assert cfg["peak_flops_per_device"] == pytest.approx(989.4e12)
    makefile = (REPO / "Makefile").read_text()
    assert "bench-gpu:" in makefile and "configs/bench/gpu-llama-3.1-8b.yaml" in makefile


@pytest.mark.slow
def test_gpu_bench_dry_run_on_cpu(tmp_path, monkeypatch):
    from elo_lightning.cli import main

    monkeypatch.chdir(REPO)
    out = tmp_path / "bench-gpu"
    main(["bench", "--config", str(CONFIG), "--arch", "configs/models/tiny-llama.json", "--seq_len", "32",
          "--accelerator", "cpu", "--steps", "1", "--warmup", "1", "--max_batch_size", "2", "--output", str(out)])
    res = json.loads((out / "results.json").read_text())
    assert res["precision"] == "bf16-true" and res["seq_len"] == 32
    methods = res["methods"]
    assert methods.keys() == {"elo", "lora", "fft", "freeze"}
    for name, m in methods.items():
        assert m["tokens_per_s"] > 0 and m["mfu"] is not None and m["mfu"] > 0, name
        assert m["gradient_checkpointing"] is (name != "elo"), name
        assert m["linear_ce"] == "chunked"
    assert [t["batch_size"] for t in methods["elo"]["best_batch"]["trials"]] == [1, 2]
    assert all(methods[m]["best_batch"] is None for m in ("lora", "fft", "freeze"))
    assert (out / "speedup.png").is_file() and (out / "best-batch" / "speedup.png").is_file()
    assert "MFU" in (out / "speedup.md").read_text()
