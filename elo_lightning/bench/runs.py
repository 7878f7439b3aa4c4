"""`elo bench-from-runs`: results.json and the speedup figure from ordinary ``elo fit`` runs (multi-GPU benchmark)."""

from __future__ import annotations

from pathlib import Path

from elo_lightning.bench.report import bench_shape, finish, method_entry, read_run_config
from elo_lightning.errors import ELOError
from elo_lightning.io import read_json
from elo_lightning.modules import BENCH_METHODS

RUN_METHODS = (*BENCH_METHODS, "align")  # align: the alignment run of the re-attached model (optional)


def _read_run(method: str, run_dir: str) -> tuple[dict, dict]:
    summary = read_json(Path(run_dir) / "summary.json", f"{method} throughput summary (the ThroughputLogger writes "
                                                           "summary.json when training ends)")
    if not summary.get("tokens_per_s"):
        raise ELOError(f"{method}: {run_dir}/summary.json has no measured steps (more max_steps than warmup_steps?)")
    return summary, read_run_config(run_dir)


def _common(values: dict[str, object], what: str):
    distinct = {v for v in values.values() if v is not None}
    if len(distinct) > 1:
        raise ELOError(f"runs differ in {what}: {values}; tokens/s are only comparable at equal ones")
    return next(iter(distinct), None)


def from_runs(runs: dict[str, str], arch: str, output: str = "results/runs") -> dict:
    """``results.json`` and the speedup figure from the ``ThroughputLogger`` summaries of ordinary ``elo fit`` runs.

    The multi-GPU benchmark: train each method with its config (e.g. ``configs/8xh100/{elo,lora,fft}.yaml`` with
    ``--trainer.max_steps 300``), then point this at the runs' log directories. Each run directory holds the
    ThroughputLogger's ``summary.json`` and LightningCLI's ``config.yaml``, from which the sequence length, λ (of the
    ELO and freeze runs) and the LoRA rank are read. Tokens/s are global, so every run must have the same world
    size and sequence length.

    Args:
        runs: ``{method: run directory}``; methods from elo, freeze, lora, fft, align (the alignment run of the
            re-attached model; FFT's throughput stands in for it when absent).
        arch: the architecture config the runs trained (for the analytic FLOP ratios).
        output: results directory.
    """
    unknown = set(runs) - set(RUN_METHODS)
    if unknown or "elo" not in runs:
        raise ELOError(f"runs needs 'elo' and methods from {', '.join(RUN_METHODS)}; got {sorted(runs)}")
    read = {m: _read_run(m, d) for m, d in runs.items()}
    shapes = {m: (s["world_size"], c["seq_len"]) for m, (s, c) in read.items()}
    world_size, seq_len = _common(shapes, "(world size, seq_len)")
    layers = _common({m: c["layers"] for m, (_, c) in read.items() if m in ("elo", "freeze")}, "λ (layers)")
    lora_rank = read["lora"][1]["r"] if "lora" in read else None
    methods = {m: {**method_entry(s, seq_len), "best_batch": None, "run": str(runs[m])} for m, (s, _) in read.items()}
    report = {
        "arch": Path(arch).stem,
        "device": f"{world_size}x {methods['elo']['device_name'] or 'unknown'}",
        "world_size": world_size,
        "seq_len": seq_len,
        "layers": layers,
        "precision": read["elo"][0].get("dtype"),
        "methods": methods,
    }
    return finish(report, Path(output), bench_shape(arch, layers or "1,-1", lora_rank))
