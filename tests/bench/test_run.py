"""`elo bench` end to end on a tiny config: a valid results.json and a figure (no assertions on speed);
`elo bench-from-runs` reads the same numbers, and seq_len, λ and the LoRA rank from the runs' saved configs."""

import json

import pytest
import yaml
from PIL import Image

from elo_lightning.bench import BenchArgs, bench, from_runs
from elo_lightning.bench import run as bench_run
from elo_lightning.errors import ELOError

ARCH = "configs/models/tiny-llama.json"


def test_bench_writes_results_and_figure(tmp_path):
    report = bench(arch=ARCH, output=str(tmp_path), methods="elo,fft", layers="1,3", seq_len=32,
                   batch_size=2, steps=2, warmup=1, accelerator="cpu", best_batch=True, max_batch_size=4)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["methods"].keys() == {"elo", "fft"} == report["methods"].keys()
    for res in saved["methods"].values():  # how each method was timed: the same for all in `elo bench`
        assert res["strategy"] == "SingleDeviceStrategy" and res["precision"] == "32-true"
        assert res["optimizer"] and res["activation_checkpointing"] is False
    assert saved["settings_differ"] == {}
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
    runs = from_runs({m: str(tmp_path / m) for m in ("elo", "fft")}, arch=ARCH, output=str(tmp_path / "from-runs"))
    assert runs["seq_len"] == 32 and runs["world_size"] == 1 and runs["layers"] == "1,3"  # from the runs' configs
    assert runs["analytic_flops_per_token"] == saved["analytic_flops_per_token"]
    for method, res in runs["methods"].items():
        for key in ("tokens_per_s", "step_time_s", "trainable_params", "computed_params", "batch_size"):
            assert res[key] == saved["methods"][method][key], (method, key)
        assert abs(res["flops_per_token"] - saved["methods"][method]["flops_per_token"]) < 1e-6 * res["flops_per_token"]
    assert (tmp_path / "from-runs" / "speedup.png").exists()


def _run(d, world_size, seq_len, settings=None, **model_args):
    """A run directory as `elo fit` leaves it: the ThroughputLogger's summary.json and LightningCLI's config.yaml."""
    d.mkdir()
    tokens = 4 * seq_len * world_size
    (d / "summary.json").write_text(json.dumps({"world_size": world_size, "tokens_per_s": 1000.0 * seq_len,
                                                "step_time_s": 1.0, "tokens_per_step": tokens,
                                                "flops_per_step": 6e9 * tokens, "dtype": "bfloat16",
                                                "settings": settings or {}}))
    (d / "config.yaml").write_text(yaml.safe_dump({"model": {"init_args": model_args},
                                                   "data": {"init_args": {"seq_len": seq_len}}}))
    return str(d)


def test_from_runs_reads_seq_len_layers_and_lora_rank_from_the_run_configs(tmp_path):
    runs = {"elo": _run(tmp_path / "elo", 8, 64, layers="1,2,-1"), "lora": _run(tmp_path / "lora", 8, 64, r=3),
            "fft": _run(tmp_path / "fft", 8, 64)}
    report = from_runs(runs, arch=ARCH, output=str(tmp_path / "out"))
    assert report["seq_len"] == 64 and report["layers"] == "1,2,-1" and report["world_size"] == 8
    assert report["methods"]["elo"]["batch_size"] == 4
    from elo_lightning.flops import analytic_train_flops_per_token

    assert report["analytic_flops_per_token"]["elo"] == analytic_train_flops_per_token(ARCH, "elo", [0, 1, 7], 64)
    assert report["analytic_flops_per_token"]["lora"] == analytic_train_flops_per_token(ARCH, "lora", None, 64,
                                                                                        lora_rank=3)


