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


def default_lora_rank(hidden_size: int) -> int:
    """The paper-like rank 64 at hidden 4096, scaled with the width so a scaled-down model keeps LoRA's FLOP share."""
    return max(1, round(64 * hidden_size / 4096))


def _module(method: str, arch: str, layers: str, lora_rank: int, gradient_checkpointing: bool, tokenizer: str,
            **speed):
    from elo_lightning.modules import AlignmentModule, DetachedLayerModule, FreezeTuningModule, LoRAModule
    from elo_lightning.optim import OptimizerConfig

    common = dict(model=arch, tokenizer=tokenizer, optimizer=OptimizerConfig(),
                  gradient_checkpointing=gradient_checkpointing, **speed)
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
    linear_ce: str = "auto",
    attn_implementation: str = "sdpa",
    compile: bool = False,
    peak_flops_per_device: float | None = None,
) -> dict:
    """One method, one process: train warmup+steps optimizer steps and write ``summary.json`` to ``output``."""
    import lightning as L

    from elo_lightning.callbacks import ThroughputLogger
    from elo_lightning.flops import count_parameters
    from elo_lightning.pipeline import _datamodule

    L.seed_everything(42, verbose=False)
    module = _module(method, arch, layers, lora_rank, gradient_checkpointing, tokenizer, linear_ce=linear_ce,
                     attn_implementation=attn_implementation, compile=compile)
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
        callbacks=[ThroughputLogger(output_dir=output, warmup_steps=warmup,
                                    peak_flops_per_device=peak_flops_per_device)],
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
        "linear_ce": module._linear_ce_impl(),
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


def _fits(res: dict | None, budget_gb: float | None) -> bool:
    if res is None or res.get("oom"):
        return False
    return budget_gb is None or (res.get("peak_mem_gb") or 0.0) <= budget_gb


