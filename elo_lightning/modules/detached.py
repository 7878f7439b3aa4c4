"""ELO pretraining: train only the detached layers; the frozen middle of the model is never computed."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from elo_lightning.export import export_hf, stage_manifest
from elo_lightning.io import MANIFEST
from elo_lightning.models import load_causal_lm, load_config, resolve_dtype, weight_files
from elo_lightning.modules.base import CausalLMModule
from elo_lightning.surgery import (
    DetachManifest,
    detach,
    detach_from_checkpoint,
    detach_manifest,
    load_detached,
    parse_layers,
    read_manifest,
)


class DetachedLayerModule(CausalLMModule):
    stage = "elo"

    def __init__(
        self,
        model: str,
        layers: str = "1,-1",
        train_embeddings: bool = False,
        train_norm: bool = False,
        train_head: bool = False,
        **kwargs,
    ) -> None:
        """
        Args:
            model: the full source model (HF dir, hub id, architecture .json) or an already detached checkpoint.
            layers: λ, 1-based as in the paper ("1,-1" = first and last; "1,16,32"). Ignored for a detached checkpoint.
            train_embeddings: also train the token embedding (frozen in the paper).
            train_norm: also train the final norm.
            train_head: also train the LM head (frozen in the paper; tied heads follow the embedding).
        """
        super().__init__(model=model, **kwargs)
        self.save_hyperparameters()
        self._source_fingerprint = ""  # of the source's frozen parts, taken when the model is built with weights

    @property
    def from_detached(self) -> bool:
        return (Path(self.source) / MANIFEST).is_file()

    @property
    def manifest(self) -> DetachManifest:
        """What the export is: which layers of which source, and what was trained; derived from the arguments.

        The source fingerprint is known only where the model was built with weights (rank 0 under sharding,
        the rank that writes the export); elsewhere it is empty.
        """
        if self.from_detached:
            manifest = read_manifest(self.source)
        else:
            config = load_config(self.source)
            indices = parse_layers(self.hparams.layers, config.num_hidden_layers)
            manifest = detach_manifest(config, indices, self._source_fingerprint)
        manifest.trained.update(
            embed_tokens=self.hparams.train_embeddings, norm=self.hparams.train_norm, lm_head=self.hparams.train_head
        )
        return manifest

    def build_model(self, device: str = "cpu") -> PreTrainedModel:
        small = self._load_small(device)
        small.requires_grad_(False)
        small.model.layers.requires_grad_(True)
        small.get_input_embeddings().requires_grad_(self.hparams.train_embeddings)
        small.model.norm.requires_grad_(self.hparams.train_norm)
        if self.hparams.train_head or not small.config.tie_word_embeddings:
            small.lm_head.requires_grad_(self.hparams.train_head)
        return small

    def _load_small(self, device: str) -> PreTrainedModel:
        if self.from_detached:
            if device == "meta":
                with torch.device("meta"):
                    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(self.source))
            return load_detached(self.source, dtype=resolve_dtype(None))[0]  # the training dtype
        if device != "meta" and weight_files(self.source) is not None:
            # Only what ELO trains on is read: embedding, λ, final norm, head (by name, memory-mapped, in the
            # training dtype); the middle layers are never loaded. Each DDP rank holds the small model only
            # (the shards' pages are shared through the page cache).
            small, manifest = detach_from_checkpoint(self.source, self.hparams.layers, dtype=resolve_dtype(None))
        else:  # an architecture .json (seeded random init of the full model), a hub id, a .bin checkpoint
            full = load_causal_lm(self.source, seed=self.hparams.seed, device=device)
            small, manifest = detach(full, self.hparams.layers, copy_weights=False)
        if device != "meta":  # a meta build (FLOP counting, sharded non-zero ranks) has no weights to hash
            self._source_fingerprint = manifest.fingerprint
        return small

    def check_inputs(self) -> None:
        if self.from_detached:
            read_manifest(self.source)
            load_config(self.source)
        else:
            parse_layers(self.hparams.layers, load_config(self.source).num_hidden_layers)

    def export(self, output_dir: str | Path) -> Path:
        """A detached checkpoint: HF directory + ``elo_manifest.json`` that ``attach`` checks against the source."""
        manifest = self.manifest
        meta = stage_manifest(self, layers_1based=manifest.layers_1based)
        return export_hf(self.model, output_dir, meta, tokenizer=self.tokenizer(),
                         extra_json={MANIFEST: manifest.to_json(), **self.data_exports()}, **self.export_guard())
