"""Checkpoints that are complete or absent, and their consolidation into a plain HF directory.

* ``AtomicModelParallelStrategy`` (FSDP2): Lightning's ``ModelParallelStrategy`` with
  ``save_distributed_checkpoint=True`` writes a DCP directory (one ``__<rank>_0.distcp`` per rank, ``.metadata``,
  and ``meta.pt`` with the loops/datamodule/callback state). Here every rank writes into ``.<name>.partial``;
  when all ranks are done, rank 0 adds ``elo_checkpoint.json`` (the completion marker: step, world size, stage
  class) and renames the directory to its final name (an existing one is replaced only after that). A crash
  mid-save leaves a hidden ``.partial`` directory that no ``ModelCheckpoint`` and no resume looks at; the
  previous checkpoint is untouched. ``load_checkpoint`` refuses a directory without the marker with an
  ``ELOError``. Resuming on another world size: DCP reshards model and optimizer state; the
  ``BilingualDataModule`` refuses a different number of streams (world_size x num_workers) with an ``ELOError``
  that names both counts (see ``elo_lightning.data.bilingual``).
* ``AtomicCheckpointIO`` (DDP / single device): ``torch.save`` into a temporary file in the same directory, fsync,
  ``os.replace``. Use as ``trainer.plugins``.
* ``latest_checkpoint(dirpath)``: newest complete checkpoint (file or DCP directory), for ``ckpt_path``.
* ``clean_checkpoint_leftovers(dirpath)``: at the start of a run, removes the ``.partial`` files/directories and
  ``.old`` directories that killed saves left in a checkpoint folder (only these hidden names of ours; a file
  partial of a process still alive on this host is kept). Checkpoints get ordinary permissions (0o644).
* ``consolidate(checkpoint_dir, model_source, output_dir)``: reads the DCP shards with no process group, rebuilds
  the stage's module from the hyperparameters stored in the checkpoint, loads the exact weights and exports what
  that stage exports (ELO: detached checkpoint with ``elo_manifest.json``; LoRA: merged; others: full HF dir).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import ModelParallelStrategy

from elo_lightning.errors import ELOError, writing
from elo_lightning.io import is_stale, ordinary_permissions, read_json, temp_prefix, write_json_atomic

MARKER = "elo_checkpoint.json"


def _allow_our_hparams() -> None:
    """Checkpoints store the hyperparameters, whose dataclasses ``torch.load(weights_only=True)`` must accept."""
    from elo_lightning.data.bilingual import LanguageSource
    from elo_lightning.data.sft import SFTSource
    from elo_lightning.optim import OptimizerConfig
    from elo_lightning.sharding import ShardingConfig

    torch.serialization.add_safe_globals([OptimizerConfig, ShardingConfig, LanguageSource, SFTSource])


_allow_our_hparams()
META = "meta.pt"  # lightning.fabric.utilities.load._METADATA_FILENAME


def _partial(path: Path) -> Path:
    return path.parent / f".{path.name}.partial"


def is_complete(path: str | Path) -> bool:
    """A checkpoint file, or a DCP directory with the completion marker."""
    path = Path(path)
    if path.is_file():
        return True
    return path.is_dir() and (path / MARKER).is_file() and (path / META).is_file()


def _is_dcp_leftover(path: Path) -> bool:
    """A directory with DCP files (meta.pt, .metadata, *.distcp): what a sharded save writes first."""
    return (path / META).exists() or (path / ".metadata").exists() or any(path.glob("*.distcp"))


def check_complete(path: str | Path) -> None:
    """Refuse a missing checkpoint, and a directory that is not a complete sharded one, saying which it is."""
    path = Path(path)
    if not path.exists():
        raise ELOError(f"checkpoint not found: {path}")
    if not path.is_dir() or is_complete(path):
        return
    if _is_dcp_leftover(path):
        raise ELOError(f"checkpoint {path} is incomplete (no {MARKER}: its save was interrupted); "
                       f"resume from an earlier one, e.g. {latest_checkpoint(path.parent) or 'none found'}")
    if (path / "config.json").is_file():
        raise ELOError(f"{path} is a model directory (config.json), not a training checkpoint")
    if not any(path.iterdir()):
        raise ELOError(f"{path} is empty: not a training checkpoint")
    raise ELOError(f"{path} is not a training checkpoint: no {MARKER}, {META} or *.distcp shards in it")


def check_checkpoint_file(path: str | Path) -> None:
    """A single-file Lightning checkpoint (``torch.save``: a zip archive) that exists, is not empty and is not
    truncated (a cut-off zip has no central directory); read without loading any tensor."""
    import zipfile

    path = Path(path)
    if not path.exists():
        raise ELOError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ELOError(f"checkpoint {path} is empty (0 bytes)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        names = []
    if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        raise ELOError(f"checkpoint {path} is truncated or not a checkpoint ({size:,} bytes, no readable torch.save "
                       "archive)")


def check_ckpt_path(path: str | Path, sharded: bool) -> None:
    """``--ckpt_path`` before any model is built: a complete sharded directory under FSDP2, else a valid file."""
    path = Path(path)
    if path.is_dir():
        check_complete(path)
        if not sharded:
            raise ELOError(f"checkpoint {path} is a sharded (FSDP2) checkpoint directory: resume it with the "
                           "ModelParallelStrategy it was saved with, or `elo consolidate` it")
        return
    check_checkpoint_file(path)


def _step_of(path: Path) -> int:
    if path.is_dir():
        try:
            return int(json.loads((path / MARKER).read_text())["global_step"])
        except (OSError, ValueError, KeyError):
            return -1
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False).get("global_step", -1))
    except Exception:  # noqa: BLE001 - unreadable = not a candidate
        return -1


def latest_checkpoint(dirpath: str | Path) -> Path | None:
    """The complete checkpoint with the highest global step in ``dirpath`` (hidden/partial ones ignored)."""
    dirpath = Path(dirpath)
    if not dirpath.is_dir():
        return None
    best, best_step = None, -1
    for p in sorted(dirpath.iterdir()):
        if p.name.startswith(".") or not is_complete(p):
            continue
        step = _step_of(p)
        if step > best_step:
            best, best_step = p, step
    return best


def clean_checkpoint_leftovers(dirpath: str | Path | None) -> list[Path]:
    """Remove what killed saves left in ``dirpath``: ``.<name>.partial`` DCP directories, ``.<name>.old``
    directories, and ``.<name>.partial-<host>-<pid>-<rand>.partial`` files whose process is gone. Call it before the
    run saves anything (on one rank). Returns the removed paths."""
    dirpath = Path(dirpath) if dirpath else None
    if dirpath is None or not dirpath.is_dir():
        return []
    removed = []
    for p in sorted(dirpath.glob(".*")):
        if p.is_symlink():
            continue
        if p.is_dir() and (p.name.endswith(".partial") or p.name.endswith(".old")):
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_file() and p.name.endswith(".partial"):
            _, sep, rest = p.name[: -len(".partial")].rpartition(".partial-")
            if sep and not is_stale(rest):  # without host/pid (earlier scheme): stale
                continue
            p.unlink(missing_ok=True)
        else:
            continue
        removed.append(p)
    return removed


def _stage_info(module) -> dict[str, Any]:
    cls = type(module)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "stage": getattr(module, "stage", None)}


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` whose sharded checkpoints appear only when complete (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        tmp = _partial(path)
        if self.global_rank == 0 and tmp.exists():
            shutil.rmtree(tmp)
        self.barrier()
        checkpoint["elo_stage"] = _stage_info(self.lightning_module)
        step = checkpoint.get("global_step")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier()  # every rank has written its shard
        if self.global_rank == 0:
            write_json_atomic(tmp / MARKER, {"global_step": step, "world_size": self.world_size,
                                             **_stage_info(self.lightning_module)})
            old = None
            if path.exists():
                old = path.parent / f".{path.name}.old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        self.barrier()

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(self.broadcast(str(checkpoint_path)))
        if path.is_dir():
            check_complete(path)
        return super().load_checkpoint(path, weights_only=weights_only)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Single-file checkpoints (DDP, one device): temp file + fsync + ``os.replace``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name, "partial"), suffix=".partial", dir=path.parent)
        try:
            with writing(path), os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            ordinary_permissions(tmp)  # mkstemp makes 0o600; a checkpoint is as readable as save_pretrained's files
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# -- consolidation -----------------------------------------------------------------------------------------

def read_dcp_model_state(checkpoint_dir: str | Path, template: dict[str, torch.Tensor],
                         prefix: str = "state_dict.") -> dict[str, torch.Tensor]:
    """Load the tensors named like ``template`` (keys of the LightningModule's state dict) from a DCP directory,
    without a process group, into copies of the template tensors (any world size wrote it)."""
    import torch.distributed.checkpoint as dcp

    state = {"state_dict": {k: v.detach().clone() for k, v in template.items()}}
    try:
        dcp.load(state, checkpoint_id=str(checkpoint_dir), no_dist=True)
    except Exception as err:  # noqa: BLE001 - name the checkpoint and what was asked
        raise ELOError(f"cannot read model weights from {checkpoint_dir}: {type(err).__name__}: {err}") from None
    return state["state_dict"]


def _module_from_checkpoint(checkpoint_dir: Path, model_source: str | None):
    if checkpoint_dir.is_file():
        raise ELOError(f"{checkpoint_dir} is a single-file checkpoint; consolidate takes a sharded (FSDP2) checkpoint "
                       "directory (a single file already holds the full weights)")
    check_complete(checkpoint_dir)
    try:
        meta = torch.load(checkpoint_dir / META, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable meta.pt is a broken checkpoint
        raise ELOError(f"{checkpoint_dir / META} is unreadable ({type(err).__name__}): the checkpoint is "
                       "broken") from None
    info = meta.get("elo_stage") or read_json(checkpoint_dir / MARKER, "checkpoint completion marker")
    hparams = dict(meta.get("hyper_parameters") or {})
    if not info or "class_path" not in info:
        raise ELOError(f"{checkpoint_dir}: no stage class recorded; was it saved by AtomicModelParallelStrategy?")
    mod_name, _, cls_name = info["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(mod_name), cls_name)
    if model_source is not None:
        hparams["model"] = str(model_source)
    hparams.pop("sharding", None)
    hparams["export_dir"] = None
    module = cls(**hparams)
    return module


@torch.no_grad()
def consolidate(checkpoint_dir: str | Path, model_source: str | Path | None, output_dir: str | Path,
                overwrite: bool = False) -> Path:
    """Sharded (DCP) training checkpoint -> the stage's HF export, exact weights; runs in one plain process.

    Args:
        checkpoint_dir: a complete DCP checkpoint directory written by ``AtomicModelParallelStrategy``.
        model_source: the stage's ``model`` argument if it moved since training (None: as recorded).
        output_dir: HF directory to write (atomically; a non-empty one only if it holds an export of the same stage,
            or with ``overwrite``; never the checkpoint or the model).
        overwrite: replace a non-empty ``output_dir`` that is not an export of the checkpoint's stage.
    """
    from elo_lightning.export import export_kind
    from elo_lightning.io import check_output

    checkpoint_dir = Path(checkpoint_dir)
    module = _module_from_checkpoint(checkpoint_dir, model_source)
    module.hparams["overwrite_export"] = overwrite
    guard = module.export_guard()
    check_output(output_dir, export_kind(module.stage), **{**guard, "inputs": {**guard["inputs"],
                                                                               "checkpoint": checkpoint_dir}})
    module.model = module.build_model()  # on CPU: the exact module tree of training, unsharded
    template = {f"model.{k}": v for k, v in module.model.state_dict().items()}
    loaded = read_dcp_model_state(checkpoint_dir, template)
    own = module.model.state_dict()
    for key, value in loaded.items():
        own[key[len("model."):]].copy_(value)
    return module.export(output_dir)


def consolidate_cmd(checkpoint_dir: str, output_dir: str, model_source: str | None = None,
                    overwrite: bool = False) -> None:
    """Turn a sharded (FSDP2/DCP) training checkpoint into the stage's plain HF export, exact weights.

    Args:
        checkpoint_dir: a complete sharded checkpoint directory (has elo_checkpoint.json).
        output_dir: HF directory to write.
        model_source: the stage's model argument, if it moved since training.
        overwrite: replace a non-empty output directory that is not an export of the checkpoint's stage.
    """
    print(f"consolidated -> {consolidate(checkpoint_dir, model_source, output_dir, overwrite=overwrite)}")
