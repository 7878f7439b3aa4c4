"""Sharding helpers that need no process group (the FSDP2 runs themselves are in test_distributed.py)."""

from peft import LoraConfig, get_peft_model
from tiny_models import tiny_model

from elo_lightning.models import decoder_layers
from elo_lightning.sharding import _inner, apply_activation_checkpointing


def test_activation_checkpointing_wraps_every_decoder_layer_once():
    model = tiny_model("llama")
    apply_activation_checkpointing(model)
    apply_activation_checkpointing(model)  # idempotent
    layers = decoder_layers(model)
    assert {type(layer).__name__ for layer in layers} == {"CheckpointWrapper"}
    assert all(type(layer._checkpoint_wrapped_module).__name__ != "CheckpointWrapper" for layer in layers)


def test_peft_models_are_sharded_through_their_inner_causal_lm():
    base = tiny_model("llama")
    wrapped = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    assert _inner(wrapped) is base and _inner(base) is base