def test_from_runs_says_in_one_line_when_methods_were_timed_differently(tmp_path, capsys):
    ddp = {"strategy": "DDPStrategy", "activation_checkpointing": False, "optimizer": "bitsandbytes.AdamW8bit",
           "precision": "bf16-mixed"}
    fsdp = {"strategy": "AtomicModelParallelStrategy", "activation_checkpointing": True, "optimizer": "torch.AdamW",
            "precision": "32-true"}
    runs = {"elo": _run(tmp_path / "elo", 8, 64, ddp, layers="1,-1"), "fft": _run(tmp_path / "fft", 8, 64, fsdp)}
    report = from_runs(runs, arch=ARCH, output=str(tmp_path / "out"))
    assert report["methods"]["fft"]["optimizer"] == "torch.AdamW"
    assert set(report["settings_differ"]) == {"strategy", "activation_checkpointing", "optimizer", "precision"}
    said = [line for line in capsys.readouterr().out.splitlines() if "different settings" in line]
    assert len(said) == 1 and "optimizer elo=bitsandbytes.AdamW8bit, fft=torch.AdamW" in said[0]
    assert "Timed under different settings" in (tmp_path / "out" / "speedup.md").read_text()
    same = {"elo": _run(tmp_path / "elo2", 8, 64, ddp, layers="1,-1"), "fft": _run(tmp_path / "fft2", 8, 64, ddp)}
    assert from_runs(same, arch=ARCH, output=str(tmp_path / "out2"))["settings_differ"] == {}
    assert "different settings" not in capsys.readouterr().out


def test_from_runs_refuses_missing_and_incomparable_runs(tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(ELOError, match="no .*summary.json"):
        from_runs({"elo": str(tmp_path / "nowhere")}, arch=ARCH, output=out)
    elo = _run(tmp_path / "elo", 8, 8192, layers="1,-1")
    with pytest.raises(ELOError, match="world size, seq_len"):
        from_runs({"elo": elo, "fft": _run(tmp_path / "fft", 16, 8192)}, arch=ARCH, output=out)
    with pytest.raises(ELOError, match="world size, seq_len"):
        from_runs({"elo": elo, "lora": _run(tmp_path / "lora", 8, 4096)}, arch=ARCH, output=out)
    with pytest.raises(ELOError, match="layers"):
        from_runs({"elo": elo, "freeze": _run(tmp_path / "freeze", 8, 8192, layers="1,2")}, arch=ARCH, output=out)
    with pytest.raises(ELOError, match="needs 'elo'"):
        from_runs({"fft": elo}, arch=ARCH, output=out)
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "summary.json").write_text((tmp_path / "elo" / "summary.json").read_text())
    with pytest.raises(ELOError, match="config.yaml"):
        from_runs({"elo": str(tmp_path / "bare")}, arch=ARCH, output=out)


def test_batch_search_stops_at_memory_budget_and_oom(tmp_path, monkeypatch):
    bench_mod = bench_run
    args = BenchArgs(arch=ARCH)

    def fake_worker(method, out, batch_size, args):  # memory grows with the batch; out of memory from 32
        if batch_size >= 32:
            return None
        return {"batch_size": batch_size, "tokens_per_s": 100.0 * batch_size ** 0.5, "peak_mem_gb": 0.5 * batch_size}

    monkeypatch.setattr(bench_mod, "_run_worker", fake_worker)
    first = fake_worker("elo", tmp_path, 2, args)
    budget = bench_mod._search_batch("elo", tmp_path, first, args, max_batch_size=64, budget_gb=4.0)
    assert budget["batch_size"] == 8 and budget["peak_mem_gb"] == 4.0
    assert [(t["batch_size"], t["fits"]) for t in budget["trials"]] == [(2, True), (4, True), (8, True), (16, False)]
    oom = bench_mod._search_batch("elo", tmp_path, first, args, max_batch_size=64, budget_gb=None)
    assert oom["batch_size"] == 16 and [t["fits"] for t in oom["trials"]] == [True, True, True, True, False]
    capped = bench_mod._search_batch("elo", tmp_path, first, args, max_batch_size=4, budget_gb=None)
    assert [t["batch_size"] for t in capped["trials"]] == [2, 4]
    nothing = bench_mod._search_batch("elo", tmp_path, first, args, max_batch_size=64, budget_gb=0.1)
    assert nothing["batch_size"] is None and len(nothing["trials"]) == 1
