"""Chat vector arithmetic: ``output = target + ratio * (instruct - base)``, streamed tensor by tensor.

The chat vector (Huang et al., 2023) is the weight difference between an instruction-tuned model and its base.
Adding it to a language-adapted copy of the base (the ELO-aligned model) gives the adapted model chat ability
before bilingual SFT.

Memory: the three source checkpoints are opened with ``safetensors.safe_open`` (memory-mapped) and read one tensor
at a time; the output is written with a streaming safetensors writer whose headers are computed up front from the
tensor metadata, so at any moment the process holds at most one tensor from each source plus the result (a
handful of tensors, bounded by the largest tensor) -- never a whole model. Three 8B checkpoints can be combined on a
machine with a few GB of RAM.

Everything is validated from metadata (configs, tensor names, shapes, dtypes) before any tensor data is read.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open

from elo_lightning.errors import ELOError
from elo_lightning.io import MANIFEST, atomic_dir, check_output, write_json_atomic

VocabMismatch = Literal["slice", "keep_target", "error"]
VOCAB_MODES = ("slice", "keep_target", "error")
# config.json fields that belong to the tokenizer: taken from the instruct model (the architecture stays the target's)
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")
OUTPUT_KIND = "chat_vector"  # elo_lightning.io: only a chat-vector output is replaced without overwrite

# Substrings that identify vocabulary-sized tensors (rows = tokens), across the supported families.
VOCAB_TENSOR_KEYS = ("embed_tokens", "lm_head", "wte", "embed_out", "word_embeddings")
# Tokenizer / chat-template files copied from the instruct model.
TOKENIZER_FILE_GLOBS = (
    "tokenizer*",
    "special_tokens_map.json",
    "chat_template*",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)
# Config fields that must agree between the three models.
ARCH_FIELDS = ("model_type", "num_hidden_layers", "hidden_size")

_ST_DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_ST_NAME_TO_DTYPE = {v: k for k, v in _ST_DTYPES.items()}


# --------------------------------------------------------------------------------------------------- reading


class _Checkpoint:
    """Metadata view of a safetensors checkpoint directory (single file or sharded with an index)."""

    def __init__(self, directory: str | Path, role: str):
        self.dir = Path(directory)
        self.role = role
        if not self.dir.is_dir():
            raise ELOError(f"{role} model directory not found: {self.dir}")
        cfg = self.dir / "config.json"
        if not cfg.is_file():
            raise ELOError(f"{role} model {self.dir} has no config.json")
        self.config: dict[str, Any] = json.loads(cfg.read_text())
        index = self.dir / "model.safetensors.index.json"
        single = self.dir / "model.safetensors"
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            self.weight_map: dict[str, str] = dict(weight_map)
            for shard in sorted(set(self.weight_map.values())):
                if not (self.dir / shard).is_file():
                    raise ELOError(f"{role} model {self.dir}: shard {shard} listed in the index is missing")
        elif single.is_file():
            with safe_open(single, framework="pt") as f:
                self.weight_map = {k: "model.safetensors" for k in f.keys()}
        else:
            raise ELOError(
                f"{role} model {self.dir} has no safetensors weights (model.safetensors or "
                "model.safetensors.index.json); convert .bin checkpoints with save_pretrained first"
            )
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype] = {}
        for shard in sorted(set(self.weight_map.values())):
            with safe_open(self.dir / shard, framework="pt") as f:
                names = set(f.keys())
                for name, s in self.weight_map.items():
                    if s != shard:
                        continue
                    if name not in names:
                        raise ELOError(f"{role} model {self.dir}: tensor {name} not found in shard {shard}")
                    sl = f.get_slice(name)
                    self.shapes[name] = tuple(sl.get_shape())
                    dt = sl.get_dtype()
                    if dt not in _ST_NAME_TO_DTYPE:
                        raise ELOError(f"{role} model {self.dir}: unsupported dtype {dt} for {name}")
                    self.dtypes[name] = _ST_NAME_TO_DTYPE[dt]

    def names(self) -> set[str]:
        return set(self.weight_map)


class _Reader:
    """Reads tensors one by one. Each read opens the (memory-mapped) shard and closes it again, so the file
    pages touched so far are unmapped at once: resident memory stays at the tensors in flight instead of
    growing towards the size of the three checkpoints (header parsing per read is negligible)."""

    def __init__(self, ckpt: _Checkpoint):
        self.ckpt = ckpt

    def get(self, name: str) -> torch.Tensor:
        shard = self.ckpt.weight_map[name]
        with safe_open(self.ckpt.dir / shard, framework="pt") as handle:
            return _load_tensor(handle, name)


def _load_tensor(handle: Any, name: str) -> torch.Tensor:
    """Read one tensor from an open safetensors handle (module-level so tests can instrument it)."""
    return handle.get_tensor(name)


# --------------------------------------------------------------------------------------------------- writing


def parse_size(size: int | str) -> int:
    """``"5GB"``/``"200MB"``/``"64KB"``/int bytes -> bytes (decimal units, as HF uses); ``ELOError`` unless > 0."""
    bad = f"max_shard_size must be a size such as 5GB or a number of bytes, got {size!r}"
    if isinstance(size, bool):
        raise ELOError(bad)
    if isinstance(size, int):
        value = size
    else:
        s, mult = str(size).strip().upper(), 1
        units = (("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1))
        for unit, m in units:
            if s.endswith(unit):
                s, mult = s[: -len(unit)].strip(), m
                break
        try:
            number = float(s)
        except ValueError:
            raise ELOError(bad) from None
        value = int(number * mult) if math.isfinite(number) else 0
    if value <= 0:
        raise ELOError(f"max_shard_size must be positive, got {size!r}")
    return value


def _plan_shards(specs: list[tuple[str, tuple[int, ...], torch.dtype]], max_shard_bytes: int) -> list[list[int]]:
    shards: list[list[int]] = [[]]
    size = 0
    for i, (_, shape, dtype) in enumerate(specs):
        nbytes = _numel(shape) * _itemsize(dtype)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nbytes
    return shards


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class _StreamingShardWriter:
    """Writes one safetensors file whose header is known in advance; tensors are appended in header order."""

    def __init__(self, path: Path, specs: list[tuple[str, tuple[int, ...], torch.dtype]], metadata: dict[str, str]):
        header: dict[str, Any] = {"__metadata__": metadata}
        offset = 0
        self.expected: list[tuple[str, tuple[int, ...], torch.dtype]] = []
        for name, shape, dtype in specs:
            nbytes = _numel(shape) * _itemsize(dtype)
            header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            self.expected.append((name, tuple(shape), dtype))
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * ((8 - len(raw) % 8) % 8)  # safetensors aligns the data section to 8 bytes
        self.path = path
        self.total = offset
        self._fh = open(path, "wb")
        self._fh.write(struct.pack("<Q", len(raw)))
        self._fh.write(raw)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        exp_name, exp_shape, exp_dtype = self.expected[self._next]
        if name != exp_name or tuple(tensor.shape) != exp_shape or tensor.dtype != exp_dtype:
            raise RuntimeError(f"writer expected {exp_name}{exp_shape}/{exp_dtype}, got {name}{tuple(tensor.shape)}")
        data = tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
        self._fh.write(memoryview(data))
        self._next += 1

    def close(self) -> None:
        self._fh.close()
        if self._next != len(self.expected):
            raise RuntimeError(f"{self.path}: wrote {self._next} of {len(self.expected)} tensors")


# --------------------------------------------------------------------------------------------------- validation


def is_vocab_tensor(name: str) -> bool:
    return any(k in name for k in VOCAB_TENSOR_KEYS)


def _check_architectures(base: _Checkpoint, instruct: _Checkpoint, target: _Checkpoint) -> None:
    for field in ARCH_FIELDS:
        values = {c.role: _config_field(c.config, field) for c in (base, instruct, target)}
        if len({json.dumps(v) for v in values.values()}) != 1:
            raise ELOError(
                f"architecture mismatch on {field}: "
                + ", ".join(f"{role}={v!r}" for role, v in values.items())
                + "; a chat vector only transfers between models of the same architecture"
            )


def _config_field(config: dict[str, Any], field: str) -> Any:
    if field in config:
        return config[field]
    text = config.get("text_config")  # multimodal wrappers keep the LM config nested
    if isinstance(text, dict):
        return text.get(field)
    return None


def _check_tensors(base: _Checkpoint, instruct: _Checkpoint, target: _Checkpoint) -> None:
    names = {c.role: c.names() for c in (base, instruct, target)}
    union = set().union(*names.values())
    for c in (base, instruct, target):
        missing = sorted(union - names[c.role])
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise ELOError(f"tensor {missing[0]} missing in the {c.role} model {c.dir}: {', '.join(missing[:5])}{more}")


# --------------------------------------------------------------------------------------------------- main entry


def apply_chat_vector(
    base: str,
    instruct: str,
    target: str,
    output: str,
    ratio: float = 1.0,
    skip: Sequence[str] = (),
    vocab_mismatch: VocabMismatch = "slice",
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``target + ratio * (instruct - base)`` to ``output``, tensor by tensor.

    Args:
        base: the base model directory (θ_base), e.g. ``Qwen/Qwen2.5-7B`` saved locally.
        instruct: its instruction-tuned sibling (θ_inst); the result speaks like it: its tokenizer files and chat
            template are copied byte for byte, its generation_config.json (EOS ids such as Llama-3.1's
            <|eot_id|>, sampling defaults) and the token ids of its config.json are taken.
        target: the language-adapted model (e.g. ELO-aligned) that receives the vector; its architecture config
            and dtype are kept.
        output: output directory (safetensors shards + index, config, tokenizer, ``elo_manifest.json``).
        ratio: scale of the chat vector.
        skip: tensors whose name contains any of these substrings are copied from the target unchanged
            (default: none, the vector is added to every parameter; e.g. ``("embed_tokens", "lm_head")`` opts out).
        vocab_mismatch: for embedding/head tensors whose row count differs between the models: ``"slice"``
            (default) adds the vector to the rows common to all three and keeps the target's other rows,
            ``"keep_target"`` keeps the target's whole tensor, ``"error"`` refuses. The manifest lists every
            tensor skipped, kept or sliced.
        max_shard_size: maximum output shard size (bytes or ``"5GB"``-style string).
        overwrite: replace a non-empty ``output`` that is not a previous chat-vector output. Either way the output
            is written by ``elo_lightning.io.atomic_dir``: built beside, swapped in when complete (a failure keeps
            the old output whole), never into or over one of the three inputs.

    Returns:
        ``{"added", "skipped", "sliced", "vocab_kept", "copied_non_float", "tensors", "shards", "output"}``.

    Raises:
        ELOError: different architectures, a tensor missing from one model, a shape mismatch (other than
        vocabulary rows handled by ``vocab_mismatch``), an unusable output directory.
    """
    if vocab_mismatch not in VOCAB_MODES:
        raise ELOError(f"vocab_mismatch must be one of {', '.join(VOCAB_MODES)}, got {vocab_mismatch!r}")
    max_shard_bytes = parse_size(max_shard_size)
    if not math.isfinite(float(ratio)):
        raise ELOError(f"ratio must be a finite number, got {ratio!r}")
    skip = tuple(skip or ())
    out_dir = Path(output)
    sources = {"base": Path(base), "instruct": Path(instruct), "target": Path(target)}
    guard = {"inputs": {f"{role} model": src for role, src in sources.items()}, "overwrite": overwrite}
    check_output(out_dir, OUTPUT_KIND, **guard)

    b, i, t = (_Checkpoint(sources[r], r) for r in ("base", "instruct", "target"))
    _check_architectures(b, i, t)
    _check_tensors(b, i, t)
    plan = plan_tensors(b, i, t, skip, vocab_mismatch)
    with atomic_dir(out_dir, OUTPUT_KIND, **guard) as tmp:  # the old output stays whole until this one is complete
        counts, n_shards, total_size = _write_weights(plan, (b, i, t), tmp, ratio, max_shard_bytes)
        copied_tok = _copy_side_files(i, t, tmp)
        by_action = {a: [name for name, act in plan if act == a] for a in ("skip", "vocab_keep", "slice")}
        manifest = {
            "stage": "chat_vector",
            "formula": "target + ratio * (instruct - base)",
            "sources": {role: str(p.resolve()) for role, p in sources.items()},
            "ratio": ratio,
            "skip": list(skip),
            "vocab_mismatch": vocab_mismatch,
            "counts": counts,
            "skipped": by_action["skip"],
            "vocab_kept": by_action["vocab_keep"],
            "sliced": {name: {"rows_added": min(c.shapes[name][0] for c in (b, i, t)), "target_rows": t.shapes[name][0]}
                       for name in by_action["slice"]},
            "tensors": len(plan),
            "shards": n_shards,
            "tokenizer_files_from_instruct": copied_tok,
            "from_instruct": {"generation_config": (i.dir / GENERATION_CONFIG).is_file(),
                              "config_token_ids": [k for k in TOKEN_ID_FIELDS if k in i.config]},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    return {**counts, "tensors": len(plan), "shards": n_shards, "total_bytes": total_size, "output": str(out_dir)}


ACTION_COUNTS = {"add": "added", "skip": "skipped", "slice": "sliced", "vocab_keep": "vocab_kept",
                 "copy_non_float": "copied_non_float"}


def plan_tensors(b: _Checkpoint, i: _Checkpoint, t: _Checkpoint, skip: tuple[str, ...],
                 vocab_mismatch: VocabMismatch) -> list[tuple[str, str]]:
    """``(name, action)`` for every tensor, from metadata only, in the order of the target's shards."""
    order = sorted(t.weight_map, key=lambda n: (t.weight_map[n], n))  # sequential reads of the target's shards
    return [(name, _action(name, (b.shapes[name], i.shapes[name], t.shapes[name]), t.dtypes[name], skip,
                           vocab_mismatch)) for name in order]


def _action(name: str, shapes: tuple, dtype: torch.dtype, skip: tuple[str, ...], vocab_mismatch: VocabMismatch) -> str:
    if any(s in name for s in skip):
        return "skip"
    mismatch = f"shape mismatch for {name}: base {shapes[0]}, instruct {shapes[1]}, target {shapes[2]}"
    if not dtype.is_floating_point:
        if len(set(shapes)) != 1:
            raise ELOError(mismatch)
        return "copy_non_float"
    if len(set(shapes)) == 1:
        return "add"
    rows_only = is_vocab_tensor(name) and len({s[1:] for s in shapes}) == 1 and len({len(s) for s in shapes}) == 1
    if not rows_only:
        raise ELOError(mismatch)
    if vocab_mismatch == "error":
        raise ELOError(
            f"vocabulary size differs for {name}: base {shapes[0][0]}, instruct {shapes[1][0]}, "
            f"target {shapes[2][0]} rows (use vocab_mismatch='slice' or 'keep_target', or add it to skip)"
        )
    return "vocab_keep" if vocab_mismatch == "keep_target" else "slice"


def _write_weights(plan: list[tuple[str, str]], checkpoints: tuple[_Checkpoint, ...], out_dir: Path, ratio: float,
                   max_shard_bytes: int) -> tuple[dict[str, int], int, int]:
    """Stream every planned tensor into safetensors shards (+ index when several); (counts, shards, total bytes)."""
    t = checkpoints[-1]
    specs = [(name, t.shapes[name], t.dtypes[name]) for name, _ in plan]
    shard_groups = _plan_shards(specs, max_shard_bytes)
    n_shards = len(shard_groups)
    shard_names = (
        ["model.safetensors"]
        if n_shards == 1
        else [f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors" for k in range(n_shards)]
    )
    counts = {v: 0 for v in ACTION_COUNTS.values()}
    weight_map: dict[str, str] = {}
    total_size = 0
    readers = {c.role: _Reader(c) for c in checkpoints}
    for shard_name, group in zip(shard_names, shard_groups):
        writer = _StreamingShardWriter(out_dir / shard_name, [specs[k] for k in group], {"format": "pt"})
        try:
            for k in group:
                name, action = plan[k]
                result = _combine(name, action, readers, ratio)
                writer.write(name, result)
                del result
                counts[ACTION_COUNTS[action]] += 1
                weight_map[name] = shard_name
        except BaseException:
            writer._fh.close()  # the temp folder goes with it; the original error stays the one raised
            raise
        writer.close()
        total_size += writer.total
    if n_shards > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        write_json_atomic(out_dir / "model.safetensors.index.json", index)
    return counts, n_shards, total_size


GENERATION_CONFIG = "generation_config.json"


def _copy_side_files(instruct: _Checkpoint, target: _Checkpoint, out_dir: Path) -> list[str]:
    """The result speaks like the instruct model: its tokenizer files and chat template (byte for byte: re-saving
    can change a normaliser), its generation config (EOS ids, sampling defaults; the target's when it has none)
    and the token ids of its config; the architecture config is the target's."""
    config = {**target.config, **{k: instruct.config[k] for k in TOKEN_ID_FIELDS if k in instruct.config}}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for source in (instruct.dir, target.dir):
        if (source / GENERATION_CONFIG).is_file():
            shutil.copy2(source / GENERATION_CONFIG, out_dir / GENERATION_CONFIG)
            break
    copied: list[str] = []
    for pattern in TOKENIZER_FILE_GLOBS:
        for f in sorted(instruct.dir.glob(pattern)):
            if f.is_file():
                shutil.copy2(f, out_dir / f.name)
                copied.append(f.name)
    return copied


def _combine(name: str, action: str, readers: dict[str, _Reader], ratio: float) -> torch.Tensor:
    """One output tensor; holds at most the three source tensors and their float32 working copies."""
    tgt = readers["target"].get(name)
    if action in ("skip", "vocab_keep", "copy_non_float"):
        return tgt
    dtype = tgt.dtype
    out = tgt.to(torch.float32, copy=True)
    del tgt
    inst = readers["instruct"].get(name)
    base = readers["base"].get(name)
    if action == "add":
        delta = inst.to(torch.float32) - base.to(torch.float32)
        out.add_(delta, alpha=ratio)
    else:  # slice: vector on the rows common to all three
        n = min(inst.shape[0], base.shape[0], out.shape[0])
        delta = inst[:n].to(torch.float32) - base[:n].to(torch.float32)
        out[:n].add_(delta, alpha=ratio)
    del inst, base, delta
    return out.to(dtype)


def iter_output_tensors(directory: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream (name, tensor) from a safetensors checkpoint directory (utility for checks and tests)."""
    ckpt = _Checkpoint(directory, "checkpoint")
    reader = _Reader(ckpt)
    for name in sorted(ckpt.weight_map):
        yield name, reader.get(name)


def chat_vector_cmd(
    base: str,
    instruct: str,
    target: str,
    output: str,
    ratio: float = 1.0,
    skip: list[str] | None = None,
    vocab_mismatch: str = "slice",
    max_shard_size: str = "5GB",
    overwrite: bool = False,
) -> None:
    """target + ratio * (instruct - base), tensor by tensor, streamed from safetensors (three 8B models never in RAM).

    Args:
        base: the base model the instruct model was tuned from.
        instruct: its instruction-tuned version (its tokenizer and chat template are copied).
        target: the model to receive the vector (the ELO-aligned model).
        output: directory to write.
        ratio: scale of the chat vector.
        skip: tensor-name parts copied from target unchanged (default: none, every parameter gets the vector;
            e.g. [embed_tokens,lm_head]).
        vocab_mismatch: when embedding/head rows differ: slice (add on the common rows), keep_target or error.
        max_shard_size: output shard size, e.g. 5GB.
        overwrite: replace a non-empty output directory that is not an earlier chat-vector output (never an input).
    """
    summary = apply_chat_vector(
        base, instruct, target, output, ratio=ratio, skip=tuple(skip or ()),
        vocab_mismatch=vocab_mismatch, max_shard_size=max_shard_size, overwrite=overwrite,
    )
    print(json.dumps(summary, indent=2, default=str))
