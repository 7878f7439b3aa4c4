"""FSDP2 sharding of a stage's model (``torch.distributed.fsdp.fully_shard`` under Lightning's ModelParallelStrategy).

Layout (``shard_model``)
------------------------
* activation checkpointing (optional) wraps every decoder layer first, non-reentrant
  (``checkpoint_wrapper(..., CheckpointImpl.NO_REENTRANT)``): it works when a layer's input comes from a frozen
  embedding (ELO's first trainable layer), which the reentrant variant does not (no grad would flow).
* one FSDP unit per decoder layer, one for the token embedding, one for the LM head. A *tied* head shares its
  weight with the embedding, so both go into ONE unit (``fully_shard([embed, head])``); then the root (final
  norm, rotary buffers, anything left).
* FSDP2 shards every parameter on dim 0 (per parameter, not flat buffers), so frozen and trainable parameters
  may share a unit: ELO, freeze-tuning and LoRA need no special wrapping; frozen parameters get no gradient
  and no optimizer state.
* ``MixedPrecisionPolicy(param_dtype, reduce_dtype)`` from the config (None = no cast, float32 on CPU tests);
  ``CPUOffloadPolicy`` when ``cpu_offload`` (parameters, gradients and the optimizer step live on the CPU).

Loading without a full copy on every rank (``build_sharded``)
-------------------------------------------------------------
Rank 0 builds the stage's model as usual (``build_model("cpu")``: weights read from safetensors, ELO layers
attached, LoRA wrapped...), every other rank builds the same module tree on the meta device
(``build_model("meta")``: no memory). All ranks shard it (rank 0's full tensors are replaced by its shard as each
unit is sharded), the meta ranks allocate only their shards (``to_empty``), and
``set_model_state_dict(full_state_dict=True, broadcast_from_rank0=True)`` streams rank 0's tensors one by one
into everybody's shards. Buffers (rotary ``inv_freq``: not in the state dict) are broadcast from rank 0 too.
Peak host memory: rank 0 one full copy of the stage's model (in its load dtype) plus its shard and the
broadcast buffers (measured ~1.6 copies), other ranks their shard.
Attaching ELO layers (FullFineTuningModule ``detached=...``) therefore happens on rank 0 only, before sharding,
exactly as unsharded (tested equal). Only the model is built: nothing else on the module needs broadcasting.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from elo_lightning.dist import is_dtensor, rank_and_world
from elo_lightning.errors import ELOError
from elo_lightning.models import decoder_layers, resolve_dtype


@dataclass
class ShardingConfig:
    """How ``configure_model`` shards the model when the strategy gives a device mesh (ModelParallelStrategy)."""

    param_dtype: str | None = "bfloat16"  # None = keep the parameters' dtype
    reduce_dtype: str | None = "float32"
    activation_checkpointing: bool = False
    cpu_offload: bool = False
    reshard_after_forward: bool = True  # False: keep gathered params between forward and backward (ZeRO-2 like)
    rank0_load: bool = True  # build on rank 0 only, meta elsewhere, broadcast weights (False: every rank builds)
    pin_memory: bool = True  # CPUOffloadPolicy(pin_memory=...); needs CUDA, forced off on CPU


def _mp_policy(config: ShardingConfig):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(
        param_dtype=resolve_dtype(config.param_dtype) if config.param_dtype else None,
        reduce_dtype=resolve_dtype(config.reduce_dtype) if config.reduce_dtype else None,
    )


def _inner(model: nn.Module) -> nn.Module:
    """The HF causal LM under a peft wrapper (``PeftModel.base_model.model``), else the model itself."""
    base = getattr(model, "base_model", None)
    if base is not None and base is not model and hasattr(base, "model") and hasattr(base.model, "lm_head"):
        return base.model
    return model


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Wrap every decoder layer in a non-reentrant checkpoint wrapper (in place)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    layers = decoder_layers(_inner(model))
    for i, layer in enumerate(layers):
        if type(layer).__name__ != "CheckpointWrapper":
            layers[i] = checkpoint_wrapper(layer, checkpoint_impl=CheckpointImpl.NO_REENTRANT)


def shard_model(model, device_mesh, config: ShardingConfig | None = None) -> None:
    """FSDP2 in place: one unit per decoder layer, embedding and head (one unit when tied), then the root."""
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    config = config or ShardingConfig()
    mesh = device_mesh["data_parallel"] if "data_parallel" in (device_mesh.mesh_dim_names or ()) else device_mesh
    if getattr(model, "is_gradient_checkpointing", False) and config.activation_checkpointing:
        warnings.warn("both HF gradient_checkpointing and sharding.activation_checkpointing are on: "
                      "layers would be recomputed twice; keep one", stacklevel=2)
    if config.activation_checkpointing:
        apply_activation_checkpointing(model)
    offload = OffloadPolicy()
    if config.cpu_offload:
        on_cuda = torch.cuda.is_available() and mesh.device_type == "cuda"
        offload = CPUOffloadPolicy(pin_memory=config.pin_memory and on_cuda)
    kw = dict(mesh=mesh, mp_policy=_mp_policy(config), offload_policy=offload,
              reshard_after_forward=config.reshard_after_forward)
    lm = _inner(model)
    for layer in decoder_layers(lm):
        fully_shard(layer, **kw)
    embed, head = lm.get_input_embeddings(), lm.get_output_embeddings()
    if head is not None and head.weight is embed.weight:
        fully_shard([embed, head], **kw)  # tied: the shared parameter must live in exactly one unit
    else:
        fully_shard(embed, **kw)
        if head is not None:
            fully_shard(head, **kw)
    fully_shard(model, **kw)


def build_sharded(module, device_mesh, config: ShardingConfig | None = None) -> nn.Module:
    """The stage's model, sharded, with weights from rank 0 (see the module docstring). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    config = config or ShardingConfig()
    rank, world = rank_and_world()
    if not config.rank0_load or world == 1:
        model = module.build_training_model()
        shard_model(model, device_mesh, config)
        return model
    model = module.build_training_model(device="cpu" if rank == 0 else "meta")
    names = [[n for n, _ in model.state_dict().items()]]
    dist.broadcast_object_list(names, src=0)
    if names[0] != list(model.state_dict().keys()):
        raise ELOError("rank 0 and the other ranks built different models (state dict keys differ); "
                       "build_model(device='meta') must give the same module tree as build_model()")
    # references, not clones: fully_shard copies each rank's slice into a new local tensor and leaves the
    # original untouched, so rank 0 holds one full copy (+ its shard), not two
    full = {k: v.detach() for k, v in model.state_dict().items()} if rank == 0 else {}
    shard_model(model, device_mesh, config)
    device = _param_device(model, device_mesh, config)
    if rank != 0:
        model.to_empty(device=device)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    for _, buf in model.named_buffers():
        if is_dtensor(buf):
            continue
        tmp = buf.detach().to(_comm_device(device_mesh))
        dist.broadcast(tmp, src=0)
        buf.data.copy_(tmp.to(buf.device))
    _retie(model)
    return model


def _param_device(model: nn.Module, device_mesh, config: ShardingConfig) -> torch.device:
    if config.cpu_offload:
        return torch.device("cpu")
    return torch.device(device_mesh.device_type, torch.cuda.current_device()) if device_mesh.device_type == "cuda" \
        else torch.device(device_mesh.device_type)


def _comm_device(device_mesh) -> torch.device:
    if device_mesh.device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _retie(model: nn.Module) -> None:
    lm = _inner(model)
    head, embed = lm.get_output_embeddings(), lm.get_input_embeddings()
    if getattr(lm.config, "tie_word_embeddings", False) and head is not None and head.weight is not embed.weight:
        head.weight = embed.weight

