"""``elo fit|validate|test``: any stage module with any of our datamodules, through Lightning's ``LightningCLI``."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from elo_lightning.resume import ResumeCLIMixin

LIGHTNING_COMMANDS = ("fit", "validate", "test")


class ELOLightningCLI(ResumeCLIMixin, LightningCLI):
    """``elo fit --config configs/paper/elo.yaml``: any stage module with any of our datamodules.

    ``--ckpt_path`` (``last`` = the newest ``last.ckpt`` across the run's log versions) resumes with the arguments
    given, checked against the checkpoint's: see ``elo_lightning.resume``.
    """

    def add_arguments_to_parser(self, parser) -> None:
        # The model must be trained (and exported) with the tokenizer that made its data.
        parser.link_arguments("data.init_args.tokenizer", "model.init_args.tokenizer", apply_on="parse")

    def before_instantiate_classes(self) -> None:
        """No data tokenizer given: the model's own (its directory's tokenizer or hub id), never a default one."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        data, model = config.get("data"), config.get("model")
        if data is None or model is None or "tokenizer" not in (data.get("init_args") or {}):
            return
        if data.init_args.tokenizer is None:
            from elo_lightning.errors import ELOError
            from elo_lightning.models import has_weights
            from elo_lightning.tokenizer import own_tokenizer_dir

            source = model.init_args.model
            own = own_tokenizer_dir(source) or (source if has_weights(source) and not Path(source).exists() else None)
            if own is None:
                raise ELOError(f"no tokenizer: the model {source} carries none; set data.init_args.tokenizer")
            data.init_args.tokenizer = model.init_args.tokenizer = own


def run_lightning(args: list[str] | None) -> None:
    """Run a Lightning subcommand; ``args=None`` lets LightningCLI read ``sys.argv`` itself."""
    ELOLightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # optimizer and schedule are typed module arguments
        parser_kwargs={"default_env": False},
    )
