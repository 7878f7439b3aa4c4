"""`elo reproduce`: the paper's experiments in miniature on one real model and one target language.

From one base model and one bilingual stream (English:target = 1:9 by tokens), every *arm* starts from the same
base at the start of the same stream:

* ``elo[λ]`` for λ = the main pair (first, last) and the Table 3 ablations scaled to the depth n
  ((1, n/2, n), (1, n/2), (n/4, 3n/4), (n/2, n/2+1)): ELO pretraining of λ for ``elo_tokens``, evaluated once
  attached *without* alignment, then alignment (full fine-tuning) for ``align_ratio`` x the ELO tokens on the
  text that directly follows ELO's (the datamodule's saved stream position), evaluated again;
* ``fft_time``: full fine-tuning for the same training time as ELO + alignment of the main λ;
* ``fft_tokens``: full fine-tuning on the same tokens as ELO + alignment (the paper's equal-data comparison);
* ``lora_time``: LoRA for the same training time.

Every arm is evaluated on held-out target and English text (bits per byte, the same windows for every arm), with
its training wall time, process CPU time, tokens and FLOPs per stage. Equal-time budgets use the clock named by
``time_clock``: ``cpu`` (process CPU time, robust to other processes sharing the machine; default) or ``wall``.
A time budget becomes a number of steps from the arm's own step time over its first ``calibrate_steps`` steps
(during the LR warm-up, so the cosine schedule is re-planned before it matters); a hard stop at the budget
guards the rest.

Arms run one after another. Each stage writes ``<output>/<arm>/<stage>/result.json`` atomically when it ends and
is never recomputed; inside a stage Lightning checkpoints (``last.ckpt``, time since start included) let an
interrupted run continue where it stopped. ``results.json``, ``table.md``, ``findings.md`` and ``figure.png`` are
rewritten (atomically) after every arm.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import operator
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from lightning.pytorch.callbacks import Callback

from elo_lightning.errors import ELOError
from elo_lightning.io import claim_run_dir, write_json_atomic

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "reproduce"
MAIN = "main"

# --------------------------------------------------------------------------------------------------------------
# settings


@dataclass
class Settings:
    """Every knob of a reproduction; a preset (configs/reproduce/<budget>.yaml) sets them, flags override them."""

    target: str = "ko"
    english: str = "en"
    data: str = "../shared/corpus/pretrain"
    target_weight: float = 9.0
    english_weight: float = 1.0
    seq_len: int = 256
    batch_size: int = 4
    layers: str = "1,n"
    ablations: list[str] = field(default_factory=lambda: ["1,n/2,n", "1,n/2", "n/4,3n/4", "n/2,n/2+1"])
    elo_tokens: int = 100_000
    align_ratio: float = 1 / 9
    fft_equal_tokens: bool = False
    lora_r: int = 64
    lora_alpha: int = 128
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    lr: float = 1e-4
    warmup_steps: int = 5
    min_lr_ratio: float = 0.1
    time_clock: Literal["cpu", "wall"] = "cpu"
    calibrate_steps: int = 3
    eval_windows: int = 16
    eval_batch_size: int = 8
    checkpoint_minutes: float | None = 5.0
    checkpoint_every_n_steps: int | None = None
    accelerator: str = "cpu"
    precision: str = "32-true"
    arms: list[str] | None = None
    seed: int = 42


def load_settings(budget: str) -> Settings:
    """A preset by name (configs/reproduce/<name>.yaml) or a YAML path."""
    path = Path(budget)
    if not path.suffix:
        path = PRESET_DIR / f"{budget}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise ELOError(f"unknown budget {budget!r}: no {path} (presets: {', '.join(names)})")
    raw = yaml.safe_load(path.read_text()) or {}
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ELOError(f"{path}: unknown settings {unknown}")
    return Settings(**raw)


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _eval_expr(node: ast.AST, n: int) -> float:
    if isinstance(node, ast.Expression):
        return _eval_expr(node.body, n)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.Name) and node.id == "n":
        return n
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval_expr(node.left, n), _eval_expr(node.right, n))
    raise ValueError


def resolve_layers(spec: str, n: int) -> list[int]:
    """λ written for any depth ("1,n/2,n", "n/4,3n/4", "n/2,n/2+1") -> 1-based layers for a model of n layers.

    Fractions round half up (n=30: n/4 -> 8, 3n/4 -> 23), as the paper's 32-layer values (8, 24) are n/4, 3n/4.
    """
    layers = []
    for part in spec.split(","):
        text = part.strip().replace(" ", "")
        text = "".join(f"{c}*" if c.isdigit() and nxt == "n" else c for c, nxt in zip(text, text[1:] + " "))
        try:
            value = _eval_expr(ast.parse(text, mode="eval"), n)
        except (SyntaxError, ValueError, ZeroDivisionError):
            raise ELOError(f"cannot read layer {part!r} in λ {spec!r} (use numbers, n, + - * /)") from None
        layer = math.floor(value + 0.5)
        if not 1 <= layer <= n:
            raise ELOError(f"λ {spec!r}: layer {part.strip()} = {layer} is outside 1..{n}")
        layers.append(layer)
    if len(set(layers)) != len(layers):
        raise ELOError(f"λ {spec!r} gives duplicate layers {layers} for n={n}")
    return layers


def elo_arm_name(layers: list[int]) -> str:
    return "elo_" + "-".join(str(x) for x in layers)


def plan_arms(settings: Settings, n_layers: int) -> list[dict]:
    """The arms in run order: main λ, its alignment alone (the control), FFT and LoRA at equal time, the ablations,
    FFT at equal tokens."""
    main = resolve_layers(settings.layers, n_layers)
    arms = [{"name": elo_arm_name(main), "kind": "elo", "layers": main, "spec": settings.layers, "main": True},
            {"name": "align_only", "kind": "fft", "budget": "align"},
            {"name": "fft_time", "kind": "fft", "budget": "time"},
            {"name": "lora_time", "kind": "lora", "budget": "time"}]
    for spec in settings.ablations:
        layers = resolve_layers(spec, n_layers)
        name = elo_arm_name(layers)
        if all(a["name"] != name for a in arms):
            arms.append({"name": name, "kind": "elo", "layers": layers, "spec": spec, "main": False})
    if settings.fft_equal_tokens:
        arms.append({"name": "fft_tokens", "kind": "fft", "budget": "tokens"})
    if settings.arms is not None:
        names = [a["name"] for a in arms] + [spec for spec in settings.arms if spec in ("fft_tokens",)]
        unknown = [a for a in settings.arms if a not in names]
        if unknown:
            raise ELOError(f"unknown arms {unknown}; this model's arms: {[a['name'] for a in arms]} "
                           "(+ fft_tokens)")
        if "fft_tokens" in settings.arms and all(a["name"] != "fft_tokens" for a in arms):
            arms.append({"name": "fft_tokens", "kind": "fft", "budget": "tokens"})
        by_name = {a["name"]: a for a in arms}
        arms = [by_name[name] for name in dict.fromkeys(settings.arms)]  # the given order: run these first
    return arms


# --------------------------------------------------------------------------------------------------------------
# time budget and stage clock (a Lightning callback)


def _cpu_time() -> float:
    return time.process_time()


class StageClock(Callback):
    """Training time of a stage (wall and process CPU), kept across resumes, with an optional time budget.

    Time counts from ``on_train_start`` to each step's end (data loading and optimizer included; model loading,
    evaluation and checkpoint writing excluded). With ``budget_s`` the stage stops once ``clock`` time reaches it;
    after ``calibrate_steps`` steps the step count that fits the budget is estimated from the mean step time of
    the calibration steps after the first, and ``max_steps`` and the LR schedule are re-planned for it.
    """

    def __init__(self, budget_s: float | None = None, clock: str = "cpu", calibrate_steps: int = 3,
                 optimizer_cfg=None) -> None:
        self.budget_s, self.clock, self.calibrate_steps = budget_s, clock, calibrate_steps
        self.optimizer_cfg = optimizer_cfg
        self.wall_s = self.cpu_s = 0.0
        self.planned_steps: int | None = None
        self.step_times: list[float] = []
        self._trainer = None
        self._t0 = self._last = (0.0, 0.0)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = (time.perf_counter() - self.wall_s, _cpu_time() - self.cpu_s)
        self._last = (time.perf_counter(), _cpu_time())

    def elapsed(self) -> float:
        return self.cpu_s if self.clock == "cpu" else self.wall_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = (time.perf_counter(), _cpu_time())
        self.wall_s, self.cpu_s = now[0] - self._t0[0], now[1] - self._t0[1]
        idx = 0 if self.clock == "wall" else 1
        self.step_times.append(now[idx] - self._last[idx])
        self._last = now
        if self.budget_s is None:
            return
        if self.planned_steps is None and trainer.global_step >= self.calibrate_steps:
            measured = self.step_times[1:] or self.step_times
            per_step = sum(measured) / len(measured)
            remaining = max(self.budget_s - self.elapsed(), 0.0)
            self.planned_steps = trainer.global_step + int(remaining / per_step)
            _replan(trainer, self.planned_steps, self.optimizer_cfg)
        if self.elapsed() >= self.budget_s:
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"wall_s": self.wall_s, "cpu_s": self.cpu_s, "planned_steps": self.planned_steps}

    def load_state_dict(self, state: dict) -> None:
        self.wall_s, self.cpu_s = state["wall_s"], state["cpu_s"]
        self.planned_steps = state.get("planned_steps")
        if self.planned_steps is not None and self._trainer is not None:
            # restored before the optimizer is configured: the schedule is built for the planned length
            self._trainer.fit_loop.epoch_loop.max_steps = self.planned_steps


def _replan(trainer, steps: int, optimizer_cfg) -> None:
    """Set max_steps and give every LR scheduler the schedule of a ``steps``-long run (same warm-up)."""
    import torch

    from elo_lightning.optim import build_scheduler

    trainer.fit_loop.epoch_loop.max_steps = steps
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    fresh = build_scheduler(dummy, optimizer_cfg, steps)
    for config in trainer.lr_scheduler_configs:
        config.scheduler.lr_lambdas = [fresh.lr_lambdas[0]] * len(config.scheduler.lr_lambdas)


# --------------------------------------------------------------------------------------------------------------
# stages


@dataclass
class Context:
    settings: Settings
    model: str
    out: Path
    n_layers: int
    tokens_per_step: int
    log: Any = print

    def optimizer(self):
        from elo_lightning.optim import OptimizerConfig

        s = self.settings
        return OptimizerConfig(name=s.optimizer, lr=s.lr, warmup_steps=s.warmup_steps, min_lr_ratio=s.min_lr_ratio)

    def datamodule(self, state: dict | None = None):
        from elo_lightning.data import BilingualDataModule, LanguageSource

        s = self.settings
        root = Path(s.data)
        langs = [LanguageSource(name=lang, train=[str(root / lang / "train-*.jsonl")], weight=weight)
                 for lang, weight in ((s.english, s.english_weight), (s.target, s.target_weight))]
        # mix_by="tokens": the committed CPU results (docs/reproduction) were run with token mixing, before the
        # datamodule's default became the paper's unit (bytes); kept so resumed and new arms stay comparable.
        dm = BilingualDataModule(tokenizer=self.model, languages=langs, seq_len=s.seq_len, batch_size=s.batch_size,
                                 seed=s.seed, mix_by="tokens")
        if state is not None:
            dm.load_state_dict(state)
        return dm

    def eval_files(self) -> dict[str, list[str]]:
        s = self.settings
        return {lang: [str(Path(s.data) / lang / "valid.jsonl")] for lang in (s.target, s.english)}

    def eval_device(self) -> str | None:
        """cuda when training runs on a GPU (Lightning hands the model back on the CPU after fit), else as is."""
        import torch

        gpu = self.settings.accelerator in ("gpu", "cuda") or (self.settings.accelerator == "auto"
                                                               and torch.cuda.is_available())
        return "cuda" if gpu else None

    def steps(self, tokens: float) -> int:
        return max(round(tokens / self.tokens_per_step), 1)


def _done(path: Path) -> dict | None:
    file = path / "result.json"
    return json.loads(file.read_text()) if file.is_file() else None


def evaluate(ctx: Context, model) -> dict:
    """Target and English bits per byte (and loss, perplexity) on the fixed held-out windows."""
    from elo_lightning.evaluation.perplexity import evaluate_perplexity

    s = ctx.settings
    start = time.perf_counter()
    res = evaluate_perplexity(model, ctx.model, ctx.eval_files(), seq_len=s.seq_len, max_sequences=s.eval_windows,
                              batch_size=s.eval_batch_size, device=ctx.eval_device())
    res["eval_wall_s"] = round(time.perf_counter() - start, 2)
    return res


def run_training(ctx: Context, stage_dir: Path, module, steps: int, stream: dict | None = None,
                 budget_s: float | None = None) -> tuple[Any, dict]:
    """Fit ``module`` for ``steps`` (or until the time budget), resuming from ``stage_dir/ckpt/last.ckpt``."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from elo_lightning.callbacks import ThroughputLogger

    s = ctx.settings
    ckpt_dir = stage_dir / "ckpt"
    clock = StageClock(budget_s=budget_s, clock=s.time_clock, calibrate_steps=s.calibrate_steps,
                       optimizer_cfg=ctx.optimizer())
    every = {"every_n_train_steps": s.checkpoint_every_n_steps} if s.checkpoint_every_n_steps else (
        {"train_time_interval": timedelta(minutes=s.checkpoint_minutes)} if s.checkpoint_minutes else None)
    callbacks = [clock, ThroughputLogger(output_dir=str(stage_dir / "throughput"), warmup_steps=1)]
    if every is not None:
        callbacks.append(ModelCheckpoint(dirpath=str(ckpt_dir), save_top_k=0, save_last=True, **every))
    dm = ctx.datamodule(stream)
    trainer = L.Trainer(
        max_steps=steps, accelerator=s.accelerator, devices=1, precision=s.precision, log_every_n_steps=1,
        logger=CSVLogger(save_dir=str(stage_dir), name="log"),  # train/loss per step: log/version_<i>/metrics.csv
        callbacks=callbacks, enable_checkpointing=every is not None, num_sanity_val_steps=0, limit_val_batches=0,
        enable_model_summary=False, enable_progress_bar=sys.stderr.isatty(), default_root_dir=str(stage_dir),
    )
    last = ckpt_dir / "last.ckpt"
    resumed = last.is_file()
    start_state = dm.state_dict()["streams"] if stream is not None else {}
    fit_start = time.perf_counter()
    # our own checkpoint (hparams hold dataclasses): trusted, so a full unpickle
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resumed else None, weights_only=False)
    fit_wall = time.perf_counter() - fit_start
    flops = module.flops_per_batch
    done = trainer.global_step
    record = {
        "steps": done,
        "planned_steps": clock.planned_steps or steps,
        "budget_s": budget_s,
        "tokens": done * ctx.tokens_per_step,
        "train_wall_s": round(clock.wall_s, 2),
        "train_cpu_s": round(clock.cpu_s, 2),
        "fit_wall_s": round(fit_wall, 2),
        "resumed": resumed,
        "tokens_per_s_wall": round(done * ctx.tokens_per_step / clock.wall_s, 2) if clock.wall_s else None,
        "flops_per_step": flops,
        "flops": flops * done if flops else None,
        "train_loss": _loss_curve(stage_dir / "log"),
        "stream_start": start_state,
        "stream_end": dm.state_dict(),
    }
    return trainer, record


