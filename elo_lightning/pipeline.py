"""The whole ELO method on the embedded default, offline, in minutes on a CPU.

base (a tiny Llama pretrained here on English only: the stand-in for an English-centric LLM)
  -> ELO pretraining of λ on en:ko = 1:9 -> attach + alignment (full fine-tuning)
  vs the FFT baseline on the same data for the same number of steps;
  instruct = base + English chat SFT (the stand-in for the vendor's instruct model)
  -> chat vector (instruct - base) added to the ELO-aligned model -> bilingual SFT (ko:en = 1:1)
  -> per-language held-out perplexity / bits-per-byte and two tiny lm-eval tasks, as a table and results.json.
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

SAMPLE = Path("data/sample")


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
        logger=TensorBoardLogger(save_dir=str(output / "logs"), name=name, version=""),
        callbacks=[ThroughputLogger(output_dir=str(output / "logs" / name), warmup_steps=2), *callbacks],
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


def _summary(out: Path, name: str) -> dict:
    return json.loads((out / "logs" / name / "summary.json").read_text())


def _sft_data(tokenizer: str, weights: dict[str, float], seed: int, batch_size: int, data: Path):
    from elo_lightning.data.sft import SFTDataModule

    return SFTDataModule(tokenizer=tokenizer, files=[str(data / "sft" / "conversations.jsonl")], lang_weights=weights,
                         max_length=256, batch_size=batch_size, seed=seed, val_fraction=0.0)


def _evaluate(model_dir: Path, files: dict[str, list[str]], seq_len: int, tasks: Path | None) -> dict:
    from elo_lightning.evaluation.perplexity import evaluate_perplexity

    result = {"perplexity": evaluate_perplexity(str(model_dir), None, files, seq_len=seq_len, max_sequences=32)}
    if tasks is not None:
        from elo_lightning.evaluation.lm_eval_runner import run_lm_eval

        names = sorted(p.stem for p in tasks.glob("*.yaml"))
        raw = run_lm_eval(str(model_dir), [f"elo_{n}" for n in names], include_path=str(tasks), batch_size=8)
        result["lm_eval"] = {task: metrics.get("acc") for task, metrics in raw["tasks"].items()}
    return result


def pipeline(
    output: str = "runs/pipeline",
    config: str = "configs/models/tiny-llama.json",
    tokenizer: str = "configs/tokenizer",
    data: str = str(SAMPLE),
    target: str = "ko",
    layers: str = "1,-1",
    seq_len: int = 128,
    batch_size: int = 8,
    base_steps: int = 200,
    elo_steps: int = 150,
    align_steps: int = 30,
    sft_steps: int = 30,
    eval_tasks: str | None = "data/eval_tasks",
    lr: float = 1e-3,
    seed: int = 42,
    accelerator: str = "cpu",
) -> dict:
    """The whole method offline: base -> ELO -> align (vs FFT) -> chat vector -> SFT -> evaluation table.

    Args:
        output: run directory (models, TensorBoard logs, results.json).
        config: architecture of the tiny model.
        tokenizer: tokenizer directory.
        data: folder with pretrain/<lang>/{train-*,valid}.jsonl and sft/conversations.jsonl.
        target: the new language (mixed English:target = 1:9 as in the paper).
        layers: λ, 1-based.
        seq_len: tokens per packed sequence.
        batch_size: sequences per step.
        base_steps: English-only pretraining steps that make the base model.
        elo_steps: ELO pretraining steps (the FFT baseline gets elo_steps + align_steps).
        align_steps: alignment (full fine-tuning) steps after attaching.
        sft_steps: steps of each SFT run (English instruct stand-in; bilingual SFT after the chat vector).
        eval_tasks: folder of local lm-eval task YAMLs run on every model (None: perplexity only).
        lr: peak learning rate for every stage (cosine, 8-bit AdamW).
        seed: seed for init and data order.
        accelerator: cpu, gpu or auto.
    """
    from elo_lightning.chat_vector import apply_chat_vector
    from elo_lightning.cli import init_cmd
    from elo_lightning.modules import AlignmentModule, DetachedLayerModule, SFTModule

    torch.manual_seed(seed)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data)
    pretrain = data_dir / "pretrain"
    optim = OptimizerConfig(lr=lr, warmup_steps=10, min_lr_ratio=0.1)
    common = dict(tokenizer=tokenizer, optimizer=optim, seed=seed)
    mixed = _datamodule(tokenizer, {"en": 1.0, target: 9.0}, seq_len, batch_size, seed, pretrain)
    english = _datamodule(tokenizer, {"en": 1.0}, seq_len, batch_size, seed + 1, pretrain)
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
    times["align"] = _fit(align, _datamodule(tokenizer, {"en": 1.0, target: 9.0}, seq_len, batch_size, seed + 2, pretrain), out, "align", align_steps, accelerator)
    fft = AlignmentModule(model=str(out / "base"), export_dir=str(out / "fft"), **common)
    times["fft"] = _fit(fft, _datamodule(tokenizer, {"en": 1.0, target: 9.0}, seq_len, batch_size, seed, pretrain), out, "fft", elo_steps + align_steps, accelerator)

    english_chat = _sft_data(tokenizer, {"en": 1.0}, seed, batch_size, data_dir)
    instruct = SFTModule(model=str(out / "base"), export_dir=str(out / "instruct"), **common)
    times["instruct"] = _fit(instruct, english_chat, out, "instruct", sft_steps, accelerator)
    apply_chat_vector(str(out / "base"), str(out / "instruct"), str(out / "elo_aligned"), str(out / "chat_vector"),
                      overwrite=True)
    bilingual_chat = _sft_data(tokenizer, {target: 1.0, "en": 1.0}, seed, batch_size, data_dir)
    sft = SFTModule(model=str(out / "chat_vector"), export_dir=str(out / "sft"), **common)
    times["sft"] = _fit(sft, bilingual_chat, out, "sft", sft_steps, accelerator)

    files = {lang: [str(pretrain / lang / "valid.jsonl")] for lang in ("en", target)}
    tasks = Path(eval_tasks) if eval_tasks else None
    models = {name: _evaluate(out / name, files, seq_len, tasks) for name in ("base", "elo_aligned", "fft", "sft")}
    results = {
        "target": target,
        "layers": layers,
        "steps": {"base": base_steps, "elo": elo_steps, "align": align_steps, "fft": elo_steps + align_steps,
                  "instruct": sft_steps, "sft": sft_steps},
        "tokens_per_step": seq_len * batch_size,
        "train_seconds": {k: round(v, 1) for k, v in times.items()},
        "tokens_per_s": {k: round(_summary(out, k)["tokens_per_s"]) for k in times},
        "wall_seconds": round(time.perf_counter() - wall, 1),
        "models": {name: m["perplexity"] for name, m in models.items()},
        "lm_eval": {name: m.get("lm_eval", {}) for name, m in models.items()},
    }
    write_json_atomic(out / "results.json", results)
    _draw(results, out)
    print(format_table(results))
    print(f"results: {out / 'results.json'}  figures: {out / 'loss_curves.png'}, {out / 'bits_per_byte.png'}")
    return results


def _draw(results: dict, out: Path) -> None:
    """The pictures people look at first: training loss of every stage and per-language bits per byte."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from elo_lightning.evaluation.analysis import load_scalars, plot_loss_curves, plot_perplexity_bars

    for name, fig in (("loss_curves.png", plot_loss_curves(load_scalars(out / "logs"), order=list(results["train_seconds"]))),
                      ("bits_per_byte.png", plot_perplexity_bars(results["models"], "bits_per_byte", logy=False))):
        fig.savefig(out / name, dpi=110)
        plt.close(fig)


def format_table(results: dict) -> str:
    langs = sorted({lang for m in results["models"].values() for lang in m})
    tasks = sorted({t for m in results.get("lm_eval", {}).values() for t in m})
    head = [f"ppl {lang}" for lang in langs] + [f"bpb {lang}" for lang in langs] + [t.removeprefix("elo_tiny_") for t in tasks]
    lines = ["| model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for name, per_lang in results["models"].items():
        cells = [f"{per_lang[lang]['perplexity']:.1f}" for lang in langs]
        cells += [f"{per_lang[lang]['bits_per_byte']:.3f}" for lang in langs]
        cells += [f"{results['lm_eval'][name].get(t, float('nan')):.2f}" for t in tasks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    t, tps = results["train_seconds"], results["tokens_per_s"]
    lines.append(
        f"\ntraining time: ELO {t['elo']:.0f}s + align {t['align']:.0f}s vs FFT {t['fft']:.0f}s (same tokens); "
        f"tokens/s ELO {tps['elo']} vs FFT {tps['fft']}; wall {results['wall_seconds']:.0f}s"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    json.dumps(pipeline())
