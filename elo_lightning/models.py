"""Loading causal LMs from wherever a user keeps them: an HF directory, a hub id, or a bare architecture config.

Only an architecture ``.json`` file is random-initialised (speed does not depend on the weights, so benchmarks and
the offline default run need no downloads). A model *directory* must hold loadable weights: one without any, with
sharded weights but no index, or with an index naming a missing shard is refused with a one-line ``ELOError`` --
never silently trained from a random init.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from elo_lightning.errors import ELOError
from elo_lightning.io import atomic_dir, check_output, read_json

# Decoder-only families whose layout (model.embed_tokens, model.layers, model.norm, lm_head) surgery is tested on.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")

# (single file, index of a sharded checkpoint), in the order from_pretrained prefers them.
_WEIGHT_FORMATS = (
    ("model.safetensors", "model.safetensors.index.json"), ("pytorch_model.bin", "pytorch_model.bin.index.json")
)
_SHARD_GLOBS = ("model-*-of-*.safetensors", "pytorch_model-*-of-*.bin")

# The weight matrices of one decoder layer (attention and MLP projections): LoRA's default targets, FLOP accounting.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
AUTO = "auto"  # the dtype the checkpoint was saved in (what `elo detach/attach/eval` use by default)

# Attention kernels a stage may ask for; each keeps packed sequences apart through position_ids.
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def check_attn_implementation(name: str | None) -> None:
    """None = transformers' choice. flash_attention_2 needs the flash_attn package (CUDA)."""
    if name is None:
        return
    if name not in ATTN_IMPLEMENTATIONS:
        raise ELOError(f"unknown attn_implementation {name!r}; choose one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if name == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise ELOError("attn_implementation=flash_attention_2 needs flash_attn (pip install flash-attn; CUDA); "
                           "use sdpa")


def resolve_dtype(dtype: str | torch.dtype | None, source: str | Path | None = None) -> torch.dtype:
    """``None`` = the current default dtype (the training dtype), which Lightning sets to bf16 inside
    ``configure_model`` under ``precision="bf16-true"``: weights are then loaded directly in bf16, never
    materialised in fp32. ``"auto"`` = the dtype ``source`` was saved in (its config's ``dtype``), so a bf16
    checkpoint stays bf16; a source without weights (architecture .json) falls back to the default dtype."""
    if dtype is None:
        return torch.get_default_dtype()
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == AUTO:
        return (checkpoint_dtype(source) if source is not None else None) or torch.get_default_dtype()
    if dtype not in DTYPES:
        raise ELOError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES) + [AUTO]}")
    return DTYPES[dtype]


def checkpoint_dtype(source: str | Path) -> torch.dtype | None:
    """The dtype a checkpoint's weights were saved in (config ``dtype``/``torch_dtype``); None without weights.

    Local safetensors weights are asked directly (the first floating tensor's dtype) when the config says nothing."""
    if not has_weights(source):
        return None
    config = load_config(source)
    name = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(name, torch.dtype):
        return name
    if isinstance(name, str) and name in DTYPES:
        return DTYPES[name]
    from safetensors import safe_open

    stored = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
    for name, shard in (weight_files(source) or {}).items():
        with safe_open(shard, framework="pt") as f:
            kind = f.get_slice(name).get_dtype()
        if kind in stored:
            return stored[kind]
    return None