def _search_batch(method: str, out: Path, first: dict, args: dict, max_batch_size: int, budget_gb: float | None) -> dict:
    """Double the micro-batch from the equal-batch run while it fits; keep the fitting one with the best tokens/s."""
    trials = [first]
    while _fits(trials[-1], budget_gb) and 2 * trials[-1]["batch_size"] <= max_batch_size:
        b = 2 * trials[-1]["batch_size"]
        trial = _run_worker(method, out / f"{method}-b{b}", b, args)
        trials.append(trial if trial is not None else {"batch_size": b, "tokens_per_s": None, "peak_mem_gb": None, "oom": True})
        print(f"[bench] {method}: batch {b}: " + ("out of memory" if trial is None else
              f"{trial['tokens_per_s']:.0f} tokens/s, peak {trial['peak_mem_gb']:.2f} GB"), flush=True)
    fitting = [t for t in trials if _fits(t, budget_gb)]
    best = max(fitting, key=lambda t: t["tokens_per_s"]) if fitting else None
    log = [{"batch_size": t["batch_size"], "tokens_per_s": t["tokens_per_s"], "peak_mem_gb": t["peak_mem_gb"],
            "fits": _fits(t, budget_gb)} for t in trials]
    if best is None:
        return {"batch_size": None, "tokens_per_s": None, "peak_mem_gb": None, "trials": log}
    return {"batch_size": best["batch_size"], "tokens_per_s": best["tokens_per_s"], "peak_mem_gb": best["peak_mem_gb"],
            "trials": log}


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
    memory_budget_gb: float | None = None,
    linear_ce: str = "auto",
    attn_implementation: str = "sdpa",
    compile: bool = False,
    checkpointing_methods: str | None = None,
    best_batch_methods: str | None = None,
    peak_flops_per_device: float | None = None,
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
        memory_budget_gb: a micro-batch fits when it does not run out of memory and its peak memory (CUDA peak
            allocated; peak RSS of the process on CPU, where nothing runs out of memory before the machine swaps)
            stays within this budget. None: only out-of-memory errors bound the search.
        linear_ce: the stages' loss without full logits (auto, chunked, liger, cce, off; ``elo_lightning.losses``).
        attn_implementation: sdpa, eager or flash_attention_2.
        compile: torch.compile each decoder layer.
        checkpointing_methods: comma-separated methods that recompute activations (default: all methods when
            gradient_checkpointing, else none), e.g. "fft,lora,freeze" on one GPU at seq 8192.
        best_batch_methods: comma-separated methods whose batch is searched (default: all, when best_batch).
        peak_flops_per_device: the device's dense peak FLOP/s for MFU (default: Lightning's table; it lists H200
            at its sparse 2 PFLOP/s, the dense bf16 peak of H100 SXM and H200 is 989.4 TFLOP/s).
    """
    from transformers import __version__ as tf_version

    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = set(chosen) - set(METHODS)
    if unknown:
        raise ELOError(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    config, lam, lora_rank = _shape(arch, layers, lora_rank)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    args = dict(arch=arch, layers=layers, seq_len=seq_len, steps=steps, warmup=warmup, precision=precision,
                accelerator=accelerator, lora_rank=lora_rank, linear_ce=linear_ce,
                attn_implementation=attn_implementation, compile=compile)
    if peak_flops_per_device is not None:
        args["peak_flops_per_device"] = peak_flops_per_device
    recompute = _method_list(checkpointing_methods, chosen if gradient_checkpointing else [])
    searched = _method_list(best_batch_methods, chosen if best_batch else [])
    results: dict = {}
    for method in chosen:
        margs = {**args, "gradient_checkpointing": method in recompute}
        print(f"[bench] {method}: batch {batch_size} x seq {seq_len}, {warmup} warm-up + {steps} measured steps", flush=True)
        res = _run_worker(method, out / method, batch_size, margs)
        if res is None:
            print(f"[bench] {method}: out of memory at batch {batch_size}", flush=True)
            continue
        res["gradient_checkpointing"] = method in recompute
        res["best_batch"] = (_search_batch(method, out, res, margs, max_batch_size, memory_budget_gb)
                             if method in searched else None)
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
        "linear_ce": linear_ce,
        "attn_implementation": attn_implementation,
        "compile": compile,
        "versions": {"torch": torch.__version__, "transformers": tf_version, "python": platform.python_version()},
        "methods": results,
    }
    if best_batch or searched:
        report["memory_budget_gb"] = memory_budget_gb
    return _finish(report, out, config, lam, lora_rank, bool(searched))


def _method_list(value: str | None, default: list[str]) -> list[str]:
    if value is None:
        return list(default)
    chosen = [m.strip() for m in value.split(",") if m.strip()]
    unknown = set(chosen) - set(METHODS)
    if unknown:
        raise ELOError(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    return chosen


def from_runs(
    runs: dict[str, str],
    arch: str,
    output: str = "results/runs",
    layers: str = "1,-1",
    lora_rank: int | None = None,
) -> dict:
    """``results.json`` and the speedup figure from the ``ThroughputLogger`` summaries of ordinary ``elo fit`` runs.

    The multi-GPU benchmark: train each method with its config (e.g. ``configs/8xh100/{elo,lora,fft}.yaml`` with
    ``--trainer.max_steps 300``), then point this at the runs' log directories. Tokens/s are global, so every run
    must have the same world size and sequence length (inferred from tokens/s over samples/s).

    Args:
        runs: ``{method: directory holding summary.json}``; methods from elo, lora, fft, freeze, align (the
            alignment run of the re-attached model; FFT's throughput stands in for it when absent).
        arch: the architecture config the runs trained (for the analytic FLOP ratios).
        output: results directory.
        layers: λ of the ELO and freeze runs, 1-based.
        lora_rank: rank of the LoRA run (default: as in ``elo bench``, 64 at hidden 4096).
    """
    unknown = set(runs) - set(METHODS) - {"align"}
    if unknown or "elo" not in runs:
        raise ELOError(f"runs needs 'elo' and methods from {', '.join(METHODS)}, align; got {sorted(runs)}")
    summaries = {}
    for method, run_dir in runs.items():
        path = Path(run_dir) / "summary.json"
        if not path.is_file():
            raise ELOError(f"{method}: no {path} (the ThroughputLogger writes it when training ends)")
        summaries[method] = json.loads(path.read_text())
        if not summaries[method].get("tokens_per_s"):
            raise ELOError(f"{method}: {path} has no measured steps (more max_steps than warmup_steps?)")
    shapes = {m: (s["world_size"], round(s["tokens_per_s"] / s["samples_per_s"])) for m, s in summaries.items()}
    if len(set(shapes.values())) != 1:
        raise ELOError(f"runs differ in (world size, seq_len): {shapes}; tokens/s are only comparable at equal ones")
    world_size, seq_len = next(iter(shapes.values()))
    config, lam, lora_rank = _shape(arch, layers, lora_rank)
    methods = {
        m: {
            "tokens_per_s": s["tokens_per_s"],
            "step_time_s": s["step_time_s"],
            "flops_per_token": s["flops_per_step"] / s["tokens_per_step"] if s.get("flops_per_step") else None,
            "mfu": s.get("mfu"),
            "peak_mem_gb": s.get("peak_mem_gb"),
            "trainable_params": s.get("trainable_params"),
            "computed_params": s.get("total_params"),
            "batch_size": round(s["tokens_per_step"] / (seq_len * world_size)),
            "device_name": s.get("device_name"),
            "best_batch": None,
            "run": str(runs[m]),
        }
        for m, s in summaries.items()
    }
    report = {
        "arch": Path(arch).stem,
        "device": f"{world_size}x {methods['elo']['device_name'] or 'unknown'}",
        "world_size": world_size,
        "seq_len": seq_len,
        "layers": layers,
        "precision": summaries["elo"].get("dtype"),
        "methods": methods,
    }
    return _finish(report, Path(output), config, lam, lora_rank)


def _shape(arch: str, layers: str, lora_rank: int | None):
    """(architecture config, λ, LoRA rank) of a benchmark: what the analytic FLOP ratios need."""
    from elo_lightning.models import load_config
    from elo_lightning.surgery import parse_layers

    config = load_config(arch)
    return config, parse_layers(layers, config.num_hidden_layers), lora_rank or default_lora_rank(config.hidden_size)


def _finish(report: dict, out: Path, config, lam, lora_rank: int, best_batch: bool = False) -> dict:
    """Add the analytic FLOPs per token, write results.json, draw the figure(s), print the ratios."""
    from elo_lightning.figure import make_figure
    from elo_lightning.flops import analytic_train_flops_per_token

    report["analytic_flops_per_token"] = {
        m: analytic_train_flops_per_token(config, m, lam, seq_len=report["seq_len"], lora_rank=lora_rank)
        for m in METHODS
    }
    write_json_atomic(out / "results.json", report)
    make_figure(out / "results.json", out)
    if best_batch:
        make_figure(out / "results.json", out / "best-batch", best_batch=True)
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
