"""`elo reproduce` end to end on a tiny random Llama and the shipped sample stream (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elo_lightning.errors import ELOError
from elo_lightning.reproduce import load_settings, plan_arms, reproduce, resolve_layers

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "sample" / "pretrain"


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    from elo_lightning.cli import init_cmd

    arch = tmp_path_factory.mktemp("arch") / "tiny.json"
    arch.write_text(json.dumps({"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                "num_hidden_layers": 8, "num_attention_heads": 2, "num_key_value_heads": 1,
                                "head_dim": 16, "vocab_size": 8192, "max_position_embeddings": 256,
                                "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}))
    out = tmp_path_factory.mktemp("model") / "tiny"
    init_cmd(str(arch), str(out), tokenizer=str(ROOT / "configs" / "tokenizer"), seed=0)
    return out


@pytest.fixture(scope="module")
def tiny_run(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce") / "run"
    results = reproduce(model=str(tiny_llama), budget="tiny", output=str(out), data=str(DATA))
    return out, results


def test_resolve_layers_scales_the_paper_ablation_to_the_depth():
    # the paper's 32-layer values (Table 3)
    assert resolve_layers("1,n/2,n", 32) == [1, 16, 32]
    assert resolve_layers("n/4,3n/4", 32) == [8, 24]
    assert resolve_layers("n/2,n/2+1", 32) == [16, 17]
    assert resolve_layers("1,n", 30) == [1, 30]
    assert resolve_layers("n/4,3n/4", 30) == [8, 23]  # 7.5 and 22.5 round half up
    for bad in ("0,n", "1,n+1", "1,1", "1,x", "1,__import__('os')"):
        with pytest.raises(ELOError):
            resolve_layers(bad, 30)


def test_plan_has_every_arm_of_the_issue():
    names = [a["name"] for a in plan_arms(load_settings("cpu"), 30)]
    assert names[:4] == ["elo_1-30", "align_only", "fft_time", "lora_time"]
    assert {"elo_1-15-30", "elo_1-15", "elo_8-23", "elo_15-16"} <= set(names)
    gpu = [a["name"] for a in plan_arms(load_settings("gpu"), 30)]
    assert "fft_tokens" in gpu


def test_every_arm_has_a_row_and_a_result(tiny_run):
    out, results = tiny_run
    arms = results["arms"]
    assert set(arms) == {"elo_1-8", "align_only", "fft_time", "lora_time", "elo_1-4-8", "elo_1-4", "elo_2-6", "elo_4-5",
                         "fft_tokens"}
    for arm in arms.values():
        for lang in ("ko", "en"):
            assert arm["eval"][lang]["bits_per_byte"] > 0
        for stage in arm["stages"].values():
            assert stage["steps"] > 0 and stage["tokens"] == stage["steps"] * 64
            assert stage["train_cpu_s"] > 0 and stage["flops"] > 0
    main = arms["elo_1-8"]["stages"]
    assert main["elo"]["steps"] == 4 and main["align"]["steps"] == 1
    assert arms["fft_tokens"]["stages"]["fft"]["steps"] == 5
    table = (out / "table.md").read_text()
    for row in ("base", "λ=(1, 8) ELO + align", "λ=(1, 8) ELO, no align", "λ=(4, 5) ELO + align",
                "FFT (same time)", "FFT (same tokens)", "LoRA (same time)", "alignment only (no ELO; control)"):
        assert row in table
    assert (out / "figure.png").stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["versions"]["torch"] and saved["settings"]["elo_tokens"] == 256
    assert "alignment is needed" in (out / "findings.md").read_text()
    assert "the ELO phase adds to alignment" in (out / "findings.md").read_text()


def test_alignment_only_control_is_the_main_arms_alignment_from_the_base(tiny_run):
    """Same steps, same text (the stream after ELO's), but from the base model: what ELO adds is the difference."""
    _, results = tiny_run
    align = results["arms"]["elo_1-8"]["stages"]["align"]
    control = results["arms"]["align_only"]["stages"]["fft"]
    assert control["steps"] == align["steps"] and control["budget_s"] is None
    assert control["stream_start"] == align["stream_start"] and control["stream_end"] == align["stream_end"]
    assert control["eval"] != align["eval"]  # a different starting model


def test_equal_time_arm_is_budgeted_by_the_elo_arm(tiny_run):
    _, results = tiny_run
    arms = results["arms"]
    budget = sum(st["train_cpu_s"] for st in arms["elo_1-8"]["stages"].values())
    fft = arms["fft_time"]["stages"]["fft"]
    assert fft["budget_s"] == pytest.approx(budget)
    assert fft["planned_steps"] >= 2  # re-planned from its own step time after calibration


def test_alignment_reads_the_text_right_after_elo(tiny_run):
    """The alignment stage starts where ELO's stream stopped: its documents are disjoint from ELO's and the two
    together are exactly the first steps of one uninterrupted stream."""
    import itertools

    from elo_lightning.reproduce import Context, load_settings

    out, results = tiny_run
    elo = results["arms"]["elo_1-8"]["stages"]["elo"]
    align = results["arms"]["elo_1-8"]["stages"]["align"]
    assert align["stream_start"] == elo["stream_end"]["streams"]
    settings = load_settings("tiny")
    settings.data = str(DATA)
    ctx = Context(settings=settings, model=results["model"], out=out, n_layers=8, tokens_per_step=64)

    def batches(dm, n):
        return [b["input_ids"] for b in itertools.islice(iter(dm.train_dataloader()), n)]

    whole = batches(ctx.datamodule(), elo["steps"] + align["steps"])
    elo_part = whole[: elo["steps"]]
    align_part = batches(ctx.datamodule(elo["stream_end"]), align["steps"])
    for a, b in zip(whole[elo["steps"]:], align_part):
        assert a.equal(b)
    start = ctx.datamodule(elo["stream_end"])
    ko_elo = elo["stream_end"]["streams"]["0"]["cursors"]["ko"]["doc"]
    assert ko_elo > 0
    assert not any(x.equal(y) for x in elo_part for y in align_part)
    del start


def test_second_invocation_recomputes_nothing(tiny_llama, tiny_run, monkeypatch):
    out, first = tiny_run
    import elo_lightning.reproduce as rep

    def boom(*args, **kwargs):
        raise AssertionError("a finished stage was recomputed")

    monkeypatch.setattr(rep, "run_training", boom)
    monkeypatch.setattr(rep, "evaluate", boom)
    again = reproduce(model=str(tiny_llama), budget="tiny", output=str(out), data=str(DATA))
    assert again["arms"] == first["arms"]


class SimulatedCrash(Exception):
    pass


def test_interrupted_stage_resumes_from_its_checkpoint(tiny_llama, tmp_path, monkeypatch):
    """Kill the first stage after its checkpoint at step 2; the rerun continues from step 2 with the clock kept."""
    import elo_lightning.reproduce as rep

    real = rep.StageClock.on_train_batch_end

    def crash(self, trainer, *args):
        real(self, trainer, *args)
        if trainer.global_step == 3:
            raise SimulatedCrash

    monkeypatch.setattr(rep.StageClock, "on_train_batch_end", crash)
    out = tmp_path / "run"
    with pytest.raises(SimulatedCrash):
        reproduce(model=str(tiny_llama), budget="tiny", output=str(out), data=str(DATA), arms=["elo_1-8"])
    assert (out / "elo_1-8" / "elo" / "ckpt" / "last.ckpt").is_file()
    assert not (out / "elo_1-8" / "elo" / "result.json").exists()
    monkeypatch.setattr(rep.StageClock, "on_train_batch_end", real)
    res = reproduce(model=str(tiny_llama), budget="tiny", output=str(out), data=str(DATA), arms=["elo_1-8"])
    elo = res["arms"]["elo_1-8"]["stages"]["elo"]
    assert elo["resumed"] and elo["steps"] == 4
    assert len(elo["train_loss"]) >= 4  # the losses logged before the crash are kept
    assert not (out / "elo_1-8" / "elo" / "ckpt").exists()


def test_bad_input_is_one_line_error(tiny_llama, tmp_path):
    with pytest.raises(ELOError, match="unknown budget"):
        reproduce(model=str(tiny_llama), budget="nope", output=str(tmp_path / "a"))
    with pytest.raises(ELOError, match="model directory not found"):
        reproduce(model=str(tmp_path / "missing"), budget="tiny", output=str(tmp_path / "b"), data=str(DATA))
    with pytest.raises(ELOError, match="unknown arms"):
        reproduce(model=str(tiny_llama), budget="tiny", output=str(tmp_path / "c"), data=str(DATA), arms=["x"])
    with pytest.raises(ELOError, match="no training shards"):
        reproduce(model=str(tiny_llama), budget="tiny", output=str(tmp_path / "d"), data=str(tmp_path))


def test_a_foreign_output_folder_is_refused_and_kept(tiny_llama, tmp_path):
    """Not a previous run (or inside an input): one-line error before any work, the folder untouched."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.json").write_text("my own results")
    with pytest.raises(ELOError, match="not empty and not a previous reproduce output"):
        reproduce(model=str(tiny_llama), budget="tiny", output=str(out), data=str(DATA))
    assert [p.name for p in out.iterdir()] == ["results.json"]
    assert (out / "results.json").read_text() == "my own results"
    with pytest.raises(ELOError, match="inside the --model"):
        reproduce(model=str(tiny_llama), budget="tiny", output=str(Path(tiny_llama) / "run"), data=str(DATA))
