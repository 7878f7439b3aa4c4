"""Model surgery for ELO: detach chosen decoder layers into a small standalone model, and attach them back.

Pure functions over ``transformers`` models; no Lightning here. The small model is an instance of the same
class as the source (``LlamaForCausalLM`` stays ``LlamaForCausalLM``), so it saves and loads as a normal HF
directory and trains with the same code. What makes it *the same computation* for the kept layers:
each layer's ``layer_idx`` is renumbered for the small model's KV cache, and per-layer config lists
(``layer_types``: sliding vs full attention in Gemma/Qwen) are subset so every layer keeps its own attention kind.
RoPE needs nothing: positions are those of the tokens, not of the layers.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from elo_lightning.errors import ELOError
from elo_lightning.io import MANIFEST, PathMap, atomic_dir, check_output, read_json, write_json_atomic
from elo_lightning.models import (
    check_architecture,
    check_safetensors_files,
    decoder_layers,
    load_causal_lm,
    load_config,
    saved_tokenizer,
)

FORMAT = "elo-detached/1"
SHARED_PARTS = ("embed_tokens", "norm", "lm_head")


def parse_layers(spec: str | int | Sequence[int], num_layers: int) -> list[int]:
    """Paper-style 1-based layer selection ("1,32", "1,-1", [1, 16, 32]) -> sorted 0-based indices."""
    if isinstance(spec, int):
        items: list[int | str] = [spec]
    elif isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = list(spec)
    if not items:
        raise ELOError("empty layer selection: give at least one layer, e.g. '1,-1'")
    resolved = []
    for item in items:
        try:
            index = int(item)
        except (TypeError, ValueError):
            raise ELOError(f"layer {item!r} is not an integer (layers are 1-based, e.g. '1,-1')") from None
        if index == 0:
            raise ELOError("layer 0 does not exist: layers are 1-based (1 = first, -1 = last)")
        if not -num_layers <= index <= num_layers:
            raise ELOError(f"layer {index} out of range for a model with {num_layers} layers")
        resolved.append(index - 1 if index > 0 else num_layers + index)
    duplicates = sorted({i + 1 for i in resolved if resolved.count(i) > 1})
    if duplicates:
        raise ELOError(f"duplicate layers in selection {items}: {duplicates} (1-based)")
    return sorted(resolved)


def fingerprint(model: PreTrainedModel) -> str:
    """Hash of frozen parts (strided embedding rows + final norm) to recognise the source model cheaply."""
    embed = model.get_input_embeddings().weight
    if embed.is_meta:
        return ""
    h = hashlib.sha256()
    embed = model.get_input_embeddings().weight.detach()
    rows = embed[:: max(1, embed.shape[0] // 64)]
    for t in (rows, model.model.norm.weight.detach()):
        h.update(t.float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class DetachManifest:
    """What a detached checkpoint is: which layers of which model, and what was trained."""

    layers: list[int]  # 0-based positions in the source model, in order
    source: str
    source_num_layers: int
    model_type: str
    hidden_size: int
    vocab_size: int
    fingerprint: str
    trained: dict[str, bool] = field(default_factory=lambda: {"layers": True, **{p: False for p in SHARED_PARTS}})
    format: str = FORMAT

    @property
    def layers_1based(self) -> list[int]:
        return [i + 1 for i in self.layers]

    def to_json(self) -> dict:
        return {**asdict(self), "layers_1based": self.layers_1based}

    @classmethod
    def from_json(cls, data: dict, where: str = MANIFEST) -> DetachManifest:
        if not isinstance(data, dict):
            raise ELOError(f"{where} is not a valid ELO manifest: expected a JSON object")
        if data.get("format") != FORMAT:
            raise ELOError(f"{where}: unsupported detached checkpoint format {data.get('format')!r} "
                           f"(expected {FORMAT})")
        data = {k: v for k, v in data.items() if k != "layers_1based"}
        try:
            manifest = cls(**data)
        except TypeError as err:  # missing or unknown keys
            raise ELOError(f"{where} is not a valid ELO manifest: {err}") from None
        manifest.check(where)
        return manifest

    def check(self, where: str = MANIFEST) -> None:
        """The layer list must name distinct, sorted layers that exist in the source model."""
        n = self.source_num_layers
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ELOError(f"{where}: source_num_layers must be a positive integer, got {n!r}")
        if not self.layers or any(isinstance(i, bool) or not isinstance(i, int) for i in self.layers):
            raise ELOError(f"{where}: layers must be a non-empty list of 0-based integers, got {self.layers!r}")
        bad = [i + 1 for i in self.layers if not 0 <= i < n]
        if bad:
            raise ELOError(f"{where} names layer(s) {bad} (1-based) that do not exist: the source has {n} layers")
        if self.layers != sorted(set(self.layers)):
            raise ELOError(f"{where}: layers must be distinct and in order, got {self.layers}")


def _renumber(layer: nn.Module, index: int) -> None:
    for module in layer.modules():
        if hasattr(module, "layer_idx"):
            module.layer_idx = index


def _subset_config(config, layers: list[int]):
    small = copy.deepcopy(config)
    n = config.num_hidden_layers
    for key, value in config.to_dict().items():
        if isinstance(value, list) and len(value) == n and key != "architectures":
            setattr(small, key, [value[i] for i in layers])
    small.num_hidden_layers = len(layers)
    return small


def detach(
    model: PreTrainedModel, layers: str | Sequence[int], copy_weights: bool = True
) -> tuple[PreTrainedModel, DetachManifest]:
    """Build the small model: embedding, the selected layers in order, final norm and LM head.

    ``layers`` is 1-based (paper style) when a string; a sequence of ints is taken as 1-based too.
    With ``copy_weights=False`` the small model shares modules with ``model`` (no extra memory) and the
    source must not be used afterwards (its shared layers are renumbered).
    """
    check_architecture(model.config)
    stack = decoder_layers(model)
    idx = parse_layers(layers, len(stack))
    config = _subset_config(model.config, idx)
    with torch.device("meta"):
        small = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    memo: dict = {}
    take = (lambda m: copy.deepcopy(m, memo)) if copy_weights else (lambda m: m)
    for name, child in model.model.named_children():
        if name != "layers":
            setattr(small.model, name, take(child))
    small.model.layers = nn.ModuleList(take(stack[i]) for i in idx)
    for new_index, layer in enumerate(small.model.layers):
        _renumber(layer, new_index)
    small.lm_head = take(model.lm_head)  # the memo keeps a tied head tied to the copied embedding
    left = [n for n, t in [*small.named_parameters(), *small.named_buffers()] if t.is_meta]
    if left and not model.get_input_embeddings().weight.is_meta:
        raise ELOError(f"unsupported architecture {type(model).__name__}: parts not detached: {left[:5]}")
    small.generation_config = copy.deepcopy(model.generation_config)
    return small, detach_manifest(model.config, idx, fingerprint(model))


def detach_manifest(config, layer_indices: list[int], source_fingerprint: str) -> DetachManifest:
    """The manifest of λ (0-based ``layer_indices``) cut from a model with this config."""
    return DetachManifest(
        layers=list(layer_indices),
        source=str(getattr(config, "_name_or_path", "") or ""),
        source_num_layers=config.num_hidden_layers,
        model_type=config.model_type,
        hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
        fingerprint=source_fingerprint,
    )


def check_compatible(model: PreTrainedModel, detached: PreTrainedModel, manifest: DetachManifest) -> None:
    stack = decoder_layers(model)
    mine = (model.config.model_type, len(stack), model.config.hidden_size, model.config.vocab_size)
    theirs = (manifest.model_type, manifest.source_num_layers, manifest.hidden_size, manifest.vocab_size)
    if mine != theirs:
        raise ELOError(
            "detached checkpoint comes from a different model: "
            f"(type, layers, hidden, vocab) = {theirs}, this model has {mine}"
        )
    if manifest.fingerprint and fingerprint(model) != manifest.fingerprint:
        raise ELOError(
            f"detached checkpoint comes from a different model ({manifest.source or 'unknown source'}): "
            "embedding/norm fingerprint differs"
        )
    if len(decoder_layers(detached)) != len(manifest.layers):
        raise ELOError(
            f"detached model has {len(decoder_layers(detached))} layers but its manifest lists {len(manifest.layers)}"
        )


@torch.no_grad()
def attach(model: PreTrainedModel, detached: PreTrainedModel, manifest: DetachManifest) -> PreTrainedModel:
    """Write the detached layers back at their original positions, in place; nothing else changes.

    Embedding, norm and head are written back only if the manifest says they were trained.
    """
    check_compatible(model, detached, manifest)
    stack = decoder_layers(model)
    for k, i in enumerate(manifest.layers):
        stack[i].load_state_dict(decoder_layers(detached)[k].state_dict(), strict=True)
    parts = {
        "embed_tokens": (model.get_input_embeddings(), detached.get_input_embeddings()),
        "norm": (model.model.norm, detached.model.norm),
        "lm_head": (model.lm_head, detached.lm_head),
    }
    for name, (dst, src) in parts.items():
        if manifest.trained.get(name):
            dst.load_state_dict(src.state_dict(), strict=True)
    return model


def save_detached(detached: PreTrainedModel, manifest: DetachManifest, output: str | Path, tokenizer=None, *,
                  inputs: PathMap | None = None, overwrite: bool = False) -> Path:
    """An HF directory (loadable by AutoModelForCausalLM) plus ``elo_manifest.json``; written atomically by
    :func:`elo_lightning.io.atomic_dir` (kind ``"detached"``; ``inputs``/``overwrite`` as there)."""
    with atomic_dir(output, "detached", inputs=inputs, overwrite=overwrite) as tmp:
        detached.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / MANIFEST, manifest.to_json())
    return Path(output)


def read_manifest(path: str | Path) -> DetachManifest:
    """The manifest of a detached checkpoint, checked (valid JSON, layers that exist); reads no weights."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise ELOError(f"{path} is not an ELO detached checkpoint: no {MANIFEST}")
    return DetachManifest.from_json(read_json(file, "detached-checkpoint manifest"), where=str(file))


