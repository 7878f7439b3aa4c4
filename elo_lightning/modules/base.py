"""What every training stage shares: causal-LM loss, per-language validation, optimizer, HF export.

Subclasses only say which model they train (``build_model``: load, cut, freeze). The model is built in
``configure_model`` so that sharding strategies can wrap it and so that big models are never built twice.

Validation is by language: every validation batch carries its ``language`` (set by the datamodule's loader);
a batch without one (a merged loader) is logged as ``all``, never under some language's name.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from torchmetrics import MeanMetric
from transformers import PreTrainedModel

from elo_lightning.errors import ELOError
from elo_lightning.export import export_hf, stage_manifest
from elo_lightning.optim import OptimizerConfig, build_optimizer, build_scheduler
from elo_lightning.sharding import ShardingConfig, build_sharded

HF_BATCH_KEYS = ("input_ids", "labels", "attention_mask", "position_ids", "use_cache")
LANGUAGE_KEY = "language"  # validation batches: the language they belong to
MERGED = "all"  # the name of a validation batch that carries no language


def run_folders(trainer) -> dict[str, str]:
    """The run's log folder(s) and checkpoint folders, which no output may replace or be written into."""
    if trainer is None:
        return {}
    folders: dict[str, str] = {}
    for i, logger in enumerate(trainer.loggers):
        n = f" {i}" if i else ""
        if getattr(logger, "log_dir", None):
            folders[f"log folder{n}"] = str(logger.log_dir)
        root, save = getattr(logger, "root_dir", None), getattr(logger, "save_dir", None)
        if root and (not save or Path(root).resolve() != Path(save).resolve()):  # <save_dir>/<name>: every version
            folders[f"logger folder{n}"] = str(root)
    for i, cb in enumerate(trainer.checkpoint_callbacks):
        if getattr(cb, "dirpath", None):
            folders[f"checkpoint folder {i}" if i else "checkpoint folder"] = str(cb.dirpath)
    return folders


