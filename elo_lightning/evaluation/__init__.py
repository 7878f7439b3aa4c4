"""Evaluation: perplexity / bits-per-byte, lm-eval benchmarks, LLM-as-judge, and log/result analysis helpers.

Submodules are imported lazily so ``import elo_lightning.evaluation`` stays cheap (lm-eval is optional).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "evaluate_perplexity": "elo_lightning.evaluation.perplexity",
    "run_lm_eval": "elo_lightning.evaluation.lm_eval_runner",
    "generate_answers": "elo_lightning.evaluation.judge",
    "judge_answers": "elo_lightning.evaluation.judge",
    "parse_rating": "elo_lightning.evaluation.judge_protocols",
    "load_questions": "elo_lightning.evaluation.judge_protocols",
    "resolve_tasks": "elo_lightning.evaluation.lm_eval_runner",
    "paper_metrics": "elo_lightning.evaluation.lm_eval_runner",
    "load_scalars": "elo_lightning.evaluation.analysis",
    "plot_loss_curves": "elo_lightning.evaluation.analysis",
    "plot_perplexity_bars": "elo_lightning.evaluation.analysis",
    "load_results": "elo_lightning.evaluation.analysis",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'elo_lightning.evaluation' has no attribute {name!r}")
