"""Full fine-tuning of the whole model: the FFT baseline, and ELO's alignment when detached layers are attached first.

One class for both: the stage is *derived* from its arguments (``detached`` given -> ``align``, else ``fft``).
"""

from __future__ import annotations

from transformers import PreTrainedModel

from elo_lightning.models import load_causal_lm
from elo_lightning.modules.base import CausalLMModule
from elo_lightning.surgery import attach, check_source, load_detached, read_manifest


class FullFineTuningModule(CausalLMModule):
    def __init__(self, model: str, detached: str | None = None, **kwargs) -> None:
        """
        Args:
            model: the original full model (HF dir, hub id or architecture .json).
            detached: ELO checkpoint to attach before training (layer alignment); None = plain full fine-tuning.
        """
        super().__init__(model=model, **kwargs)
        self.save_hyperparameters()

    @property
    def stage(self) -> str:
        return "align" if self.hparams.get("detached") else "fft"

    def check_inputs(self) -> None:
        super().check_inputs()
        if self.hparams.get("detached"):
            read_manifest(self.hparams.detached)

    def build_model(self, device: str = "cpu") -> PreTrainedModel:
        detached = self.hparams.get("detached") if device != "meta" else None
        if detached:  # a mismatched checkpoint is refused before the full load
            check_source(self.source, read_manifest(detached))
        model = load_causal_lm(self.source, seed=self.hparams.seed, device=device)
        if detached:
            small, manifest = load_detached(detached, dtype=model.dtype)
            attach(model, small, manifest)
            del small
        model.requires_grad_(True)
        return model
