import csv
import json
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from elo_lightning.callbacks import ThroughputLogger

B, S = 2, 16  # micro-batch: 2 samples x 16 tokens = 32 tokens
MICRO_T = 0.25  # fake seconds per micro-batch


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class Tokens(Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, i):
        return {"input_ids": torch.full((S,), i % 7, dtype=torch.long)}


class TinyLM(L.LightningModule):
    def __init__(self, clock, flops_per_batch=None):
        super().__init__()
        self.emb = torch.nn.Embedding(8, 4)
        self.head = torch.nn.Linear(4, 8)
        self.clock = clock
        self.flops_per_batch = flops_per_batch

    def training_step(self, batch, batch_idx):
        self.clock.t += MICRO_T  # each micro-batch "takes" MICRO_T seconds
        x = batch["input_ids"]
        logits = self.head(self.emb(x))
        return torch.nn.functional.cross_entropy(logits.view(-1, 8), x.view(-1))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def run(tmp_path, accumulate, max_steps, warmup, flops_per_batch=None, peak=None):
    clock = FakeClock()
    cb = ThroughputLogger(output_dir=tmp_path, warmup_steps=warmup, clock=clock, peak_flops_per_device=peak)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(TinyLM(clock, flops_per_batch), DataLoader(Tokens(), batch_size=B))
    return cb


def test_exact_tokens_per_s_and_warmup_excluded(tmp_path):
    cb = run(tmp_path, accumulate=1, max_steps=5, warmup=2, flops_per_batch=1e9, peak=1e10)
    assert [r["step"] for r in cb.records] == [3, 4, 5]
    for r in cb.records:
        assert r["step_time_s"] == pytest.approx(MICRO_T)
        assert r["tokens"] == B * S
        assert r["tokens_per_s"] == pytest.approx(B * S / MICRO_T)
        assert r["samples_per_s"] == pytest.approx(B / MICRO_T)
        assert r["tflops_per_s"] == pytest.approx(1e9 / MICRO_T / 1e12)
        assert r["mfu"] == pytest.approx(1e9 / MICRO_T / 1e10)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["steps_measured"] == 3 and s["warmup_steps"] == 2 and s["world_size"] == 1
    assert s["tokens_per_s"] == pytest.approx(B * S / MICRO_T)
    assert s["step_time_s"] == pytest.approx(MICRO_T)
    assert s["mfu"] == pytest.approx(0.4)
    assert s["peak_mem_gb"] > 0 and s["device"] == "cpu"
    assert s["settings"] == {"strategy": "SingleDeviceStrategy", "precision": "32-true", "optimizer": "torch.SGD",
                             "activation_checkpointing": False}
    lines = (tmp_path / "throughput.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [3, 4, 5]
    rows = list(csv.DictReader(open(tmp_path / "throughput.csv")))
    assert len(rows) == 3 and float(rows[0]["tokens_per_s"]) == pytest.approx(128.0)


def test_gradient_accumulation_counts_all_micro_batches(tmp_path):
    cb = run(tmp_path, accumulate=2, max_steps=4, warmup=1, flops_per_batch=5.0)
    assert len(cb.records) == 3
    for r in cb.records:
        assert r["tokens"] == 2 * B * S  # two micro-batches per optimizer step
        assert r["step_time_s"] == pytest.approx(2 * MICRO_T)
        assert r["tokens_per_s"] == pytest.approx(2 * B * S / (2 * MICRO_T))
        assert r["flops"] == pytest.approx(2 * 5.0)
        assert r["mfu"] is None  # no peak known on CPU
    assert cb.summary["tokens_per_step"] == 2 * B * S


def test_no_flops_attribute_means_no_flop_metrics(tmp_path):
    cb = run(tmp_path, accumulate=1, max_steps=3, warmup=0)
    assert len(cb.records) == 3
    assert all(r["flops"] is None and r["tflops_per_s"] is None for r in cb.records)
    assert cb.summary["tflops_per_s"] is None and cb.summary["mfu"] is None


class RecordingLogger:
    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step):
        self.calls.append((step, metrics))


def test_world_size_two_fake_trainer(tmp_path):
    clock = FakeClock()
    cb = ThroughputLogger(output_dir=tmp_path, warmup_steps=1, clock=clock, peak_flops_per_device=1e12, window_size=2)
    logger = RecordingLogger()
    trainer = SimpleNamespace(
        global_step=0,
        world_size=2,
        is_global_zero=True,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        loggers=[logger],
    )
    module = SimpleNamespace(flops_per_batch=2e11)
    batch = {"input_ids": torch.zeros(4, 8, dtype=torch.long)}  # 32 tokens per rank per micro-batch
    cb.on_train_start(trainer, module)
    step_times = [3.0, 0.5, 0.5, 1.0]  # first one is warm-up
    for i, dt in enumerate(step_times):
        cb.on_train_batch_start(trainer, module, batch, i)
        clock.t += dt
        trainer.global_step += 1
        cb.on_train_batch_end(trainer, module, None, batch, i)
    cb.on_train_end(trainer, module)
    assert len(cb.records) == 3
    r = cb.records[0]
    assert r["tokens"] == 64 and r["tokens_per_s"] == pytest.approx(128.0)
    assert r["tokens_per_s_per_device"] == pytest.approx(64.0)
    assert r["tflops_per_s"] == pytest.approx(2 * 2e11 / 0.5 / 1e12)
    assert r["mfu"] == pytest.approx(2e11 / 0.5 / 1e12)
    s = cb.summary
    assert s["world_size"] == 2 and s["steps_measured"] == 3
    assert s["tokens_per_s"] == pytest.approx(3 * 64 / 2.0)  # warm-up 3.0 s step excluded
    assert s["step_time_s"] == pytest.approx(2.0 / 3)
    assert s["mfu"] == pytest.approx(3 * 4e11 / 2.0 / (2 * 1e12))
    step, metrics = logger.calls[-1]
    assert step == 4
    assert metrics["throughput/tokens_per_s"] == pytest.approx(64.0)
    # Lightning's rolling window over the last 2 measured steps (0.5 s + 1.0 s)
    assert metrics["throughput/window/items_per_sec"] == pytest.approx(2 * 64 / 1.5)
    assert metrics["throughput/window/device/items_per_sec"] == pytest.approx(2 * 32 / 1.5)
    assert metrics["throughput/window/device/mfu"] == pytest.approx(2 * 2e11 / 1.5 / 1e12)
    assert "throughput/window/items_per_sec" not in logger.calls[0][1]  # window not full yet


def test_non_rank_zero_writes_nothing(tmp_path):
    clock = FakeClock()
    cb = ThroughputLogger(output_dir=tmp_path / "o", warmup_steps=0, clock=clock)
    trainer = SimpleNamespace(
        global_step=0, world_size=2, is_global_zero=False, strategy=SimpleNamespace(root_device="cpu"), loggers=[]
    )
    cb.on_train_start(trainer, None)
    batch = {"input_ids": torch.zeros(1, 4)}
    cb.on_train_batch_start(trainer, None, batch, 0)
    clock.t += 1
    trainer.global_step = 1
    cb.on_train_batch_end(trainer, None, None, batch, 0)
    cb.on_train_end(trainer, None)
    assert not (tmp_path / "o").exists()
    assert cb.summary["tokens_per_s"] == pytest.approx(8.0)
