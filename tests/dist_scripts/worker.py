"""Multi-process scenarios for tests/test_distributed.py, launched with ``torch.distributed.run``.

    python -m torch.distributed.run --nproc_per_node 2 tests/dist_scripts/worker.py SPEC.json

SPEC: {"strategy": "fsdp2"|"ddp", "source": HF dir (vocab 512), "source_8k": HF dir (vocab 8192),
"work": dir, "scenarios": [...]}. Each rank writes ``work/result-<strategy>-rank<r>.json``; rank 0's holds
the results the test checks (losses are averaged over ranks = the loss of the global batch).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import traceback
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import lightning as L  # noqa: E402
from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402
from lightning.pytorch.strategies import DDPStrategy  # noqa: E402
from tiny_models import RandomTokens  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from elo_lightning.checkpoint import AtomicCheckpointIO, AtomicModelParallelStrategy, is_complete, latest_checkpoint  # noqa: E402
from elo_lightning.errors import ELOError  # noqa: E402
from elo_lightning.modules import AlignmentModule, DetachedLayerModule, FreezeTuningModule, LoRAModule, SFTModule  # noqa: E402
from elo_lightning.optim import OptimizerConfig  # noqa: E402
from elo_lightning.sharding import ShardingConfig  # noqa: E402

LR = 1e-3


def make_module(stage: str, source: str, optimizer: str = "adamw", detached: str | None = None,
                activation_checkpointing: bool = True, sharding: dict | None = None, **kw):
    sharding = {"param_dtype": None, "reduce_dtype": None, "rank0_load": os.environ.get("ELO_RANK0_LOAD", "1") == "1",
                "activation_checkpointing": activation_checkpointing, **(sharding or {})}
    common = dict(optimizer=OptimizerConfig(name=optimizer, lr=LR), measure_flops=False,
                  sharding=ShardingConfig(**sharding), **kw)
    if stage == "elo":
        return DetachedLayerModule(model=source, layers="1,-1", **common)
    if stage in ("fft", "align"):
        return AlignmentModule(model=source, detached=detached, **common)
    if stage == "lora":
        return LoRAModule(model=source, r=4, alpha=8, dropout=0.0, **common)
    if stage == "freeze":
        return FreezeTuningModule(model=source, layers="2,5", **common)
    if stage == "sft":
        return SFTModule(model=source, **common)
    raise ValueError(stage)


def stage_data(stage: str, n: int = 16, **kw) -> RandomTokens:
    """SFT trains on rows whose prompt tokens are masked out of the loss (a different count on every row)."""
    return RandomTokens(n=n, masked=stage == "sft", **kw)


class Record(Callback):
    """Per-step loss (this rank) and a hash of this rank's batch."""

    def __init__(self):
        self.losses, self.batches, self.start_hash = [], [], None

    def on_train_start(self, trainer, pl_module):
        self.start_hash = params_hash(pl_module.model)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"].detach()))
        self.batches.append(hashlib.sha256(batch["input_ids"].numpy().tobytes()).hexdigest()[:12])


