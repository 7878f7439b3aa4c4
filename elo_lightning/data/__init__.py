"""Data: the packed, token-mixed multilingual pre-training datamodule."""

from elo_lightning.data.bilingual import BilingualDataModule, LanguageSource

__all__ = ["BilingualDataModule", "LanguageSource"]
