"""Per-optimizer-step throughput, FLOP/s, MFU and peak-memory logging. Knows nothing about ELO.

One *step* is one optimizer step: under gradient accumulation it spans ``accumulate_grad_batches`` micro-batches and
their tokens are summed. A step starts at ``on_train_batch_start`` of its first micro-batch and ends at
``on_train_batch_end`` of the micro-batch after which ``trainer.global_step`` advanced (the device is synchronised
at both ends, so asynchronous CUDA work is inside the step it belongs to). The dataloader fetch of the first
micro-batch of a step is therefore not timed; fetches of later micro-batches are.

Per step (after ``warmup_steps`` steps, which are excluded from everything but the step counter) it records::

    step, step_time_s, tokens, samples, tokens_per_s, samples_per_s, tokens_per_s_per_device,
    flops (global, per step), tflops_per_s (global), mfu, peak_mem_gb, world_size

"Global" = per-rank counts times ``trainer.world_size`` (every rank is assumed to see the same batch shape).
FLOPs come from ``pl_module.flops_per_batch`` (Lightning's convention: FLOPs of one forward+backward on one
micro-batch of one rank; absent/``None`` -> no FLOP metrics). MFU = global FLOP/s / (peak per device * world size),
the peak from :func:`lightning.fabric.utilities.throughput.get_available_flops` for the device and the precision
plugin's compute dtype (or ``peak_flops_per_device``); ``None`` when unknown (e.g. on CPU).
Peak memory: ``torch.cuda.max_memory_allocated`` (reset at each step start) on CUDA, else the process' peak RSS
(``resource.getrusage``, monotone over the run).

Outputs (rank 0): the loggers (``throughput/<key>``, step = ``trainer.global_step``; windowed rates computed by
Lightning's :class:`~lightning.fabric.utilities.throughput.Throughput` under ``throughput/window/<key>``),
``<output_dir>/throughput.jsonl`` and ``throughput.csv`` (one row per measured step), and at ``on_train_end``
``<output_dir>/summary.json``::

    {"steps_measured", "warmup_steps", "world_size", "device", "device_name", "dtype",
     "tokens_per_s"  (total tokens / total time over measured steps, global),
     "samples_per_s", "step_time_s" (mean), "step_time_s_median", "tokens_per_step",
     "flops_per_step", "tflops_per_s" (total / total), "mfu" (or null), "peak_mem_gb" (max), "peak_flops_per_device",
     "trainable_params", "total_params" (of the LightningModule; DTensor shards count with their global size),
     "settings": {"strategy", "precision", "optimizer", "activation_checkpointing"} (how the run was timed)}
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Callback

from elo_lightning.flops import count_parameters
from elo_lightning.io import write_json_atomic

__all__ = ["ThroughputLogger"]

_CSV_FIELDS = [
    "step",
    "step_time_s",
    "tokens",
    "samples",
    "tokens_per_s",
    "samples_per_s",
    "tokens_per_s_per_device",
    "flops",
    "tflops_per_s",
    "mfu",
    "peak_mem_gb",
    "world_size",
]


def run_settings(trainer: Any, pl_module: Any) -> dict[str, Any]:
    """How a run was timed: strategy, precision, optimizer class and whether activations are recomputed."""
    optimizers = getattr(trainer, "optimizers", None) or []
    opt = type(optimizers[0]) if optimizers else None
    modules = pl_module.modules() if isinstance(pl_module, torch.nn.Module) else []
    checkpointing = any(getattr(m, "is_gradient_checkpointing", False) is True
                        or type(m).__name__ == "CheckpointWrapper" for m in modules)
    return {
        "strategy": type(trainer.strategy).__name__ if getattr(trainer, "strategy", None) is not None else None,
        "precision": str(getattr(trainer, "precision", None)),
        "optimizer": f"{opt.__module__.split('.')[0]}.{opt.__name__}" if opt is not None else None,
        "activation_checkpointing": checkpointing,
    }


def _peak_rss_gb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return rss / 1024**3 if sys.platform == "darwin" else rss / 1024**2


class ThroughputLogger(Callback):
    """Log tokens/s, samples/s, step time, TFLOP/s, MFU and peak memory per optimizer step; write a summary.

    Args:
        output_dir: where ``throughput.jsonl``, ``throughput.csv`` and ``summary.json`` go
            (default: ``trainer.log_dir`` or ``trainer.default_root_dir``).
        warmup_steps: optimizer steps excluded from logging and the summary (compilation, allocator warm-up).
        batch_key: key of the token tensor in a dict batch (``numel()`` = tokens, ``shape[0]`` = samples); a
            tensor batch or a tuple/list whose first element is a tensor also works.
        window_size: optimizer steps in the rolling window of Lightning's ``Throughput``.
        peak_flops_per_device: override the theoretical peak (FLOP/s of one device) used for MFU.
        progress_bar: show the global tokens/s of the last step (and MFU when known) in the progress bar.
        clock: time source (seconds); injectable for tests.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike | None = None,
        warmup_steps: int = 2,
        batch_key: str = "input_ids",
        window_size: int = 10,
        peak_flops_per_device: float | None = None,
        progress_bar: bool = True,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.warmup_steps = warmup_steps
        self.batch_key = batch_key
        self.window_size = max(1, int(window_size))
        self.peak_flops_per_device = peak_flops_per_device
        self.progress_bar = progress_bar
        self.clock = clock
        self.records: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None
        self._reset_step()
        self._steps_done = 0

    # ------------------------------------------------------------------ helpers
    def _reset_step(self) -> None:
        self._t0: float | None = None
        self._step_at_start: int | None = None
        self._tokens = 0
        self._samples = 0
        self._micro = 0

    @staticmethod
    def _device(trainer: Any) -> torch.device:
        try:
            return torch.device(trainer.strategy.root_device)
        except Exception:  # noqa: BLE001
            return torch.device("cpu")

    def _sync(self, device: torch.device) -> None:
        if device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.synchronize(device)

    def _count(self, batch: Any) -> tuple[int, int]:
        t = None
        if isinstance(batch, Mapping):
            t = batch.get(self.batch_key)
        elif isinstance(batch, torch.Tensor):
            t = batch
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
            t = batch[0]
        if not isinstance(t, torch.Tensor):
            raise KeyError(f"ThroughputLogger: cannot find token tensor {self.batch_key!r} in the batch")
        return int(t.numel()), int(t.shape[0]) if t.dim() else 1

    def _dtype(self, trainer: Any) -> torch.dtype:
        try:
            from lightning.pytorch.callbacks.throughput_monitor import _plugin_to_compute_dtype

            return _plugin_to_compute_dtype(trainer.precision_plugin)
        except Exception:  # noqa: BLE001
            return torch.float32

    def _out_dir(self, trainer: Any) -> Path:
        if self.output_dir is not None:
            return self.output_dir
        d = getattr(trainer, "log_dir", None) or getattr(trainer, "default_root_dir", None) or "."
        return Path(d)

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.records = []
        self.summary = None
        self._steps_done = 0
        self._reset_step()
        self._device_ = self._device(trainer)
        self._world = int(getattr(trainer, "world_size", 1) or 1)
        self._dtype_ = self._dtype(trainer)
        peak = self.peak_flops_per_device
        if peak is None:
            try:
                peak = get_available_flops(self._device_, self._dtype_)
            except Exception:  # noqa: BLE001
                peak = None
        self._peak = float(peak) if peak else None
        # window_size steps = window_size + 1 cumulative points; primed with a zero point at the first measured step
        self._throughput = Throughput(
            available_flops=self._peak, world_size=self._world, window_size=self.window_size + 1
        )
        self._throughput.update(time=0.0, batches=0, samples=0, lengths=0, flops=0)
        self._cum = {"time": 0.0, "steps": 0, "samples": 0, "tokens": 0}
        if getattr(trainer, "is_global_zero", True):
            out = self._out_dir(trainer)
            out.mkdir(parents=True, exist_ok=True)
            for name in ("throughput.jsonl", "throughput.csv", "summary.json"):
                (out / name).unlink(missing_ok=True)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._t0 is None:
            if self._device_.type == "cuda" and torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats(self._device_)
            self._sync(self._device_)
            self._t0 = self.clock()
            self._step_at_start = int(trainer.global_step)
        tokens, samples = self._count(batch)
        self._tokens += tokens
        self._samples += samples
        self._micro += 1

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._t0 is None or int(trainer.global_step) == self._step_at_start:
            return  # accumulating: the optimizer has not stepped yet
        self._sync(self._device_)
        dt = self.clock() - self._t0
        self._steps_done += 1
        if self._steps_done > self.warmup_steps:
            self._record(trainer, pl_module, dt)
        self._reset_step()

    def _record(self, trainer: Any, pl_module: Any, dt: float) -> None:
        if dt <= 0:
            raise RuntimeError(f"ThroughputLogger: non-positive step time {dt}; is the clock monotonic?")
        fpb = getattr(pl_module, "flops_per_batch", None)
        step_flops_rank = float(fpb) * self._micro if fpb else None
        rec = self._step_record(trainer, dt, step_flops_rank)
        self.records.append(rec)
        window = self._update_window(dt, step_flops_rank)
        if self.progress_bar and isinstance(pl_module, LightningModule):
            pl_module.log("tok/s", rec["tokens_per_s"], prog_bar=True, logger=False)
            if rec["mfu"] is not None:
                pl_module.log("mfu", rec["mfu"], prog_bar=True, logger=False)
        if getattr(trainer, "is_global_zero", True):
            self._write(trainer, rec, window)

    def _step_record(self, trainer: Any, dt: float, step_flops_rank: float | None) -> dict[str, Any]:
        ws = self._world
        if self._device_.type == "cuda" and torch.cuda.is_available():
            mem = torch.cuda.max_memory_allocated(self._device_) / 1024**3
        else:
            mem = _peak_rss_gb()
        return {
            "step": int(trainer.global_step),
            "step_time_s": dt,
            "tokens": self._tokens * ws,
            "samples": self._samples * ws,
            "tokens_per_s": self._tokens * ws / dt,
            "samples_per_s": self._samples * ws / dt,
            "tokens_per_s_per_device": self._tokens / dt,
            "flops": step_flops_rank * ws if step_flops_rank is not None else None,
            "tflops_per_s": step_flops_rank * ws / dt / 1e12 if step_flops_rank is not None else None,
            "mfu": (step_flops_rank / dt / self._peak) if (step_flops_rank is not None and self._peak) else None,
            "peak_mem_gb": mem,
            "world_size": ws,
        }

    def _update_window(self, dt: float, step_flops_rank: float | None) -> dict[str, Any]:
        """Rolling window, Lightning's math (per-device counts in, global rates out)."""
        c = self._cum
        c["time"] += dt
        c["steps"] += 1
        c["samples"] += self._samples
        c["tokens"] += self._tokens
        self._throughput.update(
            time=c["time"],
            batches=c["steps"],
            samples=c["samples"],
            lengths=c["tokens"],
            flops=int(step_flops_rank) if step_flops_rank is not None else None,
        )
        return self._throughput.compute()

    def _write(self, trainer: Any, rec: dict[str, Any], window: dict[str, Any]) -> None:
        """Rank 0: the loggers, throughput.jsonl and throughput.csv."""
        metrics = {f"throughput/{k}": float(v) for k, v in rec.items() if v is not None and k != "step"}
        metrics.update(
            {f"throughput/window/{k}": float(v) for k, v in window.items()
             if k not in ("time", "batches", "samples", "lengths")}
        )
        for logger in getattr(trainer, "loggers", None) or []:
            logger.log_metrics(metrics, step=rec["step"])
        out = self._out_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "throughput.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        csv_path = out / "throughput.csv"
        new = not csv_path.exists()
        with open(csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: ("" if rec[k] is None else rec[k]) for k in _CSV_FIELDS})

    def _device_name(self) -> str:
        if self._device_.type == "cuda" and torch.cuda.is_available():
            return torch.cuda.get_device_name(self._device_)
        return platform.processor() or platform.machine() or self._device_.type

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        recs = self.records
        total_t = sum(r["step_time_s"] for r in recs)
        flops = [r["flops"] for r in recs]
        have_flops = bool(recs) and all(f is not None for f in flops)
        mems = [r["peak_mem_gb"] for r in recs if r["peak_mem_gb"] is not None]
        tflops = sum(flops) / total_t / 1e12 if have_flops and total_t > 0 else None
        self.summary = {
            "steps_measured": len(recs),
            "warmup_steps": self.warmup_steps,
            "world_size": self._world,
            "device": self._device_.type,
            "device_name": self._device_name(),
            "dtype": str(self._dtype_).replace("torch.", ""),
            "tokens_per_s": sum(r["tokens"] for r in recs) / total_t if total_t > 0 else None,
            "samples_per_s": sum(r["samples"] for r in recs) / total_t if total_t > 0 else None,
            "step_time_s": total_t / len(recs) if recs else None,
            "step_time_s_median": statistics.median(r["step_time_s"] for r in recs) if recs else None,
            "tokens_per_step": sum(r["tokens"] for r in recs) / len(recs) if recs else None,
            "flops_per_step": sum(flops) / len(recs) if have_flops else None,
            "tflops_per_s": tflops,
            "mfu": tflops * 1e12 / (self._peak * self._world) if (tflops is not None and self._peak) else None,
            "peak_mem_gb": max(mems) if mems else None,
            "peak_flops_per_device": self._peak,
            "settings": run_settings(trainer, pl_module),
            **({f"{k}_params": v for k, v in count_parameters(pl_module).items()}
               if isinstance(pl_module, torch.nn.Module) else {}),
        }
        if getattr(trainer, "is_global_zero", True):
            out = self._out_dir(trainer)
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / "summary.json", self.summary)
