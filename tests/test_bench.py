"""`elo bench` end to end on a tiny config: a valid results.json and a figure (no assertions on speed)."""

import json

import pytest
from PIL import Image

from elo_lightning.bench import bench, from_runs


def test_bench_writes_results_and_figure(tmp_path):
    report = bench(arch="configs/models/tiny-llama.json", output=str(tmp_path), methods="elo,fft", seq_len=32,
                   batch_size=2, steps=2, warmup=1, accelerator="cpu", best_batch=True, max_batch_size=4)
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
    for res in saved["methods"].values():  # searched 2 -> 4, the best of the two kept
        trials = res["best_batch"]["trials"]
        assert [t["batch_size"] for t in trials] == [2, 4] and all(t["fits"] for t in trials)
        assert res["best_batch"]["tokens_per_s"] == max(t["tokens_per_s"] for t in trials)
    assert (tmp_path / "best-batch" / "speedup.png").exists()
    assert "best batch size per method" in (tmp_path / "best-batch" / "speedup.md").read_text()

    # the same numbers from the runs' ThroughputLogger summaries, the way 8-GPU `elo fit` runs are collected
    runs = from_runs({m: str(tmp_path / m) for m in ("elo", "fft")}, arch="configs/models/tiny-llama.json",
                     output=str(tmp_path / "from-runs"))
    assert runs["seq_len"] == 32 and runs["world_size"] == 1
    assert runs["analytic_flops_per_token"] == saved["analytic_flops_per_token"]
    for method, res in runs["methods"].items():
        for key in ("tokens_per_s", "step_time_s", "trainable_params", "computed_params", "batch_size"):
            assert res[key] == saved["methods"][method][key], (method, key)
        assert abs(res["flops_per_token"] - saved["methods"][method]["flops_per_token"]) < 1e-6 * res["flops_per_token"]
    assert (tmp_path / "from-runs" / "speedup.png").exists()


def test_from_runs_refuses_missing_and_incomparable_runs(tmp_path):
    from elo_lightning.errors import ELOError

    def summary(d, world_size, seq_len):
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"world_size": world_size, "tokens_per_s": 1000.0 * seq_len,
                                                     "samples_per_s": 1000.0}))
        return str(d)

    arch = "configs/models/tiny-llama.json"
    with pytest.raises(ELOError, match="no .*summary.json"):
        from_runs({"elo": str(tmp_path / "nowhere")}, arch=arch, output=str(tmp_path / "out"))
    elo = summary(tmp_path / "elo", 8, 8192)
    with pytest.raises(ELOError, match="world size, seq_len"):
        from_runs({"elo": elo, "fft": summary(tmp_path / "fft", 16, 8192)}, arch=arch, output=str(tmp_path / "out"))
    with pytest.raises(ELOError, match="world size, seq_len"):
        from_runs({"elo": elo, "lora": summary(tmp_path / "lora", 8, 4096)}, arch=arch, output=str(tmp_path / "out"))
    with pytest.raises(ELOError, match="needs 'elo'"):
        from_runs({"fft": elo}, arch=arch, output=str(tmp_path / "out"))


def test_batch_search_stops_at_memory_budget_and_oom(tmp_path, monkeypatch):
    import elo_lightning.bench as bench_mod

    def fake_worker(method, out, batch_size, args):  # memory grows with the batch; out of memory from 32
        if batch_size >= 32:
            return None
        return {"batch_size": batch_size, "tokens_per_s": 100.0 * batch_size ** 0.5, "peak_mem_gb": 0.5 * batch_size}

    monkeypatch.setattr(bench_mod, "_run_worker", fake_worker)
    first = fake_worker("elo", tmp_path, 2, {})
    budget = bench_mod._search_batch("elo", tmp_path, first, {}, max_batch_size=64, budget_gb=4.0)
    assert budget["batch_size"] == 8 and budget["peak_mem_gb"] == 4.0
    assert [(t["batch_size"], t["fits"]) for t in budget["trials"]] == [(2, True), (4, True), (8, True), (16, False)]
    oom = bench_mod._search_batch("elo", tmp_path, first, {}, max_batch_size=64, budget_gb=None)
    assert oom["batch_size"] == 16 and [t["fits"] for t in oom["trials"]] == [True, True, True, True, False]
    capped = bench_mod._search_batch("elo", tmp_path, first, {}, max_batch_size=4, budget_gb=None)
    assert [t["batch_size"] for t in capped["trials"]] == [2, 4]
    nothing = bench_mod._search_batch("elo", tmp_path, first, {}, max_batch_size=64, budget_gb=0.1)
    assert nothing["batch_size"] is None and len(nothing["trials"]) == 1
