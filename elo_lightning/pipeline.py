"""The whole ELO method on the embedded default, offline, in minutes on a CPU.

base (a tiny Llama pretrained here on English only: the stand-in for an English-centric LLM)
  -> ELO pretraining of λ on en:ko = 1:9 (by bytes) -> attach + alignment (full fine-tuning) on the text after
  ELO's (start_after), vs the FFT baseline on the same stream for the same number of steps;
  instruct = base + English chat SFT (the stand-in for the vendor's instruct model)
  -> for BOTH arms: chat vector (instruct - base) -> bilingual SFT (ko:en = 1:1), so the table compares finished
  models (elo_sft vs fft_sft) as the paper's Table 2 does
  -> per-language held-out perplexity / bits-per-byte and two tiny lm-eval tasks, as a table and results.json
  (which also records how each run was trained: strategy, precision, optimizer, activation checkpointing).
Learning rates are the tiny model's (1e-3), not the paper's 5e-6 for 8B models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from elo_lightning.callbacks import ThroughputLogger
from elo_lightning.chat_vector import apply_chat_vector
from elo_lightning.data import BilingualDataModule
from elo_lightning.data.sft import SFTDataModule
from elo_lightning.evaluation.evaluate import evaluate_model
from elo_lightning.io import write_json_atomic
from elo_lightning.models import init_cmd
from elo_lightning.modules import STAGES
from elo_lightning.optim import OptimizerConfig

SAMPLE = Path("data/sample")
# the models the table compares: continual pretraining (ELO + alignment vs FFT), then the finished models, each
# given the same chat vector and bilingual SFT (the paper's Table 2 compares finished models)
MODELS = ("base", "elo_aligned", "fft", "elo_sft", "fft_sft")


@dataclass
class _Run:
    """What every stage of the pipeline shares: where it writes, how it trains, on which data."""

    out: Path
    data: Path
    tokenizer: str
    target: str
    seq_len: int
    batch_size: int
    seed: int
    accelerator: str
    optimizer: OptimizerConfig
    steps_sft: int = 0
    times: dict[str, float] = field(default_factory=dict)  # wall seconds of each training run
    throughput: dict[str, dict] = field(default_factory=dict)  # its ThroughputLogger summary

    def pretrain_data(self, weights: dict[str, float], seed: int, **kwargs) -> BilingualDataModule:
        return BilingualDataModule.from_folder(self.data / "pretrain", weights, self.tokenizer, seq_len=self.seq_len,
                                               batch_size=self.batch_size, seed=seed, val_max_sequences=32, **kwargs)

    def chat_data(self, weights: dict[str, float]) -> SFTDataModule:
        return SFTDataModule(tokenizer=self.tokenizer, files=[str(self.data / "sft" / "conversations.jsonl")],
                             lang_weights=weights, seq_len=256, batch_size=self.batch_size, seed=self.seed,
                             val_fraction=0.0)

    def train(self, name: str, stage: str, model: str, data, steps: int, **kwargs) -> None:
        """Train ``stage``'s module on ``data`` for ``steps``, export to ``out/<export>``, time it under ``name``."""
        export = kwargs.pop("export", name)
        module = STAGES[stage].module(model=model, export_dir=str(self.out / export), tokenizer=self.tokenizer,
                                      optimizer=self.optimizer, seed=self.seed, **kwargs)
        throughput = ThroughputLogger(output_dir=str(self.out / "logs" / name), warmup_steps=2)
        start = time.perf_counter()
        _trainer(self.out, name, steps, self.accelerator, throughput).fit(module, datamodule=data)
        self.times[name] = time.perf_counter() - start
        self.throughput[name] = throughput.summary

    def finish(self, name: str, aligned: str) -> None:
        """Chat vector (instruct - base) added to ``aligned``, then bilingual SFT: ``<name>_chat_vector``, ``_sft``."""
        out, vector = self.out, self.out / f"{name}_chat_vector"
        apply_chat_vector(str(out / "base"), str(out / "instruct"), str(out / aligned), str(vector), overwrite=True)
        self.train(f"{name}_sft", "sft", str(vector), self.chat_data({self.target: 1.0, "en": 1.0}), self.steps_sft)


def _trainer(output: Path, name: str, max_steps: int, accelerator: str, throughput: ThroughputLogger) -> L.Trainer:
    from elo_lightning.callbacks.progress import count_steps

    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator=accelerator,
        devices=1,
        logger=TensorBoardLogger(save_dir=str(output / "logs"), name=name, version=""),
        callbacks=[throughput],
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=5,
        enable_model_summary=False,
    )
    count_steps(trainer)  # "Step N/max_steps", not "Epoch 0/-2"
    return trainer


