"""The training progress bar of a max_steps run counts steps ("Step 3/3"), never "Epoch 0/-2"."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from torch.utils.data import DataLoader, IterableDataset

from elo_lightning.callbacks.progress import StepRichProgressBar, StepTQDMProgressBar, count_steps, step_description


class Endless(IterableDataset):
    def __iter__(self):
        while True:
            yield torch.randn(4)


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("bar,stepped", [(RichProgressBar, StepRichProgressBar),
                                         (TQDMProgressBar, StepTQDMProgressBar)])
def test_step_bar_replaces_epoch_minus_two(bar, stepped, capsys):
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[bar()])
    count_steps(trainer)
    assert type(trainer.progress_bar_callback) is stepped
    trainer.fit(Tiny(), DataLoader(Endless(), batch_size=2))
    out = capsys.readouterr()
    shown = out.out + out.err
    last = [frame for frame in shown.replace("\n", "\r").split("\r") if "3/3" in frame][-1]
    assert "/-2" not in shown and last.lstrip().startswith("Step 3/3"), last


def test_epoch_runs_and_custom_bars_are_left_alone():
    class Mine(TQDMProgressBar):
        pass

    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, callbacks=[Mine()])
    count_steps(trainer)
    assert type(trainer.progress_bar_callback) is Mine
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, callbacks=[RichProgressBar()])
    assert step_description(trainer) is None  # an epoch-bounded run keeps "Epoch N/M"