def full_state(model) -> dict[str, torch.Tensor]:
    """Unsharded CPU state dict; collective under FSDP2, where only rank 0 gets it (others: {})."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if any(type(p).__name__ == "DTensor" for p in model.parameters()):
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def params_hash(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(full_state(model).items()):
        h.update(k.encode())
        h.update(v.float().numpy().tobytes())
    return h.hexdigest()[:16]


def world() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def strategy(kind: str):
    _, ws = world()
    if kind == "fsdp2":
        return AtomicModelParallelStrategy(data_parallel_size=ws, tensor_parallel_size=1)
    return DDPStrategy(process_group_backend="gloo")


def trainer(kind: str, steps: int, callbacks=(), **kw) -> L.Trainer:
    _, ws = world()
    plugins = [AtomicCheckpointIO()] if kind == "ddp" else None
    return L.Trainer(max_steps=steps, accelerator="cpu", devices=ws, strategy=strategy(kind), logger=False,
                     enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                     plugins=plugins, enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                     num_sanity_val_steps=0, **kw)


def mean_over_ranks(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t.tolist()


def global_batches(values: list[str]) -> list[list[str]]:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, values)
    return [list(x) for x in zip(*out)]


# -- scenarios ------------------------------------------------------------------------------------------------

def sc_train(spec, kind, stage, source="source", sharding: dict | None = None) -> dict:
    """3 steps on random tokens (micro-batch 2 per rank); frozen parameters bit-identical, every trainable one moved."""
    _, ws = world()
    module = make_module(stage, spec[source], sharding=sharding)
    rec = Record()
    t = trainer(kind, 3, [rec], use_distributed_sampler=False)
    rank, _ = world()  # rank r reads samples r, r+ws, ...: step k's global batch = samples 4k..4k+3 as in 1 process
    data = torch.utils.data.Subset(stage_data(stage, n=24), list(range(rank, 24, ws)))
    t.fit(module, train_dataloaders=DataLoader(data, batch_size=spec["global_batch"] // ws))
    after = full_state(module.model)
    ref = make_module(stage, spec[source]).build_model()
    lm = getattr(getattr(module.model, "base_model", None), "model", module.model)
    tied = lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
    frozen = {n for n, p in ref.named_parameters() if not p.requires_grad}
    before = ref.state_dict()
    rank, _ = world()
    frozen_equal = rank != 0 or all(torch.equal(after[k], before[k]) for k in before if k in frozen)
    trainable_moved = rank != 0 or all(not torch.equal(after[k], before[k]) for k in before if k not in frozen)
    return {"losses": mean_over_ranks(rec.losses), "frozen_equal": frozen_equal, "n_frozen": len(frozen),
            "trainable_moved": trainable_moved, "tied": tied,
            "sharded": any(type(p).__name__ == "DTensor" for p in module.model.parameters()),
            "param_dtypes": sorted({str(p.dtype) for p in module.model.parameters()}),
            "param_devices": sorted({p.device.type for p in module.model.parameters()})}


def sc_attach(spec, kind) -> dict:
    """AlignmentModule(detached=...) under FSDP2 (attach on rank 0, broadcast) equals the unsharded attach."""
    from transformers import AutoModelForCausalLM

    from elo_lightning.surgery import attach, load_detached

    module = make_module("align", spec["source"], detached=spec["detached"])
    t = trainer(kind, 0)
    t.fit(module, train_dataloaders=DataLoader(RandomTokens(n=24), batch_size=2))  # max_steps=0: setup only
    got = full_state(module.model)
    expected = AutoModelForCausalLM.from_pretrained(spec["source"])
    attach(expected, *load_detached(spec["detached"]))
    exp = expected.state_dict()
    if world()[0] != 0:
        return {}
    same = sorted(got) == sorted(exp) and all(torch.equal(got[k], exp[k]) for k in exp)
    original = AutoModelForCausalLM.from_pretrained(spec["source"]).state_dict()
    differs = any(not torch.equal(got[k], original[k]) for k in exp)
    return {"equal_to_unsharded_attach": same, "differs_from_source": differs}


def _bilingual(spec, **kw):
    from elo_lightning.data import BilingualDataModule, LanguageSource

    sample = REPO / "data" / "sample" / "pretrain"
    langs = [LanguageSource(n, [str(sample / n / "train-*.jsonl")], weight=w) for n, w in (("en", 1.0), ("ko", 9.0))]
    return BilingualDataModule(str(REPO / "configs" / "tokenizer"), langs, seq_len=16, batch_size=2, **kw)


def sc_resume(spec, kind, stage="elo", optimizer="adamw", crash=True) -> dict:
    """Uninterrupted 4 steps vs (2 steps, checkpoint, crash while saving step 4, resume from step 2)."""
    rank, _ = world()
    src = spec["source_8k"]
    work = Path(spec["work"]) / f"resume-{kind}-{stage}-{optimizer}"
    out: dict = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec_a = Record()
        trainer(kind, 4, [rec_a]).fit(make_module(stage, src, optimizer), datamodule=_bilingual(spec))
    out["fallback_warnings"] = [str(w.message) for w in caught if "8-bit" in str(w.message)]
    out["optimizer_class"] = None

    ckpt_cb = ModelCheckpoint(dirpath=work, filename="step{step}", every_n_train_steps=2, save_top_k=-1,
                              auto_insert_metric_name=False)
    rec_b = Record()
    module_b = make_module(stage, src, optimizer)
    t_b = trainer(kind, 4, [rec_b, ckpt_cb])
    crashed = False
    undo = _inject_crash(t_b, at_step=4) if crash else (lambda: None)
    try:
        t_b.fit(module_b, datamodule=_bilingual(spec))
    except RuntimeError as err:
        crashed = "injected crash" in str(err)
    finally:
        undo()
    out["optimizer_class"] = type(t_b.optimizers[0]).__module__ + "." + type(t_b.optimizers[0]).__name__
    if dist.is_initialized():
        dist.barrier()
    out["crashed"] = crashed
    out["entries"] = sorted(p.name for p in work.iterdir())
    latest = latest_checkpoint(work)
    out["latest"] = latest.name if latest else None
    out["step4_complete"] = is_complete(work / "step4.ckpt") if (work / "step4.ckpt").exists() else False
    rec_c = Record()
    dm_c = _bilingual(spec)
    t_c = trainer(kind, 4, [rec_c, ModelCheckpoint(dirpath=work, filename="step{step}", every_n_train_steps=2,
                                                    save_top_k=-1, auto_insert_metric_name=False)])
    t_c.fit(make_module(stage, src, optimizer), datamodule=dm_c, ckpt_path=str(work / "step2.ckpt"))
    out.update(
        losses_a=mean_over_ranks(rec_a.losses), losses_b=mean_over_ranks(rec_b.losses),
        losses_c=mean_over_ranks(rec_c.losses),
        batches_a=global_batches(rec_a.batches), batches_c=global_batches(rec_c.batches),
        resumed_step=t_c.global_step, checkpoint=str(work / "step2.ckpt"),
    )
    final = full_state(t_c.lightning_module.model)
    if rank == 0:
        torch.save(final, work.parent / f"final-{kind}-{stage}-{optimizer}.pt")
    return out


def _inject_crash(t, at_step: int):
    """Make the sharded checkpoint save at ``at_step`` die after the shards were written (before completion).
    Returns a function that removes the patch."""
    import lightning.pytorch.strategies.model_parallel as mp

    orig = mp._distributed_checkpoint_save

    def crashing(state, path):
        orig(state, path)  # shards written ...
        if t.global_step == at_step:
            raise RuntimeError("injected crash")  # ... but the save never finishes

    mp._distributed_checkpoint_save = crashing

    def undo():
        mp._distributed_checkpoint_save = orig

    return undo


def sc_world1(spec, kind) -> dict:
    """Resume a world-2 sharded checkpoint on 1 process: weights reshard; the BilingualDataModule refuses."""
    ckpt = spec["checkpoint"]
    rec = Record()
    t = trainer(kind, 3, [rec])
    t.fit(make_module("elo", spec["source_8k"]),
          train_dataloaders=DataLoader(RandomTokens(n=24, vocab=8192), batch_size=4),
          ckpt_path=ckpt)
    out = {"weights_hash_at_start": rec.start_hash, "global_step": t.global_step, "losses": rec.losses}
    try:
        trainer(kind, 4).fit(make_module("elo", spec["source_8k"]), datamodule=_bilingual(spec), ckpt_path=ckpt)
        out["datamodule_error"] = None
    except ELOError as err:
        out["datamodule_error"] = str(err)
    return out


def main() -> None:
    import faulthandler
    faulthandler.dump_traceback_later(float(os.environ.get("ELO_DUMP_AFTER", "1e9")), exit=True)
    spec = json.loads(Path(sys.argv[1]).read_text())
    kind = spec["strategy"]
    rank, ws = world()
    L.seed_everything(0, verbose=False)
    results: dict = {}
    for sc in spec["scenarios"]:
        name = sc if isinstance(sc, str) else sc["name"]
        args = {} if isinstance(sc, str) else sc.get("args", {})
        try:
            if name.startswith("train:"):
                stage, _, source = name.split(":", 1)[1].split("#")[0].partition("@")  # train:STAGE[@SRC][#TAG]
                results[name] = sc_train(spec, kind, stage, source or "source", **args)
            elif name == "attach":
                results[name] = sc_attach(spec, kind)
            elif name.startswith("resume"):
                results[name] = sc_resume(spec, kind, **args)
            elif name == "world1":
                results[name] = sc_world1(spec, kind)
        except Exception as err:  # noqa: BLE001 - report, the test fails on it
            results[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            print(f"[rank {rank}] scenario {name} failed:\n{results[name]['traceback']}", file=sys.stderr, flush=True)
        if dist.is_initialized():
            dist.barrier()
    Path(spec["work"], f"result-{kind}-rank{rank}.json").write_text(json.dumps(results, indent=1))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