def _train_all(run: _Run, config: str, layers: str, steps: dict[str, int]) -> None:
    """base -> ELO -> align (on the text after ELO's), the FFT baseline on the same stream, the English instruct
    stand-in, then chat vector + bilingual SFT for both arms."""
    out, target, seed = run.out, run.target, run.seed
    mix = {"en": 1.0, target: 9.0}
    init_cmd(config, str(out / "init"), tokenizer=run.tokenizer, seed=seed)
    run.train("base", "fft", str(out / "init"), run.pretrain_data({"en": 1.0}, seed + 1), steps["base"])
    run.train("elo", "elo", str(out / "base"), run.pretrain_data(mix, seed), steps["elo"], layers=layers)
    run.train("align", "align", str(out / "base"), run.pretrain_data(mix, seed, start_after=str(out / "elo")),
              steps["align"], detached=str(out / "elo"), export="elo_aligned")
    run.train("fft", "fft", str(out / "base"), run.pretrain_data(mix, seed), steps["fft"])
    run.train("instruct", "sft", str(out / "base"), run.chat_data({"en": 1.0}), steps["instruct"])
    run.finish("elo", "elo_aligned")
    run.finish("fft", "fft")


def _evaluate(run: _Run, eval_tasks: str | None) -> dict[str, dict]:
    files = {lang: [str(run.data / "pretrain" / lang / "valid.jsonl")] for lang in ("en", run.target)}
    tasks = Path(eval_tasks) if eval_tasks else None
    names = [f"elo_{n}" for n in sorted(p.stem for p in tasks.glob("*.yaml"))] if tasks is not None else None
    models = {}
    for name in MODELS:
        scores = evaluate_model(str(run.out / name), files, run.seq_len, 32, tasks=names,
                                include_path=str(tasks) if tasks is not None else None, lm_eval_batch_size=8)
        if tasks is not None:
            scores["lm_eval"] = {task: metrics.get("acc") for task, metrics in scores["lm_eval"].items()}
        models[name] = scores
    return models


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
        sft_steps: steps of each SFT run (English instruct stand-in; each arm's bilingual SFT after its chat vector).
        eval_tasks: folder of local lm-eval task YAMLs run on every model (None: perplexity only).
        lr: peak learning rate for every stage (cosine, 8-bit AdamW).
        seed: seed for init and data order.
        accelerator: cpu, gpu or auto.
    """
    torch.manual_seed(seed)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(out=out, data=Path(data), tokenizer=tokenizer, target=target, seq_len=seq_len, batch_size=batch_size,
               seed=seed, accelerator=accelerator, optimizer=OptimizerConfig(lr=lr, warmup_steps=10, min_lr_ratio=0.1),
               steps_sft=sft_steps)
    steps = {"base": base_steps, "elo": elo_steps, "align": align_steps, "fft": elo_steps + align_steps,
             "instruct": sft_steps, "elo_sft": sft_steps, "fft_sft": sft_steps}
    wall = time.perf_counter()
    _train_all(run, config, layers, steps)
    models = _evaluate(run, eval_tasks)
    results = {
        "target": target,
        "layers": layers,
        "steps": steps,
        "tokens_per_step": seq_len * batch_size,
        "train_seconds": {k: round(v, 1) for k, v in run.times.items()},
        "tokens_per_s": {k: round(summary["tokens_per_s"]) for k, summary in run.throughput.items()},
        "settings": {k: summary.get("settings") for k, summary in run.throughput.items()},
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

    curves = plot_loss_curves(load_scalars(out / "logs"), order=list(results["train_seconds"]))
    bars = plot_perplexity_bars(results["models"], "bits_per_byte", logy=False)
    for name, fig in (("loss_curves.png", curves), ("bits_per_byte.png", bars)):
        fig.savefig(out / name, dpi=110)
        plt.close(fig)


def format_table(results: dict) -> str:
    langs = sorted({lang for m in results["models"].values() for lang in m})
    tasks = sorted({t for m in results.get("lm_eval", {}).values() for t in m})
    head = [f"ppl {lang}" for lang in langs] + [f"bpb {lang}" for lang in langs]
    head += [t.removeprefix("elo_tiny_") for t in tasks]
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
