"""Layer alignment: the full model with ELO-trained layers written back, fully fine-tuned.

With nothing attached this *is* the full fine-tuning (FFT) baseline; SFT is the same computation on chat data.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from elo_lightning.models import load_causal_lm
from elo_lightning.modules.base import CausalLMModule
from elo_lightning.surgery import attach, load_detached, read_manifest


class AlignmentModule(CausalLMModule):
    stage = "align"

    def __init__(self, model: str, detached: str | None = None, **kwargs) -> None:
        """
        Args:
            model: the original full model (HF dir, hub id or architecture .json).
            detached: ELO checkpoint to attach before training; None = plain full fine-tuning.
        """
        super().__init__(model=model, **kwargs)
        self.save_hyperparameters()
        if detached is None and type(self) is AlignmentModule:
            self.stage = "fft"

    def check_inputs(self) -> None:
        super().check_inputs()
        if self.hparams.detached:
            read_manifest(self.hparams.detached)

    def build_model(self, device: str = "cpu") -> PreTrainedModel:
        model = load_causal_lm(self.source, seed=self.hparams.seed, device=device)
        if self.hparams.detached and device != "meta":
            small, manifest = load_detached(self.hparams.detached, dtype=model.dtype)
            attach(model, small, manifest)
            del small
        model.requires_grad_(True)
        return model


class SFTModule(AlignmentModule):
    """Bilingual SFT: full fine-tuning on rendered conversations (labels mask everything but assistant turns)."""

    stage = "sft"

    def __init__(self, model: str, **kwargs) -> None:
        super().__init__(model=model, detached=None, **kwargs)
