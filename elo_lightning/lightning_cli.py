"""``elo fit|validate|test``: any stage module with any of our datamodules, through Lightning's ``LightningCLI``."""

from __future__ import annotations

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
