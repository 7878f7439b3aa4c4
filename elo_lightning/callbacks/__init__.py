"""Lightning callbacks."""

from elo_lightning.callbacks.throughput import ThroughputLogger

__all__ = ["ThroughputLogger"]
