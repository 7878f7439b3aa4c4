"""Resuming a run from the command line: what was given is compared with what the checkpoint was trained with.

LightningCLI's own ``--ckpt_path`` handling replaces the model arguments on the command line with those saved in the
checkpoint, silently: a new ``export_dir``, learning rate or λ is dropped, ``--config align.yaml`` with an ELO
checkpoint runs ELO again, and a model folder that moved cannot be resumed. ``ELOLightningCLI`` uses this module
instead:

* ``--ckpt_path last`` is resolved across the run's log versions (:func:`resolve_last`): the newest ``last.ckpt``
  under ``<logger save_dir>/<name>/*/checkpoints`` or a ``ModelCheckpoint``'s ``dirpath``; none is an error, never a
  silent fresh start.
* the given model, data and trainer arguments are compared with the checkpoint's (:func:`check_resume`). Those that
  may change on resume take the new value: paths (:data:`MAY_CHANGE`: ``export_dir``, data files, tokenizer location,
  logging and throughput options) and the model location when the new one has the same architecture (a config
  fingerprint recorded at save time). Everything else -- the stage class, λ, optimizer and schedule, ``seq_len``,
  batch size, mixing weights, precision, ``max_steps`` ... -- changes the trained function: a difference is refused
  with one line naming it.
* every checkpoint written through the CLI carries the run's arguments (:class:`RecordRunConfig`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from elo_lightning.errors import ELOError

RUN_CONFIG_KEY = "elo_run_config"  # in every checkpoint saved through the CLI: {"model", "data", "trainer", ...}
# Leaf argument names whose value may change on resume: locations, logging, speed-only switches.
MAY_CHANGE = frozenset({
    "export_dir", "overwrite_export", "tokenizer", "train", "valid", "path", "files", "measure_flops",
    "gradient_checkpointing", "num_workers", "pin_memory", "val_batch_size", "val_max_sequences", "sharding",
})
# Locations that may change when what they point at has the same architecture (config fingerprint).
MODEL_PATHS = frozenset({"model", "detached"})
# Trainer arguments that change the trained function (the rest -- logging, callbacks, devices... -- may change).
TRAINER_FIXED = ("max_steps", "max_epochs", "accumulate_grad_batches", "precision", "gradient_clip_val",
                 "gradient_clip_algorithm")
ARCH_FIELDS = ("model_type", "num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
               "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings", "rope_theta", "rope_scaling",
               "tie_word_embeddings", "layer_types", "sliding_window", "rms_norm_eps")


# -- "last" ------------------------------------------------------------------------------------------------

def _init_args(entry: Any) -> dict:
    return dict((entry or {}).get("init_args") or {}) if isinstance(entry, dict) else {}


def checkpoint_dirs(trainer: dict[str, Any]) -> tuple[list[Path], list[str]]:
    """Folders where this run's ``last.ckpt`` can be (newest version first is decided by mtime) and their patterns."""
    found: list[Path] = []
    patterns: list[str] = []
    callbacks = trainer.get("callbacks") or []
    for cb in callbacks if isinstance(callbacks, list) else [callbacks]:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("ModelCheckpoint"):
            dirpath = _init_args(cb).get("dirpath")
            if dirpath:
                found.append(Path(dirpath))
                patterns.append(str(dirpath))
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        args = _init_args(logger)
        if "save_dir" in args:
            name = args.get("name", "lightning_logs")
            root = Path(args["save_dir"]) / (name or "")
            found += sorted(p.parent for p in root.glob("*/checkpoints/last.ckpt"))
            patterns.append(str(root / "*" / "checkpoints"))
    if loggers in (None, True) or not patterns:  # Lightning's default logger/folder
        root = Path(trainer.get("default_root_dir") or ".")
        found += sorted(p.parent for p in (root / "lightning_logs").glob("*/checkpoints/last.ckpt"))
        found.append(root / "checkpoints")
        patterns += [str(root / "lightning_logs" / "*" / "checkpoints"), str(root / "checkpoints")]
    return found, patterns


def resolve_last(trainer: dict[str, Any]) -> Path:
    """The newest complete ``last.ckpt`` of the run described by the trainer config, or ``ELOError``."""
    from elo_lightning.checkpoint import is_complete

    dirs, patterns = checkpoint_dirs(trainer)
    candidates = [d / "last.ckpt" for d in dirs if (d / "last.ckpt").exists() and is_complete(d / "last.ckpt")]
    if not candidates:
        raise ELOError(f"--ckpt_path last: no last.ckpt in {', '.join(patterns)}; nothing to resume (drop "
                       "--ckpt_path to start a new run)")
    return max(candidates, key=lambda p: p.stat().st_mtime)


# -- reading a checkpoint's arguments ------------------------------------------------------------------------

