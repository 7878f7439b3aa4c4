"""Progress bars that count optimizer steps: a pretraining stream is one endless epoch, so Lightning's
"Epoch 0/-2" (``max_epochs`` is -1 when only ``max_steps`` is set) says nothing; "Step 120/200" does."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress import ProgressBar


def step_description(trainer) -> str | None:
    """``"Step N/max_steps"`` for a run bounded by ``max_steps``; None for an epoch-bounded run."""
    if trainer is None or not trainer.max_steps or trainer.max_steps < 0:
        return None
    return f"Step {trainer.global_step}/{trainer.max_steps}"


class StepRichProgressBar(RichProgressBar):
    """``RichProgressBar`` whose training line reads "Step N/max_steps"."""

    def _get_train_description(self, current_epoch: int) -> str:
        desc = step_description(self._trainer)
        return f"{desc:{len(self.validation_description)}}" if desc else super()._get_train_description(current_epoch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None and step_description(trainer):
            self.progress.update(self.train_progress_bar_id, description=self._get_train_description(0))


class StepTQDMProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` whose training line reads "Step N/max_steps"."""

    def on_train_epoch_start(self, trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        if step_description(trainer):
            self.train_progress_bar.set_description(step_description(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if step_description(trainer):
            self.train_progress_bar.set_description(step_description(trainer), refresh=False)


def count_steps(trainer) -> None:
    """Make the trainer's progress bar, if it is Lightning's Rich or TQDM bar, count steps (settings kept)."""
    bar: ProgressBar | None = trainer.progress_bar_callback
    for plain, stepped in ((RichProgressBar, StepRichProgressBar), (TQDMProgressBar, StepTQDMProgressBar)):
        if type(bar) is plain:
            bar.__class__ = stepped  # a subclass with no state of its own: only the description changes