def check_architecture(config: PretrainedConfig) -> None:
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ELOError(
            f"unknown architecture {config.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def load_config(source: str | Path) -> PretrainedConfig:
    """Config from a ``.json`` architecture file, an HF directory, or a hub id."""
    path = Path(source)
    if path.suffix == ".json":
        if not path.is_file():
            raise ELOError(f"architecture config not found: {path}")
        fields = read_json(path, "architecture config")
        if not isinstance(fields, dict):
            raise ELOError(f"{path} is not an architecture config (expected a JSON object)")
        model_type = fields.pop("model_type", None)
        if model_type is None:
            raise ELOError(f"{path} has no 'model_type'; cannot tell the architecture")
        try:
            config = AutoConfig.for_model(model_type, **fields)
        except ValueError as err:
            raise ELOError(f"unknown architecture {model_type!r} in {path}: {err}") from None
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ELOError(f"{path} is not a model directory: no config.json")
        read_json(path / "config.json", "model config")  # a clear error for a broken file, before transformers
        config = AutoConfig.from_pretrained(path)
    elif path.exists() or str(source).startswith((".", "/")):
        raise ELOError(f"model not found: {source}")
    else:
        try:
            config = AutoConfig.from_pretrained(str(source))
        except OSError as err:
            raise ELOError(f"cannot load {source!r} (not a local path; hub lookup failed: {err})") from None
    check_architecture(config)
    return config


def check_safetensors(file: str | Path) -> None:
    """Cheap integrity check of one ``.safetensors`` file from its header: empty, truncated or corrupt files
    raise ELOError naming the file (the tensor bytes themselves are not checksummed by the format)."""
    file = Path(file)
    size = file.stat().st_size
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little") if size >= 8 else -1
        if n < 0 or 8 + n > size:
            raise ELOError(f"cannot load the weights: {file} is empty or truncated ({size:,} bytes)")
        try:
            header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise ELOError(f"cannot load the weights: {file} is corrupt (unreadable safetensors header)") from None
    if 8 + n + end != size:
        raise ELOError(f"cannot load the weights: {file} is truncated or corrupt ({size:,} bytes, its header "
                       f"describes {8 + n + end:,})")


def check_safetensors_files(directory: str | Path) -> None:
    """:func:`check_safetensors` on every ``.safetensors`` file of a model directory, before loading any."""
    for file in sorted(Path(directory).glob("*.safetensors")):
        check_safetensors(file)


def is_architecture_file(source: str | Path) -> bool:
    """An architecture ``.json`` file: the only source that is random-initialised."""
    return Path(source).suffix == ".json" and not Path(source).is_dir()


def check_weights(directory: str | Path) -> None:
    """Refuse a model directory whose weights ``from_pretrained`` could not load completely (``ELOError``)."""
    path = Path(directory)
    for single, index in _WEIGHT_FORMATS:
        if (path / index).is_file():
            try:
                weight_map = json.loads((path / index).read_text())["weight_map"]
            except (ValueError, KeyError, TypeError):
                raise ELOError(f"model {path}: {index} is not a valid weight index (no weight_map)") from None
            missing = sorted({s for s in weight_map.values() if not (path / s).is_file()})
            if missing:
                raise ELOError(f"model {path}: shard {missing[0]} named in {index} is missing"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
            return
        if (path / single).is_file():
            return
    shards = sorted(p.name for g in _SHARD_GLOBS for p in path.glob(g))
    if shards:
        raise ELOError(f"model {path}: sharded weights ({shards[0]}, ...) without their index "
                       "(model.safetensors.index.json); copy the index too")
    raise ELOError(f"model {path} has no weights (model.safetensors or an index of shards); random init comes "
                   "only from an architecture .json file")


def has_weights(source: str | Path) -> bool:
    """Whether ``source`` is loaded with weights (an HF directory, checked by :func:`check_weights`, or a hub id)
    rather than random-initialised (an architecture ``.json``)."""
    return not is_architecture_file(source)


def init_model(config: PretrainedConfig, seed: int = 42, dtype: str | torch.dtype | None = None,
               attn_implementation: str | None = None) -> PreTrainedModel:
    """Random init from an architecture config, reproducible by seed."""
    check_architecture(config)
    check_attn_implementation(attn_implementation)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype),
                                                 attn_implementation=attn_implementation)
    return model


def load_causal_lm(
    source: str | Path, dtype: str | torch.dtype | None = None, seed: int = 42, device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """A causal LM from an HF directory or hub id (weights loaded) or an architecture ``.json`` (random init).

    ``dtype``: None = the default (training) dtype, ``"auto"`` = the checkpoint's own, or a name.
    ``attn_implementation``: sdpa, eager or flash_attention_2 (None = transformers' default, sdpa)."""
    check_attn_implementation(attn_implementation)
    attn = {"attn_implementation": attn_implementation}
    if str(device) == "meta":
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(load_config(source), dtype=resolve_dtype(dtype, source), **attn)
    if not has_weights(source):
        return init_model(load_config(source), seed=seed, dtype=resolve_dtype(dtype, source), **attn).to(device)
    load_config(source)  # architecture check and clear errors before the (slow) weight load
    if Path(source).is_dir():
        check_weights(source)
        check_safetensors_files(source)  # names the broken file, before from_pretrained reads any
    from safetensors import SafetensorError

    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(source), dtype=resolve_dtype(dtype, source),
                                                          output_loading_info=True, **attn)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # truncated/corrupt or unreadable weights
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ELOError(f"cannot load the weights of {source}: {type(err).__name__}: {first}") from None
    missing = list(info.get("missing_keys") or []) + [k for k, *_ in info.get("mismatched_keys") or []]
    if missing:  # from_pretrained would train these from a random init, silently
        raise ELOError(f"model {source}: weights for {len(missing)} tensors missing or of the wrong shape in its "
                       f"checkpoint (e.g. {min(missing)})")
    return model.to(device)


