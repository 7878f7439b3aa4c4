"""Freeze-tuning baseline (EEVE / LLaMA-Factory style): λ trainable inside the full model, the rest frozen but
computed."""

from __future__ import annotations

from transformers import PreTrainedModel

from elo_lightning.models import decoder_layers, load_causal_lm
from elo_lightning.modules.base import CausalLMModule
from elo_lightning.surgery import parse_layers


class FreezeTuningModule(CausalLMModule):
    stage = "freeze"

    def __init__(self, model: str, layers: str = "1,-1", **kwargs) -> None:
        """
        Args:
            model: the full model (HF dir, hub id or architecture .json).
            layers: trainable layers, 1-based as in the paper ("1,-1").
        """
        super().__init__(model=model, **kwargs)
        self.save_hyperparameters()

    def build_model(self, device: str = "cpu") -> PreTrainedModel:
        model = load_causal_lm(self.source, seed=self.hparams.seed, device=device)
        stack = decoder_layers(model)
        model.requires_grad_(False)
        for i in parse_layers(self.hparams.layers, len(stack)):
            stack[i].requires_grad_(True)
        return model
