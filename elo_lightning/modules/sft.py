"""Bilingual SFT: full fine-tuning on rendered conversations (the datamodule's labels mask all but assistant turns)."""

from __future__ import annotations

from elo_lightning.modules.full import FullFineTuningModule


class SFTModule(FullFineTuningModule):
    """The same computation as full fine-tuning; a stage of its own so runs, exports and tables name it."""

    stage = "sft"

    def __init__(self, model: str, **kwargs) -> None:
        """
        Args:
            model: the model to fine-tune (e.g. the chat-vector output).
        """
        super().__init__(model=model, detached=None, **kwargs)
