"""One LightningModule per training stage; all share ``CausalLMModule`` and the same datamodules."""

from elo_lightning.modules.alignment import AlignmentModule, SFTModule
from elo_lightning.modules.base import CausalLMModule
from elo_lightning.modules.detached import DetachedLayerModule
from elo_lightning.modules.freeze import FreezeTuningModule
from elo_lightning.modules.lora import LoRAModule

__all__ = ["AlignmentModule", "CausalLMModule", "DetachedLayerModule", "FreezeTuningModule", "LoRAModule", "SFTModule"]
