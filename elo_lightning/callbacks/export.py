"""Export an HF directory of whatever the module trains, every N optimizer steps (on request, mid-run)."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback


class HFExport(Callback):
    """Calls ``pl_module.export(<dirpath>/step-<N>)`` every ``every_n_train_steps``; knows nothing of the stage."""

    def __init__(self, dirpath: str, every_n_train_steps: int = 1000) -> None:
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1, got {every_n_train_steps}")
        self.dirpath = Path(dirpath)
        self.every = every_n_train_steps
        self._last = 0  # under gradient accumulation several micro-batches end at the same global step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step != self._last and step % self.every == 0:
            self._last = step
            pl_module.export(self.dirpath / f"step-{step}")