def load_detached(path: str | Path, dtype: torch.dtype | None = None) -> tuple[PreTrainedModel, DetachManifest]:
    manifest = read_manifest(path)
    config = load_config(path)
    if config.num_hidden_layers != len(manifest.layers):
        raise ELOError(f"{path}: config.json has {config.num_hidden_layers} layers but {MANIFEST} lists "
                       f"{len(manifest.layers)} ({manifest.layers_1based})")
    check_safetensors_files(path)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs), manifest


# -- commands ---------------------------------------------------------------------------------------------

def detach_cmd(model: str, layers: str, output: str, dtype: str = "float32", seed: int = 42,
               overwrite: bool = False) -> None:
    """Cut λ out of a model into a standalone HF directory (+ elo_manifest.json).

    Args:
        model: source model: HF directory, hub id, or architecture .json (random init).
        layers: λ, 1-based, e.g. "1,-1" or "1,16,32".
        output: directory to write (a non-empty one only if it holds an earlier detached checkpoint, or with
            --overwrite; never the model or a folder containing or inside it).
        dtype: float32, bfloat16 or float16.
        seed: seed when the source is an architecture config.
        overwrite: replace a non-empty output directory that is not an earlier detached checkpoint.
    """
    parse_layers(layers, load_config(model).num_hidden_layers)  # the layer spec before any weight is read
    guard = {"inputs": {"--model": model}, "overwrite": overwrite}
    check_output(output, "detached", **guard)  # before the (slow) load
    full = load_causal_lm(model, dtype=dtype, seed=seed)
    small, manifest = detach(full, layers, copy_weights=False)
    save_detached(small, manifest, output, tokenizer=saved_tokenizer(model), **guard)
    print(f"detached layers {manifest.layers_1based} of {manifest.source_num_layers} -> {output}")


