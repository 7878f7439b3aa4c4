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
    read_tensors,
    resolve_dtype,
    saved_tokenizer,
    weight_files,
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
    embed = embed.detach()
    return _fingerprint(embed[:: _fingerprint_stride(embed.shape[0])], model.model.norm.weight.detach())


def _fingerprint_stride(rows: int) -> int:
    return max(1, rows // 64)


def _fingerprint(rows: torch.Tensor, norm: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in (rows, norm):
        h.update(t.float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def checkpoint_fingerprint(source: str | Path) -> str | None:
    """``fingerprint`` of a local safetensors checkpoint, reading only ~64 embedding rows and the final norm
    (by name, memory-mapped); None when the weights cannot be read by name (hub id, .bin, architecture .json)."""
    files = weight_files(source)
    if files is None:
        return None
    from safetensors import safe_open

    embed, norm = "model.embed_tokens.weight", "model.norm.weight"
    for name in (embed, norm):
        if name not in files:
            raise ELOError(f"{source}: tensor {name} not found in the checkpoint")
    with safe_open(files[embed], framework="pt") as f:
        sl = f.get_slice(embed)
        n = sl.get_shape()[0]
        rows = torch.cat([sl[i : i + 1] for i in range(0, n, _fingerprint_stride(n))])
    return _fingerprint(rows, read_tensors(files, {"norm": norm})["norm"])


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


def detach_from_checkpoint(
    source: str | Path, layers: str | Sequence[int], dtype: str | torch.dtype | None = None
) -> tuple[PreTrainedModel, DetachManifest]:
    """The small model of ``detach``, built without the full model: from the config, with only the embedding,
    the layers λ, the final norm and the LM head read from the safetensors shards (by tensor name,
    memory-mapped), cast to ``dtype`` (None: the default/training dtype; "auto": the checkpoint's).

    Peak memory is the small model plus one tensor in flight, instead of the whole model (in fp32 by default)
    plus the copy. The layer selection is checked against the config before any weight is read. Needs a local
    directory with safetensors weights (``weight_files``); the others go through ``detach`` of a loaded model.
    """
    config = load_config(source)
    idx = parse_layers(layers, config.num_hidden_layers)  # cheap checks first
    files = weight_files(source)
    if files is None:
        raise ELOError(f"{source}: no safetensors weights to read by name (convert with save_pretrained)")
    from accelerate import init_empty_weights

    small_config = _subset_config(config, idx)
    with init_empty_weights(include_buffers=False):  # parameters on meta; buffers (RoPE tables) computed
        small = AutoModelForCausalLM.from_config(small_config, dtype=resolve_dtype(dtype, source))
    target = small.dtype
    names = {}
    for key in small.state_dict():
        parts = key.split(".")
        if parts[:2] == ["model", "layers"]:
            parts[2] = str(idx[int(parts[2])])
        names[key] = ".".join(parts)
    tied = {k for k, src in names.items() if src not in files and k == "lm_head.weight" and config.tie_word_embeddings}
    state = read_tensors(files, {k: v for k, v in names.items() if k not in tied})
    source_fp = _fingerprint(state["model.embed_tokens.weight"][:: _fingerprint_stride(config.vocab_size)],
                             state["model.norm.weight"])
    state = {k: (v if v.dtype == target or not v.is_floating_point() else v.to(target)) for k, v in state.items()}
    small.load_state_dict(state, strict=False, assign=True)
    del state
    if tied:
        small.tie_weights()
    left = [n for n, t in [*small.named_parameters(), *small.named_buffers()] if t.is_meta]
    if left:
        raise ELOError(f"unsupported architecture {type(small).__name__}: parts not read from {source}: {left[:5]}")
    small.eval()
    if (Path(source) / "generation_config.json").is_file():
        from transformers import GenerationConfig

        small.generation_config = GenerationConfig.from_pretrained(source)
    return small, detach_manifest(config, idx, source_fp)


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


def _check_shape(config, num_layers: int, manifest: DetachManifest) -> None:
    mine = (config.model_type, num_layers, config.hidden_size, config.vocab_size)
    theirs = (manifest.model_type, manifest.source_num_layers, manifest.hidden_size, manifest.vocab_size)
    if mine != theirs:
        raise ELOError(
            "detached checkpoint comes from a different model: "
            f"(type, layers, hidden, vocab) = {theirs}, this model has {mine}"
        )


def _check_fingerprint(found: str | None, manifest: DetachManifest) -> None:
    if manifest.fingerprint and found is not None and found != manifest.fingerprint:
        raise ELOError(
            f"detached checkpoint comes from a different model ({manifest.source or 'unknown source'}): "
            "embedding/norm fingerprint differs"
        )


def check_source(source: str | Path, manifest: DetachManifest) -> None:
    """``check_compatible`` before loading the full model: config shape, then the fingerprint read from the
    safetensors shards (a few embedding rows and the norm). Sources not readable by name are checked after load."""
    config = load_config(source)
    _check_shape(config, config.num_hidden_layers, manifest)
    _check_fingerprint(checkpoint_fingerprint(source), manifest)


def check_compatible(model: PreTrainedModel, detached: PreTrainedModel, manifest: DetachManifest) -> None:
    _check_shape(model.config, len(decoder_layers(model)), manifest)
    _check_fingerprint(fingerprint(model), manifest)
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


def rounded_by_attach(model: PreTrainedModel, detached: PreTrainedModel, manifest: DetachManifest) -> list[str]:
    """Names of the detached tensors that ``attach`` would change by casting them to the model's dtype (fp32 ELO
    output written into a bf16 model rounds away trained updates); empty when the dtypes agree."""
    dtype = model.dtype
    changed = []
    for name, tensor in _attached_state(detached, manifest).items():
        if not tensor.is_floating_point() or tensor.dtype == dtype:
            continue
        if not torch.equal(tensor.to(dtype).to(tensor.dtype), tensor):
            changed.append(name)
    return changed


def _attached_state(detached: PreTrainedModel, manifest: DetachManifest) -> dict[str, torch.Tensor]:
    """What ``attach`` writes: the λ layers and the shared parts the manifest marks as trained."""
    state = {f"layers.{i}.{k}": v for n, i in enumerate(manifest.layers)
             for k, v in decoder_layers(detached)[n].state_dict().items()}
    parts = {"embed_tokens": detached.get_input_embeddings(), "norm": detached.model.norm, "lm_head": detached.lm_head}
    for part, module in parts.items():
        if manifest.trained.get(part):
            state.update({f"{part}.{k}": v for k, v in module.state_dict().items()})
    return state


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

def detach_cmd(model: str, layers: str, output: str, dtype: str = "auto", seed: int = 42,
               overwrite: bool = False) -> None:
    """Cut λ out of a model into a standalone HF directory (+ elo_manifest.json).

    Args:
        model: source model: HF directory, hub id, or architecture .json (random init).
        layers: λ, 1-based, e.g. "1,-1" or "1,16,32".
        output: directory to write (a non-empty one only if it holds an earlier detached checkpoint, or with
            --overwrite; never the model or a folder containing or inside it).
        dtype: auto (the source's own: a bf16 checkpoint stays bf16), float32, bfloat16 or float16.
        seed: seed when the source is an architecture config.
        overwrite: replace a non-empty output directory that is not an earlier detached checkpoint.
    """
    parse_layers(layers, load_config(model).num_hidden_layers)  # the layer spec before any weight is read
    guard = {"inputs": {"--model": model}, "overwrite": overwrite}
    check_output(output, "detached", **guard)  # before the (slow) load
    if weight_files(model) is not None:  # a local safetensors checkpoint: read only what is kept
        small, manifest = detach_from_checkpoint(model, layers, dtype=dtype)
    else:
        full = load_causal_lm(model, dtype=dtype, seed=seed)
        small, manifest = detach(full, layers, copy_weights=False)
    save_detached(small, manifest, output, tokenizer=saved_tokenizer(model), **guard)
    print(f"detached layers {manifest.layers_1based} of {manifest.source_num_layers} ({small.dtype}) -> {output}")


def attach_cmd(model: str, detached: str, output: str, dtype: str = "auto", seed: int = 42,
               overwrite: bool = False) -> None:
    """Write a detached checkpoint's layers back into its source model and save the result.

    Args:
        model: the source model the layers were detached from.
        detached: directory written by `elo detach` or by ELO training.
        output: directory to write the full model to (a non-empty one only if it holds an earlier `elo attach`
            output, or with --overwrite; never an input).
        dtype: auto (the source model's own), float32, bfloat16 or float16; the detached tensors are cast to it.
        seed: seed when the source is an architecture config.
        overwrite: replace a non-empty output directory that is not an earlier `elo attach` output.
    """
    read_manifest(detached)  # manifest and its layers before any weight is read
    guard = {"inputs": {"--model": model, "--detached": detached}, "overwrite": overwrite}
    check_output(output, "attached", **guard)  # before the (slow) load
    check_source(model, read_manifest(detached))  # a mismatched checkpoint is refused before the full load
    full = load_causal_lm(model, dtype=dtype, seed=seed)
    small, manifest = load_detached(detached)  # in the dtype it was saved in
    rounded = rounded_by_attach(full, small, manifest)
    attach(full, small, manifest)
    with atomic_dir(output, "attached", **guard) as tmp:
        full.save_pretrained(tmp)
        tok = saved_tokenizer(detached) or saved_tokenizer(model)
        if tok is not None:
            tok.save_pretrained(tmp)
    print(f"attached layers {manifest.layers_1based} into {model} ({full.dtype}) -> {output}")
    if rounded:
        total = len(_attached_state(small, manifest))
        print(f"note: {len(rounded)} of {total} attached tensors changed when rounded from {small.dtype} to "
              f"{full.dtype} (trained updates below its resolution are lost); --dtype float32 keeps them")
