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

# Decoder-only families whose layout (model.embed_tokens, model.layers, model.norm, lm_head) surgery is tested on.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

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
        fields = json.loads(path.read_text())
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


def has_weights(source: str | Path) -> bool:
    path = Path(source)
    if path.suffix == ".json":
        return False
    if path.is_dir():
        return any((path / name).is_file() for name in _WEIGHT_FILES)
    return True  # a hub id: the weights live there


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
    """A causal LM from an HF directory or hub id (weights loaded) or an architecture config (random init).

    ``attn_implementation``: sdpa, eager or flash_attention_2 (None = transformers' default, sdpa)."""
    check_attn_implementation(attn_implementation)
    attn = {"attn_implementation": attn_implementation}
    if str(device) == "meta":
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(load_config(source), dtype=resolve_dtype(dtype), **attn)
    if not has_weights(source):
        return init_model(load_config(source), seed=seed, dtype=dtype, **attn).to(device)
    load_config(source)  # architecture check and clear errors before the (slow) weight load
    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=resolve_dtype(dtype), **attn)
    return model.to(device)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder stack of an HF causal LM (``model.model.layers``)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ELOError(f"{type(model).__name__} has no model.layers decoder stack; unsupported architecture")
    return layers
