"""`elo bench`: ELO, LoRA, FFT and freeze-tuning timed by one harness, each in a fresh process.

Same architecture (random init: speed does not depend on the weights), same data stream, same optimizer, same
number of measured steps after the same warm-up; the only difference is the stage module. Writes
``results.json`` (schema in ``elo_lightning.figure``) and the speedup figure/table next to it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from elo_lightning.errors import ELOError
from elo_lightning.io import write_json_atomic

METHODS = ("elo", "lora", "fft", "freeze")


def _module(method: str, arch: str, layers: str, lora_rank: int, gradient_checkpointing: bool, tokenizer: str):
    from elo_lightning.modules import AlignmentModule, DetachedLayerModule, FreezeTuningModule, LoRAModule
    from elo_lightning.optim import OptimizerConfig

    common = dict(model=arch, tokenizer=tokenizer, optimizer=OptimizerConfig(), gradient_checkpointing=gradient_checkpointing)
    if method == "elo":
        return DetachedLayerModule(layers=layers, **common)
    if method == "freeze":
        return FreezeTuningModule(layers=layers, **common)
    if method == "lora":
        return LoRAModule(r=lora_rank, alpha=2 * lora_rank, **common)
    if method == "fft":
        return AlignmentModule(**common)
    raise ELOError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def worker(
    method: str,
    arch: str,
    output: str,
    layers: str = "1,-1",
    seq_len: int = 512,
    batch_size: int = 4,
    steps: int = 10,
    warmup: int = 3,
    precision: str = "32-true",
    accelerator: str = "auto",
    gradient_checkpointing: bool = False,
    lora_rank: int = 64,
    tokenizer: str = "configs/tokenizer",
    data: str = "data/sample/pretrain",
) -> dict:
    """One method, one process: train warmup+steps optimizer steps and write ``summary.json`` to ``output``."""
    import lightning as L

    from elo_lightning.callbacks import ThroughputLogger
    from elo_lightning.flops import count_parameters
    from elo_lightning.pipeline import _datamodule

    L.seed_everything(42, verbose=False)
    module = _module(method, arch, layers, lora_rank, gradient_checkpointing, tokenizer)
    dm = _datamodule(tokenizer, {"en": 1.0, "ko": 9.0}, seq_len, batch_size, 42, Path(data))
    trainer = L.Trainer(
        max_steps=warmup + steps,
        accelerator=accelerator,
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        callbacks=[ThroughputLogger(output_dir=output, warmup_steps=warmup)],
    )
    trainer.fit(module, datamodule=dm)
    summary = json.loads((Path(output) / "summary.json").read_text())
    params = count_parameters(module.model)
    tokens = batch_size * seq_len
    result = {
        "tokens_per_s": summary["tokens_per_s"],
        "step_time_s": summary["step_time_s"],
        "flops_per_token": module.flops_per_batch / tokens if module.flops_per_batch else None,
        "mfu": summary.get("mfu"),
        "peak_mem_gb": summary.get("peak_mem_gb"),
        "trainable_params": params["trainable"],
        "computed_params": params["total"],
        "batch_size": batch_size,
        "device_name": summary.get("device_name"),
    }
    write_json_atomic(Path(output) / "result.json", result)
    return result


def _run_worker(method: str, out: Path, batch_size: int, args: dict) -> dict | None:
    """Fresh interpreter per run: no allocator or compile state leaks between methods. None = out of memory."""
    cmd = [sys.executable, "-m", "elo_lightning.bench", "--method", method, "--output", str(out), "--batch_size", str(batch_size)]
    for key, value in args.items():
        cmd += [f"--{key}", str(value)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    (out.parent / f"{out.name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        if "OutOfMemoryError" in proc.stderr or "out of memory" in proc.stderr:
            return None
        raise RuntimeError(f"bench worker {method} (batch {batch_size}) failed; log: {out.parent / (out.name + '.log')}\n{proc.stderr[-2000:]}")
    return json.loads((out / "result.json").read_text())


def bench(
    arch: str = "configs/models/llama-3.1-8b-scaled.json",
    output: str = "results/bench",
    methods: str = "elo,lora,fft,freeze",
    layers: str = "1,-1",
    seq_len: int = 512,
    batch_size: int = 2,
    steps: int = 8,
    warmup: int = 3,
    precision: str = "32-true",
    accelerator: str = "auto",
    gradient_checkpointing: bool = False,
    lora_rank: int | None = None,
    best_batch: bool = False,
    max_batch_size: int = 64,
) -> dict:
    """Time ELO, LoRA, FFT and freeze-tuning on one architecture; write results.json, speedup.png and speedup.md.

    Args:
        arch: architecture config (configs/models/*.json): random init, no weights needed.
        output: results directory.
        methods: comma-separated subset of elo,lora,fft,freeze.
        layers: λ for ELO and freeze-tuning, 1-based.
        seq_len: tokens per sequence (paper: 8192).
        batch_size: micro-batch for the equal-batch comparison.
        steps: measured optimizer steps per method (after warm-up).
        warmup: steps excluded from the measurement.
        precision: Lightning precision, e.g. 32-true on CPU, bf16-true on H100.
        accelerator: cpu, gpu or auto.
        gradient_checkpointing: recompute activations (lets FFT/LoRA fit long sequences on one GPU).
        lora_rank: LoRA rank (alpha = 2 * rank) on all attention and MLP projections; default 64 at hidden 4096,
            scaled with the hidden size so a scaled-down model keeps the adapters' share of the FLOPs.
        best_batch: also search, per method, the micro-batch (doubling up to max_batch_size, until out of memory)
            with the highest tokens/s.
        max_batch_size: upper bound of that search.
    """
    from transformers import __version__ as tf_version

    from elo_lightning.figure import make_figure
    from elo_lightning.flops import analytic_train_flops_per_token
    from elo_lightning.models import load_config
    from elo_lightning.surgery import parse_layers

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = set(chosen) - set(METHODS)
    if unknown:
        raise ELOError(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    config = load_config(arch)
    lam = parse_layers(layers, config.num_hidden_layers)
    lora_rank = lora_rank or max(1, round(64 * config.hidden_size / 4096))
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    args = dict(arch=arch, layers=layers, seq_len=seq_len, steps=steps, warmup=warmup, precision=precision,
                accelerator=accelerator, gradient_checkpointing=gradient_checkpointing, lora_rank=lora_rank)
    results: dict = {}
    for method in chosen:
        print(f"[bench] {method}: batch {batch_size} x seq {seq_len}, {warmup} warm-up + {steps} measured steps", flush=True)
        res = _run_worker(method, out / method, batch_size, args)
        if res is None:
            print(f"[bench] {method}: out of memory at batch {batch_size}", flush=True)
            continue
        res["best_batch"] = None
        if best_batch:
            best, b = {"batch_size": batch_size, "tokens_per_s": res["tokens_per_s"]}, batch_size * 2
            while b <= max_batch_size:
                trial = _run_worker(method, out / f"{method}-b{b}", b, args)
                if trial is None:
                    break
                if trial["tokens_per_s"] > best["tokens_per_s"]:
                    best = {"batch_size": b, "tokens_per_s": trial["tokens_per_s"]}
                b *= 2
            res["best_batch"] = best
        results[method] = res
        print(f"[bench] {method}: {res['tokens_per_s']:.0f} tokens/s, step {res['step_time_s']:.3f}s", flush=True)
    device = next((r.get("device_name") for r in results.values() if r.get("device_name")), platform.processor())
    report = {
        "arch": Path(arch).stem,
        "device": f"1x {device or 'cpu'}",
        "world_size": 1,
        "seq_len": seq_len,
        "layers": layers,
        "precision": precision,
        "versions": {"torch": torch.__version__, "transformers": tf_version, "python": platform.python_version()},
        "methods": results,
        "analytic_flops_per_token": {
            m: analytic_train_flops_per_token(config, m, lam, seq_len=seq_len, lora_rank=lora_rank) for m in METHODS
        },
    }
    write_json_atomic(out / "results.json", report)
    make_figure(out / "results.json", out)
    _print_ratios(report)
    return report


def _print_ratios(report: dict) -> None:
    m, a = report["methods"], report["analytic_flops_per_token"]
    if "elo" not in m:
        return
    for other in ("fft", "lora", "freeze"):
        if other in m:
            measured = m["elo"]["tokens_per_s"] / m[other]["tokens_per_s"]
            ideal = a[other] / a["elo"]
            print(f"[bench] ELO vs {other}: measured {measured:.2f}x tokens/s, analytic FLOP ratio {ideal:.2f}x "
                  f"({100 * measured / ideal:.0f}% of ideal)")


if __name__ == "__main__":
    from jsonargparse import auto_cli

    auto_cli(worker, as_positional=False)
