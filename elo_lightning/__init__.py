"""elo-lightning: Efficient Layer-Specific Optimization (ELO) for language adaptation of causal LMs."""

from elo_lightning.errors import ELOError

__version__ = "0.1.0"
__all__ = ["ELOError", "__version__"]
