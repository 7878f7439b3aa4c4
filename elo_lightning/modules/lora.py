"""LoRA continual-pretraining baseline through peft; exports merged weights."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, get_peft_model
from transformers import PreTrainedModel

from elo_lightning.export import export_hf, stage_manifest
from elo_lightning.models import PROJECTIONS, load_causal_lm
from elo_lightning.modules.base import CausalLMModule


class LoRAModule(CausalLMModule):
    stage = "lora"

    def __init__(
        self,
        model: str,
        r: int = 64,
        alpha: int = 128,
        dropout: float = 0.05,
        target_modules: list[str] | None = None,
        **kwargs,
    ) -> None:
        """
        Args:
            model: the full model (HF dir, hub id or architecture .json).
            r: adapter rank.
            alpha: LoRA scaling numerator (scale = alpha / r).
            dropout: dropout on the adapter input.
            target_modules: projections to adapt; default all attention and MLP projections.
        """
        super().__init__(model=model, **kwargs)
        self.save_hyperparameters()

    def build_model(self, device: str = "cpu") -> PreTrainedModel:
        base = load_causal_lm(self.source, seed=self.hparams.seed, device=device)
        config = LoraConfig(
            r=self.hparams.r,
            lora_alpha=self.hparams.alpha,
            lora_dropout=self.hparams.dropout,
            target_modules=self.hparams.target_modules or list(PROJECTIONS),
            task_type="CAUSAL_LM",
        )
        return get_peft_model(base, config)

    def export(self, output_dir: str | Path) -> Path:
        """Merged weights: a plain HF model that needs no peft to load (the adapters are folded in)."""
        merged = self.model.merge_and_unload()
        return export_hf(merged, output_dir, stage_manifest(self, merged=True), tokenizer=self.tokenizer(),
                         extra_json=self.data_exports(), **self.export_guard())
