"""The whole ELO method on the embedded default, offline, in minutes on a CPU.

base (a tiny Llama pretrained here on English only: the stand-in for an English-centric LLM)
  -> ELO pretraining of λ on en:ko = 1:9 -> attach + alignment (full fine-tuning)
  vs the FFT baseline on the same data for the same number of steps
  -> per-language validation perplexity of base, ELO-aligned and FFT, as a table and results.json.
Learning rates are the tiny model's (1e-3), not the paper's 5e-6 for 8B models.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from elo_lightning.io import write_json_atomic
from elo_lightning.optim import OptimizerConfig

SAMPLE = Path("data/sample/pretrain")


def _datamodule(tokenizer: str, weights: dict[str, float], seq_len: int, batch_size: int, seed: int, data: Path):
    from elo_lightning.data import BilingualDataModule, LanguageSource

    langs = [
        LanguageSource(
            name=lang,
            train=[str(data / lang / "train-*.jsonl")],
            valid=[str(data / lang / "valid.jsonl")],
            weight=w,
        )
        for lang, w in weights.items()
    ]
    return BilingualDataModule(
        tokenizer=tokenizer, languages=langs, seq_len=seq_len, batch_size=batch_size, seed=seed, val_max_sequences=32
    )


def _trainer(output: Path, name: str, max_steps: int, accelerator: str, callbacks=()) -> L.Trainer:
    from elo_lightning.callbacks import ThroughputLogger

    return L.Trainer(
        max_steps=max_steps,
        accelerator=accelerator,
        devices=1,
        logger=TensorBoardLogger(save_dir=str(output), name=name, version=""),
        callbacks=[ThroughputLogger(output_dir=str(output / name), warmup_steps=2), *callbacks],
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=5,
        enable_model_summary=False,
    )


def _fit(module, dm, output: Path, name: str, steps: int, accelerator: str) -> float:
    start = time.perf_counter()
    _trainer(output, name, steps, accelerator).fit(module, datamodule=dm)
    return time.perf_counter() - start


def _validate(model_dir: Path, dm, accelerator: str) -> dict[str, float]:
    from elo_lightning.modules import AlignmentModule

    module = AlignmentModule(model=str(model_dir), measure_flops=False)
    trainer = L.Trainer(accelerator=accelerator, devices=1, logger=False, enable_model_summary=False)
    trainer.validate(module, datamodule=dm, verbose=False)
    return {
        lang: float(trainer.callback_metrics[f"val/{lang}/ppl"])
        for lang in dm.val_languages
        if f"val/{lang}/ppl" in trainer.callback_metrics
    }


def pipeline(
    output: str = "runs/pipeline",
    config: str = "configs/models/tiny-llama.json",
    tokenizer: str = "configs/tokenizer",
    data: str = str(SAMPLE),
    target: str = "ko",
    layers: str = "1,-1",
    seq_len: int = 128,
    batch_size: int = 8,
    base_steps: int = 300,
    elo_steps: int = 200,
    align_steps: int = 40,
    lr: float = 1e-3,
    seed: int = 42,
    accelerator: str = "cpu",
) -> dict:
    """Run init -> English base -> ELO -> attach + align, and the FFT baseline; print per-language perplexity.

    Args:
        output: run directory (models, TensorBoard logs, results.json).
        config: architecture of the tiny model.
        tokenizer: tokenizer directory.
        data: folder with <lang>/train-*.jsonl and <lang>/valid.jsonl.
        target: the new language (mixed English:target = 1:9 as in the paper).
        layers: λ, 1-based.
        seq_len: tokens per packed sequence.
        batch_size: sequences per step.
        base_steps: English-only pretraining steps that make the base model.
        elo_steps: ELO pretraining steps (the FFT baseline gets elo_steps + align_steps).
        align_steps: alignment (full fine-tuning) steps after attaching.
        lr: peak learning rate for every stage (cosine, 8-bit AdamW).
        seed: seed for init and data order.
        accelerator: cpu, gpu or auto.
    """
    from elo_lightning.cli import init_cmd
    from elo_lightning.modules import AlignmentModule, DetachedLayerModule

    torch.manual_seed(seed)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data)
    optim = OptimizerConfig(lr=lr, warmup_steps=10, min_lr_ratio=0.1)
    common = dict(tokenizer=tokenizer, optimizer=optim, seed=seed)
    mixed = _datamodule(tokenizer, {"en": 1.0, target: 9.0}, seq_len, batch_size, seed, data_dir)
    english = _datamodule(tokenizer, {"en": 1.0}, seq_len, batch_size, seed + 1, data_dir)
    times: dict[str, float] = {}
    wall = time.perf_counter()

    init_cmd(config, str(out / "init"), tokenizer=tokenizer, seed=seed)
    base = AlignmentModule(model=str(out / "init"), export_dir=str(out / "base"), **common)
    times["base"] = _fit(base, english, out, "base", base_steps, accelerator)

    elo = DetachedLayerModule(model=str(out / "base"), layers=layers, export_dir=str(out / "elo"), **common)
    times["elo"] = _fit(elo, mixed, out, "elo", elo_steps, accelerator)
    align = AlignmentModule(
        model=str(out / "base"), detached=str(out / "elo"), export_dir=str(out / "elo_aligned"), **common
    )
    times["align"] = _fit(align, _datamodule(tokenizer, {"en": 1.0, target: 9.0}, seq_len, batch_size, seed + 2, data_dir), out, "align", align_steps, accelerator)
    fft = AlignmentModule(model=str(out / "base"), export_dir=str(out / "fft"), **common)
    times["fft"] = _fit(fft, _datamodule(tokenizer, {"en": 1.0, target: 9.0}, seq_len, batch_size, seed, data_dir), out, "fft", elo_steps + align_steps, accelerator)

    evaluation = _datamodule(tokenizer, {"en": 1.0, target: 1.0}, seq_len, batch_size, seed, data_dir)
    models = {name: _validate(out / name, evaluation, accelerator) for name in ("base", "elo_aligned", "fft")}
    results = {
        "target": target,
        "layers": layers,
        "steps": {"base": base_steps, "elo": elo_steps, "align": align_steps, "fft": elo_steps + align_steps},
        "tokens_per_step": seq_len * batch_size,
        "train_seconds": {k: round(v, 1) for k, v in times.items()},
        "wall_seconds": round(time.perf_counter() - wall, 1),
        "models": {name: {lang: {"perplexity": ppl} for lang, ppl in ppls.items()} for name, ppls in models.items()},
    }
    write_json_atomic(out / "results.json", results)
    print(format_table(results))
    print(f"results: {out / 'results.json'}")
    return results


def format_table(results: dict) -> str:
    langs = sorted({lang for m in results["models"].values() for lang in m})
    lines = ["| model | " + " | ".join(f"ppl {lang}" for lang in langs) + " |", "|---" * (len(langs) + 1) + "|"]
    for name, per_lang in results["models"].items():
        cells = [f"{per_lang[lang]['perplexity']:.1f}" if lang in per_lang else "-" for lang in langs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    t = results["train_seconds"]
    lines.append(
        f"\ntraining time: ELO {t['elo']:.0f}s + align {t['align']:.0f}s vs FFT {t['fft']:.0f}s "
        f"(same tokens); wall {results['wall_seconds']:.0f}s"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    json.dumps(pipeline())
