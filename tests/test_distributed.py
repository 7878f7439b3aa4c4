"""Scale-out: FSDP2 (ModelParallelStrategy) and DDP on CPU/gloo with 2 processes, atomic sharded checkpoints,
resume (same and different world size), consolidation, and the configs for 8xH100.

The 2-process runs go through ``tests/dist_scripts/worker.py`` under ``torch.distributed.run`` (one launch per
strategy, every scenario inside it); the single-process references run here, in the test process.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "dist_scripts"))

from worker import make_module, stage_data  # noqa: E402

from elo_lightning.checkpoint import (  # noqa: E402
    MARKER,
    AtomicCheckpointIO,
    check_complete,
    consolidate,
    is_complete,
    latest_checkpoint,
)
from elo_lightning.errors import ELOError  # noqa: E402

pytestmark = pytest.mark.slow

STAGES = ["elo", "fft", "lora", "freeze", "sft"]
TRAIN = [f"train:{s}" for s in STAGES]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(assets: dict, strategy: str, scenarios: list, nproc: int = 2, **extra) -> dict:
    work = Path(assets["work"])
    spec = {**assets, "strategy": strategy, "scenarios": scenarios, "global_batch": 4, **extra}
    spec_file = work / f"spec-{strategy}-{nproc}.json"
    spec_file.write_text(json.dumps(spec))
    result = work / f"result-{strategy}-rank0.json"
    result.unlink(missing_ok=True)
    env = {**os.environ, "ELO_DUMP_AFTER": "400", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(REPO / "tests/dist_scripts/worker.py"),
           str(spec_file)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=450)
    if proc.returncode != 0 or not result.is_file():
        pytest.fail(f"{strategy} launch failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}")
    return json.loads(result.read_text())


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    from tiny_models import tiny_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from elo_lightning.surgery import detach, save_detached

    root = tmp_path_factory.mktemp("dist")
    tiny_model("llama").save_pretrained(root / "source")
    tiny_model("qwen2-tied").save_pretrained(root / "source_tied")
    small, manifest = detach(tiny_model("llama"), "1,-1")
    with torch.no_grad():
        for p in small.model.layers.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_detached(small, manifest, root / "detached")
    cfg = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_attention_heads=4,
                               num_key_value_heads=2, vocab_size=8192, max_position_embeddings=256,
                               num_hidden_layers=4, tie_word_embeddings=False)
    torch.manual_seed(1)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(root / "source8k")
    (root / "work").mkdir()
    return {"source": str(root / "source"), "source_tied": str(root / "source_tied"),
            "source_8k": str(root / "source8k"), "detached": str(root / "detached"), "work": str(root / "work")}


@pytest.fixture(scope="module")
def fsdp2(assets) -> dict:
    return _launch(assets, "fsdp2", [*TRAIN, "train:fft@source_tied", "attach", "resume",
                                     {"name": "resume8bit", "args": {"optimizer": "adamw8bit", "crash": False}},
                                     {"name": "train:fft#bf16",
                                      "args": {"sharding": {"param_dtype": "bfloat16", "reduce_dtype": "float32"}}},
                                     {"name": "train:fft#offload", "args": {"sharding": {"cpu_offload": True}}}])


@pytest.fixture(scope="module")
def ddp(assets) -> dict:
    return _launch(assets, "ddp", [*TRAIN, {"name": "resume", "args": {"stage": "fft", "crash": False}}])


@pytest.fixture(scope="module")
def reference(assets) -> dict:
    """Single process, the same global batch (4) and steps, no strategy."""
    out = {}
    for stage, source in [(s, "source") for s in STAGES] + [("fft", "source_tied")]:
        L.seed_everything(0, verbose=False)
        losses = []

        class Rec(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                losses.append(float(outputs["loss"]))  # noqa: B023 - used inside this iteration only

        t = L.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[Rec()])
        t.fit(make_module(stage, assets[source]), train_dataloaders=DataLoader(stage_data(stage), batch_size=4))
        out[stage if source == "source" else f"{stage}@{source}"] = losses
    return out


def _ok(result: dict) -> dict:
    assert "error" not in result, result.get("traceback", result.get("error"))
    return result


# -- losses match a single process; frozen parameters stay bit-identical -----------------------------------------

@pytest.mark.parametrize("stage", STAGES + ["fft@source_tied"])
def test_fsdp2_matches_single_process(fsdp2, reference, stage):
    r = _ok(fsdp2[f"train:{stage}"])
    assert r["sharded"], "the model was not sharded (no DTensor parameters)"
    assert r["losses"] == pytest.approx(reference[stage], rel=1e-4, abs=1e-5)
    assert r["frozen_equal"], "a frozen parameter changed under FSDP2"
    assert r["trainable_moved"], "a trainable parameter did not move (e.g. λ's first layer behind a frozen embedding)"
    if stage == "fft@source_tied":
        assert r["tied"], "the tied LM head lost its tie through sharding"


def test_fsdp2_bf16_compute_keeps_fp32_master_weights_and_cpu_offload_trains(fsdp2, reference):
    """The 8xH100 configs' policy (bf16 parameters in compute, fp32 reduction) and CPUOffloadPolicy, on gloo."""
    bf16 = _ok(fsdp2["train:fft#bf16"])
    assert bf16["param_dtypes"] == ["torch.float32"], "sharded (master) parameters must stay fp32"
    assert bf16["losses"] == pytest.approx(reference["fft"], rel=1e-2)
    assert bf16["losses"] != pytest.approx(reference["fft"], rel=1e-7, abs=0), "bf16 compute had no effect"
    assert bf16["trainable_moved"]
    offload = _ok(fsdp2["train:fft#offload"])
    assert offload["losses"] == pytest.approx(reference["fft"], rel=1e-4, abs=1e-5)
    assert offload["param_devices"] == ["cpu"] and offload["trainable_moved"]


