"""Export a trained stage as a plain HF directory (transformers, vLLM, lm-eval load it) with a manifest of how it
was made."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from elo_lightning.dist import barrier, is_rank_zero, is_sharded
from elo_lightning.io import PathMap, atomic_dir, check_output, write_json_atomic

EXPORT_MANIFEST = "elo_export.json"


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """Unsharded CPU state dict; gathers DTensor (FSDP2) shards. Collective: every rank must call it."""
    if not is_sharded(model):
        return None  # save_pretrained reads the model itself
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def export_kind(stage: str) -> str:
    """The output kind of a stage's export: only an export of the same stage replaces it without overwrite."""
    return f"{stage} export"


def export_hf(
    model: PreTrainedModel,
    output_dir: str | Path,
    manifest: dict[str, Any],
    tokenizer=None,
    extra_json: dict[str, dict] | None = None,
    *,
    inputs: PathMap | None = None,
    protected: PathMap | None = None,
    overwrite: bool = False,
) -> Path:
    """Atomic ``save_pretrained`` (+ tokenizer, + ``elo_export.json`` and any extra JSON files) from rank 0.

    ``inputs`` / ``protected`` / ``overwrite``: see :func:`elo_lightning.io.atomic_dir` (the kind is the stage's).
    """
    kind = export_kind(manifest.get("stage", "model"))
    # every rank refuses alike, before the (collective, slow) gather
    check_output(output_dir, kind, inputs=inputs, protected=protected, overwrite=overwrite)
    state = full_state_dict(model)
    if is_rank_zero():
        with atomic_dir(output_dir, kind, inputs=inputs, protected=protected, overwrite=overwrite) as tmp:
            model.save_pretrained(tmp, state_dict=state) if state is not None else model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            for name, data in (extra_json or {}).items():
                write_json_atomic(tmp / name, data)
            write_json_atomic(tmp / EXPORT_MANIFEST, manifest)
    barrier()
    return Path(output_dir)


def _plain(value: Any) -> Any:
    """Dataclasses (LanguageSource, OptimizerConfig...) and containers as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def data_settings(datamodule) -> dict[str, Any] | None:
    """The datamodule's class and constructor arguments (its saved hyperparameters), or None without one."""
    if datamodule is None:
        return None
    cls = type(datamodule)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", **_plain(dict(getattr(datamodule, "hparams", {})))}


def stage_manifest(module, **extra: Any) -> dict[str, Any]:
    """Stage, source, steps, data and the module/datamodule hyperparameters: enough to redo the run."""
    trainer = getattr(module, "_trainer", None)
    dm = getattr(trainer, "datamodule", None) if trainer is not None else None
    return {
        "stage": module.stage,
        "source": module.source,
        "global_step": trainer.global_step if trainer is not None else 0,
        "config": _plain(dict(module.hparams)),
        "data": data_settings(dm),
        **extra,
    }
