"""FSDP2 sharding of a stage's model (placeholder: being implemented)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ShardingConfig:
    """How ``configure_model`` shards the model when the strategy gives a device mesh (ModelParallelStrategy)."""

    param_dtype: str | None = "bfloat16"  # None = keep the parameters' dtype
    reduce_dtype: str | None = "float32"
    activation_checkpointing: bool = False
    cpu_offload: bool = False


def shard_model(model, device_mesh, config: ShardingConfig | None = None) -> None:
    raise NotImplementedError
