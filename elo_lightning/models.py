"""Loading causal LMs from wherever a user keeps them: an HF directory, a hub id, or a bare architecture config.

A bare config (a ``.json`` file, or a directory with ``config.json`` but no weights) is random-initialised:
speed does not depend on the weights, so benchmarks and the offline default run need no downloads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from elo_lightning.errors import ELOError
from elo_lightning.io import atomic_dir, read_json

# Decoder-only families whose layout (model.embed_tokens, model.layers, model.norm, lm_head) surgery is tested on.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")

_WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)

# The weight matrices of one decoder layer (attention and MLP projections): LoRA's default targets, FLOP accounting.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``None`` = the current default dtype, which Lightning sets to bf16 inside ``configure_model`` under
    ``precision="bf16-true"``: weights are then loaded directly in bf16, never materialised in fp32."""
    if dtype is None:
        return torch.get_default_dtype()
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ELOError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


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


def has_weights(source: str | Path) -> bool:
    path = Path(source)
    if path.suffix == ".json":
        return False
    if path.is_dir():
        return any((path / name).is_file() for name in _WEIGHT_FILES)
    return True  # a hub id: the weights live there


def init_model(config: PretrainedConfig, seed: int = 42, dtype: str | torch.dtype | None = None) -> PreTrainedModel:
    """Random init from an architecture config, reproducible by seed."""
    check_architecture(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype))
    return model


def load_causal_lm(
    source: str | Path, dtype: str | torch.dtype | None = None, seed: int = 42, device: str | torch.device = "cpu"
) -> PreTrainedModel:
    """A causal LM from an HF directory or hub id (weights loaded) or an architecture config (random init)."""
    if str(device) == "meta":
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(load_config(source), dtype=resolve_dtype(dtype))
    if not has_weights(source):
        return init_model(load_config(source), seed=seed, dtype=dtype).to(device)
    load_config(source)  # architecture check and clear errors before the (slow) weight load
    check_safetensors_files(source)
    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=resolve_dtype(dtype))
    return model.to(device)


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


def init_cmd(arch: str, output: str, tokenizer: str | None = None, seed: int = 42, dtype: str = "float32") -> None:
    """Random-init a model from an architecture config (offline runs, benchmarks) and save it as an HF directory.

    Args:
        arch: architecture .json (e.g. configs/models/tiny-llama.json).
        output: directory to write.
        tokenizer: tokenizer directory to save alongside (e.g. configs/tokenizer).
        seed: initialisation seed.
        dtype: float32, bfloat16 or float16.
    """
    from transformers import AutoTokenizer

    model = init_model(load_config(arch), seed=seed, dtype=dtype)
    with atomic_dir(output) as tmp:
        model.save_pretrained(tmp)
        if tokenizer:
            tok = AutoTokenizer.from_pretrained(tokenizer)
            if len(tok) > model.config.vocab_size:
                raise ELOError(f"tokenizer has {len(tok)} tokens, model vocabulary {model.config.vocab_size}")
            tok.save_pretrained(tmp)
    print(f"initialised {model.config.model_type} ({sum(p.numel() for p in model.parameters()):,} params) -> {output}")
