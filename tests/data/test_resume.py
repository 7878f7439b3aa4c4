"""Exact resume: batches after load_state_dict equal those of an uninterrupted run (workers, odd N, Trainer)."""

from __future__ import annotations

import json

import pytest
import torch

from elo_lightning.errors import ELOError


def _take(dm, n):
    """Consume n batches through a real DataLoader, calling the hook Lightning calls before training."""
    out = []
    if n == 0:
        return out
    for batch in dm.train_dataloader():
        batch = dm.on_before_batch_transfer(batch, 0)
        assert set(batch) == {"input_ids", "labels"}
        out.append(batch["input_ids"].clone())
        if len(out) == n:
            break
    return out


def _resumed(make_dm, state, **kw):
    dm = make_dm(**kw)
    dm.load_state_dict(json.loads(json.dumps(state)))  # the state is plain JSON
    return dm


@pytest.mark.parametrize("num_workers,n,m", [(2, 6, 6), (2, 5, 6), (0, 5, 5)])
def test_resume_equals_uninterrupted(make_dm, num_workers, n, m):
    kw = dict(num_workers=num_workers, batch_size=3, seq_len=64)
    reference = _take(make_dm(**kw), n + m)
    first = make_dm(**kw)
    head = _take(first, n)
    tail = _take(_resumed(make_dm, first.state_dict(), **kw), m)
    assert all(torch.equal(a, b) for a, b in zip(head, reference[:n]))
    assert len(tail) == m
    for i, (a, b) in enumerate(zip(tail, reference[n:])):
        assert torch.equal(a, b), f"batch {n + i} differs after resume"


def test_chained_resumes_across_epochs(make_dm):
    """Several resumes in a row, with long documents split across the cut and languages past epoch 1."""
    kw = dict(num_workers=2, batch_size=8, seq_len=512, weights={"en": 1.0, "ja": 1.0})
    steps = [7, 45, 3, 40]  # each stream reads one ja shard (~64K tokens) per epoch: wraps after ~65 batches
    reference = _take(make_dm(**kw), sum(steps))
    got, state = [], None
    for n in steps:
        dm = make_dm(**kw) if state is None else _resumed(make_dm, state, **kw)
        got += _take(dm, n)
        state = dm.state_dict()
    assert max(s["cursors"]["ja"]["epoch"] for s in state["streams"].values()) >= 1
    assert len(got) == len(reference)
    for i, (a, b) in enumerate(zip(got, reference)):
        assert torch.equal(a, b), f"batch {i} differs"


def test_state_is_small_and_complete(make_dm):
    dm = make_dm(num_workers=2)
    _take(dm, 3)
    st = dm.state_dict()
    assert st["num_streams"] == 2 and st["seq_len"] == 64 and st["seed"] == 42
    assert st["weights"] == {"en": 0.1, "ko": 0.9} and st["tokenizer"]["vocab_size"] == 8192
    assert set(st["streams"]) == {"0", "1"} and st["next_role"] == {"0": 1}
    assert len(json.dumps(st)) < 4000


@pytest.mark.parametrize("change,match", [
    (dict(seq_len=32), "seq_len"),
    (dict(num_workers=1), "number of data streams"),
    (dict(weights={"en": 1.0, "ja": 9.0}), "language set"),
    (dict(seed=7), "seed"),
])
def test_resume_mismatch_raises(make_dm, change, match):
    dm = make_dm(num_workers=2)
    _take(dm, 2)
    state = dm.state_dict()
    kw = dict(num_workers=2)
    kw.update(change)
    resumed = _resumed(make_dm, state, **kw)
    with pytest.raises(ELOError, match=match):
        resumed.train_dataloader()


def test_resume_with_another_tokenizer_raises(make_dm, tmp_path):
    from elo_lightning.data import BilingualDataModule
    from elo_lightning.tokenizer import train_tokenizer
    from tests.data.conftest import source, valid_file

    train_tokenizer([valid_file("en")], 400, str(tmp_path / "tok"))
    dm = make_dm()
    _take(dm, 1)
    other = BilingualDataModule(str(tmp_path / "tok"), [source("en", 1.0), source("ko", 9.0)], seq_len=64)
    other.load_state_dict(dm.state_dict())
    with pytest.raises(ELOError, match="tokenizer"):
        other.train_dataloader()


def test_resume_through_lightning_trainer(make_dm, tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, batch_idx):
            assert "stream_state" not in batch and "stream_id" not in batch
            self.seen.append(batch["input_ids"].clone())
            return (self.w * batch["input_ids"].float().mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    def trainer(**kw):
        return L.Trainer(max_steps=8, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         default_root_dir=str(tmp_path), **kw)

    kw = dict(num_workers=2, batch_size=2, seq_len=64)
    full = Recorder()
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=3, save_top_k=-1)
    trainer(callbacks=[ckpt]).fit(full, datamodule=make_dm(**kw))
    assert len(full.seen) == 8
    path = tmp_path / "ckpt" / "epoch=0-step=3.ckpt"
    assert path.exists(), sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    resumed = Recorder()
    trainer().fit(resumed, datamodule=make_dm(**kw), ckpt_path=str(path))
    assert len(resumed.seen) == 5
    for i, (a, b) in enumerate(zip(resumed.seen, full.seen[3:])):
        assert torch.equal(a, b), f"step {3 + i} differs after resume"
