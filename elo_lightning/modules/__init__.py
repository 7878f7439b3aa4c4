"""One LightningModule per training stage, all sharing ``CausalLMModule``, and the registry naming every stage once.

``STAGES`` is the one list of stages: its key is the module's ``stage`` tag (also the method name in ``elo bench``
and ``results.json``), with the module class, the analytic FLOP formula it is counted with
(``elo_lightning.flops.FLOP_KINDS``) and the name tables and figures show. Bench, figure, analysis and pipeline read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from elo_lightning.flops import FLOP_KINDS
from elo_lightning.modules.base import CausalLMModule
from elo_lightning.modules.detached import DetachedLayerModule
from elo_lightning.modules.freeze import FreezeTuningModule
from elo_lightning.modules.full import FullFineTuningModule
from elo_lightning.modules.lora import LoRAModule
from elo_lightning.modules.sft import SFTModule

AlignmentModule = FullFineTuningModule  # layer alignment = full fine-tuning with ``detached`` attached first


@dataclass(frozen=True)
class Stage:
    name: str  # the module's ``stage`` tag; method name in ``elo bench`` and results.json
    module: type[CausalLMModule]
    flop_kind: str  # analytic FLOP formula (flops.FLOP_KINDS)
    display: str  # name in tables and figures
    benchmarked: bool  # timed by ``elo bench`` (alignment and SFT run at full fine-tuning speed)

    def __post_init__(self) -> None:
        if self.flop_kind not in FLOP_KINDS:
            raise ValueError(f"stage {self.name}: unknown FLOP kind {self.flop_kind!r}")


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("elo", DetachedLayerModule, "elo", "ELO", True),
        Stage("freeze", FreezeTuningModule, "freeze", "freeze-tuning", True),
        Stage("lora", LoRAModule, "lora", "LoRA", True),
        Stage("fft", FullFineTuningModule, "fft", "FFT", True),
        Stage("align", FullFineTuningModule, "fft", "alignment", False),
        Stage("sft", SFTModule, "fft", "SFT", False),
    )
}
BENCH_METHODS = tuple(name for name, s in STAGES.items() if s.benchmarked)

__all__ = [
    "AlignmentModule",
    "BENCH_METHODS",
    "CausalLMModule",
    "DetachedLayerModule",
    "FreezeTuningModule",
    "FullFineTuningModule",
    "LoRAModule",
    "SFTModule",
    "STAGES",
    "Stage",
]
