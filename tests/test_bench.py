"""`elo bench` end to end on a tiny config: a valid results.json and a figure (no assertions on speed)."""

import json

from PIL import Image

from elo_lightning.bench import bench


def test_bench_writes_results_and_figure(tmp_path):
    report = bench(arch="configs/models/tiny-llama.json", output=str(tmp_path), methods="elo,fft", seq_len=32,
                   batch_size=2, steps=2, warmup=1, accelerator="cpu")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["methods"].keys() == {"elo", "fft"} == report["methods"].keys()
    for method, res in saved["methods"].items():
        assert res["tokens_per_s"] > 0 and res["step_time_s"] > 0 and res["flops_per_token"] > 0, method
        assert res["trainable_params"] <= res["computed_params"]
    elo, fft = saved["methods"]["elo"], saved["methods"]["fft"]
    assert elo["computed_params"] < fft["computed_params"] and elo["flops_per_token"] < fft["flops_per_token"]
    analytic = saved["analytic_flops_per_token"]
    assert analytic["elo"] < analytic["freeze"] < analytic["fft"]
    assert Image.open(tmp_path / "speedup.png").size[0] > 100
    assert "ELO" in (tmp_path / "speedup.md").read_text()
