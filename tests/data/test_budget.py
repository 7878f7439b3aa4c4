"""Budgets in bytes of text or tokens: parsing, the measured bytes per token, and max_steps set before the schedule."""

from __future__ import annotations

import json
import math

import pytest
import torch

from elo_lightning.data.budget import parse_budget, plan_budget
from elo_lightning.errors import ELOError
from tests.data.conftest import TOKENIZER


@pytest.mark.parametrize("text,amount,unit", [
    ("9GB", 9e9, "bytes"), ("500MB", 5e8, "bytes"), ("1 GB", 1e9, "bytes"), ("1.5GiB", 1.5 * 2**30, "bytes"),
    ("200 bytes", 200, "bytes"), ("100M tokens", 1e8, "tokens"), ("2B tokens", 2e9, "tokens"),
    ("1e6 tokens", 1e6, "tokens"), ("300 tokens", 300, "tokens"),
])
def test_parse_budget(text, amount, unit):
    b = parse_budget(text)
    assert (b.amount, b.unit) == (pytest.approx(amount), unit)


@pytest.mark.parametrize("text", ["9", "9 GBs", "ten GB", "0GB", "-1GB", "5 words", ""])
def test_bad_budget_raises(text):
    with pytest.raises(ELOError, match="budget"):
        parse_budget(text)


def test_plan_counts_steps_over_ranks_and_accumulation():
    plan = plan_budget(parse_budget("1MB"), 4.0, 10, batch_size=2, seq_len=100, world_size=4, accumulate=2)
    assert plan.budget_tokens == 250_000 and plan.tokens_per_step == 1600
    assert plan.max_steps == math.ceil(250_000 / 1600)
    tok = plan_budget(parse_budget("1600 tokens"), 4.0, 10, batch_size=2, seq_len=100, world_size=4, accumulate=2)
    assert (tok.max_steps, tok.budget_bytes) == (1, 6400)


def _known_stream(tmp_path, tokenizer, copies=50):
    """One language, one document repeated: bytes per token known without the datamodule."""
    text = "The quick brown fox jumps over the lazy dog, again and again; 한국어 문장도 조금 섞어 둡니다."
    (tmp_path / "en").mkdir()
    with open(tmp_path / "en" / "train-0.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": text}, ensure_ascii=False) + "\n" for _ in range(copies))
    ntok = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + </s>
    return str(tmp_path / "en" / "train-*.jsonl"), len(text.encode("utf-8")) / ntok


def _dm(glob, **kw):
    from elo_lightning.data import BilingualDataModule, LanguageSource

    return BilingualDataModule(TOKENIZER, [LanguageSource(name="en", train=[glob])], **kw)


def test_byte_budget_gives_expected_steps_on_a_known_stream(tmp_path, tokenizer):
    glob, bpt = _known_stream(tmp_path, tokenizer)
    dm = _dm(glob, seq_len=16, batch_size=2, budget="20KB", budget_documents=30)
    plan = dm.plan_budget(world_size=2, accumulate=3)
    assert plan.bytes_per_token == pytest.approx(bpt)
    assert plan.measured_documents == 30
    assert plan.max_steps == math.ceil(20_000 / bpt / (2 * 16 * 2 * 3))


class _Recorder:
    """A LightningModule whose schedule length and trained steps are recorded."""

    @staticmethod
    def make():
        import lightning as L

        class Recorder(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(1))
                self.steps, self.schedule = 0, None

            def training_step(self, batch, batch_idx):
                self.steps += 1
                return (self.w * batch["input_ids"].float().mean()).sum()

            def configure_optimizers(self):
                self.schedule = self.trainer.estimated_stepping_batches
                return torch.optim.SGD(self.parameters(), lr=0.0)

        return Recorder()


def _trainer(tmp_path, **kw):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    kw.setdefault("max_epochs", -1)
    return L.Trainer(accelerator="cpu", devices=1, logger=CSVLogger(str(tmp_path / "logs")), enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                     num_sanity_val_steps=0, log_every_n_steps=1, **kw)


def test_budget_sets_max_steps_before_the_schedule_is_built(tmp_path, tokenizer):
    """Lightning's order: datamodule.setup -> configure_model -> configure_optimizers (estimated_stepping_batches)."""
    glob, bpt = _known_stream(tmp_path, tokenizer)
    dm = _dm(glob, seq_len=16, batch_size=2, budget="600 bytes", budget_documents=20)
    expected = math.ceil(600 / bpt / 32)
    assert expected >= 2
    module = _Recorder.make()
    _trainer(tmp_path, accumulate_grad_batches=1).fit(module, datamodule=dm)
    assert module.schedule == expected and module.steps == expected
    metrics = (tmp_path / "logs" / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    for key in ("data/budget_bytes", "data/budget_tokens", "data/bytes_per_token", "data/share_bytes/en"):
        assert key in metrics
    assert dm.state_dict()["budget"]["max_steps"] == expected


def test_budget_and_max_steps_together_raise(tmp_path, tokenizer):
    glob, _ = _known_stream(tmp_path, tokenizer)
    dm = _dm(glob, seq_len=16, batch_size=2, budget="600 bytes")
    with pytest.raises(ELOError, match="trainer.max_steps"):
        _trainer(tmp_path, max_steps=5).fit(_Recorder.make(), datamodule=dm)


def test_bad_budget_fails_in_the_constructor(tmp_path, tokenizer):
    glob, _ = _known_stream(tmp_path, tokenizer)
    with pytest.raises(ELOError, match="budget"):
        _dm(glob, budget="lots")