def weight_files(source: str | Path) -> dict[str, Path] | None:
    """Tensor name -> safetensors file of a local HF directory (single file or sharded with an index);
    ``None`` when the weights cannot be read by name (an architecture .json, a hub id, a .bin checkpoint)."""
    path = Path(source)
    if path.suffix == ".json" or not path.is_dir():
        return None
    index, single = path / "model.safetensors.index.json", path / "model.safetensors"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        missing = sorted({f for f in weight_map.values() if not (path / f).is_file()})
        if missing:
            raise ELOError(f"{path}: shard {missing[0]} listed in the index is missing")
        for f in sorted(set(weight_map.values())):
            check_safetensors(path / f)
        return {name: path / f for name, f in weight_map.items()}
    if single.is_file():
        from safetensors import safe_open

        check_safetensors(single)  # one line naming the file, not safetensors' own error
        with safe_open(single, framework="pt") as f:
            return {name: single for name in f.keys()}
    return None


def read_tensors(
    files: dict[str, Path], names: dict[str, str], dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """``{key: tensor}`` for ``names = {key: tensor name in the checkpoint}``, read by name from memory-mapped
    safetensors shards (only these tensors are read), cast to ``dtype`` (None: as stored), one shard at a time."""
    from safetensors import safe_open

    missing = sorted(src for src in names.values() if src not in files)
    if missing:
        raise ELOError(f"tensor {missing[0]} not found in the checkpoint ({len(missing)} missing)")
    by_shard: dict[Path, list[tuple[str, str]]] = {}
    for key, src in names.items():
        by_shard.setdefault(files[src], []).append((key, src))
    out: dict[str, torch.Tensor] = {}
    for shard, items in sorted(by_shard.items()):
        with safe_open(shard, framework="pt") as f:
            for key, src in items:
                tensor = f.get_tensor(src)
                out[key] = tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)
    return out


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder stack of an HF causal LM (``model.model.layers``)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ELOError(f"{type(model).__name__} has no model.layers decoder stack; unsupported architecture")
    return layers


def saved_tokenizer(path: str | Path):
    """The tokenizer saved in an HF directory, or None when it holds none."""
    if not Path(path, "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def init_cmd(arch: str, output: str, tokenizer: str | None = None, seed: int = 42, dtype: str = "float32",
             overwrite: bool = False) -> None:
    """Random-init a model from an architecture config (offline runs, benchmarks) and save it as an HF directory.

    Args:
        arch: architecture .json (e.g. configs/models/tiny-llama.json).
        output: directory to write (a non-empty one only if it holds an earlier `elo init` output, or with
            --overwrite; never an input).
        tokenizer: tokenizer directory to save alongside (e.g. configs/tokenizer).
        seed: initialisation seed.
        dtype: float32, bfloat16 or float16.
        overwrite: replace a non-empty output directory that is not an earlier `elo init` output.
    """
    from transformers import AutoTokenizer

    if not is_architecture_file(arch):
        raise ELOError(f"elo init takes an architecture .json file, got {arch} (a model directory is loaded, "
                       "never re-initialised)")
    guard = {"inputs": {"--arch": arch, "--tokenizer": tokenizer}, "overwrite": overwrite}
    check_output(output, "init", **guard)
    model = init_model(load_config(arch), seed=seed, dtype=dtype)
    with atomic_dir(output, "init", **guard) as tmp:
        model.save_pretrained(tmp)
        if tokenizer:
            tok = AutoTokenizer.from_pretrained(tokenizer)
            if len(tok) > model.config.vocab_size:
                raise ELOError(f"tokenizer has {len(tok)} tokens, model vocabulary {model.config.vocab_size}")
            tok.save_pretrained(tmp)
    print(f"initialised {model.config.model_type} ({sum(p.numel() for p in model.parameters()):,} params) -> {output}")
