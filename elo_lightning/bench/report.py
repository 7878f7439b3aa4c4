"""What ``elo bench`` and ``elo bench-from-runs`` share: a run's entry in results.json, the run config they read,
the analytic FLOPs, and the tail that writes results.json, draws the figures and prints the ratios."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from elo_lightning.errors import ELOError
from elo_lightning.io import write_json_atomic
from elo_lightning.modules import BENCH_METHODS, STAGES

RUN_CONFIG = "config.yaml"  # LightningCLI's saved config, next to the ThroughputLogger's summary.json


def default_lora_rank(hidden_size: int) -> int:
    """The paper-like rank 64 at hidden 4096, scaled with the width so a scaled-down model keeps LoRA's FLOP share."""
    return max(1, round(64 * hidden_size / 4096))


@dataclass(frozen=True)
class BenchShape:
    """What the analytic FLOP ratios need: the architecture, λ (0-based layer indices) and the LoRA rank."""

    config: Any
    layer_indices: list[int]
    lora_rank: int


def bench_shape(arch: str, layers: str, lora_rank: int | None) -> BenchShape:
    """``layers``: λ as the user writes it (1-based spec); ``lora_rank`` None: ``default_lora_rank``."""
    from elo_lightning.models import load_config
    from elo_lightning.surgery import parse_layers

    config = load_config(arch)
    return BenchShape(config, parse_layers(layers, config.num_hidden_layers),
                      lora_rank or default_lora_rank(config.hidden_size))


def method_entry(summary: dict, seq_len: int) -> dict:
    """One method of results.json from a ThroughputLogger summary (global tokens/s over the measured steps)."""
    return {
        "tokens_per_s": summary["tokens_per_s"],
        "step_time_s": summary["step_time_s"],
        "flops_per_token": summary["flops_per_step"] / summary["tokens_per_step"] if summary.get("flops_per_step")
        else None,
        "mfu": summary.get("mfu"),
        "peak_mem_gb": summary.get("peak_mem_gb"),
        "trainable_params": summary.get("trainable_params"),
        "computed_params": summary.get("total_params"),
        "batch_size": round(summary["tokens_per_step"] / (seq_len * summary["world_size"])),
        "device_name": summary.get("device_name"),
        **{key: (summary.get("settings") or {}).get(key) for key in SETTINGS},
    }


SETTINGS = ("strategy", "activation_checkpointing", "optimizer", "precision")  # how each method was timed


def settings_differ(methods: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """The settings (of ``SETTINGS``) in which the timed methods differ: ``{setting: {method: value}}``."""
    return {key: {m: e.get(key) for m, e in methods.items()}
            for key in SETTINGS if len({repr(e.get(key)) for e in methods.values()}) > 1}


def write_run_config(run_dir: Path, module, datamodule) -> None:
    """The part of LightningCLI's ``config.yaml`` that ``read_run_config`` reads, for runs made without the CLI."""
    plain = (str, int, float, bool, type(None))
    config = {
        "model": {"class_path": f"{type(module).__module__}.{type(module).__qualname__}",
                  "init_args": {k: v for k, v in module.hparams.items() if isinstance(v, plain)}},
        "data": {"class_path": f"{type(datamodule).__module__}.{type(datamodule).__qualname__}",
                 "init_args": {"seq_len": datamodule.seq_len, "batch_size": datamodule.batch_size}},
    }
    (run_dir / RUN_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """``{"seq_len", "layers", "r"}`` (None where the stage has none) from a run directory's ``config.yaml``."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise ELOError(f"no {path}: bench-from-runs reads seq_len, λ and the LoRA rank from the run's saved config "
                       "(LightningCLI writes it next to summary.json)")
    config = yaml.safe_load(path.read_text()) or {}
    model = (config.get("model") or {}).get("init_args") or {}
    seq_len = ((config.get("data") or {}).get("init_args") or {}).get("seq_len")
    if seq_len is None:
        raise ELOError(f"{path} has no data.init_args.seq_len")
    return {"seq_len": int(seq_len), "layers": model.get("layers"), "r": model.get("r")}


def finish(report: dict, out: Path, shape: BenchShape, best_batch: bool = False) -> dict:
    """Add the analytic FLOPs per token, write results.json, draw the figure(s), print the ratios."""
    from elo_lightning.bench.figure import make_figure
    from elo_lightning.flops import analytic_train_flops_per_token

    report["analytic_flops_per_token"] = {
        m: analytic_train_flops_per_token(shape.config, STAGES[m].flop_kind, shape.layer_indices,
                                          seq_len=report["seq_len"], lora_rank=shape.lora_rank)
        for m in BENCH_METHODS
    }
    report["settings_differ"] = settings_differ(report["methods"])
    write_json_atomic(out / "results.json", report)
    make_figure(out / "results.json", out)
    if best_batch:
        make_figure(out / "results.json", out / "best-batch", best_batch=True)
    print_ratios(report)
    return report


def print_ratios(report: dict) -> None:
    m, a = report["methods"], report["analytic_flops_per_token"]
    if differ := report.get("settings_differ"):
        print("[bench] methods were timed under different settings: " + "; ".join(
            f"{key} " + ", ".join(f"{meth}={value}" for meth, value in per.items()) for key, per in differ.items()))
    if "elo" not in m:
        return
    for other in (s for s in BENCH_METHODS if s != "elo" and s in m):
        measured = m["elo"]["tokens_per_s"] / m[other]["tokens_per_s"]
        ideal = a[other] / a["elo"]
        print(f"[bench] ELO vs {other}: measured {measured:.2f}x tokens/s, analytic FLOP ratio {ideal:.2f}x "
              f"({100 * measured / ideal:.0f}% of ideal)")
