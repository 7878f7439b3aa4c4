"""``elo fit|validate|test``: any stage module with any of our datamodules, through Lightning's ``LightningCLI``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from elo_lightning.resume import ResumeCLIMixin

LIGHTNING_COMMANDS = ("fit", "validate", "test")
_SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


def lightning_help(name: str) -> Callable[[], None]:
    """A stand-in for ``elo --help``'s command list; ``main`` sends ``elo fit|validate|test`` to LightningCLI."""

    def command() -> None:
        raise AssertionError("run by run_lightning")

    command.__doc__ = (f"Lightning's {name}: `elo {name} --config configs/cpu/elo.yaml`; "
                       f"`elo {name} --help` for options.")
    return command


class ELOLightningCLI(ResumeCLIMixin, LightningCLI):
    """``elo fit --config configs/paper/elo.yaml``: any stage module with any of our datamodules.

    ``--ckpt_path`` (``last`` = the newest ``last.ckpt`` across the run's log versions) resumes with the arguments
    given, checked against the checkpoint's: see ``elo_lightning.resume``.
    """

    def add_arguments_to_parser(self, parser) -> None:
        # The model must be trained (and exported) with the tokenizer that made its data.
        parser.link_arguments("data.init_args.tokenizer", "model.init_args.tokenizer", apply_on="parse")

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        # LightningCLI reads a --ckpt_path file's hyperparameters right after parsing: check the file before it does
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if ckpt_path and str(ckpt_path) not in _SPECIAL_CKPT_PATHS and not Path(ckpt_path).is_dir():
            from elo_lightning.checkpoint import check_checkpoint_file

            check_checkpoint_file(ckpt_path)

    def instantiate_trainer(self, **kwargs):
        from elo_lightning.callbacks.progress import count_steps

        trainer = super().instantiate_trainer(**kwargs)
        count_steps(trainer)  # "Step N/max_steps", not "Epoch 0/-2"
        return trainer

    def check_inputs(self) -> None:
        """Cheap checks (model config, layers, manifests, shards, tokenizer, --ckpt_path) before the trainer creates
        any folder or builds any model; each raises ELOError."""
        from lightning.pytorch.strategies import ModelParallelStrategy

        from elo_lightning.checkpoint import check_ckpt_path

        for part in (self.model, self.datamodule):
            getattr(part, "check_inputs", lambda: None)()
        ckpt_path = self.config[self.subcommand].get("ckpt_path")
        if ckpt_path and str(ckpt_path) not in _SPECIAL_CKPT_PATHS:
            check_ckpt_path(ckpt_path, sharded=isinstance(self.trainer.strategy, ModelParallelStrategy))

    def before_fit(self) -> None:
        self.check_inputs()
        super().before_fit()

    def before_validate(self) -> None:
        self.check_inputs()

    def before_test(self) -> None:
        self.check_inputs()

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