def attach_cmd(model: str, detached: str, output: str, dtype: str = "float32", seed: int = 42,
               overwrite: bool = False) -> None:
    """Write a detached checkpoint's layers back into its source model and save the result.

    Args:
        model: the source model the layers were detached from.
        detached: directory written by `elo detach` or by ELO training.
        output: directory to write the full model to (a non-empty one only if it holds an earlier `elo attach`
            output, or with --overwrite; never an input).
        dtype: float32, bfloat16 or float16.
        seed: seed when the source is an architecture config.
        overwrite: replace a non-empty output directory that is not an earlier `elo attach` output.
    """
    read_manifest(detached)  # manifest and its layers before any weight is read
    guard = {"inputs": {"--model": model, "--detached": detached}, "overwrite": overwrite}
    check_output(output, "attached", **guard)  # before the (slow) load
    full = load_causal_lm(model, dtype=dtype, seed=seed)
    small, manifest = load_detached(detached, dtype=full.dtype)
    attach(full, small, manifest)
    with atomic_dir(output, "attached", **guard) as tmp:
        full.save_pretrained(tmp)
        tok = saved_tokenizer(detached) or saved_tokenizer(model)
        if tok is not None:
            tok.save_pretrained(tmp)
    print(f"attached layers {manifest.layers_1based} into {model} -> {output}")
