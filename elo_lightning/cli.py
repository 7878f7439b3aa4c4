"""The ``elo`` command: Lightning subcommands (fit/validate) through LightningCLI, model surgery and tools beside them.

Bad input raises ``ELOError`` anywhere below; here it becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from elo_lightning.errors import ELOError

LIGHTNING_COMMANDS = ("fit", "validate", "test")


class ELOLightningCLI(LightningCLI):
    """``elo fit --config configs/elo.yaml``: any stage module with any of our datamodules."""

    def add_arguments_to_parser(self, parser) -> None:
        # The model must be trained (and exported) with the tokenizer that made its data.
        parser.link_arguments("data.init_args.tokenizer", "model.init_args.tokenizer", apply_on="parse")


def run_lightning(args: list[str] | None) -> None:
    import lightning as L

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


def detach_cmd(model: str, layers: str, output: str, dtype: str = "float32", seed: int = 42) -> None:
    """Cut λ out of a model into a standalone HF directory (+ elo_manifest.json).

    Args:
        model: source model: HF directory, hub id, or architecture .json (random init).
        layers: λ, 1-based, e.g. "1,-1" or "1,16,32".
        output: directory to write.
        dtype: float32, bfloat16 or float16.
        seed: seed when the source is an architecture config.
    """
    from elo_lightning.models import load_causal_lm
    from elo_lightning.surgery import detach, save_detached

    full = load_causal_lm(model, dtype=dtype, seed=seed)
    small, manifest = detach(full, layers, copy_weights=False)
    save_detached(small, manifest, output, tokenizer=_maybe_tokenizer(model))
    print(f"detached layers {manifest.layers_1based} of {manifest.source_num_layers} -> {output}")


def attach_cmd(model: str, detached: str, output: str, dtype: str = "float32", seed: int = 42) -> None:
    """Write a detached checkpoint's layers back into its source model and save the result.

    Args:
        model: the source model the layers were detached from.
        detached: directory written by `elo detach` or by ELO training.
        output: directory to write the full model to.
        dtype: float32, bfloat16 or float16.
        seed: seed when the source is an architecture config.
    """
    from elo_lightning.io import atomic_dir
    from elo_lightning.models import load_causal_lm
    from elo_lightning.surgery import attach, load_detached

    full = load_causal_lm(model, dtype=dtype, seed=seed)
    small, manifest = load_detached(detached, dtype=full.dtype)
    attach(full, small, manifest)
    with atomic_dir(output) as tmp:
        full.save_pretrained(tmp)
        tok = _maybe_tokenizer(detached) or _maybe_tokenizer(model)
        if tok is not None:
            tok.save_pretrained(tmp)
    print(f"attached layers {manifest.layers_1based} into {model} -> {output}")


def init_cmd(arch: str, output: str, tokenizer: str | None = None, seed: int = 42, dtype: str = "float32") -> None:
    """Random-init a model from an architecture config (offline runs, benchmarks) and save it as an HF directory.

    Args:
        arch: architecture .json (e.g. configs/models/tiny-llama.json); `--config` is accepted too.
        output: directory to write.
        tokenizer: tokenizer directory to save alongside (e.g. configs/tokenizer).
        seed: initialisation seed.
        dtype: float32, bfloat16 or float16.
    """
    from transformers import AutoTokenizer

    from elo_lightning.io import atomic_dir
    from elo_lightning.models import init_model, load_config

    model = init_model(load_config(arch), seed=seed, dtype=dtype)
    with atomic_dir(output) as tmp:
        model.save_pretrained(tmp)
        if tokenizer:
            tok = AutoTokenizer.from_pretrained(tokenizer)
            if len(tok) > model.config.vocab_size:
                raise ELOError(f"tokenizer has {len(tok)} tokens, model vocabulary {model.config.vocab_size}")
            tok.save_pretrained(tmp)
    print(f"initialised {model.config.model_type} ({sum(p.numel() for p in model.parameters()):,} params) -> {output}")


def _maybe_tokenizer(path: str):
    if not Path(path, "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _tool_commands() -> dict:
    from elo_lightning.pipeline import pipeline

    commands = {"detach": detach_cmd, "attach": attach_cmd, "init": init_cmd, "pipeline": pipeline}
    try:
        from elo_lightning import bench, figure

        commands.update({"bench": bench.bench, "figure": figure.figure_cmd})
    except (ImportError, AttributeError):
        pass
    return commands


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in LIGHTNING_COMMANDS:
            run_lightning(None if argv is None else args)  # None: LightningCLI reads sys.argv itself
            return
        from jsonargparse import auto_cli

        if args[:1] == ["init"]:  # jsonargparse reserves --config for config files; the issue spells it so
            args = [("--arch" if a == "--config" else a) for a in args]

        auto_cli(_tool_commands(), args=args, as_positional=False)
    except ELOError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
