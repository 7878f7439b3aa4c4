"""Peak RSS per rank for each stage, FSDP2 (2 ranks) vs unsharded (1 process), on a small config.

    python -m torch.distributed.run --nproc_per_node 2 tests/dist_scripts/peak_rss.py MODEL.json OUT.json fsdp2
    python tests/dist_scripts/peak_rss.py MODEL.json OUT.json single
Each stage runs in a fresh process (ru_maxrss only grows): pass STAGE as the 4th argument.

ELO start-up only (building the DetachedLayerModule's model from a saved HF directory, nothing trained):
    python tests/dist_scripts/peak_rss.py MODEL_DIR OUT.json elo-startup lazy   # config + λ/embedding/head read
    python tests/dist_scripts/peak_rss.py MODEL_DIR OUT.json elo-startup full   # the old path: load all, then cut
Besides the process' peak RSS (imports dominate it on a small model) it records the bytes of parameters and
optimizer state this rank holds (local shards of DTensors): the part sharding divides.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lightning as L  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from worker import RandomTokens, make_module, trainer  # noqa: E402


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def local_mb(tensors) -> float:
    """Bytes this rank holds for the tensors (a DTensor counts its local shard only)."""
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return round(total / 2**20, 1)


def elo_startup(model: str, out: str, how: str) -> None:
    """Peak RSS of building the ELO detached model in the training dtype (the default, fp32 here)."""
    from elo_lightning.models import load_causal_lm
    from elo_lightning.modules import DetachedLayerModule
    from elo_lightning.surgery import detach

    base = rss_mb()
    if how == "full":  # what DetachedLayerModule.build_model did before: the whole model, then the cut
        full = load_causal_lm(model)
        small, _ = detach(full, "1,-1", copy_weights=False)
        del full
    else:
        small = DetachedLayerModule(model=model, layers="1,-1").build_model()
    built = round(rss_mb(), 1)
    for t in [*small.parameters(), *small.buffers()]:  # training reads every weight: memory-mapped pages load now
        t.detach().float().sum()
    res = {"how": how, "model": model, "peak_rss_mb": round(rss_mb(), 1), "peak_rss_built_mb": built,
           "after_imports_mb": round(base, 1),
           "detached_params": sum(p.numel() for p in small.parameters()),
           "detached_mb": local_mb(small.parameters()), "dtype": str(small.dtype)}
    with open(out, "a") as f:
        f.write(json.dumps(res) + "\n")


def main() -> None:
    model, out, kind, stage = sys.argv[1:5]
    if kind == "elo-startup":
        return elo_startup(model, out, stage)
    base = rss_mb()
    rank, ws = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    module = make_module(stage, model)
    vocab = json.loads(Path(model).read_text())["vocab_size"] if model.endswith(".json") else 512
    data = DataLoader(RandomTokens(n=16, seq_len=64, vocab=vocab), batch_size=4 // ws)
    loaded = {}

    class AfterLoad(L.Callback):  # ru_maxrss at train start: the peak of building/loading/sharding the model
        def on_train_start(self, trainer, pl_module):
            loaded["mb"] = round(rss_mb(), 1)

    if kind == "single":
        t = L.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[AfterLoad()])
    else:
        t = trainer(kind, 3, [AfterLoad()])
    t.fit(module, train_dataloaders=data)
    n = sum(p.numel() for p in module.model.parameters())
    opt = t.optimizers[0].optimizer if hasattr(t.optimizers[0], "optimizer") else t.optimizers[0]
    state = [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v) and v.dim() > 0]
    res = {"stage": stage, "kind": kind, "rank": rank, "world": ws, "peak_rss_mb": round(rss_mb(), 1),
           "peak_rss_through_load_mb": loaded["mb"],
           "after_imports_mb": round(base, 1), "local_params": n,
           "params_mb": local_mb(module.model.parameters()), "optimizer_state_mb": local_mb(state)}
    with open(out, "a") as f:
        f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
