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
from elo_lightning.io import atomic_dir

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