@pytest.mark.parametrize("stage", STAGES)
def test_ddp_matches_single_process(ddp, reference, stage):
    r = _ok(ddp[f"train:{stage}"])
    assert not r["sharded"]
    assert r["losses"] == pytest.approx(reference[stage], rel=1e-4, abs=1e-5)
    assert r["frozen_equal"] and r["trainable_moved"]


def test_first_steps_change_the_loss(reference):
    """The comparison above can fail: different stages give different trajectories."""
    assert reference["elo"] != reference["fft"] and reference["fft"][0] != reference["fft"][2]


def test_attach_into_sharded_model_equals_unsharded_attach(fsdp2):
    r = _ok(fsdp2["attach"])
    assert r["equal_to_unsharded_attach"] and r["differs_from_source"]


# -- checkpoints: crash mid-save, resume, consolidation, other world size ----------------------------------------

def _check_resume(r: dict) -> None:
    assert r["losses_b"][:2] == pytest.approx(r["losses_a"][:2], abs=1e-6)
    assert r["resumed_step"] == 4
    assert r["batches_c"] == r["batches_a"][2:4], "the data stream did not resume where it stopped"
    assert r["losses_c"] == pytest.approx(r["losses_a"][2:4], abs=1e-6), "next-step loss differs after resume"


def test_fsdp2_crash_mid_save_keeps_previous_checkpoint_and_resume_is_exact(fsdp2):
    r = _ok(fsdp2["resume"])
    assert r["crashed"], "the injected crash did not happen"
    assert "step4.ckpt" not in r["entries"] and ".step4.ckpt.partial" in r["entries"]
    assert r["latest"] == "step2.ckpt" and not r["step4_complete"]
    _check_resume(r)


def test_ddp_resume_is_exact(ddp):
    _check_resume(_ok(ddp["resume"]))


def _load_hf_state(path) -> dict:
    from safetensors.torch import load_file

    state = {}
    for f in glob.glob(os.path.join(path, "*.safetensors")):
        state.update(load_file(f))
    return state


def test_consolidate_reproduces_the_sharded_weights_exactly(fsdp2, assets, tmp_path):
    r = _ok(fsdp2["resume"])
    ckpt = Path(r["checkpoint"]).parent / "step4.ckpt"
    assert is_complete(ckpt)
    out = consolidate(ckpt, None, tmp_path / "hf")
    expected = torch.load(Path(assets["work"]) / "final-fsdp2-elo-adamw.pt")
    got = _load_hf_state(out)
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert (out / "elo_manifest.json").is_file()  # the stage's own export format: an attachable ELO checkpoint