def _loss_curve(log_dir: Path) -> list[float]:
    """train/loss of every logged step, over the CSV logger's versions (one per (re)start; empty if none)."""
    import csv

    versions = sorted(log_dir.glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    losses: list[float] = []
    for path in versions:
        with open(path) as fh:
            losses += [round(float(row["train/loss"]), 4) for row in csv.DictReader(fh) if row.get("train/loss")]
    return losses


def _finish(stage_dir: Path, record: dict) -> dict:
    write_json_atomic(stage_dir / "result.json", record)
    shutil.rmtree(stage_dir / "ckpt", ignore_errors=True)  # ours; a finished stage never resumes
    return record


def _elo_result(arm: dict, elo: dict, noalign: dict, align: dict) -> dict:
    return {"kind": "elo", "layers": arm["layers"], "spec": arm["spec"], "main": arm["main"],
            "stages": {"elo": elo, "align": align}, "noalign_eval": noalign["eval"], "eval": align["eval"]}


def _baseline_result(arm: dict, rec: dict) -> dict:
    return {"kind": arm["kind"], "budget": arm["budget"], "stages": {arm["kind"]: rec}, "eval": rec["eval"]}


def finished_arm(ctx: Context, arm: dict) -> dict | None:
    """The arm's result if every stage of it has finished, else None (nothing is computed)."""
    root = ctx.out / arm["name"]
    if arm["kind"] == "elo":
        parts = [_done(root / stage) for stage in ("elo", "noalign", "align")]
        return None if any(p is None for p in parts) else _elo_result(arm, *parts)
    rec = _done(root / arm["kind"])
    return None if rec is None else _baseline_result(arm, rec)


def run_elo_arm(ctx: Context, arm: dict) -> dict:
    import torch

    from elo_lightning.models import load_causal_lm
    from elo_lightning.modules import AlignmentModule, DetachedLayerModule
    from elo_lightning.surgery import attach, load_detached

    s, root = ctx.settings, ctx.out / arm["name"]
    layers = ",".join(str(x) for x in arm["layers"])
    elo_steps = ctx.steps(s.elo_tokens)
    align_steps = ctx.steps(s.elo_tokens * s.align_ratio)

    elo_dir = root / "elo"
    elo = _done(elo_dir)
    if elo is None:
        ctx.log(f"[{arm['name']}] ELO λ=({layers}): {elo_steps} steps")
        module = DetachedLayerModule(model=ctx.model, layers=layers, tokenizer=ctx.model, optimizer=ctx.optimizer(),
                                     seed=s.seed, export_dir=str(elo_dir / "export"))
        _, elo = run_training(ctx, elo_dir, module, elo_steps)
        elo = _finish(elo_dir, elo)
        del module

    noalign_dir = root / "noalign"
    noalign = _done(noalign_dir)
    if noalign is None:
        ctx.log(f"[{arm['name']}] evaluating ELO attached without alignment")
        full = load_causal_lm(ctx.model, dtype=torch.float32)
        small, manifest = load_detached(str(elo_dir / "export"), dtype=full.dtype)
        attach(full, small, manifest)
        noalign = _finish(noalign_dir, {"eval": evaluate(ctx, full)})
        del full, small

    align_dir = root / "align"
    align = _done(align_dir)
    if align is None:
        ctx.log(f"[{arm['name']}] alignment: {align_steps} steps from stream position after ELO")
        module = AlignmentModule(model=ctx.model, detached=str(elo_dir / "export"), tokenizer=ctx.model,
                                 optimizer=ctx.optimizer(), seed=s.seed)
        _, align = run_training(ctx, align_dir, module, align_steps, stream=elo["stream_end"])
        align["eval"] = evaluate(ctx, module.model)
        align = _finish(align_dir, align)
        del module
    return _elo_result(arm, elo, noalign, align)


def train_time(arm_result: dict, clock: str) -> float:
    key = "train_cpu_s" if clock == "cpu" else "train_wall_s"
    return sum(stage[key] for stage in arm_result["stages"].values())


def run_baseline_arm(ctx: Context, arm: dict, reference: dict | None) -> dict:
    from elo_lightning.modules import AlignmentModule, LoRAModule

    s, stage_dir = ctx.settings, ctx.out / arm["name"] / arm["kind"]
    rec = _done(stage_dir)
    if rec is None:
        if reference is None:
            main_arm = elo_arm_name(resolve_layers(s.layers, ctx.n_layers))
            raise ELOError(f"arm {arm['name']} needs the main ELO arm ({main_arm}) to set its budget: "
                           "include it in --arms")
        ref_steps = sum(st["steps"] for st in reference["stages"].values())
        stream = None  # from the start of the stream, as ELO
        if arm["budget"] == "time":
            budget = train_time(reference, s.time_clock)
            steps = max(20 * ref_steps, s.calibrate_steps + 2)  # upper bound until the calibration re-plans it
        elif arm["budget"] == "align":  # the control: the main arm's alignment (steps, text) from the base model
            budget, steps = None, reference["stages"]["align"]["steps"]
            stream = reference["stages"]["elo"]["stream_end"]
        else:
            budget, steps = None, ref_steps
        if arm["kind"] == "lora":
            module = LoRAModule(model=ctx.model, r=s.lora_r, alpha=s.lora_alpha, tokenizer=ctx.model,
                                optimizer=ctx.optimizer(), seed=s.seed)
        else:
            module = AlignmentModule(model=ctx.model, tokenizer=ctx.model, optimizer=ctx.optimizer(), seed=s.seed)
        what = f"{budget:.0f} s of {s.time_clock} time" if budget else f"{steps} steps"
        ctx.log(f"[{arm['name']}] {arm['kind'].upper()} for {what}")
        _, rec = run_training(ctx, stage_dir, module, steps, stream=stream, budget_s=budget)
        rec["eval"] = evaluate(ctx, module.model)
        rec = _finish(stage_dir, rec)
    return _baseline_result(arm, rec)


# --------------------------------------------------------------------------------------------------------------
# report: results.json, table.md, findings.md, figure.png


def _label(name: str, arm: dict) -> str:
    if arm["kind"] == "elo":
        return f"λ=({', '.join(map(str, arm['layers']))}) ELO + align"
    return {"fft_time": "FFT (same time)", "fft_tokens": "FFT (same tokens)", "lora_time": "LoRA (same time)",
            "align_only": "alignment only (no ELO; control)"}.get(name, name)


def table_rows(results: dict) -> list[dict]:
    s = results["settings"]
    tgt, en = s["target"], s["english"]
    base = results["base"]["eval"]
    fft = results["arms"].get("fft_time")
    fft_speed = None
    if fft:
        st = fft["stages"]["fft"]
        fft_speed = st["tokens"] / st["train_cpu_s"] if st["train_cpu_s"] else None
    rows = [{"row": "base (no training)", "target_bpb": base[tgt]["bits_per_byte"],
             "english_bpb": base[en]["bits_per_byte"], "wall_s": 0.0, "cpu_s": 0.0, "tokens": 0, "flops": 0,
             "speed_vs_fft": None}]
    for name, arm in results["arms"].items():
        stages = arm["stages"].values()
        tokens = sum(st["tokens"] for st in stages)
        cpu = sum(st["train_cpu_s"] for st in stages)
        flops = [st["flops"] for st in stages]
        row = {"row": _label(name, arm), "arm": name, "target_bpb": arm["eval"][tgt]["bits_per_byte"],
               "english_bpb": arm["eval"][en]["bits_per_byte"], "wall_s": sum(st["train_wall_s"] for st in stages),
               "cpu_s": cpu, "tokens": tokens, "flops": sum(flops) if all(f is not None for f in flops) else None,
               "speed_vs_fft": (tokens / cpu / fft_speed) if (fft_speed and cpu) else None}
        if arm["kind"] == "elo":
            elo = arm["stages"]["elo"]
            rows.append({"row": f"λ=({', '.join(map(str, arm['layers']))}) ELO, no align", "arm": name,
                         "target_bpb": arm["noalign_eval"][tgt]["bits_per_byte"],
                         "english_bpb": arm["noalign_eval"][en]["bits_per_byte"], "wall_s": elo["train_wall_s"],
                         "cpu_s": elo["train_cpu_s"], "tokens": elo["tokens"], "flops": elo["flops"],
                         "speed_vs_fft": (elo["tokens"] / elo["train_cpu_s"] / fft_speed)
                         if (fft_speed and elo["train_cpu_s"]) else None})
        rows.append(row)
    return rows


def _fmt(v: Any, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def format_table(results: dict) -> str:
    s = results["settings"]
    head = (f"| λ / method | {s['target']} bpb ↓ | {s['english']} bpb ↓ | wall time (s) | CPU time (s) | tokens | "
            "FLOPs | speed vs FFT |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table_rows(results):
        lines.append(f"| {r['row']} | {r['target_bpb']:.4f} | {r['english_bpb']:.4f} | {r['wall_s']:.0f} | "
                     f"{r['cpu_s']:.0f} | {r['tokens']:,} | {_fmt(r['flops'], '.2e')} | "
                     f"{_fmt(r['speed_vs_fft'], '.2f')}{'x' if r['speed_vs_fft'] else ''} |")
    lines.append("")
    lines.append(f"bits per byte on {s['eval_windows']} held-out windows of {s['seq_len']} tokens per language "
                 f"(the same for every row); times are training time of all stages of the arm (ELO + alignment); "
                 f"speed = tokens per CPU second relative to FFT; equal-time budgets on the {s['time_clock']} clock.")
    return "\n".join(lines)


def findings(results: dict) -> list[dict]:
    """The paper's claims checked on the numbers (None where an arm is missing)."""
    s = results["settings"]
    tgt, en = s["target"], s["english"]
    arms = results["arms"]
    base = results["base"]["eval"]
    main = next((a for a in arms.values() if a["kind"] == "elo" and a["main"]), None)
    fft = arms.get("fft_time")
    out = []

    def bpb(ev, lang):
        return ev[lang]["bits_per_byte"]

    if main and fft:
        out.append({"claim": f"ELO + alignment beats FFT on {tgt} at equal training time",
                    "holds": bpb(main["eval"], tgt) < bpb(fft["eval"], tgt),
                    "numbers": {"elo_align": bpb(main["eval"], tgt), "fft_same_time": bpb(fft["eval"], tgt),
                                "base": bpb(base, tgt)}})
        d_elo, d_fft = bpb(main["eval"], en) - bpb(base, en), bpb(fft["eval"], en) - bpb(base, en)
        out.append({"claim": f"ELO + alignment keeps {en} at least as well as FFT (its {en} bpb change from the base "
                             "is not above FFT's)",
                    "holds": d_elo <= d_fft,
                    "numbers": {"elo_align_delta": d_elo, "fft_same_time_delta": d_fft}})
    lora = arms.get("lora_time")
    if main and lora:
        out.append({"claim": f"ELO + alignment beats LoRA on {tgt} at equal training time",
                    "holds": bpb(main["eval"], tgt) < bpb(lora["eval"], tgt),
                    "numbers": {"elo_align": bpb(main["eval"], tgt), "lora_same_time": bpb(lora["eval"], tgt),
                                f"{en}_elo_align": bpb(main["eval"], en),
                                f"{en}_lora_same_time": bpb(lora["eval"], en)}})
    if main:
        out.append({"claim": "alignment is needed (ELO attached without alignment is worse on the target)",
                    "holds": bpb(main["eval"], tgt) < bpb(main["noalign_eval"], tgt),
                    "numbers": {"with_align": bpb(main["eval"], tgt), "without_align": bpb(main["noalign_eval"], tgt),
                                f"{en}_with_align": bpb(main["eval"], en),
                                f"{en}_without_align": bpb(main["noalign_eval"], en)}})
    align_only = arms.get("align_only")
    if main and align_only:
        out.append({"claim": "(control) the ELO phase adds to alignment: ELO + alignment beats the same alignment "
                             "from the base model on the target",
                    "holds": bpb(main["eval"], tgt) < bpb(align_only["eval"], tgt),
                    "numbers": {"elo_align": bpb(main["eval"], tgt), "align_only": bpb(align_only["eval"], tgt),
                                f"{en}_elo_align": bpb(main["eval"], en),
                                f"{en}_align_only": bpb(align_only["eval"], en)}})
    n = results["n_layers"]
    middle = arms.get(elo_arm_name(resolve_layers("n/2,n/2+1", n)))
    if main and middle:
        out.append({"claim": "first + last layers beat middle layers (n/2, n/2+1) on the target",
                    "holds": bpb(main["eval"], tgt) < bpb(middle["eval"], tgt),
                    "numbers": {"first_last": bpb(main["eval"], tgt), "middle": bpb(middle["eval"], tgt)}})
    fft_tok = arms.get("fft_tokens")
    if main and fft_tok:
        out.append({"claim": f"at equal tokens, ELO + alignment is close to FFT on {tgt} in far less time",
                    "holds": None,
                    "numbers": {"elo_align": bpb(main["eval"], tgt), "fft_same_tokens": bpb(fft_tok["eval"], tgt),
                                "elo_align_time": train_time(main, s["time_clock"]),
                                "fft_same_tokens_time": train_time(fft_tok, s["time_clock"])}})
    return out


def format_findings(results: dict) -> str:
    lines = ["| paper's finding | holds here? | numbers (bits per byte, lower is better) |", "|---|---|---|"]
    for f in findings(results):
        verdict = {True: "yes", False: "**no**", None: "see numbers"}[f["holds"]]
        nums = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in f["numbers"].items())
        lines.append(f"| {f['claim']} | {verdict} | {nums} |")
    return "\n".join(lines)


def draw(results: dict, path: Path) -> None:
    """bpb per language vs training time, one line per arm (base at t = 0; ELO arms: after ELO, after align)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["settings"]
    key = "train_cpu_s" if s["time_clock"] == "cpu" else "train_wall_s"
    base = results["base"]["eval"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, lang in zip(axes, (s["target"], s["english"])):
        for name, arm in results["arms"].items():
            xs, ys = [0.0], [base[lang]["bits_per_byte"]]
            if arm["kind"] == "elo":
                xs.append(arm["stages"]["elo"][key])
                ys.append(arm["noalign_eval"][lang]["bits_per_byte"])
            xs.append(sum(st[key] for st in arm["stages"].values()))
            ys.append(arm["eval"][lang]["bits_per_byte"])
            style = "-o" if arm["kind"] == "elo" else "--s"
            ax.plot(xs, ys, style, label=_label(name, arm), linewidth=2.2 if arm.get("main") else 1.2)
        ax.set_title(f"{lang} held-out bits per byte")
        ax.set_xlabel(f"training time ({'process CPU' if s['time_clock'] == 'cpu' else 'wall'} seconds)")
        ax.set_ylabel("bits per byte (lower is better)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{results['model_name']}: ELO vs FFT vs LoRA, {s['english']}:{s['target']} = "
                 f"{s['english_weight']:g}:{s['target_weight']:g}")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "lightning", "peft", "bitsandbytes", "gguf"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "nproc": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "loadavg": list(os.getloadavg())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(results: dict, out: Path) -> None:
    write_json_atomic(out / "results.json", results)
    _write_text_atomic(out / "table.md", format_table(results) + "\n")
    _write_text_atomic(out / "findings.md", format_findings(results) + "\n")
    draw(results, out / "figure.png")


# --------------------------------------------------------------------------------------------------------------
# the command


def reproduce(
    model: str,
    budget: str = "cpu",
    output: str = "runs/reproduce",
    data: str | None = None,
    target: str | None = None,
    elo_tokens: int | None = None,
    align_ratio: float | None = None,
    lr: float | None = None,
    seq_len: int | None = None,
    batch_size: int | None = None,
    eval_windows: int | None = None,
    fft_equal_tokens: bool | None = None,
    time_clock: Literal["cpu", "wall"] | None = None,
    arms: list[str] | None = None,
    accelerator: str | None = None,
    precision: str | None = None,
    overwrite: bool = False,
) -> dict:
    """The paper's experiments in miniature: ELO (+/- alignment), the λ ablation, FFT and LoRA, from one base model.

    Args:
        model: the base model (HF directory; e.g. models/smollm2-135m-instruct from `make smollm2`).
        budget: preset name (cpu, gpu, tiny: configs/reproduce/<name>.yaml) or a YAML file of settings.
        output: run directory (arms, checkpoints, results.json, table.md, findings.md, figure.png).
        data: folder with <lang>/train-*.jsonl and <lang>/valid.jsonl (default: the preset's).
        target: the new language (mixed English:target = 1:9 by tokens).
        elo_tokens: ELO training tokens per arm.
        align_ratio: alignment tokens as a fraction of the ELO tokens (paper: 1 GB after 9 GB).
        lr: peak learning rate of every stage and arm (cosine, warm-up from the preset).
        seq_len: tokens per sequence (training and evaluation windows).
        batch_size: sequences per step (every arm).
        eval_windows: held-out windows per language.
        fft_equal_tokens: also run FFT on the same tokens as ELO + alignment.
        time_clock: clock of the equal-time budgets: cpu (process CPU time) or wall.
        arms: run only these arms, in this order (names as in results.json, e.g. elo_1-30 fft_time); the
            equal-time arms need the main λ arm finished first.
        accelerator: cpu, gpu or auto.
        precision: Lightning precision (32-true on CPU, bf16-true on GPU).
        overwrite: also use a non-empty ``output`` that is not a previous ``elo reproduce`` run (its files are kept;
            same-named ones are replaced).
    """
    import torch

    from elo_lightning.models import load_config

    settings = load_settings(budget)
    overrides = {"data": data, "target": target, "elo_tokens": elo_tokens, "align_ratio": align_ratio, "lr": lr,
                 "seq_len": seq_len, "batch_size": batch_size, "eval_windows": eval_windows,
                 "fft_equal_tokens": fft_equal_tokens, "time_clock": time_clock, "arms": arms,
                 "accelerator": accelerator, "precision": precision}
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    # cheap checks before any heavy work
    if not Path(model).is_dir():
        raise ELOError(f"model directory not found: {model} (make smollm2 builds models/smollm2-135m-instruct)")
    config = load_config(model)
    n_layers = config.num_hidden_layers
    for lang in (settings.target, settings.english):
        root = Path(settings.data) / lang
        if not list(root.glob("train-*.jsonl")) or not (root / "valid.jsonl").is_file():
            raise ELOError(f"no training shards or valid.jsonl for {lang!r} under {root}")
    if settings.elo_tokens < settings.seq_len * settings.batch_size:
        raise ELOError(f"elo_tokens={settings.elo_tokens} is less than one step ({settings.seq_len} x "
                       f"{settings.batch_size} tokens)")
    if not 0 < settings.align_ratio:
        raise ELOError(f"align_ratio must be > 0, got {settings.align_ratio}")
    if settings.calibrate_steps >= settings.warmup_steps:
        raise ELOError(f"calibrate_steps ({settings.calibrate_steps}) must be below warmup_steps "
                       f"({settings.warmup_steps}): time budgets re-plan the schedule during the warm-up")
    plan = plan_arms(settings, n_layers)
    out = claim_run_dir(output, "reproduce", inputs={"--model": model, "--data": settings.data}, overwrite=overwrite)
    settings_file = out / "settings.json"
    now = dataclasses.asdict(settings)
    if settings_file.is_file():
        before = json.loads(settings_file.read_text())
        changed = {k: (before.get(k), v) for k, v in now.items() if k != "arms" and before.get(k) != v}
        if changed or before.get("model") != str(model):
            raise ELOError(f"{out} holds a run with other settings {changed or {'model': before.get('model')}}; "
                           "use another --output")
    write_json_atomic(settings_file, {**now, "model": str(model)})

    torch.manual_seed(settings.seed)
    ctx = Context(settings=settings, model=model, out=out, n_layers=n_layers,
                  tokens_per_step=settings.seq_len * settings.batch_size,
                  log=lambda msg: print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True))
    started = time.perf_counter()
    source = Path(model) / "elo_source.json"
    results: dict = {
        "command": "elo reproduce " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["reproduce"] else None,
        "model": str(model), "model_name": Path(model).name, "n_layers": n_layers,
        "model_source": json.loads(source.read_text()) if source.is_file() else None,
        "settings": now, "versions": _versions(), "machine_start": _machine(),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "plan": [a["name"] for a in plan], "arms": {},
    }
    invocations_file = out / "invocations.json"
    invocations = json.loads(invocations_file.read_text()) if invocations_file.is_file() else []
    invocations.append({"started_utc": results["started_utc"], "command": results["command"],
                        "plan": results["plan"], "loadavg_start": list(os.getloadavg())})
    results["invocations"] = invocations
    base = _done(out / "base")
    if base is None:
        ctx.log(f"evaluating the base model {model} ({n_layers} layers)")
        from elo_lightning.models import load_causal_lm

        base = _finish(out / "base", {"eval": evaluate(ctx, load_causal_lm(model, dtype=torch.float32))})
    results["base"] = base
    everything = plan_arms(dataclasses.replace(settings, arms=None), n_layers)
    everything += [a for a in plan if a["name"] not in {b["name"] for b in everything}]
    main = next(a for a in everything if a.get("main"))

    def report() -> None:  # every finished arm of the whole plan, in plan order, whatever this invocation ran
        results["arms"] = {a["name"]: r for a in everything if (r := finished_arm(ctx, a)) is not None}
        invocations[-1].update(wall_s=round(time.perf_counter() - started, 1), process_cpu_s=round(_cpu_time(), 1),
                               ended_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               loadavg_end=list(os.getloadavg()))
        write_json_atomic(invocations_file, invocations)
        results["wall_s"] = round(sum(i.get("wall_s", 0.0) for i in invocations), 1)
        results["machine_end"] = _machine()
        write_report(results, out)

    for arm in plan:
        if arm["kind"] == "elo":
            res = run_elo_arm(ctx, arm)
        else:
            res = run_baseline_arm(ctx, arm, finished_arm(ctx, main))
        report()
        ctx.log(f"[{arm['name']}] done: {settings.target} bpb {res['eval'][settings.target]['bits_per_byte']:.4f}, "
                f"{settings.english} bpb {res['eval'][settings.english]['bits_per_byte']:.4f}")
    if not plan:
        report()
    print(format_table(results))
    print()
    print(format_findings(results))
    print(f"results: {out / 'results.json'}, {out / 'table.md'}, {out / 'findings.md'}, {out / 'figure.png'}")
    return results