def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """``{"model": {"class_path", "init_args"}, "data": ..., "trainer": ..., "model_config_sha256": ...}`` of a
    checkpoint (file or sharded directory), read without loading its tensors (memory-mapped)."""
    import torch

    from elo_lightning.checkpoint import META, check_complete

    path = Path(path)
    check_complete(path)
    file = path / META if path.is_dir() else path
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is a bad --ckpt_path
        raise ELOError(f"cannot read checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    recorded = ckpt.get(RUN_CONFIG_KEY)
    if recorded:
        return recorded
    hparams = {k: v for k, v in (ckpt.get("hyper_parameters") or {}).items() if k != "_instantiator"}
    class_path = hparams.pop("_class_path", None) or (ckpt.get("elo_stage") or {}).get("class_path")
    return {"model": {"class_path": class_path, "init_args": hparams}}


# -- comparing ---------------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """JSON-comparable form (dataclasses -> dicts, tuples -> lists, paths -> str)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    return json.loads(json.dumps(value, default=str))


def _diffs(saved: Any, given: Any, where: str) -> Iterator[tuple[str, Any, Any]]:
    saved, given = _plain(saved), _plain(given)
    if isinstance(saved, dict) and isinstance(given, dict):
        if "class_path" in saved and "class_path" in given and saved["class_path"] != given["class_path"]:
            yield f"{where}.class_path", saved["class_path"], given["class_path"]
            return
        for key in saved.keys() & given.keys():  # an argument one side does not know cannot be compared
            yield from _diffs(saved[key], given[key], f"{where}.{key}" if where else key)
    elif isinstance(saved, list) and isinstance(given, list) and len(saved) == len(given):
        for i, (a, b) in enumerate(zip(saved, given)):
            yield from _diffs(a, b, f"{where}[{i}]")
    elif saved != given:
        yield where, saved, given


def _leaf(where: str) -> str:
    return where.rsplit(".", 1)[-1].split("[", 1)[0]


def architecture_fingerprint(source: str | Path) -> str | None:
    """Hash of the architecture fields of a model's config (None when it cannot be read)."""
    from elo_lightning.models import load_config

    try:
        config = load_config(source).to_dict()
    except (ELOError, OSError, ValueError):
        return None
    fields = {k: config.get(k) for k in ARCH_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _model_moved_ok(saved_cfg: dict, where: str, old: Any, new: Any) -> str | None:
    """None when a changed model location is acceptable, else why not."""
    if old is None or new is None:
        return "it changes the stage"
    if not Path(str(new)).exists() and (str(new).startswith((".", "/")) or Path(str(old)).exists()):
        return f"the new location {new} does not exist"
    recorded = (saved_cfg.get("fingerprints") or {}).get(_leaf(where))
    reference = recorded or (architecture_fingerprint(old) if Path(str(old)).exists() else None)
    now = architecture_fingerprint(new)
    if reference is not None and now != reference:
        return "it holds a model of another architecture"
    return None


def check_resume(saved: dict[str, Any], given: dict[str, Any], ckpt: str | Path) -> list[str]:
    """Refuse (``ELOError``) a given run config whose function-changing arguments differ from the checkpoint's.

    ``saved``/``given``: ``{"model": {...}, "data": {...}, "trainer": {...}}`` as LightningCLI dumps them. Returns
    the changed arguments that take their new value (for a message).
    """
    taken: list[str] = []
    sections = [("model", saved.get("model"), given.get("model")), ("data", saved.get("data"), given.get("data"))]
    trainer_saved, trainer_given = saved.get("trainer") or {}, given.get("trainer") or {}
    sections += [(f"trainer.{k}", trainer_saved[k], trainer_given.get(k)) for k in TRAINER_FIXED if k in trainer_saved]
    for section, old_cfg, new_cfg in sections:
        if old_cfg is None or new_cfg is None:
            continue
        for where, old, new in _diffs(old_cfg, new_cfg, section):
            leaf = _leaf(where)
            if section in ("model", "data") and leaf in MAY_CHANGE:
                taken.append(where)
                continue
            if section == "model" and leaf in MODEL_PATHS:
                why = _model_moved_ok(saved, where, old, new)
                if why is None:
                    taken.append(where)
                    continue
                raise ELOError(f"cannot resume {ckpt}: {where} was {old!r}, now {new!r}, and {why}")
            raise ELOError(f"cannot resume {ckpt}: {where} was {old!r} in training, now {new!r}; it changes what "
                           "is trained (resume with the checkpoint's value, or start a new run without --ckpt_path)")
    return taken


# -- recording ---------------------------------------------------------------------------------------------

class RecordRunConfig(Callback):
    """Puts the run's model/data/trainer arguments and the model's architecture fingerprint in every checkpoint."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = _plain({k: config.get(k) for k in ("model", "data", "trainer")})
        self.config["fingerprints"] = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        for name in MODEL_PATHS:
            source = (pl_module.hparams.get(name) if hasattr(pl_module, "hparams") else None)
            if source:
                self.config["fingerprints"][name] = architecture_fingerprint(source)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[RUN_CONFIG_KEY] = self.config

    def state_dict(self) -> dict[str, Any]:
        return {}


# -- the CLI side --------------------------------------------------------------------------------------------

def _config_dump(cli) -> dict[str, Any]:
    import yaml

    dump = yaml.safe_load(cli.parser.dump(cli.config, skip_link_targets=False, skip_none=False, format="yaml"))
    return dump[cli.config["subcommand"]]


class ResumeCLIMixin:
    """For a ``LightningCLI`` subclass: ``--ckpt_path`` (``last`` resolved across log versions) is checked against
    the given arguments instead of overriding them (see the module docstring); checkpoints record the arguments."""

    def _parse_ckpt_path(self) -> None:
        sub = self.config.get("subcommand")
        ckpt = self.config[sub].get("ckpt_path") if sub else None
        if not ckpt or ckpt in ("best", "hpc", "registry"):
            return
        given = _config_dump(self)
        path = resolve_last(given.get("trainer") or {}) if ckpt == "last" else Path(ckpt)
        if not path.exists():
            raise ELOError(f"checkpoint not found: {path}")
        self.config[sub]["ckpt_path"] = str(path)
        if sub != "fit":  # validate/test only read the weights: nothing they are given can change the training
            return
        taken = check_resume(read_checkpoint_config(path), given, path)
        from lightning.pytorch.utilities import rank_zero_info

        rank_zero_info(f"resuming from {path}" + (f"; new values for {', '.join(taken)}" if taken else ""))

    def before_fit(self) -> None:
        self.trainer.callbacks.append(RecordRunConfig(_config_dump(self)))
