"""`elo bench`: the benchmarked stages (ELO, LoRA, FFT, freeze-tuning) timed by one harness, each in a fresh process.

Same architecture (random init: speed does not depend on the weights), same data stream, same optimizer, same
number of measured steps after the same warm-up; the only difference is the stage module. Writes
``results.json`` (schema in ``elo_lightning.bench.figure``) and the speedup figure/table next to it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from elo_lightning.bench.report import bench_shape, finish, method_entry, write_run_config
from elo_lightning.errors import ELOError
from elo_lightning.io import read_json, write_json_atomic
from elo_lightning.modules import BENCH_METHODS, STAGES


@dataclass
class BenchArgs:
    """What every timed run of one benchmark shares (the worker gets it whole, with its method and batch size)."""

    arch: str
    layers: str = "1,-1"
    seq_len: int = 512
    steps: int = 10
    warmup: int = 3
    precision: str = "32-true"
    accelerator: str = "auto"
    gradient_checkpointing: bool = False
    lora_rank: int = 64
    tokenizer: str = "configs/tokenizer"
    data: str = "data/sample/pretrain"
    linear_ce: str = "auto"
    attn_implementation: str = "sdpa"
    compile: bool = False
    peak_flops_per_device: float | None = None


def _module(method: str, args: BenchArgs):
    from elo_lightning.optim import OptimizerConfig

    own = {"elo": {"layers": args.layers}, "freeze": {"layers": args.layers},
           "lora": {"r": args.lora_rank, "alpha": 2 * args.lora_rank}}.get(method, {})
    return STAGES[method].module(model=args.arch, tokenizer=args.tokenizer, optimizer=OptimizerConfig(),
                                 gradient_checkpointing=args.gradient_checkpointing, linear_ce=args.linear_ce,
                                 attn_implementation=args.attn_implementation, compile=args.compile, **own)


def worker(method: str, batch_size: int, output: str, args: BenchArgs) -> dict:
    """One method, one process: train warmup+steps optimizer steps; write ``result.json`` and ``config.yaml``."""
    import lightning as L

    from elo_lightning.callbacks import ThroughputLogger
    from elo_lightning.data import BilingualDataModule

    L.seed_everything(42, verbose=False)
    module = _module(method, args)
    dm = BilingualDataModule.from_folder(args.data, {"en": 1.0, "ko": 9.0}, args.tokenizer, seq_len=args.seq_len,
                                         batch_size=batch_size, seed=42, val_max_sequences=32)
    throughput = ThroughputLogger(output_dir=output, warmup_steps=args.warmup,
                                  peak_flops_per_device=args.peak_flops_per_device)
    trainer = L.Trainer(max_steps=args.warmup + args.steps, accelerator=args.accelerator, devices=1,
                        precision=args.precision, logger=False, enable_checkpointing=False, limit_val_batches=0,
                        num_sanity_val_steps=0, enable_model_summary=False, callbacks=[throughput])
    trainer.fit(module, datamodule=dm)
    result = {**method_entry(throughput.summary, args.seq_len), "linear_ce": module._linear_ce_impl(),
              "gradient_checkpointing": args.gradient_checkpointing}
    write_json_atomic(Path(output) / "result.json", result)
    write_run_config(Path(output), module, dm)
    return result


def _run_worker(method: str, out: Path, batch_size: int, args: BenchArgs) -> dict | None:
    """Fresh interpreter per run: no allocator or compile state leaks between methods. None = out of memory."""
    job = json.dumps({"method": method, "batch_size": batch_size, "output": str(out), "args": asdict(args)})
    cmd = [sys.executable, "-m", "elo_lightning.bench.run", job]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log = out.parent / f"{out.name}.log"
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        if "OutOfMemoryError" in proc.stderr or "out of memory" in proc.stderr:
            return None
        raise RuntimeError(f"bench worker {method} (batch {batch_size}) failed; log: {log}\n{proc.stderr[-2000:]}")
    return read_json(out / "result.json", "bench worker result")


def _fits(res: dict | None, budget_gb: float | None) -> bool:
    if res is None or res.get("oom"):
        return False
    return budget_gb is None or (res.get("peak_mem_gb") or 0.0) <= budget_gb


def _trial(method: str, out: Path, batch_size: int, args: BenchArgs) -> dict:
    trial = _run_worker(method, out / f"{method}-b{batch_size}", batch_size, args)
    print(f"[bench] {method}: batch {batch_size}: " + ("out of memory" if trial is None else
          f"{trial['tokens_per_s']:.0f} tokens/s, peak {trial['peak_mem_gb']:.2f} GB"), flush=True)
    return trial or {"batch_size": batch_size, "tokens_per_s": None, "peak_mem_gb": None, "oom": True}


def _search_batch(method: str, out: Path, first: dict, args: BenchArgs, max_batch_size: int,
                  budget_gb: float | None) -> dict:
    """Double the micro-batch from the equal-batch run while it fits; keep the fitting one with the best tokens/s."""
    trials = [first]
    while _fits(trials[-1], budget_gb) and 2 * trials[-1]["batch_size"] <= max_batch_size:
        trials.append(_trial(method, out, 2 * trials[-1]["batch_size"], args))
    fitting = [t for t in trials if _fits(t, budget_gb)]
    best = max(fitting, key=lambda t: t["tokens_per_s"]) if fitting else {}
    log = [{"batch_size": t["batch_size"], "tokens_per_s": t["tokens_per_s"], "peak_mem_gb": t["peak_mem_gb"],
            "fits": _fits(t, budget_gb)} for t in trials]
    return {"batch_size": best.get("batch_size"), "tokens_per_s": best.get("tokens_per_s"),
            "peak_mem_gb": best.get("peak_mem_gb"), "trials": log}


def _precisions() -> tuple[str, ...]:
    from typing import get_args

    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    return (*get_args(_PRECISION_INPUT_STR), *get_args(_PRECISION_INPUT_STR_ALIAS))


def check_bench_args(seq_len: int, batch_size: int, steps: int, warmup: int, precision: str, max_batch_size: int,
                     memory_budget_gb: float | None) -> None:
    """The numbers and names of a benchmark, before any model is built or process started. Raises ELOError."""
    for name, value, least in (("seq_len", seq_len, 2), ("batch_size", batch_size, 1), ("steps", steps, 1),
                               ("warmup", warmup, 0), ("max_batch_size", max_batch_size, 1)):
        if value < least:
            raise ELOError(f"bench: {name} must be >= {least}, got {value}")
    if str(precision) not in _precisions():
        raise ELOError(f"bench: unknown precision {precision!r}; choose one of {', '.join(_precisions())}")
    if memory_budget_gb is not None and not memory_budget_gb > 0:
        raise ELOError(f"bench: memory_budget_gb must be > 0 (or unset), got {memory_budget_gb}")


def _chosen_methods(methods: str | None, default: list[str] | tuple[str, ...] = ()) -> list[str]:
    if methods is None:
        return list(default)
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = set(chosen) - set(BENCH_METHODS)
    if unknown:
        raise ELOError(f"unknown methods {sorted(unknown)}; choose from {', '.join(BENCH_METHODS)}")
    return chosen


def bench(
    arch: str = "configs/models/llama-3.1-8b-scaled.json",
    output: str = "results/bench",
    methods: str = ",".join(BENCH_METHODS),
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
        methods: comma-separated subset of the benchmarked stages (elo, freeze, lora, fft).
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
    check_bench_args(seq_len, batch_size, steps, warmup, precision, max_batch_size, memory_budget_gb)
    chosen = _chosen_methods(methods)
    recompute = _chosen_methods(checkpointing_methods, chosen if gradient_checkpointing else [])
    searched_methods = _chosen_methods(best_batch_methods, chosen if best_batch else [])
    shape = bench_shape(arch, layers, lora_rank)
    args = BenchArgs(arch=arch, layers=layers, seq_len=seq_len, steps=steps, warmup=warmup, precision=precision,
                     accelerator=accelerator, lora_rank=shape.lora_rank, linear_ce=linear_ce,
                     attn_implementation=attn_implementation, compile=compile,
                     peak_flops_per_device=peak_flops_per_device)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for method in chosen:
        print(f"[bench] {method}: batch {batch_size} x seq {seq_len}, {warmup} warm-up + {steps} measured steps",
              flush=True)
        margs = replace(args, gradient_checkpointing=method in recompute)
        res = _run_worker(method, out / method, batch_size, margs)
        if res is None:
            print(f"[bench] {method}: out of memory at batch {batch_size}", flush=True)
            continue
        searched = (_search_batch(method, out, res, margs, max_batch_size, memory_budget_gb)
                    if method in searched_methods else None)
        res["best_batch"] = searched
        results[method] = res
        print(f"[bench] {method}: {res['tokens_per_s']:.0f} tokens/s, step {res['step_time_s']:.3f}s", flush=True)
    report = _report(arch, layers, seq_len, precision, results)
    report.update(linear_ce=linear_ce, attn_implementation=attn_implementation, compile=compile)
    if searched_methods:
        report["memory_budget_gb"] = memory_budget_gb
    return finish(report, out, shape, bool(searched_methods))


def _report(arch: str, layers: str, seq_len: int, precision: str, results: dict) -> dict:
    from transformers import __version__ as tf_version

    device = next((r.get("device_name") for r in results.values() if r.get("device_name")), platform.processor())
    return {
        "arch": Path(arch).stem,
        "device": f"1x {device or 'cpu'}",
        "world_size": 1,
        "seq_len": seq_len,
        "layers": layers,
        "precision": precision,
        "versions": {"torch": torch.__version__, "transformers": tf_version, "python": platform.python_version()},
        "methods": results,
    }


if __name__ == "__main__":  # the worker process of _run_worker
    job = json.loads(sys.argv[1])
    worker(job["method"], job["batch_size"], job["output"], BenchArgs(**job["args"]))