class CausalLMModule(L.LightningModule):
    stage: ClassVar[str] = "causal_lm"  # the registry name (elo_lightning.modules.STAGES)

    def __init__(
        self,
        model: str,
        tokenizer: str | None = None,
        optimizer: OptimizerConfig | None = None,
        seed: int = 42,
        export_dir: str | None = None,
        overwrite_export: bool = False,
        gradient_checkpointing: bool = False,
        measure_flops: bool = True,
        sharding: ShardingConfig | None = None,
        allow_tokenizer_mismatch: bool = False,
        linear_ce: str = "auto",
        attn_implementation: str = "sdpa",
        compile: bool = False,
    ) -> None:
        """
        Args:
            model: HF model directory, hub id, or an architecture ``.json`` (random init, seeded).
            tokenizer: the data's tokenizer (linked from the datamodule by the CLI); checked against the
                vocabulary and saved with exports.
            optimizer: optimizer and schedule; paper defaults (8-bit AdamW, lr 5e-6, cosine).
            seed: seed for random init from an architecture config.
            export_dir: write an HF directory of the trained model here when fit ends. Checked when fit starts: it
                may not be, contain or lie inside an input (model, tokenizer, detached) or the run's log/checkpoint
                folders, and a non-empty directory must be a previous export of this stage (see ``elo_lightning.io``).
            overwrite_export: let ``export_dir`` replace a non-empty directory that is not an export of this stage.
            gradient_checkpointing: recompute activations in backward (non-reentrant).
            measure_flops: count FLOPs per batch on a meta-device copy (for throughput/MFU logging).
            sharding: FSDP2 options, used when the strategy provides a device mesh (ModelParallelStrategy).
            allow_tokenizer_mismatch: accept a tokenizer other than the one the model directory carries
                (a deliberate vocabulary change); one larger than the vocabulary is always refused.
            linear_ce: the loss without full logits (``elo_lightning.losses``): auto (Liger / Cut Cross-Entropy on
                CUDA when installed, else the exact chunked PyTorch one), chunked, liger, cce, or off
                (transformers' loss on the full logits).
            attn_implementation: sdpa, eager, or flash_attention_2 (needs flash_attn); packed sequences stay
                separated through position_ids with each.
            compile: ``torch.compile`` each decoder layer's forward (hooks, checkpointing and state dict unchanged).
        """
        from elo_lightning.losses import check_linear_ce
        from elo_lightning.models import check_attn_implementation

        check_linear_ce(linear_ce)
        check_attn_implementation(attn_implementation)
        super().__init__()
        self.save_hyperparameters()
        self.source = model
        self.optim_cfg = optimizer or OptimizerConfig()
        self.model: PreTrainedModel | None = None
        self.flops_per_batch: int | None = None
        self.val_metrics = torch.nn.ModuleDict()
        self._tokenizer = None

    # -- what subclasses define -------------------------------------------------------------------
    def build_model(self, device: str = "cpu") -> PreTrainedModel:
        """The model this stage trains, with ``requires_grad`` set. ``device="meta"`` builds a weightless copy."""
        raise NotImplementedError

    def export(self, output_dir: str | Path) -> Path:
        """HF directory of the trained model plus ``elo_export.json``."""
        return export_hf(self.model, output_dir, stage_manifest(self), tokenizer=self.tokenizer(),
                         extra_json=self.data_exports(), **self.export_guard())

    # -- outputs ----------------------------------------------------------------------------------
    def export_guard(self) -> dict[str, Any]:
        """What an export may not touch (``elo_lightning.io.atomic_dir``'s inputs/protected/overwrite)."""
        inputs = {name: self.hparams.get(name) for name in ("model", "tokenizer", "detached")}
        return {"inputs": {k: v for k, v in inputs.items() if isinstance(v, (str, Path))},
                "protected": run_folders(self._trainer), "overwrite": bool(self.hparams.get("overwrite_export"))}

    def _check_outputs_at_start(self) -> None:
        """Refuse a bad ``export_dir`` before training, not after it; clean killed saves' leftovers (rank 0)."""
        from elo_lightning.checkpoint import clean_checkpoint_leftovers
        from elo_lightning.export import export_kind
        from elo_lightning.io import check_output, clean_leftovers

        if self.hparams.get("export_dir"):
            check_output(self.hparams.export_dir, export_kind(self.stage), **self.export_guard())
        if self.trainer.is_global_zero:
            for cb in self.trainer.checkpoint_callbacks:
                clean_checkpoint_leftovers(getattr(cb, "dirpath", None))
            if self.hparams.get("export_dir"):
                clean_leftovers(self.hparams.export_dir)

    def data_exports(self) -> dict[str, dict]:
        """JSON files the datamodule writes beside the export (``stream_state.json``: where its stream stopped,
        for the next stage's ``start_after``). Collective: every rank calls it."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        export_state = getattr(dm, "export_state", None)
        return export_state() if callable(export_state) else {}

    def tokenizer(self):
        if self._tokenizer is None and self.hparams.tokenizer:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.hparams.tokenizer)
        return self._tokenizer

    # -- model ------------------------------------------------------------------------------------
    def build_training_model(self, device: str = "cpu") -> PreTrainedModel:
        """``build_model`` in train mode (from_pretrained returns eval mode), with HF gradient checkpointing if on."""
        model = self.build_model(device=device).train()
        if self.hparams.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.device_mesh is not None:  # FSDP2: rank 0 loads, the others build on meta, then shard + broadcast
            self.model = build_sharded(self, self.device_mesh, self.hparams.sharding or ShardingConfig())
        else:
            self.model = self.build_training_model()
        # No KV cache in training: with one, transformers ignores packed position_ids and lets packed docs attend.
        self.model.config.use_cache = False
        self._speed_knobs()

    def _speed_knobs(self) -> None:
        """Attention kernel, compiled layers, and the LM head that returns the loss (``linear_ce``)."""
        from elo_lightning.losses import enable_linear_ce
        from elo_lightning.models import decoder_layers
        from elo_lightning.sharding import _inner

        lm = _inner(self.model)
        lm.set_attn_implementation(self.hparams.get("attn_implementation", "sdpa"))
        if self.hparams.get("compile"):
            for layer in decoder_layers(lm):
                layer.forward = torch.compile(layer.forward)
        if self.hparams.get("linear_ce", "auto") != "off":
            enable_linear_ce(self.model)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self._check_outputs_at_start()
        dm = getattr(self.trainer, "datamodule", None)
        tokenizer = self.tokenizer()
        if tokenizer is not None:
            from elo_lightning.models import load_config
            from elo_lightning.tokenizer import check_tokenizer

            check_tokenizer(tokenizer, self.source, load_config(self.source).vocab_size,
                            self.hparams.get("allow_tokenizer_mismatch", False), name=self.hparams.tokenizer)
        for lang in getattr(dm, "val_languages", None) or []:
            self.val_metrics[lang] = MeanMetric()

    def check_inputs(self) -> None:
        """Cheap checks of the inputs (config, layer specs, manifests; no weights), which the CLI runs before the
        trainer creates any folder. Raises ELOError."""
        from elo_lightning.models import load_config

        load_config(self.source)

    def trainable_named_parameters(self):
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    # -- steps ------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: batch[k] for k in HF_BATCH_KEYS if k in batch}
        if self.training and "labels" in batch and self._trainer is not None and self.trainer.world_size > 1:
            inputs["num_items_in_batch"] = self._loss_tokens_per_rank(batch["labels"])
        impl = self._linear_ce_impl()
        if impl == "off" or "labels" not in inputs:
            return self.model(**inputs).loss
        from elo_lightning.losses import model_loss

        return model_loss(self.model, inputs, impl)

    def _linear_ce_impl(self) -> str:
        """The loss implementation ``linear_ce`` means on this module's device (resolved once)."""
        if getattr(self, "_linear_ce", None) is None:
            from elo_lightning.losses import resolve_linear_ce

            self._linear_ce = resolve_linear_ce(self.hparams.get("linear_ce", "auto"), self.device)
        return self._linear_ce

    def _loss_tokens_per_rank(self, labels: torch.Tensor) -> torch.Tensor:
        """Loss tokens of the global batch / world size, the denominator of each rank's summed loss.

        DDP and FSDP average gradients over ranks, so with it the update is the token mean over the global batch,
        as in one process. A per-rank mean would weight a rank whose rows have few loss tokens (SFT: long
        prompts masked with -100) as much as one with many. The label shift is HF's: position t predicts t + 1.
        """
        count = (labels[..., 1:] != -100).sum().to(torch.float32)
        total = self.trainer.strategy.reduce(count, reduce_op="sum")
        return (total / self.trainer.world_size).clamp(min=1.0)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.hparams.measure_flops and self.flops_per_batch is None:
            from elo_lightning.flops import measure_train_flops

            b, t = batch["input_ids"].shape
            self.flops_per_batch = measure_train_flops(lambda: self.build_model(device="meta"), b, t)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        lang = batch.get(LANGUAGE_KEY) or MERGED
        if lang not in self.val_metrics:
            self.val_metrics[lang] = MeanMetric().to(self.device)
        loss = self(batch)
        self.val_metrics[lang].update(loss.detach().float(), weight=batch["input_ids"].numel())

    def on_validation_epoch_end(self) -> None:
        for lang, metric in self.val_metrics.items():
            if metric.update_count == 0:
                continue
            loss = metric.compute()
            self.log(f"val/{lang}/loss", loss, prog_bar=True, sync_dist=False)
            self.log(f"val/{lang}/ppl", torch.exp(loss.clamp(max=50)), sync_dist=False)
            metric.reset()

    # -- optimizer --------------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = build_optimizer(self.trainable_named_parameters(), self.optim_cfg)
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ELOError("the training stream is endless: set a data budget (e.g. --data.init_args.budget 9GB) "
                           "or trainer.max_steps so the schedule has a length")
        scheduler = build_scheduler(optimizer, self.optim_cfg, int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_end(self) -> None:
        if self.hparams.export_dir:
            self.export(self.hparams.export_dir)
