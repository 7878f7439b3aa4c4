"""The benchmark floor: ``elo bench`` (run.py), ``elo bench-from-runs`` (runs.py), their shared tail (report.py) and
the speedup figure (figure.py, ``elo figure``) and the loss-memory table (memory.py, ``elo bench-memory``).
Nothing below this package imports it."""

from elo_lightning.bench.figure import figure_cmd, make_figure
from elo_lightning.bench.memory import linear_ce_memory
from elo_lightning.bench.run import BenchArgs, bench
from elo_lightning.bench.runs import from_runs

__all__ = ["BenchArgs", "bench", "figure_cmd", "from_runs", "linear_ce_memory", "make_figure"]