def test_resume_on_another_world_size(fsdp2, assets, tmp_path):
    """World 2 -> 1: DCP reshards the weights; the BilingualDataModule refuses with a clear ELOError."""
    r = _ok(fsdp2["resume"])
    step2 = str(Path(r["checkpoint"]).parent / "step2.ckpt")
    w1 = _launch(assets, "fsdp2", ["world1"], nproc=1, checkpoint=step2)["world1"]
    _ok(w1)
    assert w1["global_step"] == 3 and all(torch.isfinite(torch.tensor(w1["losses"])))
    hf = consolidate(step2, None, tmp_path / "hf2")
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(_load_hf_state(hf).items()):
        h.update(k.encode())
        h.update(v.float().numpy().tobytes())
    assert w1["weights_hash_at_start"] == h.hexdigest()[:16], "world-1 run did not start from the checkpoint"
    assert w1["datamodule_error"] and "number of data streams" in w1["datamodule_error"]
    assert "2 = 2 x 1" in w1["datamodule_error"] and "1 = 1 x 1" in w1["datamodule_error"]


def test_8bit_adamw_under_fsdp2(fsdp2):
    """bitsandbytes AdamW8bit cannot step DTensor shards: build_optimizer falls back to torch AdamW and says so;
    training, checkpoint and resume then work as with AdamW."""
    r = _ok(fsdp2["resume8bit"])
    assert r["optimizer_class"] == "torch.optim.adamw.AdamW"
    assert any("8-bit AdamW" in w and "FSDP2" in w for w in r["fallback_warnings"]), r["fallback_warnings"]
    _check_resume(r)


def test_incomplete_sharded_checkpoint_is_refused_and_skipped(tmp_path):
    good, bad = tmp_path / "step2.ckpt", tmp_path / "step4.ckpt"
    for d in (good, bad):
        d.mkdir()
        torch.save({"global_step": 0}, d / "meta.pt")
    (good / MARKER).write_text(json.dumps({"global_step": 2}))
    with pytest.raises(ELOError, match="incomplete"):
        check_complete(bad)
    assert latest_checkpoint(tmp_path) == good


def test_atomic_checkpoint_io_survives_a_crash_mid_write(tmp_path, monkeypatch):
    import elo_lightning.checkpoint as ck

    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 2, "w": torch.ones(3)}, path)

    def crashing(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise RuntimeError("injected crash")

    monkeypatch.setattr(ck.torch, "save", crashing)
    with pytest.raises(RuntimeError, match="injected"):
        io.save_checkpoint({"global_step": 4, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path)["global_step"] == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# -- data: 2 nodes x 2 ranks never share a sample ------------------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
def test_two_nodes_two_ranks_never_share_a_sample(monkeypatch, workers):
    import elo_lightning.data.bilingual as bl
    from elo_lightning.data import BilingualDataModule, LanguageSource

    sample = REPO / "data" / "sample" / "pretrain"
    langs = [LanguageSource(n, [str(sample / n / "train-*.jsonl")], weight=w) for n, w in (("en", 1.0), ("ko", 9.0))]
    nodes, per_node, world = 2, 2, 4
    seen: dict[tuple, int] = {}
    for node in range(nodes):
        for local in range(per_node):
            rank = node * per_node + local  # global rank = node_rank x devices + local_rank (Lightning, torchrun)
            monkeypatch.setattr(bl, "_dist_info", lambda r=rank: (r, world))
            ds = BilingualDataModule(str(REPO / "configs/tokenizer"), langs, seq_len=32, num_workers=workers)\
                .train_dataset()
            for worker in range(workers):
                monkeypatch.setattr(bl, "_worker_info", lambda w=worker: (w, workers))
                it = iter(ds)
                for _ in range(40):
                    s = next(it)
                    assert s["stream_id"] == rank * workers + worker
                    key = tuple(s["input_ids"].tolist())
                    assert seen.setdefault(key, rank) == rank, f"rank {rank} and rank {seen[key]} share a sample"
    assert len(seen) >= 40 * world * workers - 2


# -- configs -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", sorted(glob.glob(str(REPO / "configs/8xh100/*.yaml"))), ids=os.path.basename)
def test_config_parses(config, capsys):
    from elo_lightning.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "meta-llama/Llama-3.1" in printed and "devices: 8" in printed


def test_all_configs_exist():
    names = {Path(p).name for p in glob.glob(str(REPO / "configs/8xh100/*.yaml"))}
    assert {"elo.yaml", "elo-fsdp2.yaml", "align.yaml", "fft.yaml", "lora.yaml", "align-70b.yaml"} <= names
