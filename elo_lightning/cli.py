"""The ``elo`` command: Lightning subcommands (fit/validate) through LightningCLI, model surgery and tools beside them.

Bad input raises ``ELOError`` anywhere below; here it becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
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


def chat_vector_cmd(
    base: str,
    instruct: str,
    target: str,
    output: str,
    ratio: float = 1.0,
    skip: list[str] | None = None,
    vocab_mismatch: str = "skip",
    max_shard_size: str = "5GB",
) -> None:
    """target + ratio * (instruct - base), tensor by tensor, streamed from safetensors (three 8B models never in RAM).

    Args:
        base: the base model the instruct model was tuned from.
        instruct: its instruction-tuned version (its tokenizer and chat template are copied).
        target: the model to receive the vector (the ELO-aligned model).
        output: directory to write.
        ratio: scale of the chat vector.
        skip: tensor-name parts copied from target unchanged (default: embed_tokens, lm_head; [] for none).
        vocab_mismatch: skip, slice or error when embedding/head rows differ.
        max_shard_size: output shard size, e.g. 5GB.
    """
    from elo_lightning.chat_vector import apply_chat_vector

    summary = apply_chat_vector(
        base, instruct, target, output, ratio=ratio, skip=("embed_tokens", "lm_head") if skip is None else tuple(skip),
        vocab_mismatch=vocab_mismatch, max_shard_size=max_shard_size, overwrite=True,
    )
    print(json.dumps(summary, indent=2, default=str))


def eval_cmd(
    model: str,
    data: str = "data/sample/pretrain",
    languages: str = "en,ko",
    seq_len: int = 512,
    max_sequences: int = 64,
    tasks: list[str] | None = None,
    include_path: str | None = None,
    limit: int | None = None,
    device: str = "cpu",
    output: str | None = None,
) -> dict:
    """Per-language held-out perplexity / bits-per-byte, and lm-evaluation-harness tasks, of an exported model.

    Args:
        model: HF directory (any stage's export).
        data: folder with <lang>/valid.jsonl.
        languages: comma-separated languages to score.
        seq_len: tokens per scored window.
        max_sequences: windows per language.
        tasks: lm-eval task names (kobest_copa, mmlu, marc_ja with a network; elo_tiny_kobest_copa, elo_tiny_en_mc
            offline with --include_path data/eval_tasks).
        include_path: folder of local lm-eval task YAMLs.
        limit: items per lm-eval task.
        device: cpu or cuda.
        output: JSON file to write.
    """
    from elo_lightning.evaluation.perplexity import evaluate_perplexity
    from elo_lightning.io import write_json_atomic

    files = {lang: [str(Path(data) / lang / "valid.jsonl")] for lang in languages.split(",") if lang}
    result: dict = {"model": model, "perplexity": evaluate_perplexity(model, None, files, seq_len=seq_len,
                                                                     max_sequences=max_sequences, device=device)}
    if tasks:
        from elo_lightning.evaluation.lm_eval_runner import run_lm_eval

        result["lm_eval"] = run_lm_eval(model, tasks, include_path=include_path, limit=limit, device=device)["tasks"]
    print(json.dumps(result, indent=2, ensure_ascii=False))
    if output:
        write_json_atomic(output, result)
    return result


def consolidate_cmd(checkpoint_dir: str, output_dir: str, model_source: str | None = None) -> None:
    """Turn a sharded (FSDP2/DCP) training checkpoint into the stage's plain HF export, exact weights.

    Args:
        checkpoint_dir: a complete sharded checkpoint directory (has elo_checkpoint.json).
        output_dir: HF directory to write.
        model_source: the stage's model argument, if it moved since training.
    """
    from elo_lightning.checkpoint import consolidate

    print(f"consolidated -> {consolidate(checkpoint_dir, model_source, output_dir)}")


def _maybe_tokenizer(path: str):
    if not Path(path, "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _tool_commands() -> dict:
    from elo_lightning import bench, convert, figure, reproduce
    from elo_lightning.evaluation import judge
    from elo_lightning.pipeline import pipeline

    return {
        "detach": detach_cmd,
        "attach": attach_cmd,
        "init": init_cmd,
        "pipeline": pipeline,
        "chat-vector": chat_vector_cmd,
        "eval": eval_cmd,
        "consolidate": consolidate_cmd,
        "judge": {"generate": judge.generate_answers, "score": judge.judge_answers},
        "bench": bench.bench,
        "bench-from-runs": bench.from_runs,
        "figure": figure.figure_cmd,
        "convert-gguf": convert.convert_gguf,
        "reproduce": reproduce.reproduce,
    }


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
