"""Lightning callbacks; they know nothing of the method."""

from elo_lightning.callbacks.export import HFExport
from elo_lightning.callbacks.throughput import ThroughputLogger

__all__ = ["HFExport", "ThroughputLogger"]
